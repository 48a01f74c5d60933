"""What the engine costs beside generation: images per second of the engine's worker
(PNG encoding, sha256, manifest part, progress lines, on its writer thread) against a
bare diffusers loop that generates and discards, on the same tiny pipeline with the same
torch thread count, at two sizes, in short paired rounds side by side in one run. Also the
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
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags


def fresh():
    """The tiny pipeline, built anew (outside any timer), as the engine loads it for a job."""
    pipe = engine.build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


PROMPT = "a lighthouse at dusk"
GUIDANCE = 5.0  # the tiny model's preset, which the engine's job uses too


def call(pipe, size: int, steps: int, seed: int):
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, width=size,
                height=size, generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def bare(pipe, n: int, size: int, steps: int) -> list[float]:
    """Generate and discard. Returns each image's seconds."""
    times = []
    for i in range(n):
        t = time.monotonic()
        call(pipe, size, steps, i)
        times.append(time.monotonic() - t)
    return times


def inline(pipe, n: int, size: int, steps: int, folder: Path) -> list[float]:
    """The pattern the engine had before its writer thread: encode, hash and rewrite the
    whole manifest part inside the generation loop (each image's seconds include that)."""
    import hashlib

    part, times = {"images": []}, []
    for i in range(n):
        t = time.monotonic()
        image = call(pipe, size, steps, i)
        record = {"index": i, "prompt": PROMPT, "steps": steps, "seed": i, "guidance": GUIDANCE,
                  "width": size, "height": size, "model": "tiny-random", "scheduler": "DDIM"}
        data = engine.save_png(image, folder / f"inline-{i}.png", record)
        part["images"].append({**record, "sha256": hashlib.sha256(data).hexdigest()})
        (folder / "inline-part.json").write_text(json.dumps(part, indent=2))
        times.append(time.monotonic() - t)
    return times


def reload_rate(n: int, size: int, steps: int) -> float:
    t0 = time.monotonic()
    for i in range(n):
        call(fresh(), size, steps, i)
    return n / (time.monotonic() - t0)


def run_engine(n: int, size: int, steps: int, folder: Path) -> list[float]:
    """The engine's worker on a job of n images, by its own clock: from its first image to
    its last one written (the model's load and start-up are the same in both patterns).
    Returns each image's seconds (their sum is the engine's own clock)."""
    job = build_job(parse_settings(model="tiny-random", seed=1, steps=steps, width=size,
                                   height=size, num_images=n, gpu=False),
                    prompts_from_flags([PROMPT])).document()
    out = folder / f"out-{time.monotonic_ns()}"
    engine.run_worker(job, out)
    manifest = engine.merge_manifest(out, job)
    assert len(manifest["images"]) == n
    assert manifest["images"][0]["guidance"] == GUIDANCE
    return engine_times(manifest)


def engine_times(manifest: dict) -> list[float]:
    """Each image's seconds in the engine's loop, from its manifest: its pipeline call (the
    writer thread working beside it) plus an equal share of the loop's own time outside the
    calls (building arguments, handing over, the last write's drain)."""
    wall = manifest["processes"][0]["generation_seconds"]
    calls = [r["seconds"] for r in manifest["images"]]
    own = max(0.0, wall - sum(calls)) / len(calls)
    return [c + own for c in calls]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return q1, median, q3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=6, help="images a pattern makes a round")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="2 images, 1 round: a check that it runs")
    args = parser.parse_args()
    sizes = (64, 128)
    if args.quick:
        args.images, args.rounds, sizes = 2, 1, (32,)
    torch.set_num_threads(args.threads)
    pipe = fresh()  # warm the process (first calls of a process run slower)
    pipe("warm-up", num_inference_steps=1, width=32, height=32)
    print(f"tiny-random, {args.steps} steps, {args.images} images a pattern a round, "
          f"{args.rounds} rounds, torch threads {args.threads} (the writer thread is extra)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in sizes:
            patterns = {
                "bare": lambda: bare(fresh(), args.images, size, args.steps),
                "engine": lambda: run_engine(args.images, size, args.steps, folder),
                "inline": lambda: inline(fresh(), args.images, size, args.steps, folder),
            }
            rounds = []  # each round: each pattern's list of image seconds
            for r in range(args.rounds):
                # short rounds, the patterns back to back, their order reversed every other
                # round: this machine drifts by 10 % over tens of seconds
                order = list(patterns) if r % 2 == 0 else list(reversed(patterns))
                rounds.append({name: patterns[name]() for name in order})
            reload = reload_rate(max(2, args.images // 2), size, args.steps)
            # steady state: the median image, which a VM's stall (an image that takes half
            # as long again now and then, on either pattern) does not move as it moves a
            # mean; and a job's own measure, its total time. Each as a ratio within a round
            # (the patterns seconds apart), then the median and quartiles over the rounds
            steady = {k: quartiles([statistics.median(r["bare"]) / statistics.median(r[k])
                                    for r in rounds]) for k in ("engine", "inline")}
            total = {k: quartiles([sum(r["bare"]) / sum(r[k]) for r in rounds])
                     for k in ("engine", "inline")}
            per = {k: statistics.median([t for r in rounds for t in r[k]]) for k in patterns}
            print(f"{size}x{size}: median image: bare loop {per['bare'] * 1000:.1f} ms, engine "
                  f"{per['engine'] * 1000:.1f} ms, writes inline {per['inline'] * 1000:.1f} ms "
                  f"({args.rounds * args.images} images each); reload per prompt "
                  f"{reload:.2f} img/s")
            print(f"  ratio engine/bare: {steady['engine'][1]:.3f}x steady state (rounds' "
                  f"quartiles {steady['engine'][0]:.3f}..{steady['engine'][2]:.3f}), "
                  f"{total['engine'][1]:.3f}x by total time ({total['engine'][0]:.3f}.."
                  f"{total['engine'][2]:.3f})")
            print(f"  ratio inline/bare: {steady['inline'][1]:.3f}x steady state, "
                  f"{total['inline'][1]:.3f}x by total time; engine/reload-per-prompt: "
                  f"{1 / per['engine'] / reload:.2f}x")
    print(json.dumps({"goal_engine_over_bare": 0.95}))


if __name__ == "__main__":
    main()
