"""The Hugging Face Jobs backend: each session of a run is a job on a rented GPU flavor.

Where a job's files go: a private dataset repo of the user's, one a run
(``<user>/imggenhub-<run>-<tag>``; ``clean`` deletes it), one folder a shard and session
(``<shard>/s<session>/in``: the engine and the job document; ``.../out``: what the engine
makes, uploaded as it is made), and the run's local files (init images, masks, LoRAs) once,
content-addressed, in ``inputs/``. The job itself runs fixed code
(``bootstrap.py``) in a pinned image, the token reaching it as a job secret only; its
labels name the run and session, so an interrupted start is found again, never doubled.
Prices and speeds: ``flavors.py``. Everything Hugging Face-specific lives in this package."""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ...engine import ENGINE_PACKAGE, ERROR_PREFIX, LOG_FILE, MODULES, counted, progress_message
from ...config import state_dir
from ...engine.tiny import SHIPPED
from ...errors import (CredentialsError, ImggenhubError, OverQuota, SpecError, StillRunning,
                       Unreachable)
from ...job.notebook import job_document
from ...outputs import artifacts
from ...run import runs
from ...run.lifecycle import PUSH_REST, RunState
from ...run.runs import Failure, Run
from ..base import Backend, Fetched, OnEvent, take_output
from ..kaggle import inputs as kaggle_inputs
from ..kaggle.prepare import check_memory
from . import flavors

REPO_PREFIX = "imggenhub-"  # the private dataset repo that carries a run's files: its name
SHARED_REPO = "imggenhub-runs"  # where every run's files went before a run had its own
INPUTS = "inputs"  # the repo's folder of the run's local files (the engine's mount of them)
IMAGE = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime"  # pinned: torch and CUDA come with it
PINNED = ("diffusers", "transformers", "accelerate", "huggingface_hub", "safetensors", "peft",
          "pillow")
RUN_LABEL, SESSION_LABEL = "imggenhub-run", "imggenhub-session"
JOB_FILE = "hfjob.json"  # in the run's notebook folder: its repo, folder, flavor, timeout
MIN_TIMEOUT = 30 * 60  # a session's time: at least this, else twice the estimate
JOB_MARGIN = 10 * 60  # a job's limit is its session's time and this: packages, inputs, the
# last upload, after the engine's own clean stop
UPLOAD_SECONDS = 300  # how often a job uploads what it made (the Hub limits commits an hour)
LAST_UPLOAD_WAIT = 120.0  # how long a fetch waits for a job's last upload once it has ended
MIN_ENGINE_SECONDS = 300  # the least a job's engine may have: packages, the model's load, a picture
STATES = {"SCHEDULING": RunState.QUEUED, "RUNNING": RunState.RUNNING,
          "COMPLETED": RunState.COMPLETE, "ERROR": RunState.ERROR,
          "CANCELED": RunState.CANCELLED, "DELETED": RunState.CANCELLED}
ATTEMPTS = 4


def label(run_id: str) -> str:
    """A run id as a label value (a shard's id has a slash)."""
    return run_id.replace("/", "-")


def _network(exc: BaseException) -> bool:
    """A transport error (worth another try), not this machine's own (a full disk...)."""
    import errno
    import socket

    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH,
        errno.ENETUNREACH, errno.EPIPE)


def pins() -> list[str]:
    """The packages the job installs where its image lacks them: this machine's versions,
    the ones the engine was tested with here."""
    out = []
    for package in PINNED:
        try:
            out.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return out


class Follower(threading.Thread):
    """A job's live log (``fetch_job_logs(follow=True)``), read on a thread of its own: each
    engine progress line said as it comes, the last lines kept for a failure's record. The
    log is a view: the status polls decide, and a broken stream only ends the view."""

    def __init__(self, backend: "HfJobsBackend", run: Run, say: OnEvent):
        super().__init__(name=f"hf-job-log-{run.kernel_ref}", daemon=True)
        self.api, self.job_id = backend.api, run.kernel_ref
        self.namespace = backend._job_file(run)["namespace"]
        self.say, self.tail, self.done = say, deque(maxlen=40), threading.Event()

    def run(self) -> None:
        try:
            for line in self.api.fetch_job_logs(job_id=self.job_id, follow=True,
                                                namespace=self.namespace):
                if self.done.is_set():
                    return
                self.tail.append(line)
                message = progress_message(line)
                if message is not None:
                    self.say(message)
        except Exception:  # noqa: BLE001 - a view ends; the polls go on
            return


