"""Shared set-up for the benchmarks that run against the tests' Kaggle emulator."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.kaggle_emulator import Emulator  # noqa: E402


def start_emulator() -> Emulator:
    """An emulator, and this process's environment pointed at it (state in a temp dir)."""
    em = Emulator(queue_seconds=0.1)
    url = em.start()
    os.environ.update(IMGGENHUB_KAGGLE_API_URL=url, KAGGLE_USERNAME=em.username,
                      KAGGLE_KEY=em.key, HF_HUB_OFFLINE="1",
                      IMGGENHUB_HOME=tempfile.mkdtemp(prefix="imggenhub-bench-"))
    for var in ("KAGGLE_API_TOKEN", "NO_PROXY", "no_proxy"):
        os.environ.pop(var, None)
    return em


def kaggle_cli_env(em: Emulator) -> dict:
    """How the unmodified kaggle CLI reaches the emulator."""
    env = {**os.environ, "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": em.url,
           "http_proxy": em.url}
    env.pop("IMGGENHUB_KAGGLE_API_URL", None)
    return env
