"""The trained weights this machine holds, by name: what ``imggenhub train`` made (once its
weights came home and were verified), so that ``generate --lora NAME`` (or ``--embedding
NAME``) and ``publish NAME`` find them. One JSON file in the state folder, written whole
under a lock; a name trained again points at the newest weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..config import state_dir

REGISTRY = "trained.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FIELDS = ("method", "model", "token", "steps", "sha256", "run_id")


def _path() -> Path:
    return state_dir() / REGISTRY


def _read() -> dict:
    try:
        data = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def register(name: str, weights: Path, about: dict) -> dict | None:
    """``name`` stands for the file ``weights`` from now on, with what ``about`` says of it
    (method, base model, token, steps, sha256, run). A name that is not one (from a
    server's manifest, say) registers nothing."""
    from filelock import FileLock

    if not isinstance(name, str) or not NAME.match(name):
        return None
    entry = {"name": name, "file": str(Path(weights).resolve()),
             **{k: about.get(k) for k in FIELDS if isinstance(about.get(k), (str, int, float))}}
    with FileLock(str(_path()) + ".lock"):
        data = _read()
        data[name] = entry
        tmp = _path().with_name(f".{REGISTRY}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(_path())
    return entry


def find(name: str) -> dict | None:
    """The weights registered under ``name`` whose file is still there (None: none)."""
    if not NAME.match(name or ""):
        return None
    entry = _read().get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
            or not Path(entry["file"]).is_file():
        return None
    return entry


def all_entries() -> list[dict]:
    return [e for _, e in sorted(_read().items()) if isinstance(e, dict)]
