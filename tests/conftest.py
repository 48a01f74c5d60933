"""Shared fixtures: every test runs offline, with its own state dir and no Kaggle credentials."""

from __future__ import annotations

import json
import os
import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .kaggle_emulator import Emulator

REPO = Path(__file__).resolve().parents[1]


# One thread per process for torch (and the Jupyter kernels and engines it starts): two
# cores shared by several processes must not be oversubscribed.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a real diffusers notebook end to end")


def pytest_collection_modifyitems(config, items):
    """The slow tests first (each in its file's order): the test workers start on the long
    ones, and the many short ones fill the gaps at the end, instead of one long test
    running alone after all the rest."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


def kaggle_cli(args, env, cwd):
    """The unmodified kaggle CLI, pointed at the emulator through HTTP_PROXY (set in env)."""
    env = {**env, "KAGGLE_API_ENVIRONMENT": "LOCALHOST"}
    for var in ("NO_PROXY", "no_proxy", "IMGGENHUB_KAGGLE_API_URL"):
        env.pop(var, None)
    exe = Path(sys.executable).with_name("kaggle")
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def sigint_default() -> None:
    """For a child that must see Ctrl-C: a shell that starts a job in the background (as CI
    may) hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def release_when(em, condition, timeout: float = 60) -> threading.Thread:
    """Set ``em.release`` (ending a stub run's ``hold_image`` wait) as soon as
    ``condition()`` holds, checked every 10 ms on a thread of its own; never, if it does not
    hold within ``timeout`` (the held run then goes on by itself after HOLD_MAX_SECONDS, and
    the test's assertions say what did not happen)."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                em.release.set()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, name="release-when", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def on_stderr(text: str, then):
    """Call ``then()`` the first time this process writes ``text`` to sys.stderr (in the
    writing thread, before the write returns): what the in-process CLI shows, as it shows it.
    Install it inside the test, after the ``cli`` fixture's capture has started."""
    real = sys.stderr

    class Tee:
        fired = False

        def write(self, data):
            written = real.write(data)
            if not Tee.fired and text in data:
                Tee.fired = True
                then()
            return written

        def __getattr__(self, name):
            return getattr(real, name)

    sys.stderr = Tee()
    try:
        yield
    finally:
        sys.stderr = real


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def start_emulator(monkeypatch, **kwargs):
    em = Emulator(queue_seconds=0.1, **kwargs)
    url = em.start()
    monkeypatch.setenv("IMGGENHUB_KAGGLE_API_URL", url)
    monkeypatch.setenv("KAGGLE_USERNAME", em.username)
    monkeypatch.setenv("KAGGLE_KEY", em.key)
    monkeypatch.setenv("IMGGENHUB_POLL_INTERVAL", "0.3")
    monkeypatch.setenv("IMGGENHUB_POLL_MAX_INTERVAL", "0.5")
    monkeypatch.setenv("IMGGENHUB_RETRY_MAX_WAIT", "0.3")
    monkeypatch.setenv("IMGGENHUB_GPU_WAIT", "0.2")
    monkeypatch.setenv("IMGGENHUB_HTTP_TIMEOUT", "10")
    monkeypatch.setenv("IMGGENHUB_PUSH_GRACE", "0.3")
    return em


@pytest.fixture
def emulator(monkeypatch):
    """The emulator with its stub runner: the pushed notebook's job is planned and written
    as tiny PNGs and a manifest in milliseconds (protocol tests)."""
    em = start_emulator(monkeypatch)
    yield em
    em.stop()


@pytest.fixture
def real_emulator(monkeypatch):
    """The emulator running each pushed notebook in a real Jupyter kernel (end to end)."""
    em = start_emulator(monkeypatch, runner="notebook")
    yield em
    em.stop()
