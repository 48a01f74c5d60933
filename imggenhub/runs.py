"""Run records: one JSON file per run in the state dir, written under a lock, so that
`deploy`, `poll` and `download` (or a cron job and a second terminal) share a run."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from filelock import FileLock

from .config import state_dir
from .errors import RunNotFoundError


class RunState(str, Enum):
    RENDERED = "rendered"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.COMPLETE, RunState.ERROR, RunState.CANCELLED)


@dataclass
class Run:
    run_id: str
    backend: str
    job_id: str
    image_count: int
    out_dir: str
    state: RunState = RunState.RENDERED
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    kernel_ref: str | None = None
    version: int | None = None
    url: str | None = None
    images_fetched: int = 0
    failure: str | None = None
    session_timeout_seconds: int | None = None
    timings: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return runs_dir() / self.run_id


def runs_dir() -> Path:
    path = state_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_id(job_id: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = f"{stamp}-{job_id[:8]}"
    run_id, n = base, 1
    while (runs_dir() / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    (runs_dir() / run_id).mkdir(parents=True)
    return run_id


def _lock(run_id: str) -> FileLock:
    return FileLock(str(runs_dir() / f"{run_id}.lock"), timeout=30)


def save(run: Run) -> Run:
    run.updated = time.time()
    path = runs_dir() / run.run_id / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(run.run_id):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(run), indent=2, default=str), encoding="utf-8")
        os.replace(tmp, path)
    return run


def load(run_id: str | None = None) -> Run:
    """A run by id (or a unique prefix of it); None gives the latest."""
    records = sorted(runs_dir().glob("*/run.json"))
    if not records:
        raise RunNotFoundError("There are no runs yet; start one with 'imggenhub generate' or "
                               "'imggenhub deploy'.")
    if run_id is None:
        path = max(records, key=lambda p: json.loads(p.read_text("utf-8"))["created"])
    else:
        matches = [p for p in records if p.parent.name.startswith(run_id)]
        if len(matches) != 1:
            raise RunNotFoundError(f"No single run matches '{run_id}'; 'imggenhub runs' lists them.")
        path = matches[0]
    data = json.loads(path.read_text("utf-8"))
    data["state"] = RunState(data["state"])
    return Run(**data)


def all_runs() -> list[Run]:
    out = []
    for path in runs_dir().glob("*/run.json"):
        data = json.loads(path.read_text("utf-8"))
        data["state"] = RunState(data["state"])
        out.append(Run(**data))
    return sorted(out, key=lambda r: r.created)
