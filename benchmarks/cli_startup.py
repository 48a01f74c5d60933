"""How fast `imggenhub --help` starts, next to a bare Python start-up, in one run.

    .venv/bin/python benchmarks/cli_startup.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one run each: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    exe = str(Path(sys.executable).with_name("imggenhub"))
    bare = timed([sys.executable, "-c", "pass"], args.runs)
    helped = timed([exe, "--help"], args.runs)
    torch = timed([sys.executable, "-c", "import torch"], args.runs)
    print(f"python -c pass          {bare * 1000:8.1f} ms (median of {args.runs})")
    print(f"imggenhub --help        {helped * 1000:8.1f} ms")
    print(f"python -c 'import torch' {torch * 1000:7.1f} ms  (what --help would add if it imported torch)")
    print(f"ratio --help / bare python: {helped / bare:.1f}x; import torch / --help: {torch / helped:.1f}x")


if __name__ == "__main__":
    main()
