"""The library behind the commands: start a run (checked, prepared, recorded), then hand it
to the driver (``driver.advance``), which takes it through the lifecycle."""

from __future__ import annotations

from pathlib import Path

from .. import backends
from ..errors import SpecError
from ..job.notebook import job_document
from ..job.spec import JobSpec
from ..outputs import artifacts
from . import runs, shards
from .lifecycle import RunState
from .driver import advance, failure_error, is_active  # noqa: F401  (the library's names)
from .lifecycle import summary
from .runs import Run

DEFAULT_OUTPUTS = Path("outputs")


def start(job: JobSpec, backend: str, out_dir: Path | None, options, on_event: backends.OnEvent,
          timeout_hours: float | None = None, name: str | None = None,
          timeout: float | None = None, shards_asked: int | None = None,
          notify: list | None = None) -> Run:
    """Everything that can be checked before a push, then a new run record (rendered): a
    group of ``shards_asked`` sessions (None: as many as the job gains from) where the
    backend runs several at once."""
    if name is not None and not runs.NAME.match(name):
        raise SpecError(f"--name '{name[:60]}' must be 1 to 64 letters, digits, '.', '_' or '-'.")
    impl = backends.get_backend(backend)
    run_id = runs.new_run_id(job.job_id)
    out = Path(out_dir) if out_dir else DEFAULT_OUTPUTS / run_id
    run = Run(run_id=run_id, backend=backend, job_id=job.job_id, image_count=job.image_count,
              kind=job.kind,
              out_dir=str(out.resolve()), name=name,
              session_timeout_seconds=int(timeout_hours * 3600) if timeout_hours else None)
    made_out = not out.exists()
    try:
        try:
            impl.render(run, job, job_document(job, run_id))
        except OSError as exc:
            raise runs.state_error(exc) from None
        # the folder is checked before anything reaches the network, and claimed below
        artifacts.prepare_destination(out, run_id, job.job_id, is_active, claim=False)
        impl.bound(timeout)
        width = impl.width(job, shards_asked)
        prepared = impl.prepare_job(job, options, on_event, width)  # once, whatever the group
        if width > 1:
            shards.start(job, run, impl, prepared, width, on_event)
        else:
            impl.prepare(job, run, prepared, on_event)
        runs.save(run)  # before the claim: a run holding a folder is always a known run
        artifacts.prepare_destination(out, run_id, job.job_id, is_active)
    except BaseException as exc:
        import shutil

        shutil.rmtree(run.folder, ignore_errors=True)  # no record of a run that never was
        from ..errors import OverQuota

        if isinstance(exc, OverQuota):  # refused over its estimate: said where asked
            from .. import notify as notices

            notices.refused(run, exc, notify or [], on_event, impl.tunables)
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nor an empty folder made for it
        raise
    on_event(f"run {run_id}: {job.summary()} on the {backend} backend")
    return run


def generate(job: JobSpec, backend: str, out_dir: Path | None, options, on_event,
             timeout_hours: float | None = None, timeout: float | None = None,
             name: str | None = None, shards_asked: int | None = None,
             notify: list | None = None) -> Run:
    """deploy + poll + download; with a name, pick up that run if it is still this job's.
    ``notify``: where to say the run's end (notify.targets)."""
    with runs.named(name):
        existing = _named(name, job, backend, on_event)
        if existing is not None:  # a failed one reports its failure: a cron line never re-pushes it
            on_event(f"picking up run {existing.run_id} ('{name}') at {existing.state.value}")
            return advance(existing, "generate", on_event, timeout, notify=notify)
        run = start(job, backend, out_dir, options, on_event, timeout_hours, name, timeout,
                    shards_asked, notify)
        return advance(run, "generate", on_event, timeout, notify=notify)


def _named(name: str | None, job: JobSpec, backend: str, on_event) -> Run | None:
    """The run a --name stands for, if it is this job's. A named run that is still going
    with another job is refused: the line would lose track of it. A finished one of another
    job keeps its name; the new run takes it too (a name finds the newest), and says so."""
    existing = runs.find_named(name) if name is not None else None
    if existing is None or existing.backend != backend:
        return None
    if existing.job_id != job.job_id:
        if not existing.state.terminal:
            raise SpecError(f"The run named '{name}' ({existing.run_id}) is {existing.state.value} "
                            "with another job; let it finish, or choose another --name.")
        on_event(f"note: the name '{name}' was run {existing.run_id}'s, a job with other "
                 "settings; a new run takes the name (the name now finds it, the run id the "
                 "old one)")
        return None
    return existing


