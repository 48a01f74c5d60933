"""The Kaggle backend: push the rendered notebook as a kernel version, follow exactly that
version, and download its outputs, verified against the manifest.

Everything Kaggle-specific lives here and in ``kaggle_meta`` / ``kaggle_download``."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta, timezone
from pathlib import Path

import requests

from ...errors import (
    CredentialsError,
    ImggenhubError,
    KaggleApiError,
    NoFreeSlot,
    RunFailedError,
    Unreachable,
)
from ...engine import KAGGLE_INPUT
from ...job.notebook import CODE_FILE, read_job_document
from ...run import runs
from ...run.lifecycle import PUSH_REST, RunState
from ...run.runs import Failure, Run
from ..base import Backend, Fetched, OnEvent
from . import api as kaggle_api
from . import estimate, follow, prepare
from . import inputs as kaggle_inputs
from .download import bring_outputs
from .meta import (
    METADATA_FILE,
    split_kernel_id,
    write_metadata,
)

GPU_CAP_TEXT = "Maximum batch GPU session count"
RESOLVE_DEPTH = 10  # versions looked at, newest first, to find an interrupted push

# Kaggle's raw status strings, mapped in exactly one place. Unknown ones stay "running"
# (the run goes on) rather than being taken for a verdict.
STATES = {
    "QUEUED": RunState.QUEUED, "NEW_SCRIPT": RunState.QUEUED, "RUNNING": RunState.RUNNING,
    "COMPLETE": RunState.COMPLETE, "ERROR": RunState.ERROR,
    "CANCEL_REQUESTED": RunState.CANCELLED, "CANCEL_ACKNOWLEDGED": RunState.CANCELLED,
}


def parse_state(raw) -> RunState:
    """kagglesdk gives a KernelWorkerStatus; map its name (or a raw string) to our states."""
    name = getattr(raw, "name", None) or str(raw or "QUEUED")
    if not name.isupper():  # the camelCase forms: "cancelAcknowledged"
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", name)
    return STATES.get(name.upper(), RunState.RUNNING)


def save_request(meta: dict, notebook_text: str, timeout_seconds: int | None = None):
    """The SaveKernel request the kaggle CLI would build from this folder."""
    from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelRequest

    nb = json.loads(notebook_text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    req = ApiSaveKernelRequest()
    req.slug = meta["id"]
    req.new_title = meta.get("title")
    req.text = json.dumps(nb)
    req.language = meta.get("language", "python")
    req.kernel_type = meta.get("kernel_type", "notebook")
    req.is_private = bool(meta.get("is_private", True))
    req.enable_gpu = bool(meta.get("enable_gpu", False))
    req.enable_tpu = bool(meta.get("enable_tpu", False))
    req.enable_internet = bool(meta.get("enable_internet", True))
    req.dataset_data_sources = meta.get("dataset_sources", [])
    req.competition_data_sources = meta.get("competition_sources", [])
    req.kernel_data_sources = meta.get("kernel_sources", [])
    req.model_data_sources = meta.get("model_sources", [])
    req.category_ids = meta.get("keywords", [])
    if meta.get("machine_shape"):
        req.machine_shape = meta["machine_shape"]
    if timeout_seconds:
        req.session_timeout_seconds = int(timeout_seconds)
    return req


def _utc(moment) -> str | None:
    """A kagglesdk datetime (naive means UTC) as ISO 8601 with a Z."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


UNKNOWN_QUOTA = {"gpu_hours_used": None, "gpu_hours_total": None, "gpu_hours_left": None,
                 "refreshes_at": None}
WEEK_HOURS = 7 * 24.0  # no figure of a weekly quota is more than the week holds


