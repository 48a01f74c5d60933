"""Shared fixtures: every test runs offline, with its own state dir and no Kaggle credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# One thread per process for torch (and the Jupyter kernels and engines it starts): two
# cores shared by several processes must not be oversubscribed.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a real diffusers notebook end to end")


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("IMGGENHUB_HOME", str(home / "state"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR",
                "IMGGENHUB_PROCESSES", "IMGGENHUB_ENGINE_FAIL_AFTER", "IMGGENHUB_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the real CLI in this process: (exit code, stdout, stderr)."""
    from imggenhub.cli import main

    def run(*args: str, cwd: Path | None = None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


def run_cli_subprocess(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    """The installed console script, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    exe = Path(sys.executable).with_name("imggenhub")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "imggenhub", *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path
