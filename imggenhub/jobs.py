"""The library behind the commands: start a run, then advance it through the lifecycle.

``advance`` is the one loop every command runs: it asks ``lifecycle.plan`` what the
command does with the run's state, takes that step through the backend, and stops
with the plan's exit code and sentence when the command's work is done or not its to do.
"""

from __future__ import annotations

from pathlib import Path

from . import artifacts, backends, runs
from .engine import images_text
from .errors import (CredentialsError, ImggenhubError, Interrupted, NothingYet, RunFailedError,
                     SpecError)
from .lifecycle import Exit, RunState, Step, plan
from .notebook import job_document, write_notebook
from .runs import Run
from .spec import JobSpec

DEFAULT_OUTPUTS = Path("outputs")


def _is_active(run_id: str | None) -> bool:
    try:
        other = runs.load(run_id) if run_id else None
    except ImggenhubError:
        return False
    return other is not None and not other.state.terminal


def start(job: JobSpec, backend: str, out_dir: Path | None, options, on_event: backends.OnEvent,
          timeout_hours: float | None = None, name: str | None = None,
          timeout: float | None = None) -> Run:
    """Everything that can be checked before a push, then a new run record (rendered)."""
    if name is not None and not runs.NAME.match(name):
        raise SpecError(f"--name '{name[:60]}' must be 1 to 64 letters, digits, '.', '_' or '-'.")
    impl = backends.get_backend(backend)
    run_id = runs.new_run_id(job.job_id)
    out = Path(out_dir) if out_dir else DEFAULT_OUTPUTS / run_id
    run = Run(run_id=run_id, backend=backend, job_id=job.job_id, image_count=job.image_count,
              out_dir=str(out.resolve()), name=name,
              session_timeout_seconds=int(timeout_hours * 3600) if timeout_hours else None)
    made_out = not out.exists()
    try:
        try:
            impl.render(run, job, job_document(job, run_id))
        except OSError as exc:
            raise runs.state_error(exc) from None
        # the folder is checked before anything reaches the network, and claimed below
        artifacts.prepare_destination(out, run_id, job.job_id, _is_active, claim=False)
        impl.bound(timeout)
        if backend == "kaggle":  # several kernels, when the job gains from it
            from . import shards
            from .backends.kaggle_meta import KernelOptions

            shards.start(job, run, impl, options or KernelOptions(), on_event)
        if not run.shards:
            impl.prepare(job, run, options, on_event)
        runs.save(run)  # before the claim: a run holding a folder is always a known run
        artifacts.prepare_destination(out, run_id, job.job_id, _is_active)
    except BaseException:
        import shutil

        shutil.rmtree(run.folder, ignore_errors=True)  # no record of a run that never was
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nor an empty folder made for it
        raise
    on_event(f"run {run_id}: {images_text(job.image_count)} with {_models(job)} on the {backend} backend")
    return run


def failure_error(run: Run) -> RunFailedError:
    failure = run.failure
    why = failure.sentence() if failure else run.state.value
    if failure and failure.kind in ("kernel", "cancelled"):
        tail = failure.log_tail.strip().splitlines()
        last = f"; the log ends with: {tail[-1]}" if tail else ""
        message = (f"Kaggle reports {run.state.value} for {run.kernel_ref} v{run.version}: "
                   f"{failure.evalue}{last}")
    elif failure and failure.kind == "push":
        message = f"Kaggle refused the push of run {run.run_id}: {failure.evalue}"
    else:
        message = f"The notebook failed {why}" if failure and failure.cell_index is not None \
            else f"Run {run.run_id} failed: {why}"
    if run.images_fetched:
        message += f"; the {run.images_fetched} images finished before it are in {run.out_dir}"
    return RunFailedError(message.rstrip(".") + ".", failure, run.run_id)


def _models(job: JobSpec) -> str:
    """The model the job uses, or each model of a model sweep."""
    ids = dict.fromkeys((p.model or job.model)["id"] for p in job.prompts)
    return ", ".join(ids)


