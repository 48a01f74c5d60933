"""File-system errors are bad input said in one sentence (the path and the cause), exit 2,
before anything is pushed: an output folder that is a file or under one, a name too long,
a read-only file system, a full disk while the output folder is claimed. The last two on
real tmpfs mounts (as root; skipped with the reason elsewhere)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from .test_kaggle import SPEC


def pushed(emulator) -> int:
    return sum(1 for method, _ in emulator.calls if method == "SaveKernel")


def one_sentence(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    errors = [line for line in lines if "Error" in line]  # progress lines may come before
    assert errors == [lines[-1]] and lines[-1].startswith("Error: "), err
    assert "Internal error" not in err and "Traceback" not in err, err
    for word in words:
        assert word.lower() in lines[-1].lower(), err


@pytest.mark.parametrize("command", ["render", "deploy"])
def test_bad_output_folders_and_names_are_one_sentence_and_exit_2(command, emulator, cli,
                                                                   tmp_path):
    (tmp_path / "a-file").write_text("x")
    long_folder = tmp_path / ("d" * 300)
    for out, words in ((tmp_path / "a-file", ["a-file"]),
                       (tmp_path / "a-file" / "below", ["a-file", "below"]),
                       (long_folder, ["the name is too long"])):
        code, _, err = cli(command, *SPEC, "--out", str(out), cwd=tmp_path)
        assert code == 2, err
        one_sentence(err, *words)
    if command == "deploy":
        code, _, err = cli(command, *SPEC, "--name", "n" * 300, cwd=tmp_path)
        assert code == 2
        one_sentence(err, "--name", "100")
    assert pushed(emulator) == 0


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A real tmpfs mounted at ``folder`` for the test, or a skip that says why not."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("command", ["render", "deploy"])
def test_a_read_only_file_system_is_said_and_nothing_is_pushed(command, emulator, cli, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        code, _, err = cli(command, *SPEC, "--out", str(ro / "out"), cwd=tmp_path)
        assert code == 2, err
        one_sentence(err, str(ro), "read-only")
    assert pushed(emulator) == 0


def test_a_full_disk_while_the_output_folder_is_claimed_is_said_and_nothing_is_pushed(
        emulator, cli, tmp_path):
    with tmpfs(tmp_path / "full", "size=64k") as full:
        with open(full / "filler", "wb", buffering=0) as fh:  # every byte of it taken
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 4096)
        code, _, err = cli("deploy", *SPEC, "--out", str(full / "out"), cwd=tmp_path)
        assert code == 2, err
        one_sentence(err, str(full), "no space left")
    assert pushed(emulator) == 0
