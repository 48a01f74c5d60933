"""Where imggenhub keeps its state; environment variables are read here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """Run records and working folders. IMGGENHUB_HOME overrides (tests use it)."""
    override = os.environ.get("IMGGENHUB_HOME")
    if override:
        path = Path(override)
    else:
        from platformdirs import user_state_dir

        path = Path(user_state_dir("imggenhub", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def debug() -> bool:
    return os.environ.get("IMGGENHUB_DEBUG", "") not in ("", "0")
