"""The command line: thin. Each command parses flags, calls one library function and
prints its result. One error boundary in ``main`` turns errors into one sentence and
an exit code; a traceback only with IMGGENHUB_DEBUG=1.

One module a group of commands: ``run`` (generate, deploy, poll, download, resume,
cancel, clean, status), ``runs`` (runs, open, grid, show), ``account`` (doctor, quota), ``render``,
``score``, ``models``; ``options`` declares the options they share once, ``output``
prints their results and progress."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from typing import Annotated

import typer

# Usage errors (bad flags). Newer typer carries its own copy of click, so find the base
# class through a public one rather than importing either click.
_CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

from .. import __version__
from ..errors import ImggenhubError, Stopped, interruption
from ..run.lifecycle import Exit
from ..text import json_text
from . import account, models, publish, render, run, runs, score, train, webapp
from .options import Json, bare_refiner
from .output import STATE, close_reporter, err, result

app = typer.Typer(
    name="imggenhub", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Generate images in batch with Hugging Face diffusers on Kaggle's free GPUs, or here.")

# the commands, in the order --help lists them; two are named otherwise than their function
_RENAMED = {"list_runs": "runs", "open_gallery": "open"}
for _command in (run.generate, train.train, publish.publish, run.deploy, run.poll, run.download, run.resume, run.cancel,
                 run.clean, run.status,
                 runs.list_runs, account.doctor, runs.open_gallery, runs.grid, score.score,
                 runs.show, account.quota, render.render, models.models, webapp.app):
    app.command(_RENAMED.get(_command.__name__))(_command)


@app.command()
def version(json: Json = False) -> None:
    """Print imggenhub's version."""
    result({"version": __version__}, __version__, json)


def _version_flag(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version_flag, is_eager=True, help="Print the version and exit.")] = False
          ) -> None:
    """Generate images in batch with Hugging Face diffusers on Kaggle's free GPUs, or here."""


def _fail(exc_or_message, code: int, run_id: str | None = None) -> int:
    """The error's sentence; with --json its object too, with any fields the error carries
    (``data``: what doctor found before it)."""
    message = str(exc_or_message)
    close_reporter()
    err(f"Error: {message}")
    if STATE["json"]:
        data = getattr(exc_or_message, "data", None) or {}
        typer.echo(json_text({**data, "ok": False, "exit_code": int(code), "error": message,
                              "run_id": run_id}))
    return int(code)


def main(argv: list[str] | None = None) -> None:
    """The one error boundary: one sentence and an exit code, never a traceback."""
    from ..config import debug

    args = bare_refiner(sys.argv[1:] if argv is None else list(argv))
    # known before any parsing, so that bad input gets its JSON answer too
    STATE.update(json="--json" in args[: args.index("--")] if "--" in args else "--json" in args,
                 reporter=None)
    previous = _stop_on_signals()
    try:
        code = app(args=args, prog_name="imggenhub", standalone_mode=False)
    except _CLICK_ERRORS as exc:  # usage errors: one line, like every other error
        message = exc.format_message()
        code = _fail(message, exc.exit_code) if message else 0  # bare 'imggenhub' shows the help
    except (typer.Abort, KeyboardInterrupt) as stop:
        how, exit_code = interruption(stop)
        code = _fail(f"{how}; nothing that was finished is lost.", exit_code)
    except ImggenhubError as exc:
        if debug():
            raise
        tail = getattr(exc, "log_tail", "")
        if tail and getattr(getattr(exc, "failure", None), "kind", "") in ("kernel", "cancelled"):
            close_reporter()
            err("The kernel log ends with:\n" + "\n".join("  " + l for l in tail.splitlines()))
        code = _fail(exc, exc.exit_code, getattr(exc, "run_id", None))
    except RecursionError:
        code = _fail("The input is nested too deeply to be read.", Exit.BAD_INPUT)
    except OSError as exc:
        said = file_system_error(exc)
        if said is None or debug():
            if debug():
                raise
            code = _internal(exc)
        else:
            code = _fail(said, Exit.BAD_INPUT)
    except Exception as exc:  # a bug of ours: say so, in one sentence
        if debug():
            raise
        code = _internal(exc)
    finally:
        close_reporter()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    sys.exit(code if isinstance(code, int) else 0)


def _internal(exc: BaseException) -> int:
    return _fail(f"Internal error ({type(exc).__name__}: {exc}); rerun with IMGGENHUB_DEBUG=1 "
                 "for the traceback and report it.", 70)


_CAUSES = {
    errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
    errno.EPERM: "not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder", errno.EEXIST: "a file of that name is in the way",
    errno.ENAMETOOLONG: "the name is too long", errno.ENOENT: "no such file or folder",
    errno.ELOOP: "too many symbolic links", errno.EMLINK: "too many links",
}


def file_system_error(exc: OSError) -> str | None:
    """A file-system error as one sentence naming the path and the cause (disk full, read
    only, not a folder, name too long...); None for any other OSError (a bug of ours)."""
    cause = _CAUSES.get(exc.errno or -1)
    if cause is None or exc.filename is None:
        return None
    path = os.fsdecode(exc.filename)
    if len(path) > 120:
        path = path[:60] + "..." + path[-40:]
    return f"Cannot use {path}: {cause}."


def _stop_on_signals() -> dict:
    """SIGTERM (`timeout`, systemd, a shutdown) and SIGHUP (the terminal closed) take Ctrl-C's
    way out: a local engine is stopped and its finished images kept, a remote run goes on,
    and the command that continues is printed. A signal ignored at start (nohup) stays
    ignored. These and Ctrl-C's handler raise through config.interrupt (a signal that lands
    in a finalizer is raised at the next wait, not lost). Returns the handlers to put back."""
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous

    from ..config import interrupt

    def stop(signum, frame):
        interrupt(Stopped(signum), frame)

    def ctrl_c(signum, frame):
        interrupt(KeyboardInterrupt(), frame)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            previous[signum] = signal.signal(signum, stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, ctrl_c)
    return previous
