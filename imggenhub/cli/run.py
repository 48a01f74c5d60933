"""A run's lifecycle: generate (all of it), or deploy, poll and download one step at a time;
resume from wherever a run stands; status, one look at it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import CredentialsError
from .options import (Json, Name, Notify, Out, RunId, Timeout, TimeoutHours, job_options,
                      kernel_flags_given)
from .output import (STATE, done, interrupted_hint, reporter, result, run_data,
                     shard_lines, shown_state)


def _default_backend() -> str:
    from ..backends.kaggle.credentials import HOW_TO, find_credentials

    if find_credentials() is None:
        raise CredentialsError(HOW_TO)
    return "kaggle"


def _remote_flags(kernel, backend: str, report) -> None:
    """--flavor and --max-cost shape Hugging Face jobs only: said, not silently dropped."""
    given = [f for f, v in (("--flavor", kernel.flavor), ("--max-cost", kernel.max_cost))
             if v is not None]
    if given and backend != "hf-jobs":
        report(f"note: {', '.join(given)} shape{'s' if len(given) == 1 else ''} Hugging Face "
               f"jobs (--backend hf-jobs); the {backend} backend leaves "
               f"{'it' if len(given) == 1 else 'them'} aside")


@job_options
def generate(
    job, kernel, shards,
    backend: Annotated[Optional[str], typer.Option(
        help="Where to run: 'kaggle' (the default when credentials are found), 'hf-jobs' "
             "(Hugging Face Jobs, paid by the minute) or 'local'.")] = None,
    out: Out = None, name: Name = None, timeout_hours: TimeoutHours = None, timeout: Timeout = None,
    notify: Notify = None, json: Json = False,
) -> None:
    """Render the job's notebook, run it, and bring the images home (deploy + poll + download)."""
    from .. import notify as notices
    from ..run import jobs

    STATE["json"] = json
    targets = notices.targets(notify)
    backend = backend or _default_backend()
    report = reporter()
    given = kernel_flags_given(kernel) + (["--shards"] if shards is not None else []) \
        if backend == "local" else []
    if given:
        report(f"note: {', '.join(given)} shape{'s' if len(given) == 1 else ''} the Kaggle kernel; "
               f"the local backend has none and leaves {'it' if len(given) == 1 else 'them'} aside")
    _remote_flags(kernel, backend, report)
    run = jobs.generate(job, backend, out, kernel, report, timeout_hours, timeout, name, shards,
                        targets)
    done(run, json)


@job_options
def deploy(
    job, kernel, shards,
    backend: Annotated[str, typer.Option(
        help="Where to run: 'kaggle' or 'hf-jobs' (Hugging Face Jobs).")] = "kaggle",
    out: Annotated[Optional[Path], typer.Option(
        help="Where 'download' will put the images (default: outputs/<run id>/).")] = None,
    name: Name = None, timeout_hours: TimeoutHours = None,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", min=0, help="Wait at most this long for a free GPU session (exit 6).")] = None,
    notify: Notify = None, json: Json = False,
) -> None:
    """Validate, render and push the job to Kaggle as a new kernel version; save the run.
    --notify: the command that sees it end (poll, download, resume) says so there."""
    from .. import notify as notices
    from ..run import jobs

    STATE["json"] = json
    targets = notices.targets(notify)
    _remote_flags(kernel, backend, reporter())
    run = jobs.deploy(job, out, kernel, reporter(), timeout_hours, timeout, name, shards, backend,
                      targets)
    result(run_data(run), f"{run.run_id} {run.url}", json)


def poll(run_id: RunId = None, timeout: Timeout = None, json: Json = False) -> None:
    """Follow a run's exact kernel version to its end: 0 complete, 1 failed, 3 timeout, 5 unreachable."""
    from ..run import jobs

    STATE["json"] = json
    run = jobs.command_on(run_id, "poll", reporter(), timeout)
    result(run_data(run), f"{run.run_id} {run.state.value}", json)


def download(run_id: RunId = None, out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default: the run's).")] = None, json: Json = False) -> None:
    """Download and verify a complete run's images, manifest and kernel log (skips verified files)."""
    from ..run import jobs

    STATE["json"] = json
    done(jobs.command_on(run_id, "download", reporter(), out_dir=out), json)


def resume(run_id: RunId = None, timeout: Timeout = None, json: Json = False,
           force: Annotated[bool, typer.Option(
               "--force", help="Push a failed run again even after the same failure twice.")] = False,
           notify: Notify = None) -> None:
    """Advance a run from wherever it stands: push, poll, download; exit 0 at once if done.
    A failed run: what it finished comes home, then a new session makes the rest."""
    from .. import notify as notices
    from ..run import jobs

    STATE["json"] = json
    targets = notices.targets(notify)
    done(jobs.command_on(run_id, "resume", reporter(), timeout, force=force, notify=targets),
         json)


def cancel(run_id: RunId = None, timeout: Timeout = None, json: Json = False) -> None:
    """Stop a running run (Hugging Face Jobs: every job of it); what it made comes home, and
    'resume' makes the rest. Exit 0 also when there was nothing left to stop."""
    from ..run import jobs

    STATE["json"] = json
    run = jobs.cancel(run_id, reporter(), timeout)
    result(run_data(run), f"{run.run_id} {shown_state(run)}", json)


def clean(run_id: RunId = None, timeout: Timeout = None, json: Json = False) -> None:
    """Delete what the remote keeps of a run whose images are all home (hf-jobs: the run's
    private dataset). Never automatic."""
    from ..run import jobs

    STATE["json"] = json
    gone = jobs.clean(run_id, reporter(), timeout)
    result({"deleted": gone}, "deleted " + ", ".join(gone) if gone else "nothing left to delete",
           json)


def status(run_id: RunId = None, json: Json = False) -> None:
    """One look at a run's state (asks Kaggle when the run is still going)."""
    from ..run import jobs

    STATE["json"] = json
    run = jobs.status(run_id, reporter())
    kernel = f" {run.kernel_ref} v{run.version}" if run.kernel_ref and run.version else ""
    state = shown_state(run)
    lines = [f"{run.run_id} {state}{kernel}"] + shard_lines(run)
    if state == "interrupted":
        lines.append(interrupted_hint(run))
    result(run_data(run), "\n".join(lines), json)
