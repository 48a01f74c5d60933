"""The library calls behind the commands: render a job, run it on a backend, fetch it."""

from __future__ import annotations

import json
from pathlib import Path

from . import backends, runs
from .artifacts import check_destination, write_gallery
from .errors import NotebookFailedError
from .notebook import (PLACEHOLDER_OWNER, KernelOptions, kernel_metadata, load_metadata_template,
                       write_render)
from .runs import Run, RunState
from .spec import JobSpec

DEFAULT_OUTPUTS = Path("outputs")


def render(job: JobSpec, out_dir: Path, options: KernelOptions, template: Path | None,
           owner: str | None = None) -> Path:
    """Write the notebook and its kernel-metadata.json; run nothing."""
    metadata = kernel_metadata(load_metadata_template(template), options, owner)
    return write_render(out_dir, job, metadata)


def start(job: JobSpec, backend: str, out_dir: Path | None, options: KernelOptions,
          template: Path | None, on_event: backends.OnEvent,
          timeout_hours: float | None = None) -> Run:
    """Render the job into a new run's folder and submit it to the backend."""
    impl = backends.get_backend(backend)
    template_meta = load_metadata_template(template)
    metadata = kernel_metadata(template_meta, options)  # checked before a run exists
    if metadata["id"].startswith(PLACEHOLDER_OWNER + "/") and hasattr(impl, "owner"):
        # the template says "your-kaggle-username": use the credential's
        metadata = kernel_metadata(template_meta, options, impl.owner())
    run_id = runs.new_run_id(job.job_id)
    out = Path(out_dir) if out_dir else DEFAULT_OUTPUTS / run_id
    check_destination(out, job.job_id)
    run = Run(run_id=run_id, backend=backend, job_id=job.job_id, image_count=job.image_count,
              out_dir=str(out.resolve()),
              session_timeout_seconds=int(timeout_hours * 3600) if timeout_hours else None)
    notebook_dir = run.folder / "notebook"
    write_render(notebook_dir, job, metadata)
    runs.save(run)
    on_event(f"run {run_id}: {job.image_count} images with {job.model['id']} on the {backend} backend")
    return impl.submit(run, notebook_dir, on_event)


def failure_error(run: Run) -> NotebookFailedError:
    detail = json.loads(run.failure) if run.failure else {}
    ename, evalue = detail.get("ename", "Error"), detail.get("evalue", "unknown failure")
    if detail.get("ename") == "KernelError":  # Kaggle's word, then the notebook's traceback
        tail = detail.get("log_tail", "").strip().splitlines()
        last = tail[-1] if tail else "no log"
        return NotebookFailedError(
            f"Kaggle reports {run.state.value} for {run.kernel_ref} v{run.version}: "
            f"{detail.get('evalue')}; the log ends with: {last}", ename="KernelError",
            evalue=detail.get("evalue", ""), log_tail=detail.get("log_tail", ""), run_id=run.run_id)
    where = f" in cell {detail['cell_index'] + 1}" if detail.get("cell_index", -1) >= 0 else ""
    saved = f"; the {run.images_fetched} images finished before it are in {run.out_dir}" \
        if run.images_fetched else ""
    return NotebookFailedError(f"The notebook failed{where}: {ename}: {evalue}{saved}.",
                               cell_index=detail.get("cell_index"), ename=ename, evalue=evalue,
                               log_tail=detail.get("log_tail", ""), run_id=run.run_id)


def finish(run: Run, on_event: backends.OnEvent, timeout: float | None = None) -> Run:
    """Wait for the run, fetch what it made (also after a failure), and raise on failure."""
    impl = backends.get_backend(run.backend)
    run = impl.wait(run, on_event, timeout)
    if run.state.terminal:
        run = impl.fetch(run, Path(run.out_dir), on_event)
        write_gallery(Path(run.out_dir))
    if run.state == RunState.ERROR:
        raise failure_error(run)
    return run


def generate(job: JobSpec, backend: str, out_dir: Path | None, options: KernelOptions,
             template: Path | None, on_event: backends.OnEvent,
             timeout_hours: float | None = None, poll_timeout: float | None = None) -> Run:
    run = start(job, backend, out_dir, options, template, on_event, timeout_hours)
    return finish(run, on_event, poll_timeout)


def poll(run_id: str | None, on_event: backends.OnEvent, timeout: float | None = None) -> Run:
    """Follow a run to its end; raise on failure (with Kaggle's message and the log tail)."""
    run = runs.load(run_id)
    if not run.state.terminal:
        run = backends.get_backend(run.backend).wait(run, on_event, timeout)
    if run.state != RunState.COMPLETE:
        raise failure_error(run)
    return run


def download(run_id: str | None, out_dir: Path | None, on_event: backends.OnEvent) -> Run:
    run = runs.load(run_id)
    if out_dir is not None:
        run.out_dir = str(Path(out_dir).resolve())
    run = backends.get_backend(run.backend).fetch(run, Path(run.out_dir), on_event)
    write_gallery(Path(run.out_dir))
    return run
