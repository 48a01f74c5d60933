"""The local backend: execute the very notebook a Kaggle push would carry, in a fresh
Jupyter kernel, inside a working folder that plays /kaggle/working."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .. import artifacts, runs
from ..errors import ImggenhubError, MissingDependencyError
from ..notebook import CODE_FILE
from ..runs import Run, RunState
from . import OnEvent

OUTPUT_SUBDIR = "output"  # what the notebook writes under its working folder
LOG_FILE = "kernel.log"
PROGRESS_PREFIX = "[imggenhub] "


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
                self.on_stream(msg["content"].get("text", ""))
            return super().output(outs, msg, display_id, cell_index)

    return StreamingClient


class _LogSink:
    """Appends kernel output to a log file as it comes; forwards progress lines."""

    def __init__(self, path: Path, on_event: OnEvent):
        self.path = path
        self.on_event = on_event
        self.partial = ""
        self.tail: list[str] = []

    def __call__(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(text)
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            self.tail = (self.tail + [line])[-40:]
            if line.startswith(PROGRESS_PREFIX):
                self.on_event(line[len(PROGRESS_PREFIX):])


class LocalBackend:
    name = "local"

    def submit(self, run: Run, notebook_dir: Path, on_event: OnEvent) -> Run:
        import nbformat
        from nbclient.exceptions import CellExecutionError, DeadKernelError

        work = run.folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        nb = nbformat.read(notebook_dir / CODE_FILE, as_version=4)
        sink = _LogSink(run.folder / LOG_FILE, on_event)
        client = _streaming_client_class()(
            nb, kernel_name="python3", resources={"metadata": {"path": str(work)}}, timeout=None)
        client.on_stream = sink
        run.state = RunState.RUNNING
        runs.save(run)
        t0 = time.monotonic()
        index = -1
        stderr = open(run.folder / "kernel-stderr.log", "ab")  # the kernel process's own chatter
        try:
            client.reset_execution_trackers()
            with client.setup_kernel(stderr=stderr):
                run.timings["kernel_start"] = round(time.monotonic() - t0, 3)
                on_event(f"kernel started in {run.timings['kernel_start']:.1f}s")
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            run.state = RunState.COMPLETE
        except CellExecutionError as exc:
            run.state = RunState.ERROR
            run.failure = json.dumps({"cell_index": index, "ename": exc.ename, "evalue": exc.evalue,
                                      "log_tail": "\n".join(sink.tail[-20:])})
        except DeadKernelError as exc:
            run.state = RunState.ERROR
            run.failure = json.dumps({"cell_index": index, "ename": "DeadKernelError",
                                      "evalue": str(exc), "log_tail": "\n".join(sink.tail[-20:])})
        finally:
            stderr.close()
            run.timings["notebook"] = round(time.monotonic() - t0, 3)
            nbformat.write(nb, run.folder / "executed.ipynb")
            runs.save(run)
        return run

    def wait(self, run: Run, on_event: OnEvent, timeout: float | None = None) -> Run:
        return run  # the local run is over when submit returns

    def fetch(self, run: Run, out_dir: Path, on_event: OnEvent) -> Run:
        t0 = time.monotonic()
        out_dir = Path(out_dir)
        artifacts.check_destination(out_dir, run.job_id)
        work = run.folder / "work"
        artifacts.collect(work / OUTPUT_SUBDIR, out_dir)
        log = run.folder / LOG_FILE
        if log.exists():
            shutil.copyfile(log, out_dir / LOG_FILE)
        problems = artifacts.verify(out_dir)
        manifest = artifacts.read_manifest(out_dir)
        run.images_fetched = len(manifest["images"]) if manifest else 0
        run.timings["collect"] = round(time.monotonic() - t0, 3)
        runs.save(run)
        if problems and run.state == RunState.COMPLETE:
            raise ImggenhubError(f"The outputs in {out_dir} failed verification: {problems[0]}.")
        shutil.rmtree(work, ignore_errors=True)
        return run
