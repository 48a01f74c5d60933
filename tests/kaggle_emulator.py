"""A local Kaggle emulator that speaks the wire protocol of the official client
(../shared/KAGGLE_API.md): POST {base}/api/v1/{Service}/{Method} (or /v1/ as on PROD)
with camelCase JSON, Basic or Bearer auth, signed file URLs, and proxy-style absolute
URIs so the unmodified `kaggle` CLI can reach it through HTTP_PROXY.

Each pushed notebook runs with imggenhub's local runner in a temporary folder that
plays /kaggle/working: QUEUED -> RUNNING -> COMPLETE or ERROR.

    python -m tests.kaggle_emulator --port 8765 [--rate-limit 2] [--fail-notebook] ...
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

FAULTS = ("rate_limit", "server_error", "drop", "truncate", "stale_status", "gpu_cap")


@dataclass
class Faults:
    """Counters: each fault fires on the next N matching requests. ``only`` limits the API
    faults to these method names (None: every API call)."""

    rate_limit: int = 0
    server_error: int = 0
    drop: int = 0
    truncate: int = 0
    stale_status: int = 0
    gpu_cap: int = 0
    slow: float = 0.0
    slow_files: float = 0.0  # seconds before each file download answers (a network's latency)
    fail_notebook: bool = False
    only: tuple[str, ...] | None = None
    extra_names: tuple[str, ...] = ()  # file names listed besides the real ones (e.g. "../x")
    retry_after: str = "1"
    fired: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, name: str) -> bool:
        with self.lock:
            if getattr(self, name) > 0:
                setattr(self, name, getattr(self, name) - 1)
                self.fired[name] = self.fired.get(name, 0) + 1
                return True
            return False

    def set(self, **knobs) -> None:
        with self.lock:
            for key, value in knobs.items():
                if not hasattr(self, key) or key in ("fired", "lock"):
                    raise ValueError(f"unknown fault {key}")
                setattr(self, key, tuple(value) if key == "only" and value else value)


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
    finished: float | None = None


class Emulator:
    def __init__(self, username: str = "imggenhub", key: str = "emulator-key",
                 token: str = "emulator-token", queue_seconds: float = 0.2, gpu_sessions: int = 2):
        self.username, self.key, self.token = username, key, token
        self.queue_seconds = queue_seconds
        self.gpu_sessions = gpu_sessions
        self.faults = Faults()
        self.root = Path(tempfile.mkdtemp(prefix="kaggle-emulator-"))
        self.kernels: dict[str, list[Version]] = {}
        self.files: dict[str, Path] = {}
        self.blobs: dict[str, bytes | None] = {}
        self.datasets: dict[str, dict] = {}
        self.calls: list[tuple[str, dict]] = []
        self.lock = threading.RLock()
        self.threads: list[threading.Thread] = []
        self.server: ThreadingHTTPServer | None = None

    # --- lifecycle ---------------------------------------------------------------

    def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        for thread in self.threads:
            thread.join(timeout=300)
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_idle(self, timeout: float = 300) -> None:
        for thread in list(self.threads):
            thread.join(timeout=timeout)

    # --- kernels -----------------------------------------------------------------

    def versions(self, ref: str) -> list[Version]:
        return self.kernels.get(ref, [])

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
        with self.lock:
            if body.get("enableGpu") and (self.faults.take("gpu_cap")
                                          or self._active_gpu() >= self.gpu_sessions):
                return {"error": f"Maximum batch GPU session count of {self.gpu_sessions} reached"}
            versions = self.kernels.setdefault(ref, [])
            version = Version(len(versions) + 1, body, body["text"])
            if self.faults.fail_notebook:
                version.env["IMGGENHUB_ENGINE_FAIL_AFTER"] = "1"
            versions.append(version)
        thread = threading.Thread(target=self._execute, args=(ref, version), daemon=True)
        self.threads.append(thread)
        thread.start()
        return {"ref": f"/code/{ref}", "url": f"{self.url}/code/{ref}",
                "versionNumber": version.number, "kernelId": abs(hash(ref)) % 10**8}

    def _execute(self, ref: str, version: Version) -> None:
        from imggenhub.backends.local import execute_notebook

        time.sleep(self.queue_seconds)
        version.status = "RUNNING"
        folder = self.root / ref.replace("/", "--") / f"v{version.number}"
        folder.mkdir(parents=True)
        notebook = folder / "notebook.ipynb"
        notebook.write_text(version.text, encoding="utf-8")
        version.workdir = folder / "working"

        def stream(name: str, text: str) -> None:
            version.log.append({"stream_name": name, "time": round(time.time(), 3), "data": text})

        try:
            result = execute_notebook(notebook, version.workdir, stream, folder / "stderr.log",
                                      env={**os.environ, **version.env})
        except Exception as exc:  # the emulator must never hang a test
            version.status, version.failure = "ERROR", f"emulator: {exc}"
            return
        version.finished = time.monotonic()
        if result.ok:
            version.status = "COMPLETE"
        else:
            stream("stderr", f"{result.ename}: {result.evalue}\n")
            version.failure = "Your notebook hit an unhandled error while executing"
            version.status = "ERROR"

    def output_files(self, version: Version) -> list[tuple[str, Path]]:
        if version.workdir is None or not version.workdir.exists():
            return []
        return sorted((p.relative_to(version.workdir).as_posix(), p)
                      for p in version.workdir.rglob("*") if p.is_file())

    def sign(self, path: Path, host: str) -> str:
        token = secrets.token_urlsafe(12)
        self.files[token] = path
        return f"http://{host}/files/{token}?Expires={int(time.time()) + 3600}&Signature=emulated"


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
        em.calls.append((method, body))
        faulty = em.faults.only is None or method in em.faults.only
        if faulty and em.faults.slow:
            time.sleep(em.faults.slow)
        if faulty and em.faults.take("drop"):
            self.close_connection = True
            return  # no answer at all: the client sees the connection close
        if faulty and em.faults.take("rate_limit"):
            return self._json(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}},
                              {"Retry-After": em.faults.retry_after})
        if faulty and em.faults.take("server_error"):
            return self._json(503, {"error": {"code": 503, "status": "UNAVAILABLE"}})
        user = self._authorized()
        if user is None and method != "IntrospectToken":
            return self._json(401, {"code": 401, "message": "Unauthenticated"})
        handler = getattr(self, f"api_{method}", None)
        if handler is None:
            return self._json(404, {"code": 404, "message": f"Unknown method {service}/{method}"})
        code, data = handler(body)
        self._json(code, data)

    def do_GET(self):
        em = self.emulator
        path = self._path()
        if path.startswith("/files/"):
            target = em.files.get(path[len("/files/"):])
            if target is None or not target.exists():
                return self._json(404, {"code": 404, "message": "No such file"})
            if em.faults.slow_files:
                time.sleep(em.faults.slow_files)
            data = target.read_bytes()
            if em.faults.take("truncate"):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            return self._send(200, data, "application/octet-stream")
        if path.startswith("/code/"):
            return self._send(200, b"<html>emulated kernel page</html>", "text/html")
        self._json(404, {"code": 404, "message": f"No route {path}"})

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        token = self._path().rsplit("/", 1)[-1]
        if token not in self.emulator.blobs:
            return self._json(404, {"code": 404, "message": "Unknown upload"})
        self.emulator.blobs[token] = data
        self._json(200, {})

    # --- API methods: each returns (http code, JSON body) ------------------------

    def api_IntrospectToken(self, body):
        em = self.emulator
        active = body.get("token") == em.token
        return 200, ({"active": True, "username": em.username} if active else {"active": False})

    def api_SaveKernel(self, body):
        return 200, self.emulator.save_kernel(body)

    def _kernel(self, body):
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        return ref, self.emulator.versions(ref)

    def api_GetKernelSessionStatus(self, body):
        em = self.emulator
        ref, versions = self._kernel(body)
        label = body.get("versionLabel")
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

    def api_ListKernelSessionOutput(self, body):
        em = self.emulator
        ref, versions = self._kernel(body)
        version = _version_of(versions, body.get("versionLabel"))
        if version is None:
            return 404, {"code": 404, "message": f"Kernel {ref} not found"}
        files = em.output_files(version) if version.status in ("COMPLETE", "ERROR") else []
        if files and em.faults.extra_names:
            files = files + [(name, files[0][1]) for name in em.faults.extra_names]
        size = int(body.get("pageSize") or 20)
        start = int(body.get("pageToken") or 0)
        page = files[start:start + size]
        data = {"files": [{"url": em.sign(path, self._host()), "fileName": name}
                          for name, path in page]}
        if start == 0:
            data["log"] = json.dumps(version.log)
        if start + size < len(files):
            data["nextPageToken"] = str(start + size)
        return 200, data

    def api_GetKernel(self, body):
        ref, versions = self._kernel(body)
        version = _version_of(versions, body.get("versionLabel"))
        if version is None:
            return 404, {"code": 404, "message": f"Kernel {ref} not found"}
        meta = version.meta
        return 200, {
            "metadata": {"ref": ref, "title": meta.get("newTitle"), "author": ref.split("/")[0],
                         "slug": ref, "language": meta.get("language"),
                         "kernelType": meta.get("kernelType"), "isPrivate": meta.get("isPrivate", False),
                         "enableGpu": meta.get("enableGpu", False),
                         "enableInternet": meta.get("enableInternet", False),
                         "currentVersionNumber": len(versions),
                         "machineShape": meta.get("machineShape")},
            "blob": {"source": version.text, "language": meta.get("language"),
                     "kernelType": meta.get("kernelType"), "slug": ref}}

    def api_ListKernels(self, body):
        em = self.emulator
        kernels = [{"ref": ref, "title": vs[-1].meta.get("newTitle"), "author": ref.split("/")[0],
                    "slug": ref, "currentVersionNumber": len(vs)}
                   for ref, vs in sorted(em.kernels.items())]
        return 200, {"kernels": kernels}

    def api_GetAcceleratorQuotaStatistics(self, body):
        used = 3600 * sum(len(vs) for vs in self.emulator.kernels.values()) // 10
        return 200, {"gpuQuota": {"timeUsed": f"{used}s", "totalTimeAllowed": "108000s",
                                  "hasEverRun": used > 0},
                     "quotaRefreshTime": "2026-11-28T00:00:00Z"}

    def api_GetDatasetStatus(self, body):
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.emulator.datasets:
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        return 200, {"status": "READY"}

    def api_StartBlobUpload(self, body):
        token = secrets.token_urlsafe(12)
        self.emulator.blobs[token] = None
        return 200, {"token": token, "createUrl": f"http://{self._host()}/upload/{token}"}

    def _files_of(self, files):
        missing = [f.get("token") for f in files if self.emulator.blobs.get(f.get("token")) is None]
        return missing

    def api_CreateDataset(self, body):
        em = self.emulator
        ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
        if ref in em.datasets:
            return 200, {"error": f"Dataset {ref} already exists"}
        if self._files_of(body.get("files", [])):
            return 200, {"error": "Some files were not uploaded"}
        em.datasets[ref] = {"versions": [[f["token"] for f in body.get("files", [])]],
                            "title": body.get("title")}
        return 200, {"ref": ref, "url": f"{em.url}/datasets/{ref}", "status": "ok"}

    def api_CreateDatasetVersion(self, body):
        em = self.emulator
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in em.datasets:
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        files = body.get("body", {}).get("files", [])
        if self._files_of(files):
            return 200, {"error": "Some files were not uploaded"}
        em.datasets[ref]["versions"].append([f["token"] for f in files])
        return 200, {"ref": ref, "url": f"{em.url}/datasets/{ref}", "status": "ok"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Local Kaggle emulator for imggenhub's tests")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--username", default="imggenhub")
    parser.add_argument("--key", default="emulator-key")
    parser.add_argument("--token", default="emulator-token")
    parser.add_argument("--queue-seconds", type=float, default=0.2)
    for name in FAULTS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=0,
                            help=f"fault: the next N requests get {name.replace('_', ' ')}")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds added to each API answer")
    parser.add_argument("--fail-notebook", action="store_true", help="pushed notebooks fail")
    args = parser.parse_args(argv)
    em = Emulator(args.username, args.key, args.token, args.queue_seconds)
    em.faults.set(**{name: getattr(args, name) for name in FAULTS}, slow=args.slow,
                  fail_notebook=args.fail_notebook)
    url = em.start(args.port, args.host)
    print(f"Kaggle emulator ready at {url} (user {args.username})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        em.stop()


if __name__ == "__main__":
    main()
