"""Wall time of one job split over 1, 2, 4 and 8 Hugging Face jobs at once, on the tests'
Hub emulator whose jobs run a stub engine taking a fixed time per image (as a GPU would),
side by side in one run: the ratio to one share (goal: at least 0.8 x the share count up
to 8), and the orchestration's own time per job (wall time less the images' time).
The emulator runs every job as a process of this machine: with 8 at once on 2 cores, their
start-up (Python, huggingface_hub, the upload) competes for the CPU as it would not on 8
rented GPUs, so the figures are a floor for what the orchestration allows.

    .venv/bin/python benchmarks/hf_jobs.py [--images N] [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _emulated import start_hub, timed_generate

from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0, help="the stub engine's time per image")
    parser.add_argument("--quick", action="store_true", help="8 images, 1 and 2 jobs: a check that it runs")
    args = parser.parse_args()
    widths = (1, 2) if args.quick else (1, 2, 4, 8)
    if args.quick:
        args.images, args.seconds = 8, 0.05
    with tempfile.TemporaryDirectory(prefix="imggenhub-bench-") as folder:
        tmp = Path(folder)
        hub = start_hub(tmp)
        hub.jobs.image_seconds = args.seconds
        try:
            job = build_job(parse_settings(model="tiny-random", seed=1, num_images=args.images),
                            prompts_from_flags(["bench"]))
            walls = {n: timed_generate(job, "hf-jobs", n, tmp / f"out-{n}") for n in widths}
        finally:
            for started in list(hub.jobs.jobs.values()):
                hub.jobs.cancel(started)
            hub.stop()
            hub.restore()
    work = args.images * args.seconds
    print(f"{args.images} images at {args.seconds:g} s each (the stub engine), generate end to end "
          f"on --backend hf-jobs (emulated):")
    for n, wall in walls.items():
        overhead = wall - work / n
        print(f"  {n} job{'s' if n > 1 else ' '}: {wall:6.2f} s  (images {work / n:6.2f} s, the rest "
              f"{overhead:5.2f} s: orchestration and the jobs' start-up)")
    print("  goal: at least 0.8 x the number of jobs")
    for n in widths[1:]:
        print(f"  {n} jobs reach {walls[1] / walls[n] / n:.2f} of {n}x; "
              f"ratio 1 job / {n} jobs: {walls[1] / walls[n]:.2f}x")


if __name__ == "__main__":
    main()
