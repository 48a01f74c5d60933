"""Shared set-up for the benchmarks that run against the tests' Kaggle emulator."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.kaggle_emulator import Emulator, _cells, _source  # noqa: E402


class InProcessEmulator(Emulator):
    """The emulator, but a pushed notebook without a job cell has its code cells run in this
    process (no Jupyter kernel), with ``WORK`` set to the version's working folder (the
    notebook's /kaggle/working). For benchmarks whose notebook only writes files: what is
    measured is what happens after the run, not how its files were made."""

    def _run_notebook(self, version, folder, stream) -> None:
        version.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for cell in _cells(version.text):
                if cell.get("cell_type") == "code":
                    exec(compile(_source(cell), "<notebook cell>", "exec"),
                         {"__name__": "__main__", "WORK": str(version.workdir)})
        except Exception as exc:
            stream("stderr", f"{type(exc).__name__}: {exc}\n")
            self._finish(version, "ERROR", f"{type(exc).__name__}: {exc}")
            return
        self._finish(version, "COMPLETE")


def start_emulator(tmp: Path, runner: str = "stub", in_process: bool = False) -> Emulator:
    """An emulator, and this process's environment pointed at it, with imggenhub's state in
    ``tmp``/state (never the user's). ``runner``: "stub" (tiny PNGs in milliseconds) or
    "notebook" (the pushed notebook in a real Jupyter kernel, real images)."""
    em = (InProcessEmulator if in_process else Emulator)(queue_seconds=0.1, runner=runner)
    url = em.start()
    os.environ.update(IMGGENHUB_KAGGLE_API_URL=url, KAGGLE_USERNAME=em.username,
                      KAGGLE_KEY=em.key, HF_HUB_OFFLINE="1", IMGGENHUB_HOME=str(tmp / "state"))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "NO_PROXY", "no_proxy"):
        os.environ.pop(var, None)
    return em


def kaggle_cli_env(em: Emulator) -> dict:
    """How the unmodified kaggle CLI reaches the emulator."""
    env = {**os.environ, "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": em.url,
           "http_proxy": em.url}
    env.pop("IMGGENHUB_KAGGLE_API_URL", None)
    return env


def start_hub(tmp: Path):
    """The tests' Hub emulator with its jobs (stub engine), and this process's
    huggingface_hub pointed at it (constants read at import patched too; ``hub.restore()``
    puts them and the environment back), with imggenhub's state in ``tmp``/state."""
    from tests.hub_emulator import DEFAULT_TOKEN, Emulator as Hub

    hub = Hub()
    url = hub.start()
    names = ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_DISABLE_XET", "HF_HUB_OFFLINE", "HF_HOME",
             "IMGGENHUB_HOME", "IMGGENHUB_POLL_INTERVAL", "IMGGENHUB_POLL_MAX_INTERVAL")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(HF_ENDPOINT=url, HF_TOKEN=DEFAULT_TOKEN, HF_HUB_DISABLE_XET="1",
                      HF_HUB_OFFLINE="0", HF_HOME=str(tmp / "hf-home"),
                      IMGGENHUB_HOME=str(tmp / "state"), IMGGENHUB_POLL_INTERVAL="0.1",
                      IMGGENHUB_POLL_MAX_INTERVAL="0.3")
    import huggingface_hub.file_download as download
    from huggingface_hub import constants

    names = ("ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET", "HUGGINGFACE_CO_URL_TEMPLATE")
    saved = [(module, name, getattr(module, name)) for module in (constants, download)
             for name in names if hasattr(module, name)]
    def restore() -> None:
        for module, name, value in saved:
            setattr(module, name, value)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    hub.restore = restore
    constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET = url, False, True
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    for module in (constants, download):
        if hasattr(module, "HUGGINGFACE_CO_URL_TEMPLATE"):
            module.HUGGINGFACE_CO_URL_TEMPLATE = template
    return hub


def timed_generate(job, backend: str, shards: int, out: Path) -> float:
    """Seconds to generate ``job`` end to end on ``backend`` split over ``shards``; a run
    that leaves its folder incomplete ends the benchmark with a sentence."""
    import time

    from imggenhub.backends.kaggle.meta import KernelOptions
    from imggenhub.outputs import artifacts
    from imggenhub.run import jobs

    t0 = time.monotonic()
    run = jobs.generate(job, backend, out, KernelOptions(), lambda _: None, shards_asked=shards)
    seconds = time.monotonic() - t0
    if artifacts.verify(out) or len(artifacts.read_manifest(out)["images"]) != job.image_count:
        raise SystemExit(f"the run split over {shards} left {out} incomplete ({run.state.value})")
    return seconds