def _interrupted(run: Run) -> Interrupted:
    if run.backend == "local":
        if run.state == RunState.PARTIAL:
            return Interrupted(f"Interrupted; the {run.images_fetched} images finished are in "
                               f"{run.out_dir}; 'imggenhub resume {run.run_id}' makes the rest.")
        return Interrupted(f"Interrupted before any image was finished; 'imggenhub resume "
                           f"{run.run_id}' runs it again.")
    if run.state in (RunState.PUSHING, RunState.PUSH_UNKNOWN, RunState.PUSHED, RunState.QUEUED,
                     RunState.RUNNING):
        where = f" ({run.url})" if run.url else ""
        return Interrupted(f"Interrupted; the Kaggle run {run.run_id}{where} goes on and uses GPU "
                           f"quota; 'imggenhub resume {run.run_id}' picks it up.")
    return Interrupted(f"Interrupted at state {run.state.value}; 'imggenhub resume {run.run_id}' "
                       "picks it up.")


def _keep_old_document(run: Run) -> None:
    """A record made before records kept their job document: read it from the notebook, once."""
    from .notebook import CODE_FILE, read_job_document

    for one in [run, *(runs.shards_of(run) if run.shards else [])]:
        if runs.document(one) is None and (one.notebook_dir / CODE_FILE).exists():
            doc = read_job_document((one.notebook_dir / CODE_FILE).read_text(encoding="utf-8"))
            if doc is not None:
                runs.keep_document(one, doc)


def advance(run: Run, command: str, on_event: backends.OnEvent,
            timeout: float | None = None, out_dir: Path | None = None) -> Run:
    """Take the steps ``command`` may take until its work is done; raise with the right
    exit code otherwise. One process at a time per run (the others are refused)."""
    _keep_old_document(run)
    if run.shards:
        if out_dir is not None and str(Path(out_dir).resolve()) != run.out_dir:
            raise SpecError(f"Run {run.run_id} is sharded; its shards download into {run.out_dir}, "
                            "not elsewhere.")
        from . import shards

        try:
            return shards.advance(run, command, on_event, timeout)
        except KeyboardInterrupt:
            raise _interrupted(runs.reload(run)) from None
    impl = backends.get_backend(run.backend)
    clock = impl.tunables.clock
    ends = None if timeout is None else clock.monotonic() + timeout

    def left() -> float | None:  # one --timeout for every step of the command
        return None if ends is None else max(0.0, ends - clock.monotonic())

    with runs.working_on(run):
        run = runs.reload(run)
        try:
            if out_dir is not None:
                run = _move_output(run, command, Path(out_dir))
            while True:
                p = plan(command, run.state)
                if p.step is None:
                    return _stop(run, p)
                on_event_step(on_event, run, p.step)
                impl.bound(left())
                if p.step == Step.PUSH:
                    run = impl.submit(run, on_event)
                elif p.step == Step.RESOLVE:
                    run = impl.resolve(run, on_event)
                elif p.step == Step.WAIT:
                    run = impl.wait(run, on_event)
                elif p.step in (Step.FETCH, Step.KEEP):
                    run = impl.fetch(run, on_event)
                    if p.step == Step.KEEP:
                        raise failure_error(run)
        except KeyboardInterrupt:
            raise _interrupted(runs.reload(run)) from None
        except ImggenhubError as exc:
            if getattr(exc, "run_id", None) is None:
                exc.run_id = run.run_id  # --json names the run every error is about
            raise


def _move_output(run: Run, command: str, out: Path) -> Run:
    """--out on download: a new home for the images, checked and claimed, under the lock."""
    if str(out.resolve()) == run.out_dir:
        return run
    if plan(command, run.state).step not in (Step.FETCH, Step.KEEP):
        raise SpecError(f"Run {run.run_id} is {run.state.value}; --out applies only to a run whose "
                        f"images are still to be downloaded (they are in {run.out_dir}).")
    here = artifacts.read_manifest(Path(run.out_dir)) if Path(run.out_dir).is_dir() else None
    if run.backend == "local" and here is not None and here.get("run_id") == run.run_id:
        # a local run's images move out of its work folder once: some are in the old home
        raise SpecError(f"Some images of run {run.run_id} are in {run.out_dir} already; a local "
                        "run keeps one output folder (move it by hand, or free space there and "
                        f"run 'imggenhub download {run.run_id}' again).")
    artifacts.prepare_destination(out, run.run_id, run.job_id,
                                  lambda other: other != run.run_id and _is_active(other))
    run.out_dir = str(out.resolve())
    return runs.save(run)


