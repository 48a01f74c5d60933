"""The README's crontab line, run as cron runs it: `env -i` with cron's minimal PATH and
HOME, no TTY, no stdin, twice overlapping, then again; against the emulator."""

from __future__ import annotations

import re
import subprocess
import time
import sys
from pathlib import Path

from imggenhub.outputs import artifacts

from .conftest import REPO, write_json
from .test_unattended import STAMP


def crontab_line() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```cron\n(.+?)\n```", readme, re.S).group(1).strip()
    fields = block.split(None, 5)
    assert len(fields) == 6 and fields[0].startswith("*/")
    return fields[5]  # the command cron hands to /bin/sh


def cron(command: str, home: Path, emulator):
    env = ["env", "-i", f"HOME={home}", "PATH=/usr/bin:/bin", "SHELL=/bin/sh", "LOGNAME=cron",
           # not in a real crontab: where the emulator listens, and its short waits
           f"IMGGENHUB_KAGGLE_API_URL={emulator.url}", "IMGGENHUB_POLL_INTERVAL=0.2",
           "IMGGENHUB_POLL_MAX_INTERVAL=0.3", "OMP_NUM_THREADS=1"]
    return subprocess.Popen([*env, "/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_the_readme_crontab_line_as_cron_runs_it(emulator, tmp_path):
    home = tmp_path / "home"
    clone = home / "imggenhub"
    clone.mkdir(parents=True)
    (clone / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the clone's venv
    write_json(clone / "prompts.json", ["a lighthouse at dusk", {"prompt": "a fox", "num_images": 2}])
    (home / ".kaggle").mkdir()
    write_json(home / ".kaggle" / "kaggle.json", {"username": emulator.username, "key": emulator.key})
    emulator.image_seconds = 1.0  # the first line is still at work when the second starts
    line = crontab_line()
    first = cron(line, home, emulator)
    time.sleep(0.8)
    second = cron(line, home, emulator)
    codes = sorted([first.wait(120), second.wait(120)])
    assert codes == [0, 6], codes  # one works; the overlapping one says so and does nothing
    log = (home / "imggenhub-cron.log").read_text(encoding="utf-8")
    assert "Another imggenhub process is working on the run named 'batch-" in log
    assert "Traceback" not in log and "\x1b[" not in log
    lines = [l for l in log.splitlines() if l.strip()]
    # every line is a timestamped event, the one result line, or the one error sentence
    assert all(STAMP.match(l) or l.startswith(("3 images in ", "Error: ")) for l in lines)
    assert any("image 3/3" in l for l in lines)
    result = [l for l in lines if l.startswith("3 images in ")]
    assert len(result) == 1
    out_dir = Path(result[0].split(" in ", 1)[1].split(" (manifest.json")[0])
    assert artifacts.verify(out_dir) == [] and len(artifacts.read_manifest(out_dir)["images"]) == 3
    # the next tick: already downloaded, exit 0 at once, nothing pushed again
    assert cron(line, home, emulator).wait(60) == 0
    pushed = [v for vs in emulator.kernels.values() for v in vs]
    assert len(pushed) == 1
