"""The local backend: execute the very notebook a Kaggle push would carry, in a fresh
Jupyter kernel, inside a working folder that plays /kaggle/working."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import LOG_FILE, OUTPUT_DIR, made, progress_message
from ..errors import ImggenhubError, MissingDependencyError, UnsafeOutputError
from ..job.notebook import CODE_FILE
from ..outputs import artifacts
from ..run import kinds, runs
from ..run.lifecycle import PUSH_REST, RunState
from ..run.runs import Failure, Run
from ..text import MAX_LINE, Dropped, Lines
from .base import Backend, Fetched, OnEvent, session_plan, take_output


def _streaming_client_class():
    try:
        from nbclient import NotebookClient
    except ImportError:  # pragma: no cover - a dependency of imggenhub itself
        raise MissingDependencyError("nbclient") from None

    class StreamingClient(NotebookClient):
        """Passes each stream output of the kernel on as it arrives."""

        on_stream = None

        def output(self, outs, msg, display_id, cell_index):
            if msg["msg_type"] == "stream" and self.on_stream is not None:
                content = msg["content"]
                self.on_stream(content.get("name", "stdout"), content.get("text", ""))
            return super().output(outs, msg, display_id, cell_index)

    return StreamingClient


@dataclass
class Execution:
    """How one notebook execution went."""

    ok: bool
    seconds: float
    kernel_start: float | None = None
    cell_index: int | None = None
    ename: str = ""
    evalue: str = ""
    tail: list[str] = field(default_factory=list)

    def failure(self) -> Failure:
        return Failure(kind="notebook", cell_index=self.cell_index, ename=self.ename,
                       evalue=self.evalue, log_tail="\n".join(self.tail[-20:]))


def execute_notebook(notebook: Path, workdir: Path, on_stream: Callable[[str, str], None],
                     stderr_log: Path, executed: Path | None = None,
                     env: dict | None = None, on_kernel: Callable[[float], None] | None = None
                     ) -> Execution:
    """Run a notebook in a fresh Jupyter kernel whose working folder is ``workdir``.

    Shared by the local backend and the tests' Kaggle emulator: one runner.
    """
    import nbformat
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    workdir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(notebook, as_version=4)
    client = _streaming_client_class()(
        nb, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}, timeout=None)
    tail: list[str] = []

    def stream(name: str, text: str) -> None:
        tail.extend(text.splitlines())
        del tail[:-40]
        on_stream(name, text)

    client.on_stream = stream
    t0 = time.monotonic()
    result = Execution(ok=False, seconds=0.0, tail=tail)
    index = -1
    with open(stderr_log, "ab") as stderr:  # the kernel process's own chatter
        try:
            client.reset_execution_trackers()
            kwargs = {"stderr": stderr} if env is None else {"stderr": stderr, "env": env}
            with client.setup_kernel(**kwargs):
                result.kernel_start = round(time.monotonic() - t0, 3)
                if on_kernel:
                    on_kernel(result.kernel_start)
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            result.ok = True
        except CellExecutionError as exc:
            result.cell_index, result.ename, result.evalue = index, exc.ename, exc.evalue
        except DeadKernelError as exc:
            result.cell_index, result.ename, result.evalue = index, "DeadKernelError", str(exc)
        except NoSuchKernel:
            raise ImggenhubError("No Jupyter kernel named 'python3' is installed here; install "
                                 "ipykernel in this Python environment.") from None
        finally:
            result.seconds = round(time.monotonic() - t0, 3)
            if executed is not None:
                nbformat.write(nb, executed)
    return result


class _LogSink:
    """Appends kernel output to a log file as it comes; forwards progress lines."""

    def __init__(self, path: Path, on_event: OnEvent):
        self.path = path
        self.on_event = on_event
        self.lines = Lines(MAX_LINE)  # linear in the output's length; an endless line is not held

    def __call__(self, name: str, text: str) -> None:
        with open(self.path, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(text)
        for line in self.lines.feed(text):
            message = None if isinstance(line, Dropped) else progress_message(line)
            if message is not None:
                self.on_event(message)


ENGINE_NEEDS = ("nbclient", "ipykernel", "torch", "diffusers", "transformers", "accelerate")


def _readable_manifest(out_dir: Path) -> dict | None:
    try:
        return artifacts.read_manifest(out_dir)
    except (OSError, ValueError, UnsafeOutputError):
        return None


class LocalBackend(Backend):
    """Runs the notebook here; knows nothing of Kaggle."""

    name = "local"
    title = "this machine"
    remote = False

    def prepare_job(self, job, options, on_event: OnEvent, width: int = 1) -> None:
        missing = [m for m in ENGINE_NEEDS if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependencyError(missing[0], why="The local backend")

    def attach_previous(self, run: Run) -> str | None:
        return run.out_dir  # the folder every session's outputs were brought home to

    def submit(self, run: Run, on_event: OnEvent) -> Run:
        if run.state in PUSH_REST:  # interrupted or failed before: only the images not here
            run = self.render_rest(run, on_event)
            if run.state == RunState.DOWNLOADED:
                return run
        run.state = RunState.RUNNING
        runs.save(run)
        shutil.rmtree(run.folder / "work", ignore_errors=True)  # a rerun starts clean

        def kernel_started(seconds: float) -> None:
            run.timings["kernel_start"] = seconds
            on_event(f"kernel started in {seconds:.1f}s")

        try:
            result = execute_notebook(
                run.notebook_dir / CODE_FILE, run.folder / "work",
                _LogSink(run.folder / LOG_FILE, on_event), run.folder / "kernel-stderr.log",
                executed=run.folder / "executed.ipynb", on_kernel=kernel_started)
        except KeyboardInterrupt:
            # nbclient's tasks, cut off, would log their exceptions when collected: the
            # sentence the CLI prints says it all
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            self._keep_what_was_made(run, on_event)
            raise
        run.timings["notebook"] = result.seconds
        run.state = RunState.COMPLETE if result.ok else RunState.ERROR
        run.failure = None if result.ok else result.failure()
        return runs.save(run)

    def _keep_what_was_made(self, run: Run, on_event: OnEvent) -> Run:
        """An interrupted run: its finished images go where the user looks for them, and the
        run becomes partial (resume makes only the rest), complete (every image was made:
        download checks them and writes the gallery) or, with none, rendered."""
        import signal

        previous = {}
        try:  # a second Ctrl-C (or SIGTERM, SIGHUP) must not cut the rescue short
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[signum] = signal.signal(signum, signal.SIG_IGN)
        except ValueError:  # not the main thread: nothing to guard
            pass
        try:
            out_dir = Path(run.out_dir)
            try:
                with artifacts.folder_lock(out_dir):
                    here = artifacts.read_manifest(out_dir)
                    manifest = self.bring(run, out_dir, here, on_event).manifest
            except (OSError, ValueError):  # best effort: resume makes them again
                manifest = _readable_manifest(out_dir)
            share = session_plan(run)
            here = made(manifest)
            run.images_fetched = len(here)
            run.state = RunState.COMPLETE if here and share is not None and not \
                share.minus(here) else RunState.PARTIAL if here else RunState.RENDERED
            return runs.save(run)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def resolve(self, run: Run, on_event: OnEvent) -> Run:
        run.state = RunState.RENDERED  # nothing is ever pushed anywhere
        return runs.save(run)

    def wait(self, members: list[Run], say_for) -> list[Run]:
        return [self._over(run, say_for(run)) for run in members]

    def _over(self, run: Run, on_event: OnEvent) -> Run:
        # A local run is over when submit returns. One still 'running' whose work lock we
        # hold was killed (its process is gone): what it finished is kept, the rest runs again.
        if not run.state.terminal:
            run = self._keep_what_was_made(run, on_event)
            if run.state == RunState.COMPLETE:
                on_event(f"run {run.run_id} was interrupted while it ran here, after every image "
                         "was finished")
            else:
                on_event(f"run {run.run_id} was interrupted while it ran here, with "
                         f"{kinds.of(run.kind).count(run.images_fetched)} finished; 'imggenhub resume "
                         f"{run.run_id}' makes the rest")
        return run

    def bring(self, run: Run, out_dir: Path, here: dict | None, on_event: OnEvent) -> Fetched:
        """The work folder's images into ``out_dir``, then their records, joined to those of
        an earlier session (or interrupted run) there and written whole, in one rename: a
        kill at any point leaves every listed image in place, and the work folder's manifest
        until its records are in."""
        src = run.folder / "work" / OUTPUT_DIR
        # files that moved on this disk, perhaps in an earlier (interrupted) command: every
        # one is hashed against the manifest here, where that costs no download
        return Fetched(take_output(run, src, out_dir, here, run.folder / LOG_FILE), None)
