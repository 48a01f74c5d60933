"""End-to-end local run of 8 tiny-random images, split into its stages: render, kernel
start, model build, generation, collection (and the rest of the notebook's time).

    .venv/bin/python benchmarks/local_e2e.py [--images N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from imggenhub.outputs import artifacts
from imggenhub.run import jobs
from imggenhub.backends.kaggle.meta import KernelOptions, kernel_metadata, write_metadata
from imggenhub.job.notebook import write_notebook
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="one image: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.images = 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IMGGENHUB_HOME"] = str(Path(tmp) / "state")
        job = build_job(parse_settings(model="tiny-random", seed=1, gpu=False),
                        prompts_from_flags([f"benchmark prompt {i}" for i in range(args.images)]))
        t0 = time.perf_counter()
        # what 'imggenhub render' does: the notebook and its kernel-metadata.json
        write_notebook(Path(tmp) / "render", job)
        write_metadata(Path(tmp) / "render", kernel_metadata(KernelOptions()))
        render_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = jobs.generate(job, "local", Path(tmp) / "out", None, lambda _: None)
        total = time.perf_counter() - t0
        manifest = artifacts.read_manifest(Path(tmp) / "out")
        proc = manifest["processes"][0]
        gen = sum(i["seconds"] for i in manifest["images"])
        rows = [
            ("render", render_s),
            ("kernel start", run.timings["kernel_start"]),
            ("model build", proc["model_load_seconds"]),
            ("generation", gen),
            ("notebook, other (engine start, imports)",
             run.timings["notebook"] - run.timings["kernel_start"] - proc["model_load_seconds"] - gen),
            ("collection + verification", run.timings["fetch"]),
        ]
        print(f"{len(manifest['images'])} images, tiny-random 64x64, 4 steps, CPU")
        for name, seconds in rows:
            print(f"  {name:<42} {seconds:6.2f} s")
        print(f"  {'total generate (wall)':<42} {total:6.2f} s; generation share {gen / total:.0%}")


if __name__ == "__main__":
    main()