def on_event_step(on_event, run: Run, step: Step) -> None:
    if step == Step.FETCH:
        on_event(f"bringing the outputs of run {run.run_id} into {run.out_dir}")
    elif step == Step.KEEP:
        on_event(f"run {run.run_id} {run.state.value}; bringing home what it finished")


def _stop(run: Run, p) -> Run:
    if p.exit == Exit.OK:
        return run
    if p.exit == Exit.RUN_FAILED:
        raise failure_error(run)
    sentence = p.sentence.format(state=run.state.value, run=run.run_id, failure="")
    raise NothingYet(f"Run {run.run_id} {sentence}.")


def generate(job: JobSpec, backend: str, out_dir: Path | None, options, on_event,
             timeout_hours: float | None = None, timeout: float | None = None,
             name: str | None = None) -> Run:
    """deploy + poll + download; with a name, pick up that run if it is still this job's."""
    with runs.named(name):
        return _generate(job, backend, out_dir, options, on_event, timeout_hours, timeout, name)


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


def _generate(job, backend, out_dir, options, on_event, timeout_hours, timeout, name) -> Run:
    existing = _named(name, job, backend, on_event)
    if existing is not None:  # a failed one reports its failure: a cron line never re-pushes it
        on_event(f"picking up run {existing.run_id} ('{name}') at {existing.state.value}")
        return advance(existing, "generate", on_event, timeout)
    run = start(job, backend, out_dir, options, on_event, timeout_hours, name, timeout)
    return advance(run, "generate", on_event, timeout)


def deploy(job: JobSpec, out_dir: Path | None, options, on_event,
           timeout_hours: float | None = None, timeout: float | None = None,
           name: str | None = None) -> Run:
    with runs.named(name):
        existing = _named(name, job, "kaggle", on_event)
        if existing is not None:
            on_event(f"run {existing.run_id} ('{name}') exists at {existing.state.value}")
            return advance(existing, "deploy", on_event, timeout)
        run = start(job, "kaggle", out_dir, options, on_event, timeout_hours, name, timeout)
        return advance(run, "deploy", on_event, timeout)


def render(job: JobSpec, options, out_dir: Path) -> tuple[Path, dict]:
    """The job's notebook and kernel-metadata.json in ``out_dir``, as deploy would push them;
    nothing runs. The notebook's path and the metadata."""
    from .backends.kaggle_meta import check_renderable, kernel_metadata, write_metadata
    from .credentials import find_credentials

    check_renderable(job)
    try:  # fill in the owner as deploy would, where it needs no network
        creds = find_credentials()
    except CredentialsError:  # render needs none: a broken one only leaves the placeholder
        creds = None
    meta = kernel_metadata(options, owner=creds.username if creds else None)
    path = write_notebook(out_dir, job)
    write_metadata(out_dir, meta)
    return path, meta


def command_on(run_id: str | None, command: str, on_event, timeout: float | None = None,
               out_dir: Path | None = None) -> Run:
    """poll, download or resume a recorded run."""
    return advance(runs.load(run_id), command, on_event, timeout, out_dir)


def status(run_id: str | None, on_event) -> Run:
    run = runs.load(run_id)
    impl = backends.get_backend(run.backend)
    if run.shards:  # each shard's word, summed up (the records are left to the commands)
        from . import shards

        fresh = [impl.refresh(s, on_event) for s in runs.shards_of(run)]
        return run.model_copy(update={"state": shards.summary(fresh)})
    return impl.refresh(run, on_event)
