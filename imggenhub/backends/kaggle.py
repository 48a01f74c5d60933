"""The Kaggle backend: push the rendered notebook as a kernel version, follow exactly that
version, and download its outputs, verified against the manifest."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from .. import artifacts, kaggle_api, runs
from ..engine import PROGRESS_PREFIX
from ..errors import ImggenhubError
from ..notebook import CODE_FILE, METADATA_FILE
from ..runs import Run, RunState
from . import OnEvent

OUTPUT_PREFIX = "output/"  # what the notebook writes under /kaggle/working
LOG_FILE = "kernel.log"
PROGRESS = PROGRESS_PREFIX + " "
GPU_CAP_TEXT = "Maximum batch GPU session count"

# Kaggle's raw status strings, mapped in exactly one place.
STATES = {
    "QUEUED": RunState.QUEUED, "NEW_SCRIPT": RunState.QUEUED, "RUNNING": RunState.RUNNING,
    "COMPLETE": RunState.COMPLETE, "ERROR": RunState.ERROR,
    "CANCEL_REQUESTED": RunState.CANCELLED, "CANCEL_ACKNOWLEDGED": RunState.CANCELLED,
}


class PollTimeout(ImggenhubError):
    exit_code = 3


def _parse_state(raw) -> RunState:
    """kagglesdk gives a KernelWorkerStatus; map its name (or a raw string) to our states."""
    name = getattr(raw, "name", None) or str(raw or "QUEUED")
    if not name.isupper():  # the camelCase forms: "cancelAcknowledged"
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", name)
    return STATES.get(name.upper(), RunState.QUEUED)


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


def log_text(raw: str | None) -> str:
    """Kaggle's log is a JSON array of {stream_name, time, data}; keep the text."""
    if not raw:
        return ""
    try:
        entries = json.loads(raw)
        return "".join(e.get("data", "") for e in entries)
    except (json.JSONDecodeError, AttributeError, TypeError):
        return raw


