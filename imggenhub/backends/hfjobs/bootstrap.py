"""What a Hugging Face job runs (its source is the job's command, ``python -c``): fixed code,
no user data in it. It reads where its inputs are from the environment (the run's private
dataset repo and its folder), installs the pinned packages the image lacks, downloads the
engine and the job document, runs the engine, and uploads the output folder as images are
made (huggingface_hub's CommitScheduler) and once more at the end, so a job cut off loses
little. Its exit code is the engine's. Standard library until the packages are there."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    repo, prefix = os.environ["IMGGENHUB_REPO"], os.environ["IMGGENHUB_PREFIX"]
    pins = os.environ.get("IMGGENHUB_PINS", "").split()
    modules = {"pillow": "PIL"}  # a package's module, where its name is not the package's
    missing = [p for p in pins if importlib.util.find_spec(modules.get(
        p.split("==")[0].lower(), p.split("==")[0].replace("-", "_"))) is None]
    if missing:
        print("[imggenhub] installing " + " ".join(missing), flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])
    from huggingface_hub import CommitScheduler, snapshot_download

    work = Path(os.environ.get("IMGGENHUB_WORK", "/tmp/imggenhub"))
    snapshot_download(repo, repo_type="dataset", allow_patterns=[f"{prefix}/in/**"],
                      local_dir=work)
    here = work / prefix / "in"
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    every = float(os.environ.get("IMGGENHUB_UPLOAD_SECONDS", "60")) / 60
    scheduler = CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=out,
                                path_in_repo=f"{prefix}/out", every=every, private=True)
    code = 1
    try:
        with open(out / os.environ.get("IMGGENHUB_LOG", "kernel.log"), "a",
                  encoding="utf-8") as log:
            engine = subprocess.Popen(
                [sys.executable, "-u", "-m", os.environ.get("IMGGENHUB_ENGINE", "imggenhub_engine"),
                 "--job", str(here / "job.json"), "--out", str(out)], cwd=here,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
            for line in engine.stdout:
                print(line, end="", flush=True)
                log.write(line)
                log.flush()
            code = engine.wait()
    finally:
        scheduler.trigger().result()  # what is left, before the job ends
        scheduler.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
