"""Hugging Face Jobs in the Hub emulator (tests/hub_emulator.py): the endpoints the installed
``huggingface_hub`` (2.4) calls for jobs, answered as the Hub answers them, and each job run
on this machine as a process.

- ``POST /api/jobs/{namespace}``: a job spec (``dockerImage``, ``command``, ``environment``,
  ``secrets``, ``flavor``, ``timeoutSeconds``, ``labels``); the job starts at once
  (SCHEDULING, then RUNNING) as a process of ``command`` (``python``/``python3`` stand for
  this interpreter; the image is recorded, not pulled) in a folder of its own, with its
  environment and secrets, HF_ENDPOINT pointing back here and the image's HF_HUB_DISABLE_XET;
  it ends COMPLETED (exit 0), ERROR (another exit code, or its timeout: "Job timeout"), or
  CANCELED; a job stopped (cancel, timeout) gets SIGTERM, then SIGKILL after ``grace``
  seconds, as a container is stopped.
- ``GET /api/jobs/{namespace}/{id}``: inspect. Secrets are never echoed: their names only.
- ``GET /api/jobs/{namespace}?label=k=v&stage=S``: list, filtered (all labels must match).
- ``POST /api/jobs/{namespace}/{id}/cancel``.
- ``GET /api/jobs/{namespace}/{id}/logs``: server-sent events, one a log line
  (``data: {"timestamp": ..., "data": line}``), all of them from the first, then each new one
  as the job writes it; the stream ends when the job has. ``log_drops``: a list consumed one
  per stream, each the number of events after which that stream is cut (the client
  reconnects and skips what it saw).
- ``GET /api/jobs/hardware``: the flavors (``HARDWARE``), prices per minute.

Two runners: ``stub`` (the default: the job's command runs as sent, but the engine it
starts is tests/stub_engine.py, which writes the same files in milliseconds; ``image_seconds``
slows each image) and ``engine`` (the real engine, tiny models on the CPU).

Fault knobs on the emulator: ``job_faults`` is a list consumed one per create (``"500"``: the
create answers 500 and makes nothing; ``"500-after"``: it makes the job, then answers 500;
``"die"``: the job's process is killed after it starts); ``job_env`` is a list of
environments consumed one per started job, added to its own (``IMGGENHUB_ENGINE_FAIL_AFTER``:
the engine fails after N images); ``status_faults``, HTTP codes (429, 503) answered to the
next inspects, one each; ``max_timeout``, a limit shorter than the jobs ask (a job that
outlives it is stopped: "Job timeout"); the Hub emulator's ``commit_faults`` cut an upload in
half. ``jobs`` maps each id to its Job.
"""

from __future__ import annotations

import os
import secrets as _secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

TERMINAL = ("COMPLETED", "ERROR", "CANCELED", "DELETED")


def _accel(model: str, count: int, vram: str) -> dict:
    return {"type": "gpu", "model": model, "quantity": str(count), "vram": vram,
            "manufacturer": "Nvidia"}


def _hw(name, pretty, cpu, ram, per_hour, accel=None):
    micro = round(per_hour / 60 * 1e6)
    return {"name": name, "prettyName": pretty, "cpu": cpu, "ram": ram, "ephemeralStorage": "50 GB",
            "accelerator": accel, "unitCostMicroUSD": micro, "unitCostUSD": micro / 1e6,
            "unitLabel": "minute"}


