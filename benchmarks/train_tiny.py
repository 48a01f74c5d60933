"""The training loop's speed on tiny-shapes (a LoRA of rank 8 on nine 64 px pictures): steps
per second with one process and with two (the same global batch, split; the gradients
averaged between them), side by side in one run, and the share of the loop's time outside
the forward and backward passes (drawing the batch, the optimizer, checkpoints, logging).

    .venv/bin/python benchmarks/train_tiny.py [--steps N] [--batch B] [--quick]
    python benchmarks/train_tiny.py --sd15 --steps 20 --batch 1   # on a GPU: SD-1.5 size

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


def sd15(device: str, dtype):
    """Stable Diffusion 1.5's architecture (its published configs) with random weights, built
    on ``device``: UNet 860 M, VAE 84 M, CLIP text 123 M weights (its 49408-row table; the
    tokenizer is the offline byte-level one: token ids differ, the cost does not)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from imggenhub.engine.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 77
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
                            sample_size=512, scaling_factor=0.18215)
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, hidden_size=768, intermediate_size=3072,
            num_attention_heads=12, num_hidden_layers=12, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, prediction_type="epsilon",
                              clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return pipe.to(device=device, dtype=dtype)


def sd15_lora(steps: int, resolution: int, batch: int) -> None:
    """A LoRA (rank 4) on an SD-1.5-shaped pipeline with random weights, through the engine's
    trainer with gradient checkpointing: steps/s and, on a GPU, the peak memory against a
    T4's 15 GB."""
    import time

    import torch

    from imggenhub.engine import training

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    t = time.monotonic()
    pipe = sd15(device, dtype)
    print(f"SD-1.5-shaped pipeline, random weights, {str(dtype).replace('torch.', '')} on "
          f"{torch.cuda.get_device_name(0) if cuda else 'cpu'}, built in {time.monotonic() - t:.1f}s")
    with tempfile.TemporaryDirectory(prefix="imggenhub-bench-") as tmp:
        work = Path(tmp)
        shapes.write_training_set(work / "data", "cyan", "zq")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = training.Trainer(pipe, training.read_examples(work / "data"), {
            "method": "lora", "rank": 4, "learning_rate": 1e-4, "steps": steps, "batch_size": batch,
            "resolution": resolution, "gradient_checkpointing": True, "name": "sd15"}, work / "run",
            device)
        trainer.run()
        rate = steps / trainer.seconds
        print(f"LoRA rank 4 at {resolution} px, batch {batch}, gradient checkpointing: "
              f"{rate:.2f} steps/s ({1 / rate:.2f} s/step) over {steps} steps")
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"peak GPU memory {peak:.1f} GiB (a T4 has 15 GB): "
                  f"{'fits' if peak < 14 else 'does not fit'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="the global batch")
    parser.add_argument("--quick", action="store_true", help="one process, 4 steps, in this process")
    parser.add_argument("--sd15", action="store_true",
                        help="instead: a LoRA on an SD-1.5-shaped model with random weights (for a GPU)")
    parser.add_argument("--resolution", type=int, default=512, help="with --sd15")
    args = parser.parse_args()
    if args.sd15:
        return sd15_lora(args.steps, args.resolution, args.batch)
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
