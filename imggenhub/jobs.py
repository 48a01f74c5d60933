"""The library calls behind the commands: render a job, run it on a backend, fetch it."""

from __future__ import annotations

from pathlib import Path

from . import backends, runs
from .artifacts import check_destination
from .errors import NotebookFailedError
from .notebook import KernelOptions, kernel_metadata, load_metadata_template, write_render
from .runs import Run, RunState
from .spec import JobSpec

DEFAULT_OUTPUTS = Path("outputs")


def render(job: JobSpec, out_dir: Path, options: KernelOptions, template: Path | None,
           owner: str | None = None) -> Path:
    """Write the notebook and its kernel-metadata.json; run nothing."""
    metadata = kernel_metadata(load_metadata_template(template), options, owner)
    return write_render(out_dir, job, metadata)


def start(job: JobSpec, backend: str, out_dir: Path | None, options: KernelOptions,
          template: Path | None, on_event: backends.OnEvent) -> Run:
    """Render the job into a new run's folder and submit it to the backend."""
    impl = backends.get_backend(backend)
    run_id = runs.new_run_id(job.job_id)
    out = Path(out_dir) if out_dir else DEFAULT_OUTPUTS / run_id
    check_destination(out, job.job_id)
    run = Run(run_id=run_id, backend=backend, job_id=job.job_id, image_count=job.image_count,
              out_dir=str(out.resolve()))
    notebook_dir = run.folder / "notebook"
    render(job, notebook_dir, options, template)
    runs.save(run)
    on_event(f"run {run_id}: {job.image_count} images with {job.model['id']} on the {backend} backend")
    return impl.submit(run, notebook_dir, on_event)


def failure_error(run: Run) -> NotebookFailedError:
    import json

    detail = json.loads(run.failure) if run.failure else {}
    ename, evalue = detail.get("ename", "Error"), detail.get("evalue", "unknown failure")
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
    if run.state == RunState.ERROR:
        raise failure_error(run)
    return run


def generate(job: JobSpec, backend: str, out_dir: Path | None, options: KernelOptions,
             template: Path | None, on_event: backends.OnEvent) -> Run:
    return finish(start(job, backend, out_dir, options, template, on_event), on_event)