HARDWARE = [
    _hw("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", 0.01),
    _hw("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", 0.40, _accel("T4", 1, "16 GB")),
    _hw("t4-medium", "Nvidia T4 - medium", "8 vCPU", "30 GB", 0.60, _accel("T4", 1, "16 GB")),
    _hw("l4x1", "1x Nvidia L4", "8 vCPU", "30 GB", 0.80, _accel("L4", 1, "24 GB")),
    _hw("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", 1.00, _accel("A10G", 1, "24 GB")),
    _hw("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", 2.50, _accel("A100", 1, "80 GB")),
    _hw("h200", "1x Nvidia H200", "23 vCPU", "256 GB", 5.00, _accel("H200", 1, "141 GB")),
]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Job:
    id: str
    owner: str
    spec: dict
    stage: str = "SCHEDULING"
    message: str | None = None
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    logs: list = field(default_factory=list)  # the job's output lines, in order
    stamps: list = field(default_factory=list)  # when each was written
    process: subprocess.Popen | None = None
    folder: str = ""
    exit_code: int | None = None

    def info(self, endpoint_owner_id: str = "0" * 24) -> dict:
        spec = self.spec
        return {"id": self.id, "createdAt": self.created, "startedAt": self.started,
                "finishedAt": self.finished, "dockerImage": spec.get("dockerImage"),
                "command": spec.get("command"), "arguments": spec.get("arguments") or [],
                "environment": spec.get("environment") or {},
                "secrets": {k: None for k in spec.get("secrets") or {}},  # names only
                "flavor": spec.get("flavor"), "labels": spec.get("labels") or {},
                "owner": {"id": endpoint_owner_id, "name": self.owner, "type": "user"},
                "status": {"stage": self.stage, "message": self.message}}


