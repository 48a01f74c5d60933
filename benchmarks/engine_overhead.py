"""What the engine costs beside generation: images per second of the engine's worker
(PNG encoding, sha256, manifest part, progress lines, on its writer thread) against a
bare diffusers loop that generates and discards, on the same tiny pipeline with the same
torch thread count, at two sizes, interleaved and side by side in one run. Also the
reload-per-prompt pattern against the engine. Every pattern starts each round from a
pipeline built afresh, as the engine does for each job. Goal: engine/bare at least 0.95.

    .venv/bin/python benchmarks/engine_overhead.py [--images N] [--steps S] [--threads T] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from imggenhub import engine
from imggenhub.spec import build_job, parse_settings, prompts_from_flags


def fresh():
    """The tiny pipeline, built anew (outside any timer), as the engine loads it for a job."""
    pipe = engine.build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_rate(pipe, n: int, size: int, steps: int) -> float:
    t0 = time.monotonic()
    for i in range(n):
        pipe("a lighthouse at dusk", num_inference_steps=steps, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(i)).images  # generated, discarded
    return n / (time.monotonic() - t0)


def inline_rate(pipe, n: int, size: int, steps: int, folder: Path) -> float:
    """The pattern the engine had before its writer thread: encode, hash and rewrite the
    whole manifest part inside the generation loop."""
    import hashlib

    part = {"images": []}
    t0 = time.monotonic()
    for i in range(n):
        image = pipe("a lighthouse at dusk", num_inference_steps=steps, width=size, height=size,
                     generator=torch.Generator("cpu").manual_seed(i)).images[0]
        record = {"index": i, "prompt": "a lighthouse at dusk", "steps": steps, "seed": i,
                  "guidance": 5.0, "width": size, "height": size, "model": "tiny-random",
                  "scheduler": "DDIM"}
        data = engine.save_png(image, folder / f"inline-{i}.png", record)
        part["images"].append({**record, "sha256": hashlib.sha256(data).hexdigest()})
        (folder / "inline-part.json").write_text(json.dumps(part, indent=2))
    return n / (time.monotonic() - t0)


def reload_rate(n: int, size: int, steps: int) -> float:
    t0 = time.monotonic()
    for i in range(n):
        pipe = engine.build_tiny_random_pipeline()
        pipe.set_progress_bar_config(disable=True)
        pipe("a lighthouse at dusk", num_inference_steps=steps, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(i)).images
    return n / (time.monotonic() - t0)


def engine_rate(n: int, size: int, steps: int, folder: Path) -> float:
    """The engine's worker on a job of n images, by its own clock: from its first image to
    its last one written (the model's load and start-up are the same in both patterns)."""
    job = build_job(parse_settings(model="tiny-random", seed=1, steps=steps, width=size,
                                   height=size, num_images=n, gpu=False),
                    prompts_from_flags(["a lighthouse at dusk"])).document()
    out = folder / f"out-{time.monotonic_ns()}"
    engine.run_worker(job, out)
    manifest = engine.merge_manifest(out, job)
    assert len(manifest["images"]) == n
    process = manifest["processes"][0]
    return n / process["generation_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 images, 1 round: a check that it runs")
    args = parser.parse_args()
    sizes = (64, 128)
    if args.quick:
        args.images, args.rounds, sizes = 2, 1, (32,)
    torch.set_num_threads(args.threads)
    pipe = engine.build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    print(f"tiny-random, {args.steps} steps, {args.images} images a round, {args.rounds} rounds, "
          f"torch threads {args.threads} (the writer thread is extra)")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            bare, ours, inline = [], [], []
            for _ in range(args.rounds):  # interleaved, so drift hits all alike
                # each pattern starts from a pipeline built afresh, as the engine's job does
                # (a new model's first images run slower: that must not count for one only)
                bare.append(bare_rate(fresh(), args.images, size, args.steps))
                ours.append(engine_rate(args.images, size, args.steps, Path(tmp)))
                inline.append(inline_rate(fresh(), args.images, size, args.steps, Path(tmp)))
            reload = reload_rate(max(2, args.images // 4), size, args.steps)
            b, e, i = (statistics.median(x) for x in (bare, ours, inline))
            # each round's patterns ran back to back: their ratio cancels the machine's drift
            per_round = sorted(o / r for o, r in zip(ours, bare))
            inline_round = sorted(o / r for o, r in zip(inline, bare))
            print(f"{size}x{size}: bare loop {b:7.2f} img/s, engine {e:7.2f} img/s, "
                  f"writes inline {i:7.2f} img/s, reload per prompt {reload:7.2f} img/s")
            print(f"  ratio engine/bare: {statistics.median(per_round):.3f}x (rounds "
                  f"{per_round[0]:.3f}..{per_round[-1]:.3f}); inline/bare: "
                  f"{statistics.median(inline_round):.3f}x; engine/reload-per-prompt: "
                  f"{e / reload:.2f}x")
    print(json.dumps({"goal_engine_over_bare": 0.95}))


if __name__ == "__main__":
    main()
