"""One error hierarchy. Each error carries data and knows its exit code (from the one
table in ``lifecycle``); the CLI turns it into one sentence (its ``str``) and that code,
never a traceback."""

from __future__ import annotations

from .run.lifecycle import Exit


class ImggenhubError(Exception):
    exit_code = Exit.RUN_FAILED


class SpecError(ImggenhubError):
    """Bad input: prompts, flags, files, folders. Nothing was pushed."""

    exit_code = Exit.BAD_INPUT


class MissingDependencyError(ImggenhubError):
    exit_code = Exit.BAD_INPUT

    def __init__(self, module: str, extra: str = "local", why: str = "This"):
        super().__init__(
            f"{why} needs the Python package '{module}', which is not installed; install it with: "
            f"pip install '.[{extra}]' (from your imggenhub clone)")
        self.module = module
        self.extra = extra


class CredentialsError(ImggenhubError):
    exit_code = Exit.NO_CREDENTIALS


class RunNotFoundError(ImggenhubError):
    exit_code = Exit.BAD_INPUT


class NothingYet(ImggenhubError):
    """The run is not at a state this command acts on (or another process holds it)."""

    exit_code = Exit.NOTHING_YET


class NoFreeSlot(NothingYet):
    """Kaggle's GPU sessions are all taken; this push waits for one to end."""


class StillRunning(ImggenhubError):
    exit_code = Exit.STILL_RUNNING


class Unreachable(ImggenhubError):
    """Kaggle could not be reached, or kept failing; the run (if any) goes on."""

    exit_code = Exit.UNREACHABLE


class KaggleApiError(ImggenhubError):
    """Kaggle refused a call for good; carries the HTTP status when there is one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status

    @property
    def exit_code(self) -> Exit:  # type: ignore[override]
        if self.status == 401:
            return Exit.NO_CREDENTIALS
        if self.status is None or self.status == 429 or self.status >= 500:
            return Exit.UNREACHABLE
        return Exit.RUN_FAILED


class TransferError(Unreachable):
    """A transfer kept breaking off or stalling: another try later may get through."""


class UnsafeOutputError(ImggenhubError):
    """The server listed or served something we refuse (an escaping name, an oversize file)."""


class DamagedOutputError(UnsafeOutputError):
    """A file arrived whole, again and again, different from its manifest record (or is so
    here, where nothing fetches it again): damaged where it is kept. Another try brings the
    same bytes, so this is the run failed (exit 1), not Kaggle unreachable (exit 5)."""


class LocalWriteError(ImggenhubError):
    """This machine could not write what was fetched (a full disk, a read-only folder)."""


class RunFailedError(ImggenhubError):
    """The run failed: carries its typed failure record."""

    def __init__(self, message: str, failure=None, run_id: str | None = None):
        super().__init__(message)
        self.failure = failure
        self.run_id = run_id

    @property
    def log_tail(self) -> str:
        return getattr(self.failure, "log_tail", "") or ""


class OverQuota(ImggenhubError):
    """The job's estimate is more than the week's GPU quota has left; nothing was pushed."""

    exit_code = Exit.OVER_QUOTA


class Interrupted(ImggenhubError):
    exit_code = Exit.INTERRUPTED


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that it takes Ctrl-C's way out
    (every ``except KeyboardInterrupt`` that keeps finished work applies) with its own
    exit code (128 + the signal's number)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signum)
        self.name = signal.Signals(signum).name
        self.exit_code = Exit(128 + signum)


def interruption(stop: BaseException) -> tuple[str, Exit]:
    """How an interruption is told: ("Interrupted", 130) for Ctrl-C, ("Stopped by SIGTERM",
    143) for a signal."""
    if isinstance(stop, Stopped):
        return f"Stopped by {stop.name}", stop.exit_code
    return "Interrupted", Exit.INTERRUPTED
