"""Downloading 200 output files of 1 MB from the Kaggle emulator: `imggenhub download`
against `kaggle kernels output`, each as a command, side by side in one run.

    .venv/bin/python benchmarks/kaggle_download.py [--files N] [--mb M]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _emulated import kaggle_cli_env, start_emulator

from imggenhub import artifacts, runs
from imggenhub.backends.kaggle import KaggleBackend, save_request

MAKE_FILES = """import hashlib, json, os
os.makedirs("output", exist_ok=True)
images = []
for i in range({n}):
    data = os.urandom({size})
    name = f"{{i + 1:04d}}-bench.png"
    with open("output/" + name, "wb") as fh:
        fh.write(data)
    images.append({{"index": i, "file": name, "bytes": len(data),
                   "sha256": hashlib.sha256(data).hexdigest()}})
json.dump({{"job_id": "bench-download", "images": images}}, open("output/manifest.json", "w"))
"""


def notebook(code: str) -> str:
    return json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "outputs": [],
                                  "execution_count": None, "source": code}],
                       "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                   "language": "python"}},
                       "nbformat": 4, "nbformat_minor": 5})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--mb", type=float, default=1.0)
    args = parser.parse_args()
    em = start_emulator()
    tmp = Path(tempfile.mkdtemp())
    try:
        meta = {"id": "imggenhub/bench-download", "title": "bench download", "language": "python",
                "kernel_type": "notebook"}
        code = MAKE_FILES.format(n=args.files, size=int(args.mb * (1 << 20)))
        resp = KaggleBackend().api.save_kernel(save_request(meta, notebook(code)))
        em.wait_idle()
        run = runs.Run(run_id="bench-download", backend="kaggle", job_id="bench-download",
                       image_count=args.files, out_dir=str(tmp / "ours"),
                       state=runs.RunState.COMPLETE, kernel_ref="imggenhub/bench-download",
                       version=resp.version_number)
        runs.runs_dir().joinpath(run.run_id).mkdir(parents=True, exist_ok=True)
        runs.save(run)
        exe = Path(sys.executable).with_name
        total = args.files * args.mb
        print(f"{args.files} files of {args.mb:g} MB ({total:.0f} MB) from the Kaggle emulator")
        for latency in (0.0, 0.05):
            em.faults.set(slow_files=latency)
            ours_dir, cli_dir = tmp / f"ours-{latency}", tmp / f"cli-{latency}"
            t0 = time.monotonic()
            subprocess.run([str(exe("imggenhub")), "download", "bench-download", "--out",
                            str(ours_dir)], check=True, capture_output=True)
            ours = time.monotonic() - t0
            assert artifacts.verify(ours_dir) == []
            t0 = time.monotonic()
            subprocess.run([str(exe("kaggle")), "kernels", "output", "imggenhub/bench-download",
                            "-p", str(cli_dir), "-q"], check=True, capture_output=True,
                           env=kaggle_cli_env(em))
            theirs = time.monotonic() - t0
            assert artifacts.verify(cli_dir / "output") == []
            print(f"per-file latency {latency * 1000:3.0f} ms:")
            print(f"  imggenhub download:     {ours:6.2f} s  ({total / ours:6.1f} MB/s, parallel, "
                  "sha256-verified)")
            print(f"  kaggle kernels output:  {theirs:6.2f} s  ({total / theirs:6.1f} MB/s, sequential, "
                  "unverified)")
            print(f"  ratio kaggle/imggenhub: {theirs / ours:.2f}x")
    finally:
        em.stop()


if __name__ == "__main__":
    main()