def quota_figures(resp) -> tuple[dict, str | None]:
    """The quota's figures in hours from a parsed answer, each checked (a duration, 0 to
    WEEK_HOURS), and what is wrong with the answer (None: nothing). A figure out of range
    makes the whole answer unknown; an absent total leaves the hours used."""
    gpu = getattr(resp, "gpu_quota", None)
    if gpu is None:
        return dict(UNKNOWN_QUOTA), "it holds no GPU quota"
    figures = {}
    for key, delta in (("gpu_hours_used", gpu.time_used), ("gpu_hours_total", gpu.total_time_allowed)):
        if delta is None:
            figures[key] = None
            continue
        hours = delta.total_seconds() / 3600 if isinstance(delta, timedelta) else None
        if hours is None or not 0.0 <= hours <= WEEK_HOURS:
            said = f"{hours:.6g} h" if hours is not None else repr(delta)[:40]
            return dict(UNKNOWN_QUOTA), (f"{key.replace('gpu_hours_', 'hours ')} {said} is not "
                                         f"within 0 to {WEEK_HOURS:.0f} h (a week)")
        figures[key] = round(hours, 2)
    used, total = figures["gpu_hours_used"], figures["gpu_hours_total"]
    figures["gpu_hours_left"] = round(max(0.0, total - used), 2) \
        if used is not None and total is not None else None
    try:
        figures["refreshes_at"] = _utc(resp.quota_refresh_time)
    except (AttributeError, TypeError, ValueError, OverflowError):
        figures["refreshes_at"] = None
    return figures, None if used is not None else "it does not say the hours used"


def push_problem(resp) -> str | None:
    """What is wrong with a push response that came back 200 (the kaggle CLI exits 0 on these)."""
    if resp.error:
        return resp.error
    for label, bad in (("tags", resp.invalid_tags), ("dataset sources", resp.invalid_dataset_sources),
                       ("competition sources", resp.invalid_competition_sources),
                       ("kernel sources", resp.invalid_kernel_sources),
                       ("model sources", resp.invalid_model_sources)):
        if bad:
            return f"invalid {label}: {', '.join(bad)}"
    return None