@dataclass
class Prepared:
    user: str
    flavor: flavors.Flavor
    timeout: int  # seconds, each job's session (its engine's time)
    cost: flavors.Cost
    max_cost: float | None = None
    salt: str = ""  # random: the run's repo and labels are never another machine's
    shipment: kaggle_inputs.Shipment | None = None  # the job's files on this machine


class HfJobsBackend(Backend):
    name = "hf-jobs"
    title = "Hugging Face Jobs"

    def __init__(self, settings=None):
        super().__init__(settings)
        self._api = None
        self._followers: dict[str, Follower] = {}  # by job: kept across waits (no replays)


    # --- the client -------------------------------------------------------------------

    @property
    def token(self) -> str:
        from huggingface_hub import get_token

        token = get_token()
        if not token:
            raise CredentialsError("Hugging Face Jobs needs a token: set HF_TOKEN or run 'hf auth "
                                   "login' (a token with write access, on an account with "
                                   "credit).")
        return token

    @property
    def api(self):
        if self._api is None:
            import inspect

            import huggingface_hub
            from huggingface_hub import HfApi

            if not hasattr(HfApi, "list_jobs_hardware") or "labels" not in \
                    inspect.signature(HfApi.run_job).parameters:
                raise SpecError(
                    "The hf-jobs backend needs a huggingface_hub whose jobs take labels and list "
                    f"their hardware (it is tested with 2.4; here: {huggingface_hub.__version__}); "
                    "pip install -U huggingface_hub.")
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()  # the command says what happens, in its own lines
            huggingface_hub.utils.logging.set_verbosity_error()  # and says its own warnings
            self._api = HfApi(token=self.token)
        return self._api

    def _call(self, what: str, fn, on_event: OnEvent | None = None, attempts: int = ATTEMPTS):
        """``fn()``, again after a pause on a refused rate (429), a server error or a broken
        connection; the Hub's other answers in one sentence each."""
        from huggingface_hub.errors import HfHubHTTPError

        wait = 1.0
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except HfHubHTTPError as exc:
                status = getattr(exc.response, "status_code", None)
                if status == 401:
                    raise CredentialsError(f"The Hub refused the token while {what} (HTTP 401); "
                                           "set HF_TOKEN to a valid one.") from None
                if status == 402:
                    raise OverQuota(f"The Hub says the account cannot pay for this ({what}: HTTP "
                                    "402); add credit, then resume.") from None
                if status is not None and status < 500 and status != 429:
                    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                    raise ImggenhubError(f"The Hub refused {what} (HTTP {status}): {first}.") \
                        from None
                problem = f"HTTP {status}"
            except OSError as exc:
                if not _network(exc):
                    raise
                problem = type(exc).__name__
            except Exception as exc:  # httpx's transport errors are not OSErrors
                if not type(exc).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
                    raise
                problem = type(exc).__name__
            if attempt == attempts or self.deadline.passed(wait):
                raise Unreachable(f"Could not reach the Hugging Face Hub while {what} ({problem}, "
                                  f"{attempts} tries).")
            if on_event:
                on_event(f"the Hub did not answer {what} ({problem}); trying again in {wait:.0f}s")
            self.tunables.clock.sleep(wait)
            wait = min(wait * 2, self.tunables.retry_max_wait)

    # --- prepare ----------------------------------------------------------------------

    def width(self, job, asked: int | None) -> int:
        return min(asked or 1, job.image_count)

    def flavors(self, on_event: OnEvent) -> dict:
        try:
            known = flavors.from_hardware(self._call("listing the hardware",
                                                     self.api.list_jobs_hardware, attempts=2))
        except (Unreachable, ImggenhubError) as exc:
            on_event(f"note: the hardware list is unavailable ({exc}); using the published prices")
            known = {}
        return known or dict(flavors.TABLE)

    def prepare_job(self, job, options, on_event: OnEvent, width: int = 1) -> Prepared:
        if job.kind != "images":
            raise SpecError("Training runs on Kaggle or here (--backend kaggle or local); the "
                            "hf-jobs backend makes images only, for now.")
        for ref in {job.model["id"], (job.refiner or {}).get("id"),
                    *((p.model or {}).get("id") for p in job.prompts)}:
            if ref in SHIPPED or (ref and ref.startswith("/")):
                raise SpecError(f"{ref} is on this machine only; a Hugging Face job loads models "
                                "from the Hub (give a Hub id), or use --backend local.")
        user = self._call("checking the token", lambda: self.api.whoami())["name"]
        shipment = kaggle_inputs.plan(job, user)  # read and hashed before anything is sent
        if shipment is not None:
            n = len(shipment.files)
            on_event(f"inputs: {counted(n, 'file')} on this machine {'goes' if n == 1 else 'go'} "
                     "to the run's private dataset, each once")
        flavor = flavors.choose(getattr(options, "flavor", None), self.flavors(on_event))
        cost = self._priced(job, flavor, width, on_event)
        on_event(cost.sentence())
        limit = getattr(options, "max_cost", None)
        if limit is not None and cost.usd > limit:
            raise OverQuota(f"The estimate (about ${cost.usd:.2f}) is over --max-cost "
                            f"${limit:.2f}; nothing was started (a cheaper --flavor, fewer "
                            "images, or a higher --max-cost).")
        timeout = max(MIN_TIMEOUT, math.ceil(cost.minutes * 2 * 60))
        if limit is not None:  # no job may bill past the run's share of --max-cost
            budget = math.floor(limit / width / flavor.usd_per_hour * 3600)
            if budget < JOB_MARGIN + MIN_ENGINE_SECONDS:
                raise OverQuota(f"--max-cost ${limit:.2f} over {width} job{'s' if width > 1 else ''} "
                                f"on {flavor.name} leaves each {budget / 60:.0f} min, less than a "
                                f"job needs to start, load and upload (about "
                                f"{(JOB_MARGIN + MIN_ENGINE_SECONDS) / 60:.0f} min); nothing was "
                                "started.")
            if budget - JOB_MARGIN < timeout:
                timeout = budget - JOB_MARGIN
                on_event(f"each job stops after about {timeout / 60:.0f} min of images, to keep "
                         f"the run under --max-cost ${limit:.2f} (resume makes what is left)")
        import secrets

        return Prepared(user, flavor, timeout, cost, limit, secrets.token_hex(4), shipment)

    def _priced(self, job, flavor: flavors.Flavor, width: int, on_event: OnEvent) -> flavors.Cost:
        """The job's time and cost on ``flavor`` over ``width`` jobs: planned for its cards
        (one sentence if it cannot fit), from the T4 table or the user's runs on its GPU."""
        from ..kaggle import estimate

        plans = check_memory(job.document(), flavor.machine(), flavor.describe(), on_event)
        history = estimate.read_history(state_dir(), self._measured_on(flavor.gpu))
        guess = estimate.estimate(job.document(), history, where=f" on {flavor.gpu}")
        return flavors.cost(guess.seconds_per_image * guess.images,
                            guess.startup_seconds - estimate.SESSION_START, flavor, width,
                            guess.basis, guess.learned,
                            min((p.processes for p in plans), default=None))

    def estimate(self, job, options, on_event: OnEvent) -> str:
        """What the job would cost on the flavor asked, said, nothing started."""
        flavor = flavors.choose(getattr(options, "flavor", None), self.flavors(on_event))
        return self._priced(job, flavor, self.width(job, None), on_event).sentence()

    def _measured_on(self, gpu: str | None) -> str:
        """The history's name for runs measured on ``gpu`` at this Hub (an emulator's runs
        never correct the real one's estimates); no token needed."""
        from huggingface_hub import constants

        return f"{constants.ENDPOINT} jobs {gpu}"

    def prepare(self, job, run: Run, prepared: Prepared, on_event: OnEvent) -> None:
        doc = job_document(job, run.run_id)
        if run.only is not None:
            doc["only"] = run.only
        if prepared.shipment is not None:  # the engine finds them in the repo's inputs/
            doc = kaggle_inputs.kernel_document(doc, prepared.shipment)
            kaggle_inputs.save(run.notebook_dir, prepared.shipment)
        session = min(prepared.timeout, run.session_timeout_seconds or prepared.timeout)
        doc["install_missing"] = True  # a job has the internet: the engine may pip-install
        doc["session_seconds"] = session  # it stops cleanly before the limit; resume goes on
        self.render(run, job, doc)
        run.estimate_hours = round(prepared.cost.minutes / 60, 3)  # each job's, start included
        # the run's repo and labels carry a random tag: two machines of one account that
        # start the same job in the same second never share them
        top = run.run_id.split("/")[0]  # a shard's files go to its run's repo
        (run.notebook_dir / JOB_FILE).write_text(json.dumps({
            "repo": f"{prepared.user}/{REPO_PREFIX}{top}-{prepared.salt}",
            "namespace": prepared.user,
            "flavor": prepared.flavor.name, "gpu": prepared.flavor.gpu,
            "timeout": session + JOB_MARGIN,
            "usd_per_hour": prepared.flavor.usd_per_hour,
            "estimate_usd": round(prepared.cost.usd / max(1, prepared.cost.jobs), 2),
            "max_cost": prepared.max_cost, "tag": f"{label(run.run_id)}-{prepared.salt}",
            # each job commits this often: the Hub allows a repo some hundred commits an hour
            "upload_seconds": max(UPLOAD_SECONDS, 40 * prepared.cost.jobs)}),
            encoding="utf-8")
        run.kernel_ref = self.tag(run)

    def _job_file(self, run: Run) -> dict:
        return json.loads((run.notebook_dir / JOB_FILE).read_text(encoding="utf-8"))

    def tag(self, run: Run) -> str:
        """The run's name on the Hub: its folder in the dataset and its jobs' label."""
        return self._job_file(run).get("tag") or label(run.run_id)

    def prefix(self, run: Run, session: int | None = None) -> str:
        return f"{self.tag(run)}/s{session or run.session}"

    # --- start ------------------------------------------------------------------------

    def _upload_inputs(self, run: Run, repo: str, on_event: OnEvent, session: int) -> None:
        """The engine package and the job document (its engine stopping cleanly within
        ``session`` seconds of the job's start) into the session's ``in`` folder, and the
        run's local files the repo lacks into ``inputs/`` (a commit before it)."""
        from ... import engine

        self._call("making the private dataset for the run's files", lambda: self.api.create_repo(
            repo, repo_type="dataset", private=True, exist_ok=True), on_event)
        doc = runs.document(run)
        doc["session_seconds"] = min(doc.get("session_seconds") or session, session)
        where = f"{self.prefix(run)}/in"
        files = [(f"{where}/{ENGINE_PACKAGE}/{name}.py", Path(engine.__file__).parent / f"{name}.py",
                  None) for name in MODULES]
        files.append((f"{where}/job.json", json.dumps(doc).encode("utf-8"), None))
        shipment = kaggle_inputs.load(run.notebook_dir)
        if shipment is not None:  # the first shard sends them, the others find them there
            self._upload_files(run, repo, shipment, on_event)
        self._commit(run, repo, files, on_event)

    def _upload_files(self, run: Run, repo: str, shipment, on_event: OnEvent) -> None:
        """The run's local files the repo lacks (content-addressed), in a commit of their own."""
        there = set(self._call("listing the run's files", lambda: self.api.list_repo_files(
            repo, repo_type="dataset"), on_event))
        files = []
        for f in shipment.files:
            if (path := f"{INPUTS}/{shipment.slug}/{f.name}") not in there:
                kaggle_inputs.unchanged(f)
                on_event(f"inputs: uploading {f.label} ({kaggle_inputs.size_text(f.size)})")
                files.append((path, Path(f.path), f))
        if files:
            self._commit(run, repo, files, on_event, "the inputs")

    def _commit(self, run: Run, repo: str, files: list, on_event: OnEvent,
                what: str = "the job") -> None:
        from huggingface_hub import CommitOperationAdd

        def commit():  # fresh operations each try: one holds the state of its own upload
            operations = []
            for path, source, f in files:
                operation = CommitOperationAdd(path, source)
                # the bytes sent are the ones hashed (the file may change meanwhile): a
                # path named by its sha256 never holds other bytes
                if f is not None and operation.upload_info.sha256.hex() != f.sha256:
                    raise SpecError(f"The input file {f.path} changed after this run was made; "
                                    "make a new run with it.")
                operations.append(operation)
            return self.api.create_commit(
                repo, operations, repo_type="dataset",
                commit_message=f"imggenhub run {run.run_id} session {run.session}: {what}")

        self._call(f"uploading {what}", commit, on_event)

    def _budget(self, run: Run, spec: dict) -> int | None:
        """The seconds this job may bill under --max-cost (None: no limit): the limit less
        what every job of the run has billed and what those still running may bill at
        most. Too little for a job to start, load and make a picture is refused."""
        limit = spec.get("max_cost")
        if limit is None:
            return None
        if run.shard is not None:
            parent = runs.load(run.run_id.rsplit("/shard-", 1)[0])
            members = runs.shards_of(parent)
        else:
            members = [run]
        billed = sum(m.timings.get("billed_usd", 0.0) for m in members)
        running = sum(self._job_file(m)["timeout"] / 3600 * self._job_file(m)["usd_per_hour"]
                      for m in members if m.run_id != run.run_id
                      and m.state in (RunState.PUSHED, RunState.QUEUED, RunState.RUNNING))
        seconds = math.floor((limit - billed - running) / spec["usd_per_hour"] * 3600)
        if seconds < JOB_MARGIN + MIN_ENGINE_SECONDS:
            raise OverQuota(f"Run {run.run_id}'s jobs have billed ${billed:.2f} of its --max-cost "
                            f"${limit:.2f}{' (more may run)' if running else ''}; what is left is "
                            "too little for another job to start and make a picture: nothing "
                            "was started.")
        return seconds

    def submit(self, run: Run, on_event: OnEvent) -> Run:
        spec = self._job_file(run)
        budget = self._budget(run, spec)  # before anything changes: a refusal leaves it as is
        if run.state in PUSH_REST:
            run = self.render_rest(run, on_event)
            if run.state == RunState.DOWNLOADED:
                return run
        token = self.token  # without it nothing is sent, the run stays as it is
        timeout = spec["timeout"] if budget is None else min(spec["timeout"], budget)
        self._upload_inputs(run, spec["repo"], on_event, timeout - JOB_MARGIN)
        run.state = RunState.PUSHING
        runs.save(run)
        return self._start(run, spec, token, timeout, on_event)

    def _start(self, run: Run, spec: dict, token: str, timeout: int, on_event: OnEvent) -> Run:
        from . import bootstrap

        env = {"IMGGENHUB_REPO": spec["repo"], "IMGGENHUB_PREFIX": self.prefix(run),
               "IMGGENHUB_PINS": " ".join(pins()), "IMGGENHUB_LOG": LOG_FILE,
               "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the log says what happens, in lines
               "IMGGENHUB_UPLOAD_SECONDS": str(spec.get("upload_seconds") or UPLOAD_SECONDS)}
        labels = self._labels(run)
        source = Path(bootstrap.__file__).read_text(encoding="utf-8")
        try:
            job = self._call("starting the job", lambda: self.api.run_job(
                image=IMAGE, command=["python", "-c", source], env=env,
                secrets={"HF_TOKEN": token}, flavor=spec["flavor"], timeout=timeout,
                labels=labels, name=f"imggenhub-{self.tag(run)}",
                namespace=spec["namespace"]), on_event, attempts=1)
        except Unreachable:  # it may have started: the labels tell ('resume' looks)
            run.state = RunState.PUSH_UNKNOWN
            runs.save(run)
            raise Unreachable(f"The start of run {run.run_id}'s job broke off, so it may or may "
                              f"not have started; 'imggenhub resume {run.run_id}' finds out and "
                              "starts it only if it did not.") from None
        except ImggenhubError:
            run.state = RunState.RENDERED
            runs.save(run)
            raise
        return self._started(run, job.id, job.url, on_event)

    def _started(self, run: Run, job_id: str, url: str, on_event: OnEvent) -> Run:
        run.kernel_ref, run.version, run.url = job_id, run.session, url
        run.state = RunState.PUSHED
        run.timings["pushed_at"] = self.tunables.clock.monotonic()
        on_event(f"started job {job_id} on {self._job_file(run)['flavor']}: {url}")
        return runs.save(run)

    def _labels(self, run: Run) -> dict:
        return {RUN_LABEL: self.tag(run), SESSION_LABEL: str(run.session)}

    def resolve(self, run: Run, on_event: OnEvent) -> Run:
        labels = self._labels(run)
        namespace = self._job_file(run)["namespace"]  # (huggingface_hub's own look-up of it
        # goes to the endpoint its module saw first)
        listed = self._call("looking for the run's job", lambda: list(
            self.api.list_jobs(labels=labels, namespace=namespace)), on_event)
        # the server's filter, checked here too: never another run's job
        found = [j for j in listed if all((j.labels or {}).get(k) == v for k, v in labels.items())]
        if found:
            on_event(f"the interrupted start of run {run.run_id} had started job {found[0].id}; "
                     "following it")
            return self._started(run, found[0].id, found[0].url, on_event)
        on_event(f"the interrupted start of run {run.run_id} never started a job; it can be "
                 "started again")
        run.state = RunState.RENDERED
        return runs.save(run)

    # --- follow -----------------------------------------------------------------------

    def status(self, run: Run, on_event: OnEvent | None = None) -> tuple[RunState, str | None]:
        info = self._call("reading the job's status",
                          lambda: self.api.inspect_job(
                              job_id=run.kernel_ref, namespace=self._job_file(run)["namespace"]),
                          on_event)
        stage = str(getattr(info.status, "stage", "") or "").upper()
        state = STATES.get(stage, RunState.RUNNING)
        if state.terminal:
            self._billed(run, info)
        return state, info.status.message

    def _billed(self, run: Run, info) -> None:
        """The job's minutes as billed (started to finished, each minute begun counted) and
        their price at the flavor's rate, into the record (a session adds to the ones before)."""
        from datetime import datetime, timezone

        started, finished = getattr(info, "started_at", None), getattr(info, "finished_at", None)
        if started is None or run.timings.get("billed_session") == run.session:
            return
        if finished is None:  # stopped, and still making its last upload: billed until now
            finished = datetime.now(timezone.utc)
        minutes = math.ceil(max(0.0, (finished - started).total_seconds()) / 60)
        rate = self._job_file(run)["usd_per_hour"]
        run.timings["billed_minutes"] = run.timings.get("billed_minutes", 0) + minutes
        run.timings["billed_usd"] = round(run.timings.get("billed_usd", 0.0) + minutes * rate / 60, 4)
        run.timings["billed_session"] = run.session

    def wait(self, members: list[Run], say_for) -> list[Run]:
        """Poll the jobs until one of them ends (or the deadline: StillRunning); meanwhile
        each one's engine progress streams in from its live log."""
        clock, start = self.tunables.clock, self.tunables.clock.monotonic()
        for run in members:
            if not run.state.terminal and run.kernel_ref not in self._followers:
                self._followers[run.kernel_ref] = follower = Follower(self, run, say_for(run))
                follower.start()
        while True:
            for k, run in enumerate(members):
                if run.state.terminal:
                    continue
                state, message = self.status(run, say_for(run))
                if state != run.state:
                    say_for(run)(f"job {run.kernel_ref}: {state.value}")
                    run.state = state
                    if state.failed:
                        run.failure = self._failure(run, state, message)
                    members[k] = runs.save(run)
            if any(m.state.terminal for m in members):
                return members
            elapsed = clock.monotonic() - start
            pause = min(self.tunables.poll_max_interval,
                        max(self.tunables.poll_interval, elapsed / 5))
            if self.deadline.passed(pause):
                raise StillRunning("still running")
            clock.sleep(pause)

    def _failure(self, run: Run, state: RunState, message: str | None) -> Failure:
        """A failed job's record: the Hub's word, and the engine's own error from the log's
        last lines when it printed one."""
        follower = self._followers.get(run.kernel_ref)
        if follower is not None:
            follower.join(timeout=2.0)  # the stream ends with the job: its last lines
        tail = list(follower.tail) if follower is not None else []
        raised = [l[len(ERROR_PREFIX):] for l in tail if l.startswith(ERROR_PREFIX)]
        ename, _, evalue = raised[-1].partition(": ") if raised else ("", "", "")
        said = message or ("the job was cancelled" if state == RunState.CANCELLED else
                           "the job failed")
        return Failure(kind="cancelled" if state == RunState.CANCELLED else "kernel",
                       ename=ename or ("Cancelled" if state == RunState.CANCELLED else "JobError"),
                       evalue=f"{said} ({ename}: {evalue})" if raised else said,
                       log_tail="\n".join(tail))

    def close(self) -> None:
        """The live logs end with the command."""
        for follower in self._followers.values():
            follower.done.set()
        self._followers.clear()

    def cancel(self, run: Run, on_event: OnEvent) -> Run:
        """Cancel the run's job (what it uploaded stays)."""
        if run.kernel_ref and run.state in (RunState.PUSHED, RunState.QUEUED, RunState.RUNNING):
            try:
                self._call("cancelling the job", lambda: self.api.cancel_job(
                    job_id=run.kernel_ref, namespace=self._job_file(run)["namespace"]), on_event)
            except ImggenhubError:  # it may have ended meanwhile: then there is nothing to stop
                state, _ = self.status(run, on_event)
                if not state.terminal:
                    raise
                on_event(f"job {run.kernel_ref} had ended ({state.value})")
                return run
            on_event(f"cancelled job {run.kernel_ref}")
        return run

    # --- outputs ----------------------------------------------------------------------

    def bring(self, run: Run, out_dir: Path, here: dict | None, on_event: OnEvent) -> Fetched:
        """Each session's uploaded output folder not brought yet (every one, when an image of
        the run is missing here), in order, joined into ``out_dir``. A record whose picture is
        neither on the Hub nor here (a job cut off between its record and its upload) is
        dropped, so that the picture is owed again, not fetched forever."""
        from huggingface_hub import snapshot_download

        repo = self._job_file(run)["repo"]
        manifest = here
        staging = run.folder / "remote"
        brought = set(run.timings.get("fetched_sessions") or [])
        if here is None or self._lost(run, out_dir, here):  # a lost or changed file, or no
            brought = set()  # manifest here: every session is read again
        complete = self._last_upload(run, repo, on_event)
        for session in range(1, run.session + 1):
            if session in brought:
                continue
            prefix = self.prefix(run, session)
            self._call("downloading the outputs", lambda: snapshot_download(
                repo, repo_type="dataset", allow_patterns=[f"{prefix}/out/*"],
                local_dir=staging, token=self.token), on_event)
            src = staging / prefix / "out"
            if src.is_dir():
                manifest = take_output(run, src, out_dir, manifest, src / LOG_FILE, shared=True,
                                       remote=True)
            brought.add(session)
        shutil.rmtree(staging, ignore_errors=True)
        if not complete:  # its last upload not seen: this session is read again later
            brought.discard(run.session)
        run.timings["fetched_sessions"] = sorted(brought)
        lost = self._lost(run, out_dir, manifest)
        if lost:
            names = {r["file"] for r in lost}
            manifest = {**manifest, "images": [r for r in manifest["images"]
                                               if r["file"] not in names]}
            artifacts.write_manifest(out_dir, manifest)
            on_event(f"{len(lost)} picture(s) the job recorded never reached the Hub; they are "
                     "made again by the next session")
        return Fetched(manifest, None)

    def _last_upload(self, run: Run, repo: str, on_event: OnEvent) -> bool:
        """A job stopped by a cancel or its time limit may still be making its last upload:
        wait for its mark, a while at most. False: not seen (the session is read again by a
        later fetch). A job that ended by itself made it before it ended."""
        from .bootstrap import DONE

        if not run.kernel_ref or run.state not in (RunState.CANCELLED, RunState.ERROR) \
                or run.session in (run.timings.get("fetched_sessions") or []):
            return True
        mark = f"{self.prefix(run)}/out/{DONE}"
        clock, until = self.tunables.clock, self.tunables.clock.monotonic() + LAST_UPLOAD_WAIT
        said = False
        while True:
            if self._call("looking for the job's last upload", lambda: self.api.file_exists(
                    repo, mark, repo_type="dataset"), on_event):
                return True
            if clock.monotonic() >= until:
                on_event(f"job {run.kernel_ref}'s last upload did not come; what it made before "
                         "is brought home, and the next fetch looks again")
                return False
            if not said:
                on_event(f"waiting for job {run.kernel_ref}'s last upload")
                said = True
            clock.sleep(min(2.0, self.tunables.poll_max_interval))

    @staticmethod
    def _lost(run: Run, out_dir: Path, manifest: dict | None) -> list[dict]:
        """This run's (or shard's) records whose pictures are not in ``out_dir``."""
        ranges = run.only
        return [r for r in (manifest or {}).get("images") or []
                if (ranges is None or any(a <= r.get("index", -1) < b for a, b in ranges))
                and artifacts.verify_image(out_dir, r, hashed=False) is not None]

    def fetchable(self, run: Run) -> set[int] | None:
        """Every session's outputs stay on the Hub until 'clean': any picture of the run can
        be fetched again (None), none once cleaned."""
        return set() if run.timings.get("cleaned") else None

    def fetched(self, run: Run, manifest: dict | None, on_event: OnEvent) -> None:
        """What the run measured on its flavor's GPU corrects the next estimates there; the
        run's files on the Hub are said."""
        spec = self._job_file(run)
        if spec.get("gpu"):
            from ..kaggle import estimate

            estimate.learn_run(run, manifest, self._measured_on(spec["gpu"]), spec["gpu"])
        if run.state == RunState.DOWNLOADED and run.shard in (None, 1):
            repo = self._job_file(run)["repo"]
            top = run.run_id.split("/")[0]
            on_event(f"run {top}'s files stay in your private dataset {repo} until "
                     f"'imggenhub clean {top}' deletes them")

    def clean(self, run: Run, on_event: OnEvent) -> list[str]:
        """The run's private dataset (every shard's and session's inputs and outputs, and its
        history: the storage is freed). Shards share it: the first one's clean deletes it.
        A run recorded before a run had a dataset of its own: its folder in the dataset
        that runs shared then (the others' files stay)."""
        repo = self._job_file(run)["repo"]
        if run.timings.get("cleaned"):
            return []
        if repo.endswith(f"/{SHARED_REPO}"):
            folder = self.tag(run)
            files = self._call("listing the run's files", lambda: self.api.list_repo_files(
                repo, repo_type="dataset"), on_event)
            if any(f.startswith(folder + "/") for f in files):
                self._call("deleting the run's files", lambda: self.api.delete_folder(
                    folder, repo_id=repo, repo_type="dataset",
                    commit_message=f"imggenhub clean {run.run_id}"), on_event)
            gone = f"{repo}/{folder}"
        else:
            self._call("deleting the run's files", lambda: self.api.delete_repo(
                repo, repo_type="dataset", missing_ok=True), on_event)
            gone = repo
        run.timings["cleaned"] = True
        runs.save(run)
        return [gone]

    def health(self, on_event: OnEvent, timeout: float) -> dict:
        """Who the token signs in as, whether the account can run jobs (a write token, an
        account that can pay), and the GPU flavors with their prices."""
        from huggingface_hub import constants

        self.bound(timeout)
        on_event(f"asking the Hugging Face Hub at {constants.ENDPOINT}")
        user = self._call("checking the token", lambda: self.api.whoami(), on_event)
        role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
        known = self.flavors(on_event)
        gpus = sorted((f for f in known.values() if f.gpu), key=lambda f: f.usd_per_hour)
        problems = [p for p, bad in (
            ("the token is read-only (jobs need a write token)", role == "read"),
            ("the account has no credit or way to pay (jobs are billed by the minute)",
             user.get("canPay") is False)) if bad]
        verdict = ("it can run jobs" if not problems else
                   "it cannot run jobs: " + "; ".join(problems))
        lines = [f"Hugging Face Hub answers: signed in as {user.get('name')}; {verdict}",
                 "GPU flavors: " + ", ".join(f"{f.name} ${f.usd_per_hour:.2f}/h" for f in gpus)]
        report = {"signed_in_as": user.get("name"), "can_run_jobs": not problems,
                  "problems": problems, "flavors": {f.name: f.usd_per_hour for f in gpus},
                  "lines": lines}
        if problems:
            error = CredentialsError(lines[0] + ".")
            error.data = report
            raise error
        return report
