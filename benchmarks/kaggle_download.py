"""Downloading 200 output files of 1 MB from the Kaggle emulator: `imggenhub download`
against `kaggle kernels output`, each as a command, side by side in one run. Then many
small images (the stub engine's), loose against packed in tar bundles, with and without a
per-request latency: where bundles start to pay is where the engine's threshold is set.

    .venv/bin/python benchmarks/kaggle_download.py [--files N] [--mb M] [--images N,N] [--quick]

For each per-file latency a kernel version writes the files and a manifest as the engine
does; a run record (state "complete", as `poll` leaves it) points at that version, and
both commands download it into folders of their own.
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

from imggenhub.outputs import artifacts
from imggenhub.run import runs
from imggenhub.backends.kaggle.backend import KaggleBackend, save_request
from imggenhub.run.lifecycle import RunState

KERNEL = "imggenhub/bench-download"
JOB_ID = "bench-download"

# The kernel's code: N files of random bytes and the manifest the engine would write.
MAKE_FILES = """import hashlib, json, os
out = os.path.join(globals().get("WORK", "."), "output")  # the working folder
os.makedirs(out, exist_ok=True)
images = []
for i in range({n}):
    data = os.urandom({size})
    name = f"{{i + 1:04d}}-bench.png"
    with open(os.path.join(out, name), "wb") as fh:
        fh.write(data)
    images.append({{"index": i, "prompt_index": i, "prompt": "bench", "seed": i,
                   "file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                   "seconds": 0.0}})
manifest = {{"engine_version": 2, "job_id": {job_id!r}, "run_id": {run_id!r},
             "model": "bench", "processes_total": 1, "processes": [], "images": images,
             "planned_images": {n}, "complete": True}}
with open(os.path.join(out, "manifest.json"), "w") as fh:
    json.dump(manifest, fh)
"""


def notebook(code: str) -> str:
    return json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "outputs": [],
                                  "execution_count": None, "source": code}],
                       "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                   "language": "python"}},
                       "nbformat": 4, "nbformat_minor": 5})


def pushed_run(em, run_id: str, files: int, size: int, out: Path) -> runs.Run:
    """Push a version that writes the files, wait for it, and record a complete run of it."""
    meta = {"id": KERNEL, "title": "bench download", "language": "python",
            "kernel_type": "notebook", "enable_gpu": False}
    code = MAKE_FILES.format(n=files, size=size, job_id=JOB_ID, run_id=run_id)
    resp = KaggleBackend().api.save_kernel(save_request(meta, notebook(code)))
    em.wait_idle()
    version = em.versions(KERNEL)[resp.version_number - 1]
    if version.status != "COMPLETE":
        raise SystemExit(f"the emulated kernel ended {version.status}: {version.failure}")
    run = runs.Run(run_id=run_id, backend="kaggle", job_id=JOB_ID, image_count=files,
                   out_dir=str(out), state=RunState.COMPLETE, kernel_ref=KERNEL,
                   version=resp.version_number)
    return runs.save(run)


def timed(cmd: list[str], **kwargs) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--images", default="50,200,2000",
                        help="image counts for loose vs bundled")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, the 50 ms latency only: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.files, args.mb, args.images = 4, 0.01, "12"
    size = int(args.mb * (1 << 20))
    exe = Path(sys.executable).with_name
    total = args.files * args.mb
    with tempfile.TemporaryDirectory(prefix="imggenhub-bench-") as folder:
        tmp = Path(folder)
        em = start_emulator(tmp, in_process=True)
        try:
            print(f"{args.files} files of {args.mb:g} MB ({total:.0f} MB) from the Kaggle emulator")
            for n, latency in enumerate((0.05,) if args.quick else (0.0, 0.05)):
                ours_dir, cli_dir = tmp / f"ours-{n}", tmp / f"cli-{n}"
                # a version and a run of its own: the latest version is the one the kaggle
                # CLI downloads, and each run fills its own, unclaimed folder
                run = pushed_run(em, f"bench-download-{n}", args.files, size, ours_dir)
                em.faults.set(slow_files=latency)
                ours = timed([str(exe("imggenhub")), "download", run.run_id, "--out", str(ours_dir)])
                if runs.load(run.run_id).state != RunState.DOWNLOADED or artifacts.verify(ours_dir):
                    raise SystemExit(f"imggenhub download left {ours_dir} unverified")
                theirs = timed([str(exe("kaggle")), "kernels", "output", KERNEL, "-p", str(cli_dir),
                                "-q"], env=kaggle_cli_env(em))
                if artifacts.verify(cli_dir / "output"):
                    raise SystemExit(f"kaggle kernels output left {cli_dir} incomplete")
                print(f"per-file latency {latency * 1000:3.0f} ms:")
                print(f"  imggenhub download:     {ours:6.2f} s  ({total / ours:6.1f} MB/s, parallel, "
                      "sha256-verified)")
                print(f"  kaggle kernels output:  {theirs:6.2f} s  ({total / theirs:6.1f} MB/s, "
                      "sequential, unverified)")
                print(f"  ratio kaggle/imggenhub: {theirs / ours:.2f}x")
            em.faults.set(slow_files=0.0)
            bundles_against_loose(em, tmp, [int(n) for n in args.images.split(",")],
                                  (0.0,) if args.quick else (0.0, 0.05))
        finally:
            em.stop()


def bundles_against_loose(em, tmp: Path, counts: list[int], latencies=(0.0, 0.05)) -> None:
    """The same job's small images downloaded loose and as bundles, by `imggenhub download`."""
    exe = str(Path(sys.executable).with_name("imggenhub"))
    print("small images (the stub engine's PNGs): loose files against tar bundles")
    for n in counts:
        for latency in latencies:
            seconds = {}
            for mode in ("--no-bundle", "--bundle"):
                out = tmp / f"small-{n}-{latency}-{mode.strip('-')}"
                prompts = -(-n // 1000)  # a prompt makes at most 1000 images
                flags = [a for i in range(prompts) for a in ("-p", f"bench {i}")]
                proc = subprocess.run([exe, "deploy", "--model", "tiny-random", *flags,
                                       "--num-images", str(n // prompts), "--seed", "1", mode,
                                       "--json", "--out", str(out)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"deploy exited {proc.returncode}: {proc.stderr}")
                run_id = json.loads(proc.stdout)["run_id"]
                timed([exe, "poll", run_id])
                em.faults.set(slow_files=latency)
                seconds[mode] = timed([exe, "download", run_id])
                em.faults.set(slow_files=0.0)
                if artifacts.verify(out) or \
                        len(artifacts.read_manifest(out)["images"]) != n // prompts * prompts:
                    raise SystemExit(f"the download into {out} is not verified")
            loose, packed = seconds["--no-bundle"], seconds["--bundle"]
            print(f"  {n:5d} images, latency {latency * 1000:3.0f} ms: loose {loose:6.2f} s, "
                  f"bundled {packed:6.2f} s, ratio loose/bundled {loose / packed:.2f}x")


if __name__ == "__main__":
    main()