def deploy(job: JobSpec, out_dir: Path | None, options, on_event,
           timeout_hours: float | None = None, timeout: float | None = None,
           name: str | None = None, shards_asked: int | None = None,
           backend: str = "kaggle", notify: list | None = None) -> Run:
    """Start the run and push it (every shard); poll and download take it on (and say its
    end where ``notify`` asks)."""
    with runs.named(name):
        existing = _named(name, job, backend, on_event)
        if existing is not None:
            on_event(f"run {existing.run_id} ('{name}') exists at {existing.state.value}")
            return advance(existing, "deploy", on_event, timeout, notify=notify)
        run = start(job, backend, out_dir, options, on_event, timeout_hours, name, timeout,
                    shards_asked, notify)
        return advance(run, "deploy", on_event, timeout, notify=notify)


def command_on(run_id: str | None, command: str, on_event, timeout: float | None = None,
               out_dir: Path | None = None, force: bool = False,
               notify: list | None = None) -> Run:
    """poll, download or resume a recorded run."""
    return advance(runs.load(run_id), command, on_event, timeout, out_dir, force, notify)


def interrupted(run: Run) -> bool:
    """A run of this machine recorded as running whose process is gone (no imggenhub process
    holds it): killed, or its machine restarted. The next resume keeps what it finished."""
    return run.state == RunState.RUNNING and not backends.get_backend(run.backend).remote \
        and not runs.is_worked_on(run)


def cancel(run_id: str | None, on_event, timeout: float | None = None) -> Run:
    """Stop a running run: its remote jobs are asked to stop, then their end is waited for
    and what they made comes home. When another imggenhub process follows the run (a
    'generate' in another terminal), the jobs are asked to stop from here, without its lock
    (asking twice is harmless), and that process brings home what they made."""
    run = runs.load(run_id)
    if not runs.is_worked_on(run):
        return advance(run, "cancel", on_event, timeout)
    from ..errors import NothingYet

    impl = backends.get_backend(run.backend)
    impl.bound(timeout)
    members = runs.shards_of(run) if run.shards else [run]
    for member in members:
        if member.state in (RunState.PUSHED, RunState.QUEUED, RunState.RUNNING):
            impl.cancel(member, on_event)
    starting = [m for m in members if m.state in (RunState.RENDERED, RunState.PUSHING,
                                                   RunState.PUSH_UNKNOWN, RunState.PARTIAL)]
    if starting:
        raise NothingYet(f"Another imggenhub process is starting run {run.run_id} "
                         f"({len(starting)} of its jobs not running yet); run 'imggenhub cancel "
                         f"{run.run_id}' again once they run.")
    on_event(f"the jobs of run {run.run_id} were asked to stop; the imggenhub process that "
             f"follows it brings home what they made (else 'imggenhub resume {run.run_id}')")
    return run


def clean(run_id: str | None, on_event, timeout: float | None = None) -> list[str]:
    """Delete what the remote keeps of a run (every shard's) once its images are home."""
    from ..errors import NothingYet

    run = runs.load(run_id)
    if run.state != RunState.DOWNLOADED:
        raise NothingYet(f"Run {run.run_id} is {run.state.value}: its images are not all home, "
                         f"so nothing of it is deleted; 'imggenhub resume {run.run_id}' brings "
                         "them first.")
    impl = backends.get_backend(run.backend)
    impl.bound(timeout)
    gone = []
    with runs.working_on(run):
        for member in runs.shards_of(run) if run.shards else [run]:
            gone += impl.clean(member, on_event)
    return list(dict.fromkeys(gone))  # shards that share one place name it once


def status(run_id: str | None, on_event) -> Run:
    run = runs.load(run_id)
    impl = backends.get_backend(run.backend)
    if run.shards:  # each shard's word, summed up (the records are left to the commands)
        fresh = [impl.refresh(s, on_event) for s in runs.shards_of(run)]
        return run.model_copy(update={"state": summary([s.state for s in fresh])})
    return impl.refresh(run, on_event)
