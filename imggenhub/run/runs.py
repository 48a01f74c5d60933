"""Run records and locks: one typed JSON record per run in the state dir, so that
`deploy`, `poll`, `download` and `resume` (a cron job, a second terminal) share a run.

Every save checks the move against the lifecycle's transition table. Two locks keep
processes apart: a run's work lock (one process advances a run at a time) and a
kernel's push lock (one push per Kaggle kernel at a time, so an interrupted push can
be recognised as this run's).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import state_dir
from ..errors import NothingYet, RunNotFoundError, SpecError
from .lifecycle import RunState, allowed

RUN_FILE = "run.json"
JOB_FILE = "job.json"  # the job document the run's notebook carries, as the record keeps it
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ERROR_LINE = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b:")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Failure(BaseModel):
    """Why a run failed, as data: where, what, and the end of its log."""

    model_config = ConfigDict(extra="ignore")

    kind: str  # "notebook" (the notebook raised), "kernel" (Kaggle's verdict), "push", "cancelled"
    ename: str = ""
    evalue: str = ""
    cell_index: int | None = None
    log_tail: str = ""

    def sentence(self) -> str:
        where = f" in cell {self.cell_index + 1}" if self.cell_index is not None and \
            self.cell_index >= 0 else ""
        what = f"{self.ename}: {self.evalue}" if self.ename else self.evalue
        return f"{where.strip() + ': ' if where else ''}{what or 'no reason given'}"

    def said(self) -> str:
        """The sentence and the log's last error line (Kaggle's own sentence is the same for
        every error; the error line says which)."""
        errors = [line.strip() for line in self.log_tail.splitlines() if _ERROR_LINE.search(line)]
        return self.sentence() + (f"; the log's last error: {errors[-1]}" if errors else "")

    def signature(self) -> str:
        """What two failures share when they are the same failure: ``said`` with every number
        (a time, a size, a process id, a count) taken out."""
        return re.sub(r"\d+(?:\.\d+)?", "#", self.said())


class Run(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    run_id: str
    backend: str
    job_id: str
    kind: str = "images"  # what the run produces (run.kinds); its items are counted below
    image_count: int
    out_dir: str
    name: str | None = None
    state: RunState = RunState.RENDERED
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    kernel_ref: str | None = None
    version: int | None = None
    url: str | None = None
    images_fetched: int = 0
    failure: Failure | None = None
    session_timeout_seconds: int | None = None
    timings: dict = Field(default_factory=dict)
    session: int = 1  # Kaggle: which session of the job the latest push is (long jobs)
    failures: list[str] = Field(default_factory=list)  # each failure resume pushed again after
    shards: list[str] = Field(default_factory=list)  # a sharded run: its shards' run ids
    shard: int | None = None  # a shard: its number (1..), the kernel <slug>-<shard>
    only: list[list[int]] | None = None  # a shard: the image indices it makes, as ranges
    estimate_hours: float | None = None  # Kaggle: the GPU hours estimated before the push
    engine_hours: float | None = None  # Kaggle: the engine's own time there, once downloaded

    @property
    def folder(self) -> Path:
        return runs_dir() / self.run_id

    @property
    def notebook_dir(self) -> Path:
        return self.folder / "notebook"


def runs_dir() -> Path:
    path = state_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_id(job_id: str) -> str:
    """A fresh run id, its folder made atomically (two processes never get the same one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = f"{stamp}-{job_id[:8]}"
    for n in range(1, 1000):
        run_id = base if n == 1 else f"{base}-{n}"
        try:
            (runs_dir() / run_id).mkdir()
            return run_id
        except FileExistsError:
            continue
    raise RunNotFoundError(f"Could not make a new run id under {runs_dir()}; too many runs this second.")


def _write_lock(run_id: str) -> FileLock:
    return FileLock(str(runs_dir() / run_id / ".write.lock"), timeout=30)


def state_error(exc: OSError | ValueError) -> SpecError:
    why = getattr(exc, "strerror", None) or exc
    return SpecError(f"The state folder {state_dir()} could not be written ({why}); "
                     "free space there or set IMGGENHUB_HOME to a writable folder.")


class TransitionError(RuntimeError):
    """A save that breaks the lifecycle table: a bug of ours, not a user error."""


def save(run: Run) -> Run:
    """Write the record atomically; the move from the state on disk must be allowed."""
    path = runs_dir() / run.run_id / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with _write_lock(run.run_id):
        if path.exists() and not run.shards:  # a sharded run's state is its shards' summary
            on_disk = RunState(json.loads(path.read_text("utf-8"))["state"])
            if not allowed(on_disk, run.state):
                raise TransitionError(f"run {run.run_id}: {on_disk.value} -> {run.state.value} "
                                      "is not in the lifecycle table")
        run.updated = time.time()
        _replace(path, run.model_dump_json(indent=2))
    return run


def _replace(path: Path, text: str) -> None:
    """``path`` replaced whole by ``text`` (a reader never sees half of it), or a sentence."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise state_error(exc) from None


def keep_document(run: Run, document: dict) -> None:
    """The job document of the run's notebook (its latest session's), kept beside the record:
    nothing reads it back out of the notebook."""
    _replace(run.folder / JOB_FILE, json.dumps(document, ensure_ascii=False))


def document(run: Run) -> dict | None:
    """The job document the run's notebook carries (None: a record without one)."""
    try:
        data = json.loads((run.folder / JOB_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read(path: Path) -> Run | None:
    try:
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data.get("failure"), str):  # records written before failures were typed
            old = json.loads(data["failure"] or "{}")
            data["failure"] = {"kind": "notebook", **old}
        return Run.model_validate(data)
    except (OSError, ValueError, ValidationError):
        return None  # a torn or foreign file: not a run


def all_runs() -> list[Run]:
    found = (_read(p) for p in runs_dir().glob(f"*/{RUN_FILE}"))
    return sorted((r for r in found if r is not None), key=lambda r: r.created)


def load(run_id: str | None = None) -> Run:
    """A run by id, name, or a unique part of its id (a prefix first); None gives the latest."""
    every = all_runs()
    if not every:
        raise RunNotFoundError("There are no runs yet; start one with 'imggenhub generate' or "
                               "'imggenhub deploy'.")
    if run_id is None:
        return every[-1]
    if not RUN_ID.match(run_id):
        raise RunNotFoundError(f"'{run_id[:60]}' is not a run id; 'imggenhub runs' lists them.")
    exact = [r for r in every if r.run_id == run_id]
    named = [r for r in every if r.name == run_id]
    matches = exact or named[-1:] or [r for r in every if r.run_id.startswith(run_id)] \
        or [r for r in every if run_id in r.run_id]  # any unique part: its hex tail, say
    if len(matches) > 1:
        shown = ", ".join(r.run_id for r in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise RunNotFoundError(f"'{run_id}' matches {len(matches)} runs ({shown}); give more of "
                               "the run id.")
    if not matches:
        raise RunNotFoundError(f"No run matches '{run_id}'; 'imggenhub runs' lists them.")
    return matches[0]


def shards_of(run: Run) -> list[Run]:
    """A sharded run's shards (kept inside its folder, so that listings show the run once)."""
    out = []
    for shard_id in run.shards:
        shard = _read(runs_dir() / shard_id / RUN_FILE)
        if shard is None:
            raise RunNotFoundError(f"The record of shard {shard_id} is gone.")
        out.append(shard)
    return out


def find_named(name: str) -> Run | None:
    named = [r for r in all_runs() if r.name == name]
    return named[-1] if named else None


def _lock_name(key: str) -> str:
    """A lock file's name for any key (a run name may hold any character and be long): a
    readable part of it and a hash of all of it."""
    import hashlib
    import re

    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", key)[:60]
    return f"{readable}-{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}.lock"


def _lock(key: str) -> FileLock:
    folder = state_dir() / "locks"
    folder.mkdir(exist_ok=True)
    return FileLock(str(folder / _lock_name(key)))


@contextmanager
def _held(key: str, wait: float, busy: str):
    """A file lock on this machine: wait at most ``wait`` seconds, else say ``busy``."""
    lock = _lock(key)
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise NothingYet(busy) from None
    try:
        yield
    finally:
        lock.release()


def is_worked_on(run: Run) -> bool:
    """Whether an imggenhub process holds the run's lock now (a look: nothing is taken)."""
    lock = _lock("run-" + run.run_id)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def working_on(run: Run, wait: float = 0.0):
    """One process advances a run at a time; another is refused with a sentence."""
    return _held("run-" + run.run_id, wait, f"Run {run.run_id} is being worked on by another "
                 "imggenhub process; nothing to do here (that process goes on).")


def pushing_to(kernel_ref: str, wait: float):
    """One push per kernel at a time on this machine."""
    return _held("kernel-" + kernel_ref, wait, f"Another imggenhub process is pushing to "
                 f"{kernel_ref}; try again when it is done.")


def uploading(dataset_ref: str, wait: float):
    """One upload per inputs dataset at a time on this machine."""
    return _held("dataset-" + dataset_ref, wait, f"Another imggenhub process is uploading the "
                 f"inputs dataset {dataset_ref}; try again when it is done.")


def named(name: str | None):
    """One process per run name at a time: a cron line started again while the last one
    still works is refused with a sentence (and pushes nothing)."""
    if name is None:
        return contextlib.nullcontext()
    return _held("name-" + name, 0.0, f"Another imggenhub process is working on the run named "
                 f"'{name}'; nothing to do here (that process goes on).")


def reload(run: Run) -> Run:
    fresh = _read(run.folder / RUN_FILE)
    if fresh is None:
        raise RunNotFoundError(f"The record of run {run.run_id} is gone.")
    return fresh
