"""Orchestration overhead of `generate` against the Kaggle emulator: wall time minus the
kernel's own run time, for 8 images, next to the original imggenhub's pattern (a fixed
30 s wait after the push, then the status every 60 s), side by side in one run.

    .venv/bin/python benchmarks/kaggle_overhead.py [--images N] [--quick]

The emulator runs each pushed notebook in a real Jupyter kernel (tiny-random, real images).
--quick: 2 images with the emulator's stub runner, and every wait of both patterns cut
a hundredfold (a check that it runs; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import requests
from _emulated import start_emulator

from imggenhub.run import jobs
from imggenhub.backends.kaggle.backend import KaggleBackend, save_request
from imggenhub.backends.kaggle.meta import (METADATA_FILE, KernelOptions, kernel_metadata, write_metadata)
from imggenhub.job.notebook import CODE_FILE, write_notebook
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags

FIRST_WAIT, POLL_EVERY = 30.0, 60.0  # the original pattern


def kernel_seconds(em, ref: str, number: int) -> float:
    version = em.versions(ref)[number - 1]
    return version.finished - version.pushed


def ours(em, job, out: Path) -> tuple[float, float]:
    t0 = time.monotonic()
    run = jobs.generate(job, "kaggle", out, KernelOptions(kernel_id="imggenhub/bench-ours"),
                        lambda _: None)
    wall = time.monotonic() - t0
    return wall, kernel_seconds(em, run.kernel_ref, run.version)


def original(em, job, out: Path, scale: float) -> tuple[float, float]:
    """Push, sleep 30 s, then ask the (unversioned) status every 60 s, then download."""
    from kagglesdk.kernels.types.kernels_api_service import (ApiGetKernelSessionStatusRequest,
                                                             ApiListKernelSessionOutputRequest)

    folder = out.parent / "original-notebook"
    write_notebook(folder, job)
    write_metadata(folder, kernel_metadata(KernelOptions(kernel_id="imggenhub/bench-original")))
    backend = KaggleBackend()
    t0 = time.monotonic()
    meta = json.loads((folder / METADATA_FILE).read_text())
    resp = backend.api.save_kernel(save_request(meta, (folder / CODE_FILE).read_text()))
    time.sleep(FIRST_WAIT * scale)
    while True:
        req = ApiGetKernelSessionStatusRequest()
        req.user_name, req.kernel_slug = "imggenhub", "bench-original"
        if backend.api.get_kernel_session_status(req).status.name in ("COMPLETE", "ERROR"):
            break
        time.sleep(POLL_EVERY * scale)
    req = ApiListKernelSessionOutputRequest()
    req.user_name, req.kernel_slug = "imggenhub", "bench-original"
    out.mkdir(parents=True, exist_ok=True)
    for item in backend.api.list_kernel_session_output(req).files:
        (out / Path(item.file_name).name).write_bytes(requests.get(item.url).content)
    wall = time.monotonic() - t0
    return wall, kernel_seconds(em, "imggenhub/bench-original", resp.version_number)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--quick", action="store_true",
                        help="2 stub images, waits cut a hundredfold: a check that it runs")
    args = parser.parse_args()
    scale = 1.0
    if args.quick:
        args.images, scale = 2, 0.01
        # imggenhub's own waits, cut alike (its defaults: 2 s, then a fifth of the elapsed)
        os.environ.update(IMGGENHUB_POLL_INTERVAL=str(2.0 * scale),
                          IMGGENHUB_POLL_MAX_INTERVAL=str(30.0 * scale))
    job = build_job(parse_settings(model="tiny-random", seed=1),
                    prompts_from_flags([f"benchmark prompt {i}" for i in range(args.images)]))
    with tempfile.TemporaryDirectory(prefix="imggenhub-bench-") as folder:
        tmp = Path(folder)
        em = start_emulator(tmp, runner="stub" if args.quick else "notebook")
        try:
            wall_o, kernel_o = ours(em, job, tmp / "ours")
            wall_n, kernel_n = original(em, job, tmp / "original", scale)
        finally:
            em.stop()
    over_o, over_n = wall_o - kernel_o, wall_n - kernel_n
    kind = "stub" if args.quick else "tiny-random"
    print(f"{args.images} {kind} images through the Kaggle emulator")
    print(f"imggenhub generate:   wall {wall_o:6.1f} s, kernel {kernel_o:5.1f} s, overhead {over_o:5.1f} s")
    print(f"original pattern:     wall {wall_n:6.1f} s, kernel {kernel_n:5.1f} s, overhead {over_n:5.1f} s")
    print(f"overhead ratio original/imggenhub: {over_n / max(over_o, 1e-3):.1f}x")


if __name__ == "__main__":
    main()
