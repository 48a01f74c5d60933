"""Engine throughput: the pipeline loaded once and reused for every prompt (what the
engine does) against the naive pattern that loads it again for every prompt, on the same
tiny model, side by side in one run.

    .venv/bin/python benchmarks/engine_reuse.py [--prompts N] [--steps S] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import torch

from imggenhub import engine


def generate(pipe, prompt: str, seed: int, steps: int):
    return pipe(prompt, num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


MODEL = {}


def load():
    """The engine's own loader, from a saved diffusers folder (as a Hub model loads)."""
    pipe = engine.load_pipeline(MODEL, "cpu", torch.float32)
    engine.enable_memory_savers(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 prompts, 1 step: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.steps = 2, 1
    prompts = [f"prompt number {i}" for i in range(args.prompts)]
    folder = tempfile.mkdtemp(prefix="imggenhub-bench-")
    try:
        engine.build_tiny_random_pipeline().save_pretrained(folder)
        MODEL.update(id=folder, pipeline="auto", variant=None)
        load()  # warm the imports and caches for both sides alike

        t0 = time.perf_counter()
        for i, p in enumerate(prompts):
            generate(load(), p, i, args.steps)
        naive = time.perf_counter() - t0

        t0 = time.perf_counter()
        pipe = load()
        for i, p in enumerate(prompts):
            generate(pipe, p, i, args.steps)
        reuse = time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    n = len(prompts)
    print(f"{n} images, tiny-random saved as a diffusers folder, {args.steps} steps, CPU, {torch.get_num_threads()} threads")
    print(f"naive (load per prompt): {naive:7.2f} s  {n / naive:6.2f} images/s")
    print(f"engine (load once):      {reuse:7.2f} s  {n / reuse:6.2f} images/s")
    print(f"ratio naive/engine: {naive / reuse:.2f}x")
    print("On a real model the load is seconds to minutes (SDXL: ~7 GB), so the gap grows with it.")


if __name__ == "__main__":
    main()
