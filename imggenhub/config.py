"""Where imggenhub keeps its state, and its tunables: environment variables are read here
and nowhere else. Tunables are one object passed in, with a clock tests can replace."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import SpecError

MiB = 1 << 20


_CHECKED: set[Path] = set()


def state_dir() -> Path:
    """Run records and working folders. IMGGENHUB_HOME overrides (tests use it)."""
    override = os.environ.get("IMGGENHUB_HOME")
    if override:
        path = Path(override).expanduser()
    else:
        from platformdirs import user_state_dir

        path = Path(user_state_dir("imggenhub", appauthor=False))
    if path not in _CHECKED:  # once per process: every run lookup comes through here
        problem = writable_folder(path)
        if problem:
            raise SpecError(f"The state folder {path} cannot be written ({problem}); set "
                            "IMGGENHUB_HOME to a writable folder.")
        _CHECKED.add(path)
    return path


def writable_folder(path: Path) -> str | None:
    """Make the folder if needed and prove a file can be written there; else say why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".imggenhub-probe-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def debug() -> bool:
    return os.environ.get("IMGGENHUB_DEBUG", "") not in ("", "0")


_PENDING: list[BaseException] = []  # a signal's exception that arrived inside a finalizer


def interrupt(exc: BaseException, frame) -> None:
    """A signal handler's way out: raise ``exc`` where the program is. Inside a finalizer
    (a ``__del__``, such as a file lock's run by the garbage collector), where Python prints
    the exception and drops it, keep it for the next ``Clock.sleep`` instead: a Ctrl-C that
    landed there once left a command waiting on as if nothing had come."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            _PENDING.append(exc)
            return
        frame = frame.f_back
    raise exc


class Clock:
    """Time as the backends see it; tests pass a fake one that does not sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if _PENDING:
            raise _PENDING.pop()
        if seconds > 0:
            time.sleep(seconds)
        if _PENDING:
            raise _PENDING.pop()


# (attribute, environment variable, meaning) -- docs/tunables.md lists these; the defaults are
# the Tunables fields below, written once.
_TUNABLES = [
    ("poll_interval", "IMGGENHUB_POLL_INTERVAL", "the shortest wait between status polls (s)"),
    ("poll_max_interval", "IMGGENHUB_POLL_MAX_INTERVAL",
     "the longest wait between polls; in between, a fifth of the elapsed time (s)"),
    ("http_timeout", "IMGGENHUB_HTTP_TIMEOUT", "each HTTP call's connect/read timeout (s)"),
    ("retry_max_wait", "IMGGENHUB_RETRY_MAX_WAIT", "the longest wait before one retry (s)"),
    ("retry_total", "IMGGENHUB_RETRY_TOTAL", "the most time one call spends in retries (s)"),
    ("gpu_wait", "IMGGENHUB_GPU_WAIT",
     "the wait before pushing again when Kaggle's 2 GPU sessions are busy (s)"),
    ("gpu_wait_total", "IMGGENHUB_GPU_WAIT_TOTAL",
     "the most time deploy waits for a free GPU session, when no --timeout is given (s)"),
    ("download_workers", "IMGGENHUB_DOWNLOAD_WORKERS", "parallel downloads"),
    ("file_deadline", "IMGGENHUB_FILE_DEADLINE", "the most time one file's download may take (s)"),
    ("unlisted_cap", "IMGGENHUB_UNLISTED_CAP",
     "the largest output file not in the manifest that is downloaded (bytes)"),
    ("max_pages", "IMGGENHUB_MAX_PAGES", "the most pages of the output listing followed"),
    ("push_grace", "IMGGENHUB_PUSH_GRACE",
     "how long after a killed push resume still looks for it on Kaggle before pushing again (s)"),
    ("session_seconds", "IMGGENHUB_SESSION_SECONDS",
     "the session length Kaggle allows (12 h); the engine stops cleanly before it (s)"),
    ("dataset_wait", "IMGGENHUB_DATASET_WAIT",
     "the most time a push waits for Kaggle to make the uploaded inputs dataset ready (s)"),
]


@dataclass(frozen=True)
class Tunables:
    poll_interval: float = 2.0
    poll_max_interval: float = 30.0
    http_timeout: float = 60.0
    retry_max_wait: float = 60.0
    retry_total: float = 600.0
    gpu_wait: float = 60.0
    gpu_wait_total: float = 3600.0
    download_workers: int = 8
    file_deadline: float = 600.0
    unlisted_cap: int = 64 * MiB
    max_pages: int = 200
    push_grace: float = 5.0
    dataset_wait: float = 900.0
    session_seconds: float = 43200.0
    api_url: str | None = None
    clock: Clock = field(default_factory=Clock, compare=False)

    def but(self, **changes) -> "Tunables":
        return replace(self, **changes)


def tunables() -> Tunables:
    """The tunables from the environment (one read, here)."""
    values = {}
    for attr, var, _ in _TUNABLES:
        default = _default(attr)
        raw = os.environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            value = type(default)(float(raw))
        except ValueError:
            raise SpecError(f"{var}={raw!r} is not a number; unset it or give a number.") from None
        if value <= 0:
            raise SpecError(f"{var}={raw!r} must be greater than 0.")
        values[attr] = value
    return Tunables(api_url=os.environ.get("IMGGENHUB_KAGGLE_API_URL") or None, **values)


def _default(attr: str):
    return Tunables.__dataclass_fields__[attr].default


def tunables_markdown() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for attr, var, meaning in _TUNABLES:
        default = _default(attr)
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        rows.append(f"| `{var}` | {shown} | {meaning} |")
    return "\n".join(rows)


class Deadline:
    """The command's time budget (None: no limit), on the tunables' clock."""

    def __init__(self, tunables: "Tunables", seconds: float | None):
        self.clock = tunables.clock
        self.at = None if seconds is None else tunables.clock.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.at is None else self.at - self.clock.monotonic()

    def passed(self, after: float = 0.0) -> bool:
        return self.at is not None and self.clock.monotonic() + after >= self.at
