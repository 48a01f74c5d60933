"""Wall time of one job as 1 kernel against 2 shards run at once, on the Kaggle emulator
whose stub engine takes a fixed time per image (as a GPU would), side by side in one run.
Goal: about 2x (two GPU sessions at once).

    .venv/bin/python benchmarks/shards.py [--images N] [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _emulated import start_emulator, timed_generate

from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=0.25, help="the stub engine's time per image")
    parser.add_argument("--quick", action="store_true", help="4 images: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.seconds = 4, 0.05
    with tempfile.TemporaryDirectory(prefix="imggenhub-bench-") as folder:
        tmp = Path(folder)
        em = start_emulator(tmp)
        em.image_seconds = args.seconds
        try:
            job = build_job(parse_settings(model="tiny-random", seed=1, num_images=args.images),
                            prompts_from_flags(["bench"]))
            one = timed_generate(job, "kaggle", 1, tmp / "one")
            two = timed_generate(job, "kaggle", 2, tmp / "two")
        finally:
            em.stop()
    print(f"{args.images} images at {args.seconds:g} s each (the stub engine), generate end to end:")
    print(f"  1 kernel:  {one:6.2f} s")
    print(f"  2 shards:  {two:6.2f} s")
    print("  goal: about 2x (two GPU sessions at once)")
    print(f"  ratio 1 kernel / 2 shards: {one / two:.2f}x")


if __name__ == "__main__":
    main()
