"""The training loop's speed on tiny-shapes (a LoRA of rank 8 on nine 64 px pictures): steps
per second with one process and with two (the same global batch, split; the gradients
averaged between them), side by side in one run, and the share of the loop's time outside
the forward and backward passes (drawing the batch, the optimizer, checkpoints, logging).

    .venv/bin/python benchmarks/train_tiny.py [--steps N] [--batch B] [--quick]

Each run is `python -m imggenhub.engine.training` in processes of its own (two through
torch.distributed.run, over gloo on a CPU), one torch thread each. --quick: one process,
a few steps, in this process (a check that it runs)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imggenhub import shapes  # noqa: E402


def run(processes: int, data: Path, out: Path, settings: dict) -> dict:
    """One training run in processes of its own; its printed record."""
    args = ["-m", "imggenhub.engine.training", "--data", str(data), "--out", str(out),
            "--model", "tiny-shapes", "--settings", json.dumps(settings)]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"the training run with {processes} process(es) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="the global batch")
    parser.add_argument("--quick", action="store_true", help="one process, 4 steps, in this process")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch = 4, 2
    settings = {"method": "lora", "rank": 8, "learning_rate": 1e-3, "steps": args.steps,
                "batch_size": args.batch, "resolution": 64, "name": "zq"}
    with tempfile.TemporaryDirectory(prefix="imggenhub-bench-") as tmp:
        work = Path(tmp)
        shapes.write_training_set(work / "data", "cyan", "zq")
        print(f"tiny-shapes LoRA (rank 8), 9 pictures at 64 px, global batch {args.batch}, "
              f"{args.steps} steps, CPU, one torch thread a process")
        if args.quick:
            import contextlib
            import io

            import torch

            from imggenhub.engine import training

            torch.set_num_threads(1)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                training.main(["--data", str(work / "data"), "--out", str(work / "one"),
                               "--model", "tiny-shapes", "--settings", json.dumps(settings)])
            records = {1: json.loads(printed.getvalue().strip().splitlines()[-1])}
        else:
            records = {n: run(n, work / "data", work / f"p{n}", settings) for n in (1, 2)}
        for n, rec in records.items():
            rate = rec["steps"] / rec["loop_seconds"]
            outside = 1 - rec["model_seconds"] / rec["loop_seconds"]
            print(f"{n} process{'es' if n > 1 else ''}: {rate:.2f} steps/s, loss "
                  f"{rec['loss_first']:.4f} -> {rec['loss_last']:.4f}; share outside forward, backward "
                  f"and gradient averaging: {outside:.1%}")
        if 2 in records:
            print(f"ratio steps/s 2 processes / 1: "
                  f"{(records[2]['steps'] / records[2]['loop_seconds']) / (records[1]['steps'] / records[1]['loop_seconds']):.2f}x")
            same = records[1]["sha256"] == records[2]["sha256"]
            print("the two runs' LoRA files are " + ("identical" if same else
                  "not byte-identical (float sums in another order; the tests check the weights "
                  "agree to 1e-5)"))


if __name__ == "__main__":
    main()