class KaggleBackend(Backend):
    name = "kaggle"
    title = "Kaggle"

    def __init__(self, settings=None):
        super().__init__(settings)
        self._client = None
        self._followers: dict = {}  # live log streams being read, by run and version
        self.estimates = None  # the estimate history, read once (prepare.history)

    def _timeout(self) -> float:
        left = self.deadline.left()
        return self.tunables.http_timeout if left is None else max(0.5, min(self.tunables.http_timeout, left))

    @property
    def client(self):
        if self._client is None:
            self._client = kaggle_api.make_client(self.tunables, timeout=self._timeout)
        return self._client

    @property
    def api(self):
        return self.client.kernels.kernels_api_client

    def _call(self, what: str, fn, on_event: OnEvent | None = None, attempts: int = kaggle_api.MAX_ATTEMPTS):
        return kaggle_api.call(self.tunables, self.deadline, what, fn, on_event, attempts)

    def owner(self) -> str:
        creds = kaggle_api.credentials()
        if creds.username:
            return creds.username
        from kagglesdk.security.types.oauth_service import IntrospectTokenRequest

        req = IntrospectTokenRequest()
        req.token = creds.token
        resp = self._call("checking the token", lambda: self.client.security.oauth_client
                          .introspect_token(req))
        if not resp.active or not resp.username:
            raise KaggleApiError("Kaggle says the token is not active; make a new one.", 401)
        return resp.username

    # --- prepare and push -------------------------------------------------------------

    def prepare_job(self, job, options, on_event: OnEvent, width: int = 1) -> prepare.KaggleJob:
        return prepare.prepare_job(self, job, options, on_event, width)

    def width(self, job, asked: int | None) -> int:
        return prepare.width(self, job, asked)

    def prepare(self, job, run: Run, prepared: prepare.KaggleJob, on_event: OnEvent) -> None:
        prepare.prepare(self, job, run, prepared, on_event)

    def _lock_wait(self) -> float:
        left = self.deadline.left()
        return 60.0 if left is None else max(0.0, min(60.0, left))

    def attach_previous(self, run: Run) -> str | None:
        """The kernel's own output as a kernel source of its next version: Kaggle mounts the
        output of its latest complete version under /kaggle/input/<slug>/."""
        if not run.kernel_ref:
            return None
        meta = json.loads((run.notebook_dir / METADATA_FILE).read_text(encoding="utf-8"))
        meta["kernel_sources"] = list(dict.fromkeys([*(meta.get("kernel_sources") or []),
                                                     run.kernel_ref]))
        write_metadata(run.notebook_dir, meta)
        return f"{KAGGLE_INPUT}/{run.kernel_ref.split('/', 1)[1]}"

    def submit(self, run: Run, on_event: OnEvent) -> Run:
        if run.state in PUSH_REST:
            run = self.render_rest(run, on_event)
            if run.state == RunState.DOWNLOADED:
                return run
        self.client  # the credentials first: without them nothing is sent, the run stays as is
        meta = json.loads((run.notebook_dir / METADATA_FILE).read_text(encoding="utf-8"))
        text = (run.notebook_dir / CODE_FILE).read_text(encoding="utf-8")
        request = save_request(meta, text, run.session_timeout_seconds)
        shipment = kaggle_inputs.load(run.notebook_dir)
        if shipment is not None:  # the inputs first: a kernel never starts without them
            kaggle_inputs.Shipper(self, on_event).ship(shipment, run.run_id)
        with runs.pushing_to(meta["id"], wait=self._lock_wait()):
            run.state, run.kernel_ref = RunState.PUSHING, meta["id"]
            runs.save(run)
            resp = self._push(run, request, on_event)
            problem = push_problem(resp)
            if problem and GPU_CAP_TEXT in problem:  # the driver pushes it when one frees
                run.state = RunState.RENDERED
                runs.save(run)
                raise NoFreeSlot(problem)
            if problem:
                run.state = RunState.PUSH_FAILED
                run.failure = Failure(kind="push", ename="PushRefused", evalue=problem)
                runs.save(run)
                raise RunFailedError(f"Kaggle refused the push of {meta['id']}: {problem}.",
                                     run.failure, run.run_id)
            version, ref, url = resp.version_number, resp.ref or meta["id"], resp.url
            if not (isinstance(version, int) and version > 0 and isinstance(ref, str)
                    and isinstance(url, (str, type(None)))):
                run.state = RunState.PUSH_UNKNOWN  # it answered: the push may have landed
                runs.save(run)
                raise kaggle_api.BadAnswer(
                    f"version {str(version)[:40]!r}", f"pushing run {run.run_id} (it may or may "
                    f"not have landed; 'imggenhub resume {run.run_id}' finds out)")
            return self._pushed(run, version, ref, url, on_event)

    def _pushed(self, run: Run, version: int, ref: str, url: str | None, on_event: OnEvent) -> Run:
        run.kernel_ref = ref.split("/code/")[-1].strip("/")
        run.version = int(version)
        run.url = url or kaggle_api.web_url(self.tunables, run.kernel_ref)
        run.state = RunState.PUSHED
        run.timings["pushed_at"] = self.tunables.clock.monotonic()
        on_event(f"pushed {run.kernel_ref} version {run.version}: {run.url}")
        return runs.save(run)

    def _push(self, run: Run, request, on_event: OnEvent):
        try:
            for attempt in kaggle_api.retrying(self.tunables, self.deadline, on_event,
                                               kaggle_api.surely_not_sent):
                with attempt:
                    return kaggle_api.parsed(lambda: self.api.save_kernel(request))()
        except kaggle_api.BadAnswer as exc:  # Kaggle answered: the push may have landed
            run.state = RunState.PUSH_UNKNOWN
            runs.save(run)
            raise kaggle_api.BadAnswer(exc.detail, f"pushing run {run.run_id} (it may or may not "
                                       f"have landed; 'imggenhub resume {run.run_id}' finds out)"
                                       ) from None
        except requests.RequestException as exc:
            status = kaggle_api.status_of(exc)
            if kaggle_api.surely_not_sent(exc):
                run.state = RunState.RENDERED
                runs.save(run)
                raise Unreachable(f"Could not reach Kaggle to push run {run.run_id} ("
                                  f"{'HTTP 429' if status else type(exc).__name__}); nothing was "
                                  f"sent; 'imggenhub resume {run.run_id}' pushes it.") from None
            if status is None or status >= 500:
                run.state = RunState.PUSH_UNKNOWN
                runs.save(run)
                raise Unreachable(f"The connection broke during the push of run {run.run_id}, so it "
                                  f"may or may not have reached Kaggle; 'imggenhub resume "
                                  f"{run.run_id}' finds out and pushes only if it did not.") from None
            # 401, 403, 404...: Kaggle answered and made nothing; fix the cause and resume
            run.state = RunState.RENDERED
            runs.save(run)
            raise kaggle_api.explain(exc, "pushing the kernel",
                                     kaggle_api.endpoint(self.tunables)) from None

    # --- an interrupted push: did it land? ------------------------------------------

    def _kernel(self, owner: str, slug: str, version: int | None, on_event: OnEvent):
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

        req = ApiGetKernelRequest()
        req.user_name, req.kernel_slug = owner, slug
        if version:
            req.version_label = f"v{version}"
        try:
            return self._call("reading the kernel", lambda: self.api.get_kernel(req), on_event)
        except KaggleApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _find_push(self, run: Run, on_event: OnEvent) -> int | None:
        """The version whose notebook carries this run's id, among the newest few."""
        owner, slug = split_kernel_id(run.kernel_ref or "", "the run record")
        latest = self._kernel(owner, slug, None, on_event)
        newest = (latest.metadata.current_version_number or 0) if latest and latest.metadata else 0
        for number in range(newest, max(0, newest - RESOLVE_DEPTH), -1):
            kernel = latest if number == newest else self._kernel(owner, slug, number, on_event)
            doc = read_job_document(kernel.blob.source if kernel and kernel.blob else "")
            if doc and doc.get("run_id") == run.run_id and doc.get("session", 1) == run.session:
                return number
        return None

    def resolve(self, run: Run, on_event: OnEvent) -> Run:
        with runs.pushing_to(run.kernel_ref or "", wait=self._lock_wait()):
            number = self._find_push(run, on_event)
            since = time.time() - run.updated
            grace = self.tunables.push_grace
            if number is None and run.state == RunState.PUSHING and since < grace:
                # a push cut off moments ago may still be landing: look once more
                self.tunables.clock.sleep(grace - since)
                number = self._find_push(run, on_event)
            if number is not None:
                on_event(f"the interrupted push of run {run.run_id} had landed as version "
                         f"{number}; following it")
                return self._pushed(run, number, run.kernel_ref, None, on_event)
            on_event(f"the interrupted push of run {run.run_id} never reached Kaggle; it can be "
                     "pushed again")
            run.state = RunState.RENDERED
            return runs.save(run)

    # --- status and wait --------------------------------------------------------------

    def _slug(self, run: Run) -> tuple[str, str]:
        return split_kernel_id(run.kernel_ref or "", "the run record")

    def status(self, run: Run, on_event: OnEvent | None = None) -> tuple[RunState, str | None]:
        from kagglesdk.kernels.types.kernels_api_service import (
            ApiGetKernelSessionStatusRequest,
        )

        req = ApiGetKernelSessionStatusRequest()
        req.user_name, req.kernel_slug = self._slug(run)
        req.version_label = f"v{run.version}"  # exactly this version, never a previous run's
        resp = self._call("reading the kernel status", lambda: self.api.get_kernel_session_status(req),
                          on_event)
        return parse_state(resp.status), resp.failure_message or None

    def wait(self, members: list[Run], say_for) -> list[Run]:
        """Poll the versions' statuses until one of them ends (or the deadline); meanwhile
        show the engine's progress as it happens, from the live log streams (else, every
        third poll, from the output listing's log)."""
        start = self.tunables.clock.monotonic()
        members = follow.follow(self, members, say_for, group=len(members) > 1)
        if len(members) == 1:
            members[0].timings["wait"] = round(self.tunables.clock.monotonic() - start, 3)
            runs.save(members[0])
        return members

    def close(self) -> None:
        """The live log streams end with the command (kept across waits: a new one would
        replay the whole log)."""
        for follower in self._followers.values():
            follower.close()
        self._followers.clear()

    # --- fetch and health -------------------------------------------------------------

    def bring(self, run: Run, out_dir: Path, here: dict | None, on_event: OnEvent) -> Fetched:
        return bring_outputs(self, run, out_dir, here, on_event)

    def fetched(self, run: Run, manifest: dict | None, on_event: OnEvent) -> None:
        """What the run measured on Kaggle corrects the next estimates (once, when it is
        all here)."""
        estimate.learn_run(run, manifest, kaggle_api.endpoint(self.tunables))

    def estimate(self, job, options, on_event: OnEvent) -> str:
        """The job's GPU hours (its shards', each with its start) against this week's quota
        left, as a push says it; nothing is pushed."""
        from .prepare import history

        guess = estimate.estimate(job.document(), history(self), self.width(job, None))
        try:
            left = self.quota(on_event)["gpu_hours_left"]
        except (Unreachable, KaggleApiError, CredentialsError) as exc:
            return f"{guess.sentence(None)}; the quota could not be read ({exc})"
        return guess.sentence(left)

    def quota(self, on_event: OnEvent) -> dict:
        """This week's GPU quota, as GetAcceleratorQuotaStatistics says (hours; refresh time).
        An answer that cannot be used (unparsable, mistyped, negative, more than a week) is
        said in one line and gives None for every figure: the quota is unknown."""
        from kagglesdk.kernels.types.kernels_api_service import (
            ApiGetAcceleratorQuotaStatisticsRequest,
        )

        try:
            resp = self._call("reading the GPU quota", kaggle_api.parsed(
                lambda: self.api.get_accelerator_quota_statistics(
                    ApiGetAcceleratorQuotaStatisticsRequest())), on_event, attempts=3)
            figures, problem = quota_figures(resp)
        except kaggle_api.BadAnswer as exc:
            figures, problem = dict(UNKNOWN_QUOTA), f"it could not be read ({exc.detail})"
        if problem:
            on_event(f"Kaggle's GPU quota answer is unusable: {problem}; the quota is unknown")
        return figures

    def health(self, on_event: OnEvent, timeout: float) -> dict:
        """What 'imggenhub doctor' finds, as fields: where credentials were looked for, the
        one used (never the secret), the API's address, who it signs in as, the quota; and
        ``lines`` for people. A problem raises its error carrying the fields found so far
        (``data``), so that --json gives them too."""
        from .credentials import looked_at

        report = {"looked_at": looked_at(), "credential": None,
                  "api_url": kaggle_api.endpoint(self.tunables), "signed_in_as": None,
                  "quota": None}
        try:
            creds = kaggle_api.credentials()
            report["credential"] = {"source": creds.source,
                                    "kind": "token" if creds.token else "username/key",
                                    "username": creds.username}
            line = (f"credential: {creds.source} ({report['credential']['kind']}"
                    f"{', user ' + creds.username if creds.username else ''})")
            on_event(line)  # said at once: if the API does not answer, which one was tried
            on_event(f"asking the Kaggle API at {report['api_url']}")
            self.bound(timeout)
            report["signed_in_as"] = self.owner()
            report["quota"] = q = self.quota(on_event)
        except ImggenhubError as exc:
            if report["credential"] is None:  # where it looked, each place said
                for place in report["looked_at"]:
                    on_event(f"looked at {place['where']}: {place['found']}")
            exc.data = report
            raise
        used, total = (("?" if q[k] is None else f"{q[k]:{f}}")
                       for k, f in (("gpu_hours_used", ".1f"), ("gpu_hours_total", ".0f")))
        report["lines"] = [line, f"Kaggle API at {report['api_url']} answers: signed in as "
                           f"{report['signed_in_as']}; GPU quota used {used} of {total} h"]
        return report