class Jobs:
    """The emulator's jobs; ``endpoint`` is where a job reaches the Hub (the emulator)."""

    def __init__(self, endpoint: callable, runner: str = "stub"):
        self.endpoint = endpoint
        self.runner = runner
        self.image_seconds = 0.0
        self.grace = 10.0  # seconds between SIGTERM and SIGKILL when a job is stopped
        self.jobs: dict[str, Job] = {}
        self.faults: list[str] = []
        self.job_env: list[dict] = []
        self.log_drops: list[int] = []
        self.status_faults: list[int] = []  # HTTP codes answered to the next inspects (429, 503)
        self.max_timeout: float | None = None  # a shorter limit than the jobs ask (tests)
        self.lock = threading.RLock()

    def create(self, owner: str, spec: dict) -> tuple[Job | None, str | None]:
        with self.lock:
            fault = self.faults.pop(0) if self.faults else None
        if fault == "500":
            return None, fault
        job = Job(id=_secrets.token_hex(12), owner=owner, spec=spec)
        with self.lock:
            self.jobs[job.id] = job
            extra = self.job_env.pop(0) if self.job_env else {}
        threading.Thread(target=self._run, args=(job, fault == "die", extra), daemon=True,
                         name=f"hf-job-{job.id}").start()
        return job, fault

    def _run(self, job: Job, die: bool, extra: dict) -> None:
        command = list(job.spec.get("command") or [])
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("HF_", "HUGGING", "IMGGENHUB_", "KAGGLE"))}
        env = {**keep, **{k: str(v) for k, v in (job.spec.get("environment") or {}).items()},
               **{k: str(v) for k, v in (job.spec.get("secrets") or {}).items()},
               "HF_ENDPOINT": self.endpoint(), "HF_HUB_DISABLE_XET": "1",
               "PYTHONUNBUFFERED": "1", **extra}
        job.folder = tempfile.mkdtemp(prefix=f"hf-job-{job.id}-")
        env["IMGGENHUB_WORK"] = os.path.join(job.folder, "work")
        if self.runner == "stub":  # the engine the bootstrap starts: the stub, from this repo
            env["IMGGENHUB_ENGINE"] = "tests.stub_engine"
            env["IMGGENHUB_STUB_SECONDS"] = str(self.image_seconds)
            env["PYTHONPATH"] = os.pathsep.join(
                [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 *filter(None, [os.environ.get("PYTHONPATH")])])
        timeout = job.spec.get("timeoutSeconds") or 30 * 60
        if self.max_timeout is not None:
            timeout = min(timeout, self.max_timeout)
        with self.lock:
            if job.stage != "SCHEDULING":  # cancelled before it started
                return
            try:
                job.process = subprocess.Popen(command, cwd=job.folder, env=env,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, errors="replace")
            except OSError as exc:
                job.stage, job.message, job.finished = "ERROR", str(exc), _now()
                return
            job.stage, job.started = "RUNNING", _now()
        if die:
            job.process.kill()
        timer = threading.Timer(float(timeout), self._time_out, args=(job,))
        timer.daemon = True
        timer.start()
        for line in job.process.stdout:
            job.stamps.append(_now())
            job.logs.append(line.rstrip("\n"))
        code = job.process.wait()
        timer.cancel()
        with self.lock:
            job.exit_code = code
            if job.stage == "RUNNING":
                job.stage = "COMPLETED" if code == 0 else "ERROR"
                job.message = None if code == 0 else f"Job failed with exit code: {code}"
            job.finished = job.finished or _now()

    def _time_out(self, job: Job) -> None:
        with self.lock:
            if job.stage == "RUNNING":
                job.stage, job.message = "ERROR", "Job timeout"
                self._stop(job)

    def _stop(self, job: Job) -> None:
        """As a container is stopped: SIGTERM, then SIGKILL after ``grace`` seconds (the
        Hub's grace is assumed, not documented)."""
        process = job.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        timer = threading.Timer(self.grace, lambda: process.poll() is None and process.kill())
        timer.daemon = True
        timer.start()

    def cancel(self, job: Job) -> None:
        with self.lock:
            if job.stage in TERMINAL:
                return
            job.stage, job.message = "CANCELED", None
            self._stop(job)

    def listed(self, owner: str, labels: list[str], stages: list[str]) -> list[Job]:
        wanted = dict(label.split("=", 1) for label in labels if "=" in label)
        with self.lock:
            return [j for j in self.jobs.values() if j.owner == owner
                    and all((j.spec.get("labels") or {}).get(k) == v for k, v in wanted.items())
                    and (not stages or j.stage in stages)]

    def wait_all(self, timeout: float = 60.0) -> None:
        """For tests: every job has ended."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if all(j.stage in TERMINAL and j.finished for j in self.jobs.values()):
                    return
            time.sleep(0.05)
        raise TimeoutError("jobs still running")


def route(handler, method: str, path: str, query: dict) -> bool:
    """Answer a jobs request on the Hub emulator's ``handler``; False: not a jobs path."""
    from .hub_emulator import HubError

    parts = path.strip("/").split("/")  # api, jobs, ...
    if parts[:2] != ["api", "jobs"]:
        return False
    jobs: Jobs = handler.emulator.jobs
    if parts[2:] == ["hardware"] and method == "GET":
        handler._json(200, HARDWARE)
        return True
    if len(parts) < 3:
        raise HubError(404, "No such jobs endpoint")
    namespace = parts[2]
    user = handler._writer(namespace)
    if len(parts) == 3 and method == "POST":
        spec = handler._json_body()
        if not isinstance(spec.get("command"), list) or not spec.get("flavor"):
            raise HubError(400, "A job needs a command (a list) and a flavor")
        if spec["flavor"] not in {h["name"] for h in HARDWARE}:
            raise HubError(400, f"Unknown flavor {spec['flavor']!r}")
        job, fault = jobs.create(user, spec)
        if fault in ("500", "500-after"):
            raise HubError(500, "Internal Error")
        handler._json(200, job.info())
        return True
    if len(parts) == 3 and method == "GET":
        listed = jobs.listed(namespace, query.get("label", []), query.get("stage", []))
        handler._json(200, [j.info() for j in listed])
        return True
    job = jobs.jobs.get(parts[3])
    if job is None or job.owner != namespace:
        raise HubError(404, "Job not found")
    if len(parts) == 4 and method == "GET":
        with jobs.lock:
            fault = jobs.status_faults.pop(0) if jobs.status_faults else None
        if fault is not None:
            raise HubError(fault, "Too Many Requests" if fault == 429 else "Service Unavailable")
        handler._json(200, job.info())
        return True
    if parts[4:] == ["logs"] and method == "GET":
        _stream_logs(handler, jobs, job)
        return True
    if parts[4:] == ["cancel"] and method == "POST":
        jobs.cancel(job)
        handler._json(200, {})
        return True
    raise HubError(404, f"No such jobs endpoint: {method} {path}")


def _stream_logs(handler, jobs: Jobs, job: Job) -> None:
    """The job's log as server-sent events, from its first line, following it to its end."""
    import json

    with jobs.lock:
        cut = jobs.log_drops.pop(0) if jobs.log_drops else None
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    sent = 0
    while True:
        finished = job.stage in TERMINAL and job.finished is not None
        while sent < len(job.logs):
            if cut is not None and sent >= cut:
                return  # the stream drops here: the client comes back
            event = {"timestamp": job.stamps[sent], "data": job.logs[sent]}
            handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            sent += 1
        handler.wfile.flush()
        if finished:
            return
        time.sleep(0.05)
