"""Orchestration overhead of `generate` against the Kaggle emulator: wall time minus the
kernel's own run time, for 8 images, next to the original imggenhub's pattern (a fixed
30 s wait after the push, then the status every 60 s), side by side in one run.

    .venv/bin/python benchmarks/kaggle_overhead.py
"""

from __future__ import annotations

import time
from pathlib import Path

import requests
from _emulated import start_emulator

from imggenhub import jobs
from imggenhub.backends.kaggle import KaggleBackend, save_request
from imggenhub.notebook import CODE_FILE, METADATA_FILE, KernelOptions
from imggenhub.spec import build_job, parse_settings, prompts_from_flags


def kernel_seconds(em, ref: str, number: int) -> float:
    version = em.versions(ref)[number - 1]
    return version.finished - version.pushed


def ours(em, job, out: Path) -> tuple[float, float]:
    t0 = time.monotonic()
    run = jobs.generate(job, "kaggle", out, KernelOptions(kernel_id="imggenhub/bench-ours"), None,
                        lambda _: None)
    wall = time.monotonic() - t0
    return wall, kernel_seconds(em, run.kernel_ref, run.version)


def original(em, job, out: Path) -> tuple[float, float]:
    """Push, sleep 30 s, then ask the (unversioned) status every 60 s, then download."""
    import json

    from kagglesdk.kernels.types.kernels_api_service import (ApiGetKernelSessionStatusRequest,
                                                             ApiListKernelSessionOutputRequest)

    folder = out.parent / "original-notebook"
    jobs.render(job, folder, KernelOptions(kernel_id="imggenhub/bench-original"), None)
    backend = KaggleBackend()
    t0 = time.monotonic()
    meta = json.loads((folder / METADATA_FILE).read_text())
    resp = backend.api.save_kernel(save_request(meta, (folder / CODE_FILE).read_text()))
    time.sleep(30)
    while True:
        req = ApiGetKernelSessionStatusRequest()
        req.user_name, req.kernel_slug = "imggenhub", "bench-original"
        if backend.api.get_kernel_session_status(req).status.name in ("COMPLETE", "ERROR"):
            break
        time.sleep(60)
    req = ApiListKernelSessionOutputRequest()
    req.user_name, req.kernel_slug = "imggenhub", "bench-original"
    out.mkdir(parents=True, exist_ok=True)
    for item in backend.api.list_kernel_session_output(req).files:
        (out / Path(item.file_name).name).write_bytes(requests.get(item.url).content)
    wall = time.monotonic() - t0
    return wall, kernel_seconds(em, "imggenhub/bench-original", resp.version_number)


def main() -> None:
    import tempfile

    em = start_emulator()
    job = build_job(parse_settings(model="tiny-random", seed=1),
                    prompts_from_flags([f"benchmark prompt {i}" for i in range(8)]))
    tmp = Path(tempfile.mkdtemp())
    try:
        wall_o, kernel_o = ours(em, job, tmp / "ours")
        wall_n, kernel_n = original(em, job, tmp / "original")
    finally:
        em.stop()
    over_o, over_n = wall_o - kernel_o, wall_n - kernel_n
    print("8 tiny-random images through the Kaggle emulator")
    print(f"imggenhub generate:   wall {wall_o:6.1f} s, kernel {kernel_o:5.1f} s, overhead {over_o:5.1f} s")
    print(f"original pattern:     wall {wall_n:6.1f} s, kernel {kernel_n:5.1f} s, overhead {over_n:5.1f} s")
    print(f"overhead ratio original/imggenhub: {over_n / max(over_o, 1e-3):.1f}x")


if __name__ == "__main__":
    main()
