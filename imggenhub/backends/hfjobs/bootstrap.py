"""What a Hugging Face job runs (its source is the job's command, ``python -c``): fixed code,
no user data in it. It reads where its inputs are from the environment (the run's private
dataset repo and its folder), installs the pinned packages the image lacks, downloads the
engine and the job document, runs the engine (its session clock started when the job did),
uploads the output folder now and then as images are made (huggingface_hub's
CommitScheduler, temporary files left out), and at the end mirrors it once more, retried,
so that the repo holds exactly what the engine left. SIGTERM (a cancel, the time limit)
stops the engine and still makes that last upload. Its exit code is the engine's, or 1 when
the last upload failed (said on a line the host reads). Standard library until the
packages are there."""

import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ERROR_PREFIX = "[imggenhub] error: "  # the engine's wire (engine/wire.py)
DONE = ".imggenhub-done"  # in the last upload only: the job's outputs are all there


def main() -> int:
    os.environ.setdefault("IMGGENHUB_ENGINE_STARTED", str(time.time()))  # the session clock
    repo, prefix = os.environ["IMGGENHUB_REPO"], os.environ["IMGGENHUB_PREFIX"]
    pins = os.environ.get("IMGGENHUB_PINS", "").split()
    modules = {"pillow": "PIL"}  # a package's module, where its name is not the package's
    missing = [p for p in pins if importlib.util.find_spec(modules.get(
        p.split("==")[0].lower(), p.split("==")[0].replace("-", "_"))) is None]
    if missing:
        print("[imggenhub] installing " + " ".join(missing), flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])
        importlib.invalidate_caches()
    from huggingface_hub import CommitScheduler, HfApi, snapshot_download

    work = Path(os.environ.get("IMGGENHUB_WORK", "/tmp/imggenhub"))
    snapshot_download(repo, repo_type="dataset", allow_patterns=[f"{prefix}/in/*"],
                      local_dir=work)
    here = work / prefix / "in"
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    every = float(os.environ.get("IMGGENHUB_UPLOAD_SECONDS", "300")) / 60
    scheduler = CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=out,
                                path_in_repo=f"{prefix}/out", every=every, private=True,
                                ignore_patterns=["*.tmp"])
    engine = subprocess.Popen(
        [sys.executable, "-u", "-m", os.environ.get("IMGGENHUB_ENGINE", "imggenhub_engine"),
         "--job", str(here / "job.json"), "--out", str(out)], cwd=here,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    signal.signal(signal.SIGTERM, lambda *_: engine.terminate())  # the engine stops, we upload
    code = 1
    try:
        with open(out / os.environ.get("IMGGENHUB_LOG", "kernel.log"), "a",
                  encoding="utf-8") as log:
            for line in engine.stdout:
                print(line, end="", flush=True)
                log.write(line)
                log.flush()
            code = engine.wait()
    finally:
        scheduler.stop()
        (out / DONE).write_text(str(code), encoding="utf-8")  # the host waits for this one
        api, wait = HfApi(), 2.0
        for attempt in range(4):  # the last upload: the repo mirrors the folder
            try:
                api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=out,
                                  path_in_repo=f"{prefix}/out", ignore_patterns=["*.tmp"],
                                  delete_patterns=["*"],
                                  commit_message="imggenhub: the job's outputs")
                break
            except Exception as exc:  # noqa: BLE001 - said, then tried again
                if attempt == 3:
                    print(f"{ERROR_PREFIX}UploadError: the last upload of the outputs failed "
                          f"({type(exc).__name__})", flush=True)
                    code = code or 1
                    break
                time.sleep(wait)
                wait *= 2
    return code


if __name__ == "__main__":
    sys.exit(main())
