"""The engine minus the GPU, for the Jobs emulator's fast runs (tests/jobs_emulator.py):
``python -m tests.stub_engine --job JOB.json --out DIR`` writes what the engine writes for
the job's plan (its share, its session's images: the same file names, part log, merged
manifest and log lines; shipped inputs found and checked as the engine does), each picture 8 x 8 and coloured by its seed, as the Kaggle
emulator's stub runner does. IMGGENHUB_STUB_SECONDS: time taken by each image;
IMGGENHUB_ENGINE_FAIL_AFTER=N: fail (exit 1) once N images are made."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from imggenhub import engine

from .kaggle_emulator import stub_image, stub_part


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    doc = json.loads(args.job.read_text(encoding="utf-8"))
    try:  # as the engine does: every shipped input found where mounted, checked by sha256
        doc = engine.resolve_inputs(doc)
    except (OSError, ValueError) as exc:
        print(f"{engine.ERROR_PREFIX}{type(exc).__name__}: {exc}", flush=True)
        return 1
    t0 = time.monotonic()
    tasks = engine.Plan.of(doc).tasks(doc)
    engine.log(f"job {doc.get('job_id')}: {engine.images_text(len(tasks))} with "
               f"{doc['model']['id']} in 1 process")
    part = stub_part(args.out, doc)
    pause = float(os.environ.get("IMGGENHUB_STUB_SECONDS", "0"))
    fail_after = int(os.environ.get("IMGGENHUB_ENGINE_FAIL_AFTER", "-1"))
    code = 0
    for done, task in enumerate(tasks):
        if 0 <= fail_after <= done:
            print(f"{engine.ERROR_PREFIX}RuntimeError: injected failure after "
                  f"{engine.images_text(done)}", flush=True)
            code = 1
            break
        started = time.monotonic()
        time.sleep(pause)
        record, _ = stub_image(args.out, task, started)
        part.image(record)
        engine.log(f"image {done + 1}/{len(tasks)} {task['file']} in {record['seconds']:.2f}s "
                   f"(elapsed {time.monotonic() - t0:.1f}s)")
    part.update_process(seconds=round(time.monotonic() - t0, 4))
    manifest = engine.merge_manifest(args.out, doc)
    engine.log(f"done: {engine.images_text(len(manifest['images']) if manifest else 0)}"
               + ("" if code == 0 else " (failed, exit 1)"))
    return code


if __name__ == "__main__":
    sys.exit(main())
