"""A local Kaggle emulator that speaks the wire protocol of the official client
(../shared/KAGGLE_API.md): POST {base}/api/v1/{Service}/{Method} (or /v1/ as on PROD)
with camelCase JSON, Basic or Bearer auth, signed file URLs, and proxy-style absolute
URIs so the unmodified `kaggle` CLI can reach it through HTTP_PROXY.

Each pushed version runs in its own thread, in a temporary folder that plays
/kaggle/working: QUEUED -> RUNNING -> COMPLETE or ERROR (or CANCEL_ACKNOWLEDGED).
Two runners:

- ``stub`` (the default of the ``Emulator`` class): reads the job document from the
  notebook's ``JOB_JSON = '...'`` cell and does in milliseconds what the real engine
  does (tiny PNGs through ``engine.save_png``, per-process manifest part, merged
  manifest, the same progress lines), with no Jupyter kernel and no torch. A pushed
  notebook without a JOB_JSON cell is run with the notebook runner instead.
- ``notebook`` (the default on the command line): runs the pushed notebook in a real
  Jupyter kernel with imggenhub's local runner, so the images are real.

Everything stays on the address it listens on (127.0.0.1 by default); it never opens a
connection anywhere, and every loop it runs is bounded in count and in time.

    python -m tests.kaggle_emulator --port 8765 [--runner stub] [--rate-limit 2] ...
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import json
import re
import os
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from .emulator_main import Served, serve

# Counter faults the command line exposes as --NAME N.
FAULTS = ("rate_limit", "server_error", "drop", "drop_after", "truncate", "oversize", "corrupt",
          "endless_body", "stale_status", "gpu_cap", "upload_cut", "upload_expire",
          "dataset_pending", "stream_drop")
FAULT_HELP = {
    "rate_limit": "the next N API calls answer HTTP 429 with Retry-After",
    "server_error": "the next N API calls answer HTTP 503",
    "drop": "the next N API calls are not handled: the connection closes without an answer",
    "drop_after": "the next N API calls are handled (a push really makes a version), then the "
                  "connection closes without an answer",
    "truncate": "the next N file downloads send half the announced bytes, then close",
    "oversize": "the next N file downloads (not manifests) send the real bytes plus 1 MiB of junk "
                "(Content-Length to match)",
    "corrupt": "the next N file downloads (not manifests) send the same length with one "
               "byte flipped",
    "endless_body": "the next N file downloads (not manifests) stream junk with no "
                    "Content-Length until the "
                    "client goes away (at most 256 MiB or 120 s)",
    "stale_status": "the next N unversioned status calls describe the previous version",
    "gpu_cap": "the next N GPU pushes get 'Maximum batch GPU session count ... reached'",
    "upload_cut": "the next N blob uploads keep the first half of what is sent, then close",
    "upload_expire": "the next N questions about an upload's progress answer 404 (expired)",
    "dataset_pending": "each dataset made from now on answers NOT_YET_PERSISTED to its first N "
                       "status calls",
    "stream_drop": "the next N live log streams break off after their first event",
}
# Kaggle's dataset licence names (the kaggle CLI's dataset-metadata.json docs)
LICENSES = ("CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0",
            "ODC-BY-1.0", "DbCL-1.0", "copyright-authors", "other", "unknown", "CC-BY-4.0",
            "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0", "CC-BY-3.0-IGO", "US-Government-Works",
            "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0", "CDLA-Sharing-1.0", "CC-BY-ND-4.0",
            "CC-BY-NC-ND-4.0", "ODC-PDDL-1.0", "GPL-3.0", "LGPL-3.0", "AGPL-3.0", "FDL-1.3",
            "EU-ODP-Legal-Notice", "apache-2.0")
DATASET_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{4,49}$")
RUNNERS = ("stub", "notebook")
STUB_DEVICE = "Tesla T4 (emulated)"  # what the stub runner records as the device
TERMINAL = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")
KAGGLE_FAILURE = "Your notebook hit an unhandled error while executing"
MAX_PAGE_SIZE = 500  # what Kaggle serves at most per page
JUNK = 1 << 20  # what `oversize` appends
ENDLESS_MAX = 256 << 20  # the most `endless_body` sends
TRICKLE_MAX_BYTES = 120  # the most `trickle` sends
HOSTILE_MAX_SECONDS = 120.0  # no hostile answer lasts longer than this
SEND_TIMEOUT = 10.0  # a client that stops reading without going away frees us after this
HOLD_MAX_SECONDS = 60.0  # the longest a stub run waits at ``hold_image`` for ``release``


@dataclass
class Faults:
    """Fault knobs. Counters fire on the next N matching requests; ``only`` limits the API
    faults (rate_limit, server_error, drop, drop_after, slow) to these method names (None:
    every API call). ``fired`` counts how often each knob acted.

    Counters: rate_limit, server_error, drop, drop_after, truncate, oversize, corrupt,
    endless_body, stale_status, gpu_cap, upload_cut, upload_expire; dataset_pending is the
    number of NOT_YET_PERSISTED answers each new dataset gives first. oversize, corrupt and endless_body count and act on
    downloads of files other than ``*manifest.json`` only (the manifest is what a client
    checks the rest against; ``manifest_body`` is the manifest's own knob). Others: slow and slow_files (seconds), trickle
    (seconds between bytes of every file download, at most 120 bytes sent), endless_pages
    (bool), manifest_body (bytes served for every listed ``*manifest.json``), fail_notebook
    (bool), session_steps (each training session a notebook runs stops after this many
    steps, as when its time is nearly up: IMGGENHUB_ENGINE_STOP_AFTER in its environment),
    extra_names (names listed besides the real ones), retry_after (header value);
    hostile text: log_text (written to each stub run's log before its first image),
    failure_message (what a failed version reports instead of Kaggle's sentence),
    long_stream_line (each live log stream first sends one ``data:`` line this many bytes
    long, then its newline, then the events); api_body (method name -> raw bytes: what that
    API method answers, HTTP 200, JSON content type, instead of its real answer: a crafted
    or malformed answer).
    Chances: fail_rate (each matching API call answers 429, 503 or drops, counted under
    those names), truncate_rate (each file download is cut short, counted as truncate);
    seed makes their dice repeatable.
    """

    rate_limit: int = 0
    server_error: int = 0
    drop: int = 0
    drop_after: int = 0
    truncate: int = 0
    oversize: int = 0
    corrupt: int = 0
    endless_body: int = 0
    stale_status: int = 0
    gpu_cap: int = 0
    upload_cut: int = 0
    upload_expire: int = 0
    dataset_pending: int = 0
    stream_drop: int = 0
    no_stream: bool = False  # the live log endpoint answers 404 (as where it does not exist)
    slow: float = 0.0
    slow_files: float = 0.0  # seconds before each file download answers (a network's latency)
    trickle: float = 0.0  # seconds between the bytes of each file download (<= 120 bytes sent)
    endless_pages: bool = False  # ListKernelSessionOutput always answers a nextPageToken
    manifest_body: bytes | None = None  # served for every listed name ending in manifest.json
    fail_notebook: bool = False
    session_steps: int = 0  # each training session ends after this many steps, as at its time limit
    fail_rate: float = 0.0  # each matching API call fails with this chance (429, 503 or drop)
    truncate_rate: float = 0.0  # each file download is cut short with this chance
    seed: int | None = None  # seeds the chances above (set it to replay a run of faults)
    only: tuple[str, ...] | None = None
    extra_names: tuple[str, ...] = ()  # file names listed besides the real ones (e.g. "../x")
    log_text: str = ""  # written to each stub run's stdout log before its first image
    failure_message: str | None = None  # a failed version's failureMessage, for Kaggle's
    long_stream_line: int = 0  # bytes of one data: line each live log stream sends first
    api_body: dict = field(default_factory=dict)  # method name -> the raw body it answers (200)
    retry_after: str = "1"
    fired: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=random.Random)

    def take(self, name: str) -> bool:
        with self.lock:
            if getattr(self, name) > 0:
                setattr(self, name, getattr(self, name) - 1)
                self.fired[name] = self.fired.get(name, 0) + 1
                return True
            return False

    def roll(self, rate: str, name: str) -> bool:
        """True with the chance the knob ``rate`` names; counted in ``fired`` as ``name``."""
        with self.lock:
            if getattr(self, rate) > 0 and self.rng.random() < getattr(self, rate):
                self.fired[name] = self.fired.get(name, 0) + 1
                return True
            return False

    def api_failure(self) -> str | None:
        """The API fault to act out now, if any: a counter first, then fail_rate's dice."""
        for name in ("drop", "rate_limit", "server_error"):
            if self.take(name):
                return name
        with self.lock:
            if self.fail_rate > 0 and self.rng.random() < self.fail_rate:
                name = self.rng.choice(("drop", "rate_limit", "server_error"))
                self.fired[name] = self.fired.get(name, 0) + 1
                return name
        return None

    def note(self, name: str) -> None:
        """Count a use of a knob that is not a counter."""
        with self.lock:
            self.fired[name] = self.fired.get(name, 0) + 1

    def set(self, **knobs) -> None:
        with self.lock:
            for key, value in knobs.items():
                if not hasattr(self, key) or key in ("fired", "lock", "rng"):
                    raise ValueError(f"unknown fault {key}")
                if key == "only":
                    value = tuple(value) if value else None
                elif key == "extra_names":
                    value = tuple(value or ())
                elif key == "manifest_body" and isinstance(value, str):
                    value = value.encode("utf-8")
                elif key == "api_body":
                    value = {m: b.encode("utf-8") if isinstance(b, str) else bytes(b)
                             for m, b in (value or {}).items()}
                setattr(self, key, value)
                if key == "seed":
                    self.rng.seed(value)


@dataclass
class Blob:
    """One resumable upload: what StartBlobUpload announced and what has arrived."""

    name: str
    size: int
    data: bytearray = field(default_factory=bytearray)

    @property
    def complete(self) -> bool:
        return len(self.data) == self.size


@dataclass
class Version:
    number: int
    meta: dict
    text: str
    status: str = "QUEUED"
    failure: str | None = None
    log: list = field(default_factory=list)
    workdir: Path | None = None
    env: dict = field(default_factory=dict)
    pushed: float = field(default_factory=time.monotonic)
    created: float = field(default_factory=time.time)
    finished: float | None = None
    runner: str | None = None  # which runner ran it: "stub" or "notebook"
    inputs: dict = field(default_factory=dict)  # dataset slug -> {file name: bytes}, pinned at push
    running_since: float | None = None
    token_seen: str | None = None  # the stub runner: the HF token the kernel found
    job: dict | None = None  # the job document the stub read
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Emulator(Served):
    """The emulator. ``runner``: "stub" (fast, default) or "notebook" (real Jupyter kernel).
    ``queue_seconds`` (time spent QUEUED) and ``image_seconds`` (stub: time per image) can be
    changed at any time: a queued version leaves the queue once it has been queued for
    ``queue_seconds`` as they are then (so lowering them lets a waiting version start), and
    ``image_seconds`` applies to the images made afterwards.

    For tests that must see something happen while a run goes on, without betting on the
    wall clock: with ``hold_image = N`` every stub run, once it has logged N - 1 images,
    sets ``held`` and waits in image N (it is RUNNING all along) until ``release`` is set,
    its version is cancelled, or HOLD_MAX_SECONDS pass. ``live_streams`` counts the live log
    streams served (Server-Sent Events, not the stored log of a run that ended), and
    ``gpu_refused`` lists the kernels whose push was refused for want of a free GPU
    session."""

    def __init__(self, username: str = "imggenhub", key: str = "emulator-key",
                 token: str = "emulator-token", queue_seconds: float = 0.2, gpu_sessions: int = 2,
                 runner: str = "stub", image_seconds: float = 0.0):
        if runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
        self.username, self.key, self.token = username, key, token
        self.queue_seconds = queue_seconds
        self.image_seconds = image_seconds
        self.gpu_sessions = gpu_sessions
        # the weekly GPU quota: the hours allowed, hours already used before (settable), and
        # the running time of every GPU version on top
        self.session_seconds: float | None = None  # a version running longer is killed
        self.gpu_quota_hours = 30.0
        self.gpu_used_seconds = 0.0
        self.quota_refresh = "2026-11-30T00:00:00Z"
        self.runner = runner
        self.faults = Faults()
        self.hold_image: int | None = None  # stub runs wait in this image (1-based) ...
        self.held = threading.Event()  # ... setting this when they get there ...
        self.release = threading.Event()  # ... until this is set (see the class docstring)
        self.live_streams = 0  # live log streams served (SSE), counted as they start
        self.gpu_refused: list[str] = []  # kernels refused for want of a free GPU session
        self.root = Path(tempfile.mkdtemp(prefix="kaggle-emulator-"))
        self.kernels: dict[str, list[Version]] = {}
        self.files: dict[str, Path] = {}  # signed token -> file
        self.file_names: dict[str, str] = {}  # signed token -> the name it was listed under
        self.blobs: dict[str, Blob] = {}
        self.datasets: dict[str, dict] = {}  # owner/slug -> {"versions": [{name: bytes}], ...}
        self.calls: list[tuple[str, dict]] = []
        self.served: list[str] = []  # the names of the output files served, in order
        self.lock = threading.RLock()
        self.threads: list[threading.Thread] = []

    # --- lifecycle ---------------------------------------------------------------

    thread_name = "kaggle-emulator"

    def handler(self) -> type:
        return _Handler

    def stop(self, timeout: float = 300) -> None:
        """Stop: stub runs end after their current image, notebook runs are waited for (at most
        ``timeout`` seconds in all), then the server closes and the temporary folder goes."""
        for versions in list(self.kernels.values()):
            for version in versions:
                version.cancel.set()
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.close_server()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_idle(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # --- kernels -----------------------------------------------------------------

    def versions(self, ref: str) -> list[Version]:
        return self.kernels.get(ref, [])

    def kernel_id(self, ref: str) -> int:
        return zlib.crc32(ref.encode("utf-8")) % 10**8 + 1

    def _active_gpu(self) -> int:
        return sum(1 for vs in self.kernels.values() for v in vs
                   if v.meta.get("enableGpu") and v.status in ("QUEUED", "RUNNING"))

    def save_kernel(self, body: dict) -> dict:
        ref = body.get("slug") or ""
        if "/" not in ref:
            return {"error": "Notebook not found"}
        owner = ref.split("/", 1)[0]
        if owner != self.username:
            return {"error": f"You cannot push to {owner}'s notebooks"}
        try:
            json.loads(body.get("text") or "")
        except json.JSONDecodeError:
            return {"error": "Notebook is not valid JSON"}
        bad = [s for s in body.get("datasetDataSources", []) if s not in self.datasets]
        if bad:
            return {"invalidDatasetSources": bad}
        # a kernel source: the output of that kernel's latest complete version
        sources = {s: self._complete_output(s) for s in body.get("kernelDataSources", [])}
        bad = [s for s, files in sources.items() if files is None]
        if bad:
            return {"invalidKernelSources": bad}
        with self.lock:
            if body.get("enableGpu") and (self.faults.take("gpu_cap")
                                          or self._active_gpu() >= self.gpu_sessions):
                self.gpu_refused.append(ref)
                return {"error": f"Maximum batch GPU session count of {self.gpu_sessions} reached"}
            versions = self.kernels.setdefault(ref, [])
            version = Version(len(versions) + 1, body, body["text"])
            # as on Kaggle, the kernel reads the dataset versions current at its push
            version.inputs = {s.split("/", 1)[1]: dict(self.datasets[s]["versions"][-1])
                              for s in body.get("datasetDataSources", [])}
            version.inputs.update({s.split("/", 1)[1]: files for s, files in sources.items()})
            if self.faults.fail_notebook:
                version.env["IMGGENHUB_ENGINE_FAIL_AFTER"] = "1"
            if self.faults.session_steps:
                version.env["IMGGENHUB_ENGINE_STOP_AFTER"] = str(self.faults.session_steps)
            versions.append(version)
            thread = threading.Thread(target=self._execute, args=(ref, version), daemon=True,
                                      name=f"kernel {ref} v{version.number}")
            version.thread = thread
            self.threads.append(thread)
        thread.start()
        return {"ref": f"/code/{ref}", "url": f"{self.url}/code/{ref}",
                "versionNumber": version.number, "kernelId": self.kernel_id(ref)}

    def cancel(self, ref: str, number: int | None = None, timeout: float = 30.0) -> str:
        """Cancel version ``number`` of ``ref`` (the latest if None); return its status.

        The status becomes CANCEL_REQUESTED at once; a stub run stops after the image it is
        making (this call waits for that, at most ``timeout`` seconds), keeps what it made
        (manifest merged) and the status becomes CANCEL_ACKNOWLEDGED. A notebook run cannot
        be interrupted: it becomes CANCEL_ACKNOWLEDGED at once and finishes unseen. A version
        that already ended is left as it is."""
        version = _version_of(self.versions(ref), None if number is None else str(number))
        if version is None:
            raise KeyError(f"no version {number or '(latest)'} of {ref}")
        with self.lock:
            if version.status in TERMINAL:
                return version.status
            version.cancel.set()
            version.status = "CANCEL_REQUESTED"
        if version.runner != "notebook" and version.thread is not None:
            version.thread.join(timeout=timeout)
        with self.lock:
            version.status = "CANCEL_ACKNOWLEDGED"
        return version.status

    def _finish(self, version: Version, status: str, failure: str | None = None) -> None:
        """Set the final status unless the version was cancelled meanwhile."""
        with self.lock:
            version.finished = time.monotonic()
            if not version.cancel.is_set():
                if failure is not None and self.faults.failure_message is not None:
                    failure = self.faults.failure_message
                version.failure = failure
                version.status = status

    def _execute(self, ref: str, version: Version) -> None:
        def stream(name: str, text: str) -> None:
            version.log.append({"stream_name": name, "time": round(time.time(), 3), "data": text})

        try:
            # queued until queue_seconds (as they are now, re-read) have passed since the push
            while (left := version.pushed + self.queue_seconds - time.monotonic()) > 0:
                if version.cancel.wait(min(left, 0.05)):
                    version.finished = time.monotonic()
                    return
            with self.lock:
                if version.cancel.is_set():
                    version.finished = time.monotonic()
                    return
                version.status = "RUNNING"
                version.running_since = time.monotonic()
            folder = self.root / ref.replace("/", "--") / f"v{version.number}"
            folder.mkdir(parents=True)
            version.workdir = folder / "working"
            if version.inputs:
                version.env["IMGGENHUB_KAGGLE_INPUT"] = str(_mount(folder / "input", version.inputs))
            job_cell = _job_cell(version.text) if self.runner == "stub" else None
            if job_cell is None:
                version.runner = "notebook"
                self._run_notebook(version, folder, stream)
            else:
                version.runner = "stub"
                self._run_stub(version, job_cell, stream)
        except Exception as exc:  # the emulator must never hang a test
            self._finish(version, "ERROR", f"emulator: {exc}")

    def _run_notebook(self, version: Version, folder: Path, stream) -> None:
        from imggenhub.backends.local import execute_notebook

        notebook = folder / "notebook.ipynb"
        notebook.write_text(version.text, encoding="utf-8")
        result = execute_notebook(notebook, version.workdir, stream, folder / "stderr.log",
                                  env={**os.environ, **version.env})
        if result.ok:
            self._finish(version, "COMPLETE")
        else:
            stream("stderr", f"{result.ename}: {result.evalue}\n")
            self._finish(version, "ERROR", KAGGLE_FAILURE)

    def _run_stub(self, version: Version, job_cell: str, stream) -> None:
        """What the rendered notebook and the engine do, minus the GPU: same files, same
        manifest, same log lines."""
        from imggenhub import engine

        t0 = time.monotonic()
        work = version.workdir
        work.mkdir(parents=True, exist_ok=True)

        def say(message: str) -> None:
            stream("stdout", f"{engine.PROGRESS_PREFIX} {message}\n")

        try:
            job_json, doc = _parse_job_cell(job_cell)
            version.job = doc
            # as the engine does: every shipped input found where mounted, checked by sha256
            root = version.env.get("IMGGENHUB_KAGGLE_INPUT", "/nonexistent")
            engine.resolve_inputs(doc, root=root)
            if doc.get("hf_token_file"):  # found and read as the engine does, kept to itself
                version.token_seen = _read_token(doc["hf_token_file"], root)
            _write_cell_files(version.text, work)  # %%writefile imggenhub_engine/*.py
            (work / "imggenhub_job.json").write_text(job_json, encoding="utf-8")
            tasks = engine.Plan.of(doc).tasks(doc)
        except Exception as exc:
            stream("stdout", "Traceback (most recent call last):\n")
            stream("stdout", f"{type(exc).__name__}: {exc}\n")
            stream("stderr", f"{type(exc).__name__}: {exc}\n")
            self._finish(version, "ERROR", KAGGLE_FAILURE)
            return
        out = work / "output"
        model_id = (doc.get("model") or {}).get("id")
        say(f"job {doc.get('job_id')}: {len(tasks)} images with {model_id} in 1 process")
        part = stub_part(out, doc)
        say(f"model {model_id} ready on stub (stub) in 0.00s; {len(tasks)} images for this process")
        if self.faults.log_text:
            stream("stdout", self.faults.log_text)
        bundler = engine.Bundler(out, 0, part, job=doc) if doc.get("bundle") else None
        fail_after = int(version.env.get("IMGGENHUB_ENGINE_FAIL_AFTER", "-1"))
        error = None
        done = 0
        clock = engine.SessionClock(doc, started=time.time())  # the engine's own early stop
        for task in tasks:
            if version.cancel.is_set():
                break
            if self.session_seconds and time.monotonic() - t0 > self.session_seconds:
                # Kaggle's end of the session: the run is killed and keeps no output
                shutil.rmtree(work / "output", ignore_errors=True)
                stream("stderr", "Session timed out\n")
                self._finish(version, "ERROR", "Your notebook exceeded the session time limit")
                return
            if clock.time_up():
                say(f"the session's time is nearly up: stopping with {len(tasks) - done} of this "
                    "process's images still to make (the next session makes them)")
                break
            if 0 <= fail_after <= done:
                error = f"RuntimeError: injected failure after {engine.images_text(done)}"
                break
            t_img = time.monotonic()
            if self.hold_image == done + 1:
                self._hold(version)
            if self.image_seconds:
                version.cancel.wait(self.image_seconds)  # a cancel ends the wait, not the image
            record, data = stub_image(out, task, t_img)
            seconds = record["seconds"]
            if bundler is not None:
                record["bundle"] = bundler.add(task["file"], data)
            part.image(record)
            done += 1
            clock.lap(time.monotonic() - t_img)
            say(f"image {done}/{len(tasks)} {task['file']} in {seconds:.2f}s "
                f"(elapsed {time.monotonic() - t0:.1f}s)")
        if bundler is not None:
            bundler.close()
        part.update_process(seconds=round(time.monotonic() - t0, 4))
        if error:
            stream("stdout", "Traceback (most recent call last):\n")
            stream("stdout", f"{error}\n")
            stream("stdout", f"{engine.PROGRESS_PREFIX} error: {error}\n")
        manifest = engine.merge_manifest(out, doc)
        n = len(manifest["images"]) if manifest else 0
        say(f"done: {engine.images_text(n)} in {time.monotonic() - t0:.1f}s"
            + ("" if error is None else " (failed, exit 1)"))
        if error:
            stream("stderr", f"RuntimeError: imggenhub engine failed: {error}\n")
            self._finish(version, "ERROR", KAGGLE_FAILURE)
        else:
            self._finish(version, "COMPLETE")

    def _hold(self, version: Version) -> None:
        """Wait in this image until ``release`` is set, the version is cancelled, or
        HOLD_MAX_SECONDS pass (a test that never releases fails on its own assertions, late,
        rather than hanging)."""
        self.held.set()
        deadline = time.monotonic() + HOLD_MAX_SECONDS
        while not self.release.wait(0.02):
            if version.cancel.is_set() or time.monotonic() > deadline:
                return

    def _complete_output(self, ref: str) -> dict | None:
        """The files of ``ref``'s latest complete version, {name: bytes}, as a kernel source
        mounts them (None: no such kernel, or no version of it completed)."""
        done = [v for v in self.kernels.get(ref, []) if v.status == "COMPLETE"]
        if not done:
            return None
        return {name: path.read_bytes() for name, path in self.output_files(done[-1])}

    def output_files(self, version: Version) -> list[tuple[str, Path]]:
        """The version's output files once its run is over (nothing while it runs)."""
        if version.status not in TERMINAL or version.finished is None:
            return []
        if version.workdir is None or not version.workdir.exists():
            return []
        return sorted((p.relative_to(version.workdir).as_posix(), p)
                      for p in version.workdir.rglob("*") if p.is_file())

    def sign(self, path: Path, host: str, name: str = "") -> str:
        token = secrets.token_urlsafe(12)
        self.files[token] = path
        self.file_names[token] = name
        return f"http://{host}/files/{token}?Expires={int(time.time()) + 3600}&Signature=emulated"


def _read_token(path: str, root: str) -> str:
    from imggenhub.engine.inputs import _locate

    return _locate(path, root).read_text(encoding="utf-8").strip()


def _mount(root: Path, inputs: dict) -> Path:
    """The attached datasets, read-only, as Kaggle mounts them: ROOT/<slug>/<file>."""
    for slug, files in inputs.items():
        folder = root / slug
        folder.mkdir(parents=True)
        for name, data in files.items():
            path = folder / name  # a kernel's output has folders
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o444)
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            sub.chmod(0o555)
        folder.chmod(0o555)
    root.chmod(0o555)
    return root


# --- the stub runner's helpers ---------------------------------------------------------

def _cells(text: str) -> list[dict]:
    try:
        nb = json.loads(text)
    except (ValueError, RecursionError):
        return []
    cells = nb.get("cells") if isinstance(nb, dict) else None
    return [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def _job_cell(text: str) -> str | None:
    """The source of the code cell holding ``JOB_JSON = ``, or None if there is none."""
    for cell in _cells(text):
        if cell.get("cell_type") == "code" and "JOB_JSON = " in _source(cell):
            return _source(cell)
    return None


def _parse_job_cell(source: str) -> tuple[str, dict]:
    """(the JSON text, the job document) of a JOB_JSON cell: exactly one statement, an
    assignment of a string literal to JOB_JSON; never executed."""
    body = ast.parse(source).body
    if (len(body) != 1 or not isinstance(body[0], ast.Assign)
            or [getattr(t, "id", None) for t in body[0].targets] != ["JOB_JSON"]):
        raise ValueError("the JOB_JSON cell must hold exactly one assignment JOB_JSON = '...'")
    value = ast.literal_eval(body[0].value)
    if not isinstance(value, str):
        raise ValueError("JOB_JSON must be a string literal")
    doc = json.loads(value)
    if not isinstance(doc, dict):
        raise ValueError("JOB_JSON must hold a JSON object")
    return value, doc


def _write_cell_files(text: str, work: Path) -> None:
    """What ``%%writefile NAME`` cells write (a plain name, or package/module.py, inside
    ``work``)."""
    for cell in _cells(text):
        source = _source(cell)
        if cell.get("cell_type") != "code" or not source.startswith("%%writefile "):
            continue
        first, _, rest = source.partition("\n")
        name = first[len("%%writefile "):].strip()
        if re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_]+\.py)?", name) and not name.startswith("."):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(rest, encoding="utf-8")


def _stub_image(seed: int):
    from PIL import Image

    return Image.new("RGB", (8, 8), (seed & 255, (seed >> 8) & 255, (seed >> 16) & 255))


def stub_part(out: Path, doc: dict):
    """A stub run's manifest part (one process), as the engine starts one in ``out``."""
    from imggenhub import engine

    parts = out / engine.PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    return engine.PartLog(parts / "rank-00.jsonl", {
        "engine_version": engine.ENGINE_VERSION, "job_id": doc.get("job_id"),
        "run_id": doc.get("run_id"), "model": (doc.get("model") or {}).get("id"),
        "processes_total": 1, "scheduler_flag": doc.get("scheduler"),
        **({"sweep": doc["sweep"]} if doc.get("sweep") else {})}, {
        "rank": 0, "run_id": doc.get("run_id"), "session": doc.get("session", 1),
        "device": STUB_DEVICE, "dtype": "stub", "model_load_seconds": 0.0,
        "scheduler": "stub"})


def stub_image(out: Path, task: dict, started: float) -> tuple[dict, bytes]:
    """A stub run's picture of ``task`` (8 x 8, coloured by its seed) written into ``out`` as
    the engine writes one, and its record as the engine makes it (``started``: when the
    image began, on the monotonic clock)."""
    from imggenhub import engine

    record = {
        "index": task["index"], "prompt_index": task["prompt_index"],
        "prompt": task["prompt"], "negative_prompt": task["negative_prompt"],
        "seed": task["seed"], "model": task["model"]["id"], "steps": task["steps"],
        "guidance": task["guidance"], "width": task["width"] or 8,
        "height": task["height"] or 8, "scheduler": "stub", "device": STUB_DEVICE,
        **({"cell": task["cell"], "sweep_of": task["sweep_of"]}
           if task.get("cell") is not None else {}),
    }
    data = engine.save_png(_stub_image(task["seed"]), out / task["file"], record)
    record.update(file=task["file"], sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                  seconds=round(time.monotonic() - started, 4))
    return record, data


def _version_of(versions: list[Version], label: str | None) -> Version | None:
    if not versions:
        return None
    if not label:
        return versions[-1]
    try:
        n = int(label.lstrip("v"))
    except ValueError:
        return None
    return versions[n - 1] if 0 < n <= len(versions) else None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _page(body: dict) -> tuple[int, int]:
    """(start, size) from pageToken and pageSize; a bad token starts over."""
    try:
        size = int(body.get("pageSize") or 20)
    except (TypeError, ValueError):
        size = 20
    size = min(max(size, 1), MAX_PAGE_SIZE)
    try:
        start = max(int(body.get("pageToken") or 0), 0)
    except (TypeError, ValueError):
        start = 0
    return start, size


def _not_found(ref: str):
    return 404, {"code": 404, "message": f"Kernel {ref} not found"}


class _Handler(BaseHTTPRequestHandler):
    emulator: Emulator
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    # --- plumbing ----------------------------------------------------------------

    def _path(self) -> str:
        return urlsplit(self.path).path if self.path.startswith("http") else self.path.split("?")[0]

    def _host(self) -> str:
        if self.path.startswith("http"):
            return urlsplit(self.path).netloc  # via HTTP_PROXY: keep the client's view
        return self.headers.get("Host", "%s:%s" % self.server.server_address[:2])

    def _send(self, code: int, body: bytes, ctype: str = "application/json", headers=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _streaming(self, ctype: str, headers: dict) -> None:
        """The head of a 200 whose body is written bit by bit, on a connection closed after
        it; a client that stops reading frees the handler after SEND_TIMEOUT."""
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True
        self.connection.settimeout(SEND_TIMEOUT)

    def _json(self, code: int, data: dict, headers=None):
        self._send(code, json.dumps(data).encode(), headers=headers)

    def _authorized(self) -> str | None:
        em = self.emulator
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] == em.token:
            return em.username
        if auth.startswith("Basic "):
            try:
                user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if (user, key) == (em.username, em.key):
                return user
        return None

    # --- verbs -------------------------------------------------------------------

    def do_POST(self):
        em = self.emulator
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self._path()
        for prefix in ("/api/v1/", "/v1/"):
            if path.startswith(prefix):
                service, _, method = path[len(prefix):].partition("/")
                break
        else:
            return self._json(404, {"code": 404, "message": f"No route {path}"})
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return self._json(400, {"code": 400, "message": "Body is not JSON"})
        if not isinstance(body, dict):
            return self._json(400, {"code": 400, "message": "Body is not a JSON object"})
        em.calls.append((method, body))
        faulty = em.faults.only is None or method in em.faults.only
        if faulty and em.faults.slow:
            time.sleep(em.faults.slow)
        failure = em.faults.api_failure() if faulty else None
        if failure == "drop":
            self.close_connection = True
            return  # no answer at all: the client sees the connection close
        if failure == "rate_limit":
            return self._json(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}},
                              {"Retry-After": em.faults.retry_after})
        if failure == "server_error":
            return self._json(503, {"error": {"code": 503, "status": "UNAVAILABLE"}})
        user = self._authorized()
        if user is None and method != "IntrospectToken":
            return self._json(401, {"code": 401, "message": "Unauthenticated"})
        handler = getattr(self, f"api_{method}", None)
        if handler is None:
            return self._json(404, {"code": 404, "message": f"Unknown method {service}/{method}"})
        crafted = em.faults.api_body.get(method)
        if crafted is not None:
            em.faults.note("api_body")
            return self._send(200, crafted)
        code, data = handler(body)
        if faulty and em.faults.take("drop_after"):
            self.close_connection = True
            return  # handled, but the client never learns the outcome
        self._json(code, data)

    def do_GET(self):
        path = self._path()
        for prefix in ("/api/v1/kernels/logs/stream/", "/v1/kernels/logs/stream/"):
            if path.startswith(prefix):
                return self._log_stream(path[len(prefix):])
        if path.startswith("/files/"):
            return self._serve_file(path[len("/files/"):])
        if path.startswith("/code/"):
            return self._send(200, b"<html>emulated kernel page</html>", "text/html")
        self._json(404, {"code": 404, "message": f"No route {path}"})

    def _serve_file(self, token: str):
        em = self.emulator
        faults = em.faults
        target = em.files.get(token)
        if target is None or not target.exists():
            return self._json(404, {"code": 404, "message": "No such file"})
        em.served.append(em.file_names.get(token, ""))
        if faults.slow_files:
            time.sleep(faults.slow_files)
        data = target.read_bytes()
        # The manifest is what a client checks the other files against; the content faults
        # (endless_body, oversize, corrupt) leave it alone: manifest_body is its own knob.
        manifest = em.file_names.get(token, "").endswith("manifest.json")
        manifest_body = faults.manifest_body
        if manifest and manifest_body is not None:
            faults.note("manifest_body")
            data = bytes(manifest_body)
        if not manifest and faults.take("endless_body"):
            return self._endless_body()
        if faults.trickle:
            faults.note("trickle")
            return self._trickle(data, float(faults.trickle))
        if faults.take("truncate") or faults.roll("truncate_rate", "truncate"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        if manifest:
            pass
        elif faults.take("oversize"):
            data = data + _junk(JUNK)
        elif data and faults.take("corrupt"):
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        return self._send(200, data, "application/octet-stream")

    def _endless_body(self):
        """Junk with no Content-Length (the body ends when the connection closes), until the
        client goes away, ENDLESS_MAX bytes or HOSTILE_MAX_SECONDS, whichever comes first."""
        self._streaming("application/octet-stream", {"Connection": "close"})
        chunk = _junk(64 << 10)
        deadline = time.monotonic() + HOSTILE_MAX_SECONDS
        sent = 0
        try:
            while sent < ENDLESS_MAX and time.monotonic() < deadline:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the client went away (or stopped reading): done

    def _trickle(self, data: bytes, pause: float):
        """The announced length, then one byte at a time with ``pause`` between bytes, at most
        TRICKLE_MAX_BYTES bytes (and HOSTILE_MAX_SECONDS), then the connection closes."""
        self._streaming("application/octet-stream", {"Content-Length": str(len(data))})
        deadline = time.monotonic() + HOSTILE_MAX_SECONDS
        try:
            for i, byte in enumerate(data[:TRICKLE_MAX_BYTES]):
                if i:
                    if time.monotonic() + pause > deadline:
                        break
                    time.sleep(pause)
                self.wfile.write(bytes([byte]))
        except OSError:
            pass

    def do_PUT(self):
        """A resumable upload, as Google's resumable uploads answer the kaggle client: a PUT
        of the bytes (``Content-Range: bytes S-E/T`` to go on from S), or a question
        (``Content-Range: bytes */T``, no body): 200 when all arrived, else 308 with
        ``Range: bytes=0-N`` (what is kept), 404 for an unknown or expired upload."""
        em = self.emulator
        length = int(self.headers.get("Content-Length") or 0)
        token = self._path().rsplit("/", 1)[-1]
        blob = em.blobs.get(token)
        span = self.headers.get("Content-Range", "")
        if blob is None:
            self.rfile.read(length)
            return self._json(404, {"code": 404, "message": "Unknown upload"})
        if span.startswith("bytes */"):
            self.rfile.read(length)
            if em.faults.take("upload_expire"):
                em.blobs.pop(token, None)
                return self._json(404, {"code": 404, "message": "Upload expired"})
            return self._progress(blob)
        start = 0
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", span)
        if match:
            start = int(match.group(1))
        if start > len(blob.data):
            self.rfile.read(length)
            return self._progress(blob)
        if em.faults.take("upload_cut"):
            kept = self.rfile.read(length // 2)
            with em.lock:
                blob.data[start:] = kept
            self.close_connection = True
            self.connection.shutdown(2)  # mid-body: the client sees a broken connection
            return
        data = self.rfile.read(length)
        with em.lock:
            blob.data[start:] = data
            if len(blob.data) > blob.size:
                del blob.data[blob.size:]
                return self._json(400, {"code": 400, "message": "More bytes than announced"})
        self._progress(blob)

    def _log_stream(self, rest: str):
        """GET {base}/v1/kernels/logs/stream/{owner}/{slug}?versionLabel=vN: while the session
        runs, Server-Sent Events (``data: {json}`` per log entry, then ``data: END_OF_LOG``);
        after it, the stored log as a JSON array. A reconnect replays from the start. The
        version goes in the query; in the path it answers 404, as Kaggle's does."""
        em = self.emulator
        raw_query = urlsplit(self.path).query
        query = dict(part.partition("=")[::2] for part in raw_query.split("&") if part)
        em.calls.append(("LogStream", {"path": rest, **query}))
        if self._authorized() is None:
            return self._json(401, {"code": 401, "message": "Unauthenticated"})
        parts = rest.strip("/").split("/")
        if em.faults.no_stream or len(parts) != 2:
            return self._json(404, {"code": 404, "message": "Not found"})
        version = _version_of(em.versions("/".join(parts)), query.get("versionLabel"))
        if version is None:
            return self._json(404, {"code": 404, "message": "Not found"})
        if version.status in TERMINAL:
            return self._send(200, json.dumps(version.log).encode(), "application/json")
        drop = em.faults.take("stream_drop")
        with em.lock:
            em.live_streams += 1
        # chunked, one chunk per event: a client reading in blocks (requests' iter_lines,
        # which imggenhub and the kaggle CLI both use, reads 512 bytes at a time) gets each
        # event as it comes; a body delimited only by the connection's close would hold the
        # events back until 512 bytes had piled up (the kaggle CLI's --follow, written this
        # way, is live against Kaggle: its stream must come in chunks there too)
        self._streaming("text/event-stream", {"Cache-Control": "no-cache",
                                              "Transfer-Encoding": "chunked"})
        sent, deadline = 0, time.monotonic() + HOSTILE_MAX_SECONDS
        try:
            if em.faults.long_stream_line > 0:
                em.faults.note("long_stream_line")
                self._long_line(em.faults.long_stream_line)
            while time.monotonic() < deadline:
                ended = version.status in TERMINAL
                for entry in version.log[sent:]:
                    self._chunk(b"data: " + json.dumps(entry).encode() + b"\n\n")
                    sent += 1
                    if drop:
                        self.connection.shutdown(2)  # broken off mid-stream
                        return
                if ended:
                    self._chunk(b"data: END_OF_LOG\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                time.sleep(0.05)
        except OSError:
            pass  # the client went away

    def _long_line(self, size: int) -> None:
        """One ``data:`` line of ``size`` bytes in all (junk after the field name), sent in
        64 KiB chunks without allocating it whole, then its newline and a blank line."""
        block = b"x" * (64 << 10)
        self._chunk(b"data: ")
        left = size - len(b"data: ")
        while left > 0:
            self._chunk(block[:left] if left < len(block) else block)
            left -= len(block)
        self._chunk(b"\n\n")

    def _chunk(self, data: bytes) -> None:
        """One chunk of a chunked body, sent at once."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _progress(self, blob: Blob):
        if blob.complete:
            return self._json(200, {})
        headers = {"Range": f"bytes=0-{len(blob.data) - 1}"} if blob.data else {}
        self._send(308, b"", headers=headers)

    # --- API methods: each returns (http code, JSON body) ------------------------

    def api_IntrospectToken(self, body):
        em = self.emulator
        active = body.get("token") == em.token
        return 200, ({"active": True, "username": em.username} if active else {"active": False})

    def api_SaveKernel(self, body):
        return 200, self.emulator.save_kernel(body)

    def _kernel(self, body):
        """(ref, versions, version label): the kaggle CLI's pull of OWNER/SLUG/N sends the
        kernelSlug "SLUG/N"."""
        slug, _, version = str(body.get("kernelSlug") or "").partition("/")
        ref = f"{body.get('userName')}/{slug}"
        return ref, self.emulator.versions(ref), body.get("versionLabel") or version or None

    def api_GetKernelSessionStatus(self, body):
        em = self.emulator
        ref, versions, label = self._kernel(body)
        if not label and len(versions) > 1 and em.faults.take("stale_status"):
            version = versions[-2]  # Kaggle may still describe the previous run
        else:
            version = _version_of(versions, label)
        if version is None:
            return 404, {"code": 404, "message": f"Kernel {ref} {label or ''} not found"}
        data = {"status": version.status}
        if version.failure:
            data["failureMessage"] = version.failure
        return 200, data

    def _version(self, body):
        """The kernel ref and the version the body asks for (None if there is none)."""
        ref, versions, label = self._kernel(body)
        return ref, _version_of(versions, label)

    def api_ListKernelSessionOutput(self, body):
        em = self.emulator
        ref, version = self._version(body)
        if version is None:
            return _not_found(ref)
        files = em.output_files(version)
        if files and em.faults.extra_names:
            files = files + [(name, files[0][1]) for name in em.faults.extra_names]
        start, size = _page(body)
        endless = em.faults.endless_pages
        page = files[:size] if endless else files[start:start + size]
        data = {"files": [{"url": em.sign(path, self._host(), name), "fileName": name}
                          for name, path in page]}
        if start == 0:
            data["log"] = json.dumps(list(version.log))
        if endless:
            em.faults.note("endless_pages")
            data["nextPageToken"] = str(start + size)  # new token every time, same files
        elif start + size < len(files):
            data["nextPageToken"] = str(start + size)
        return 200, data

    def api_ListKernelFiles(self, body):
        """What `kaggle kernels files` shows: the version's output files, paged."""
        em = self.emulator
        ref, version = self._version(body)
        if version is None:
            return _not_found(ref)
        files = em.output_files(version)
        start, size = _page(body)
        page = []
        for name, path in files[start:start + size]:
            try:
                stat = path.stat()
            except OSError:
                continue
            page.append({"name": name, "size": stat.st_size, "creationDate": _iso(stat.st_mtime)})
        data = {"files": page}
        if start + size < len(files):
            data["nextPageToken"] = str(start + size)
        return 200, data

    def api_GetKernel(self, body):
        em = self.emulator
        ref, version = self._version(body)
        if version is None:
            return _not_found(ref)
        meta = version.meta
        slug = ref.split("/", 1)[1]
        language = meta.get("language") or "python"
        kernel_type = meta.get("kernelType") or "notebook"
        metadata = {
            "id": em.kernel_id(ref), "ref": ref, "title": meta.get("newTitle") or slug,
            "author": ref.split("/")[0], "slug": ref, "lastRunTime": _iso(version.created),
            "language": language, "kernelType": kernel_type,
            "isPrivate": meta.get("isPrivate", False), "enableGpu": meta.get("enableGpu", False),
            "enableTpu": meta.get("enableTpu", False),
            "enableInternet": meta.get("enableInternet", False),
            "categoryIds": meta.get("categoryIds", []),
            "datasetDataSources": meta.get("datasetDataSources", []),
            "kernelDataSources": meta.get("kernelDataSources", []),
            "competitionDataSources": meta.get("competitionDataSources", []),
            "modelDataSources": meta.get("modelDataSources", []),
            "currentVersionNumber": len(em.versions(ref)),
            "dockerImage": meta.get("dockerImage"), "machineShape": meta.get("machineShape")}
        return 200, {
            "metadata": {k: v for k, v in metadata.items() if v is not None},
            # Kaggle's blob.slug is the bare slug: `kaggle kernels pull` writes SLUG.ipynb
            "blob": {"source": version.text, "language": language, "kernelType": kernel_type,
                     "slug": slug}}

    def api_ListKernels(self, body):
        em = self.emulator
        kernels = [{"ref": ref, "title": vs[-1].meta.get("newTitle"), "author": ref.split("/")[0],
                    "slug": ref, "currentVersionNumber": len(vs)}
                   for ref, vs in sorted(em.kernels.items())]
        return 200, {"kernels": kernels}

    def api_GetAcceleratorQuotaStatistics(self, body):
        em = self.emulator
        used = em.gpu_used_seconds + sum(
            ((v.finished or time.monotonic()) - v.running_since) for vs in em.kernels.values()
            for v in vs if v.meta.get("enableGpu") and v.running_since is not None)
        return 200, {"gpuQuota": {"timeUsed": f"{used:.3f}s",
                                  "totalTimeAllowed": f"{em.gpu_quota_hours * 3600:.0f}s",
                                  "hasEverRun": used > 0},
                     "quotaRefreshTime": em.quota_refresh}

    def api_GetDatasetStatus(self, body):
        em = self.emulator
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        with em.lock:
            dataset = em.datasets.get(ref)
            if dataset is None:
                return 404, {"code": 404, "message": f"Dataset {ref} not found"}
            if dataset["pending"] > 0:
                dataset["pending"] -= 1
                return 200, {"status": "NOT_YET_PERSISTED"}
        return 200, {"status": dataset.get("status", "READY")}

    def api_StartBlobUpload(self, body):
        if body.get("type") != "DATASET" or not body.get("name"):
            return 400, {"code": 400, "message": "An upload needs a type and a name"}
        token = secrets.token_urlsafe(12)
        self.emulator.blobs[token] = Blob(str(body["name"]), int(body.get("contentLength") or 0))
        return 200, {"token": token, "createUrl": f"http://{self._host()}/upload/{token}"}

    def _dataset_files(self, files) -> dict | str:
        """{file name: bytes} for the tokens of a new dataset version, or what is wrong."""
        em = self.emulator
        blobs = [em.blobs.get(str(f.get("token"))) for f in files]
        if not blobs:
            return "A dataset needs at least one file"
        if any(b is None or not b.complete for b in blobs):
            return "Some files were not uploaded"  # nothing half-uploaded is ever kept
        return {b.name: bytes(b.data) for b in blobs}

    def api_CreateDataset(self, body):
        em = self.emulator
        ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
        if body.get("ownerSlug") != em.username:
            return 403, {"code": 403, "message": f"You cannot create datasets for {body.get('ownerSlug')}"}
        if not DATASET_SLUG.match(str(body.get("slug"))):
            return 200, {"error": "The dataset slug must be 5 to 50 letters, digits or '-'"}
        if not 6 <= len(body.get("title") or "") <= 50:
            return 200, {"error": "The title must be between 6 and 50 characters"}
        if body.get("licenseName") not in LICENSES:
            return 200, {"error": f"Invalid license name {body.get('licenseName')!r}"}
        files = self._dataset_files(body.get("files", []))
        with em.lock:
            if ref in em.datasets:
                return 200, {"error": f"Dataset {ref} already exists"}
            if isinstance(files, str):
                return 200, {"error": files}
            em.datasets[ref] = {"versions": [files], "title": body.get("title"),
                                "private": bool(body.get("isPrivate")),
                                "pending": em.faults.dataset_pending}
        return 200, {"ref": ref, "url": f"{em.url}/datasets/{ref}", "status": "ok"}

    def api_CreateDatasetVersion(self, body):
        em = self.emulator
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        files = self._dataset_files(body.get("body", {}).get("files", []))
        with em.lock:
            if ref not in em.datasets:
                return 404, {"code": 404, "message": f"Dataset {ref} not found"}
            if isinstance(files, str):
                return 200, {"error": files}
            em.datasets[ref]["versions"].append(files)
            em.datasets[ref].update(status="READY", pending=em.faults.dataset_pending)
        return 200, {"ref": ref, "url": f"{em.url}/datasets/{ref}", "status": "ok"}


def _junk(n: int) -> bytes:
    pattern = b"emulator junk, not your file. "
    return (pattern * (n // len(pattern) + 1))[:n]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Local Kaggle emulator for imggenhub's tests")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--username", default="imggenhub")
    parser.add_argument("--key", default="emulator-key")
    parser.add_argument("--token", default="emulator-token")
    parser.add_argument("--runner", choices=RUNNERS, default="notebook",
                        help="notebook: run pushed notebooks in a Jupyter kernel (real images; "
                             "default); stub: fake the engine in milliseconds")
    parser.add_argument("--queue-seconds", type=float, default=0.2)
    parser.add_argument("--image-seconds", type=float, default=0.0,
                        help="stub runner: seconds spent on each image")
    for name in FAULTS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=0, metavar="N",
                            help=f"fault: {FAULT_HELP[name]}")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds added to each API answer")
    parser.add_argument("--slow-files", type=float, default=0.0,
                        help="seconds before each file download answers")
    parser.add_argument("--trickle", type=float, default=0.0, metavar="SECONDS",
                        help="file downloads send one byte per SECONDS, at most "
                             f"{TRICKLE_MAX_BYTES} bytes, then close")
    parser.add_argument("--endless-pages", action="store_true",
                        help="the output listing always answers a next page token")
    parser.add_argument("--manifest-body-file", type=Path, metavar="PATH",
                        help="serve this file's bytes for every listed *manifest.json")
    parser.add_argument("--extra-name", action="append", default=[], metavar="NAME",
                        help="list NAME among the output files too (repeatable; e.g. ../x)")
    parser.add_argument("--fail-rate", type=float, default=0.0, metavar="P",
                        help="each API call fails (429, 503 or a dropped connection) with chance P")
    parser.add_argument("--truncate-rate", type=float, default=0.0, metavar="P",
                        help="each file download is cut short with chance P")
    parser.add_argument("--seed", type=int, default=None, help="seed for the chances above")
    parser.add_argument("--fail-notebook", action="store_true", help="pushed notebooks fail")
    parser.add_argument("--failure-message", default=None, metavar="TEXT",
                        help="what a failed version reports instead of Kaggle's sentence")
    parser.add_argument("--log-text", default="", metavar="TEXT",
                        help="text each stub run writes to its log before its first image")
    parser.add_argument("--long-stream-line", type=int, default=0, metavar="BYTES",
                        help="each live log stream first sends one data: line this long")
    args = parser.parse_args(argv)
    manifest_body = args.manifest_body_file.read_bytes() if args.manifest_body_file else None
    em = Emulator(args.username, args.key, args.token, args.queue_seconds, runner=args.runner,
                  image_seconds=args.image_seconds)
    em.faults.set(**{name: getattr(args, name) for name in FAULTS}, slow=args.slow,
                  slow_files=args.slow_files, trickle=args.trickle,
                  endless_pages=args.endless_pages, manifest_body=manifest_body,
                  extra_names=args.extra_name, fail_notebook=args.fail_notebook,
                  fail_rate=args.fail_rate, truncate_rate=args.truncate_rate, seed=args.seed,
                  failure_message=args.failure_message, log_text=args.log_text,
                  long_stream_line=args.long_stream_line)
    return serve(em.start, lambda: em.stop(timeout=10), args.host, args.port,
                 lambda url: f"Kaggle emulator ready at {url} (user {args.username}, runner "
                             f"{args.runner}, files in {em.root})")


if __name__ == "__main__":
    sys.exit(main())