class KaggleBackend:
    name = "kaggle"

    def __init__(self):
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = kaggle_api.make_client()
        return self._client

    @property
    def api(self):
        return self.client.kernels.kernels_api_client

    def _call(self, what: str, fn, on_event: OnEvent | None = None):
        try:
            for attempt in kaggle_api.retrying(on_event):
                with attempt:
                    return fn()
        except Exception as exc:
            raise kaggle_api.explain(exc, what) from None

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
            raise kaggle_api.KaggleApiError("Kaggle says the token is not active; make a new one.")
        return resp.username

    # --- submit: push a new version -------------------------------------------------

    def submit(self, run: Run, notebook_dir: Path, on_event: OnEvent) -> Run:
        meta = json.loads((notebook_dir / METADATA_FILE).read_text(encoding="utf-8"))
        text = (notebook_dir / CODE_FILE).read_text(encoding="utf-8")
        request = save_request(meta, text, run.session_timeout_seconds)
        deadline = time.monotonic() + kaggle_api.setting("IMGGENHUB_GPU_WAIT_TOTAL", 6 * 3600)
        while True:
            resp = self._push(request, on_event)
            problem = push_problem(resp)
            if problem and GPU_CAP_TEXT in problem and time.monotonic() < deadline:
                pause = kaggle_api.setting("IMGGENHUB_GPU_WAIT", 60)
                on_event(f"Kaggle says: {problem}; waiting {pause:.0f}s for a GPU session to end, "
                         "then pushing again")
                time.sleep(pause)
                continue
            if problem:
                run.state, run.failure = RunState.ERROR, json.dumps({"ename": "PushError",
                                                                    "evalue": problem})
                runs.save(run)
                raise ImggenhubError(f"Kaggle refused the push of {meta['id']}: {problem}.")
            break
        run.kernel_ref = resp.ref or meta["id"]
        run.kernel_ref = run.kernel_ref.split("/code/")[-1].strip("/")
        run.version = resp.version_number
        run.url = resp.url or kaggle_api.web_url(run.kernel_ref)
        run.state = RunState.QUEUED
        run.timings["pushed_at"] = time.time()
        on_event(f"pushed {run.kernel_ref} version {run.version}: {run.url}")
        return runs.save(run)

    def _push(self, request, on_event: OnEvent):
        try:
            for attempt in kaggle_api.retrying(on_event, kaggle_api.surely_not_sent):
                with attempt:
                    return self.api.save_kernel(request)
        except Exception as exc:
            if isinstance(exc, requests.RequestException) and not kaggle_api.surely_not_sent(exc) \
                    and kaggle_api.status_of(exc) is None:
                raise ImggenhubError(
                    "The connection broke during the push, so it may or may not have reached "
                    "Kaggle; check the kernel page, then deploy again if no new version "
                    "appeared.") from None
            raise kaggle_api.explain(exc, "pushing the kernel") from None

    # --- status and wait -------------------------------------------------------------

    def _slug(self, run: Run) -> tuple[str, str]:
        owner, slug = run.kernel_ref.split("/", 1)
        return owner, slug

    def status(self, run: Run, on_event: OnEvent | None = None) -> tuple[RunState, str | None]:
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

        req = ApiGetKernelSessionStatusRequest()
        req.user_name, req.kernel_slug = self._slug(run)
        req.version_label = f"v{run.version}"  # exactly this version, never a previous run's
        resp = self._call("reading the kernel status", lambda: self.api.get_kernel_session_status(req),
                          on_event)
        return _parse_state(resp.status), resp.failure_message or None

    def _output_page(self, run: Run, token: str | None, size: int, on_event: OnEvent | None):
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        req = ApiListKernelSessionOutputRequest()
        req.user_name, req.kernel_slug = self._slug(run)
        req.version_label = f"v{run.version}"
        req.page_size = size
        if token:
            req.page_token = token
        return self._call("listing the kernel outputs",
                          lambda: self.api.list_kernel_session_output(req), on_event)

    def _progress(self, run: Run, seen: set, on_event: OnEvent) -> None:
        try:
            text = log_text(self._output_page(run, None, 1, None).log)
        except ImggenhubError:
            return
        for line in text.splitlines():
            if line.startswith(PROGRESS) and line not in seen:
                seen.add(line)
                on_event(line[len(PROGRESS):])

    def wait(self, run: Run, on_event: OnEvent, timeout: float | None = None) -> Run:
        start = time.monotonic()
        first_interval = interval = kaggle_api.setting("IMGGENHUB_POLL_INTERVAL", 2.0)
        max_interval = kaggle_api.setting("IMGGENHUB_POLL_MAX_INTERVAL", 30.0)
        last, seen, polls = None, set(), 0
        while True:
            state, failure = self.status(run, on_event)
            polls += 1
            elapsed = time.monotonic() - start
            if state != last:
                on_event(f"{state.value} after {elapsed:.0f}s")
                last = state
            if state == RunState.RUNNING and polls % 3 == 0:
                self._progress(run, seen, on_event)
            if state.terminal:
                run.state = state
                if state != RunState.COMPLETE:
                    tail = self._log_tail(run)
                    run.failure = json.dumps({"ename": "KernelError", "evalue": failure or state.value,
                                              "log_tail": tail})
                run.timings["wait"] = round(elapsed, 3)
                return runs.save(run)
            if run.state != state:
                run.state = state
                runs.save(run)
            if timeout is not None and elapsed + interval > timeout:
                raise PollTimeout(f"Run {run.run_id} is still {state.value} after {elapsed:.0f}s; "
                                  f"'imggenhub poll {run.run_id}' picks it up again.")
            time.sleep(interval)
            # poll often early, then at a fifth of the elapsed time, capped: the wait past
            # the kernel's end stays a small share of its run time
            interval = min(max_interval, max(first_interval, (time.monotonic() - start) / 5))

    def _log_tail(self, run: Run) -> str:
        try:
            text = log_text(self._output_page(run, None, 1, None).log)
        except ImggenhubError:
            return ""
        return "\n".join(text.strip().splitlines()[-20:])

    # --- fetch: download exactly this version's outputs ------------------------------

    def list_outputs(self, run: Run, on_event: OnEvent) -> tuple[dict[str, str], str]:
        files, log, token = {}, None, None
        while True:
            page = self._output_page(run, token, 100, on_event)
            if log is None:
                log = page.log or ""
            for item in page.files or []:
                files[item.file_name] = item.url
            token = page.next_page_token
            if not token:
                return files, log

    def _download(self, url: str, dest: Path, record: dict | None, on_event: OnEvent) -> None:
        """GET a signed URL to a temporary name, check it, and rename it into place."""
        tmp = dest.with_name(f".{dest.name}.part")

        def once():
            with requests.get(url, stream=True, timeout=kaggle_api.call_timeout()) as resp:
                resp.raise_for_status()
                expected = resp.headers.get("Content-Length")
                size = 0
                with open(tmp, "wb") as fh:
                    for chunk in resp.iter_content(1 << 16):
                        fh.write(chunk)
                        size += len(chunk)
            if expected is not None and size != int(expected):
                raise kaggle_api.TruncatedDownload(f"{dest.name}: {size} of {expected} bytes")
            if record is not None:
                problem = artifacts.verify_image(tmp.parent, {**record, "file": tmp.name})
                if problem:
                    raise kaggle_api.TruncatedDownload(problem)

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._call(f"downloading {dest.name}", once, on_event)
        except BaseException:
            tmp.unlink(missing_ok=True)  # no half file left behind; the next try starts clean
            raise
        os.replace(tmp, dest)

    def fetch(self, run: Run, out_dir: Path, on_event: OnEvent) -> Run:
        t0 = time.monotonic()
        out_dir = Path(out_dir)
        artifacts.check_destination(out_dir, run.job_id)
        files, log = self.list_outputs(run, on_event)
        for name in files:
            artifacts.safe_relative(name)  # refuse '..' and absolute names before anything
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / LOG_FILE).write_text(log_text(log), encoding="utf-8")
        ours = {name[len(OUTPUT_PREFIX):]: url for name, url in files.items()
                if name.startswith(OUTPUT_PREFIX)}
        manifest_url = ours.pop("manifest.json", None)
        records = {}
        if manifest_url:
            self._download(manifest_url, out_dir / "manifest.json", None, on_event)
            manifest = artifacts.read_manifest(out_dir)
            records = {r["file"]: r for r in manifest["images"]}
        todo = []
        for name, url in sorted(ours.items()):
            dest = out_dir / artifacts.safe_relative(name)
            record = records.get(name)
            if record and dest.exists() and artifacts.verify_image(out_dir, record) is None:
                continue  # already here and verified
            todo.append((url, dest, record))
        done = [0]
        lock = threading.Lock()

        def one(item):
            self._download(*item, on_event)
            with lock:
                done[0] += 1
                if done[0] % 25 == 0 or done[0] == len(todo):
                    on_event(f"downloaded {done[0]}/{len(todo)} files")

        workers = int(kaggle_api.setting("IMGGENHUB_DOWNLOAD_WORKERS", 8))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, todo))
        problems = artifacts.verify(out_dir) if manifest_url else []
        run.images_fetched = len(records)
        run.timings["download"] = round(time.monotonic() - t0, 3)
        runs.save(run)
        if problems:
            raise ImggenhubError(f"The downloaded outputs failed verification: {problems[0]}; run "
                                 f"'imggenhub download {run.run_id}' again.")
        if not manifest_url and run.state == RunState.COMPLETE:
            raise ImggenhubError(f"Version {run.version} of {run.kernel_ref} has no "
                                 f"{OUTPUT_PREFIX}manifest.json; it did not run the imggenhub engine.")
        return run
