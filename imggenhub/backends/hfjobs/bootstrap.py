"""What a Hugging Face job runs (its source is the job's command, ``python -c``): fixed code,
no user data in it. It reads where its inputs are from the environment (the run's private
dataset repo and its folder), installs the pinned packages the image lacks, downloads the
engine, the job document and the run's local files, runs the engine (its session clock started when the job did),
uploads the output folder now and then as images are made (huggingface_hub's
CommitScheduler, temporary files left out), and at the end uploads it once more, retried,
then a mark of its own that says the outputs are all there. SIGTERM (a cancel, the time
limit) stops the engine (its whole process group) and still makes that last upload. Its exit code is the engine's, or 1 when
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


def _stop(engine) -> None:
    try:
        os.killpg(engine.pid, signal.SIGTERM)
    except OSError:  # it has ended
        pass


def _retried(upload) -> bool:
    """An upload, tried again after a pause (4 tries); False, said on a line, if all fail."""
    wait = 2.0
    for attempt in range(4):
        try:
            upload()
            return True
        except Exception as exc:  # noqa: BLE001 - said, then tried again
            if attempt == 3:
                print(f"{ERROR_PREFIX}UploadError: the last upload of the outputs failed "
                      f"({type(exc).__name__})", flush=True)
                return False
            time.sleep(wait)
            wait *= 2
    return False


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
    snapshot_download(repo, repo_type="dataset", allow_patterns=[f"{prefix}/in/*", "inputs/*"],
                      local_dir=work)
    here = work / prefix / "in"
    # the run's local files: the engine finds them as it finds a Kaggle kernel's mounted
    # dataset (each checked against its sha256 before use)
    os.environ["IMGGENHUB_KAGGLE_INPUT"] = str(work / "inputs")
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    every = float(os.environ.get("IMGGENHUB_UPLOAD_SECONDS", "300")) / 60
    skip = ["*.tmp", "*.part", DONE]  # the engine's files being written; the mark goes last
    scheduler = CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=out,
                                path_in_repo=f"{prefix}/out", every=every, private=True,
                                ignore_patterns=skip)
    # the engine in a process group of its own: SIGTERM reaches every process it starts
    # (accelerate's workers on a flavor with several GPUs), so their output ends and the
    # last upload is made
    engine = subprocess.Popen(
        [sys.executable, "-u", "-m", os.environ.get("IMGGENHUB_ENGINE", "imggenhub_engine"),
         "--job", str(here / "job.json"), "--out", str(out)], cwd=here,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: _stop(engine))
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
        try:  # a push already under way ends before the last one starts
            scheduler.last_future.result()
        except Exception:  # noqa: BLE001 - the last upload below sends it all again
            pass
        api = HfApi()
        # everything the engine left, then (a commit of its own, after the others) the mark
        # the host waits for: however huggingface_hub splits the first into commits
        if not _retried(lambda: api.upload_folder(
                repo_id=repo, repo_type="dataset", folder_path=out, path_in_repo=f"{prefix}/out",
                ignore_patterns=skip, commit_message="imggenhub: the job's outputs")):
            code = code or 1
        else:
            (out / DONE).write_text(str(code), encoding="utf-8")
            _retried(lambda: api.upload_file(
                path_or_fileobj=str(out / DONE), path_in_repo=f"{prefix}/out/{DONE}",
                repo_id=repo, repo_type="dataset", commit_message="imggenhub: done"))
    return code


if __name__ == "__main__":
    sys.exit(main())
