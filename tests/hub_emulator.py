"""A local emulator of the Hugging Face Hub HTTP endpoints the official ``huggingface_hub``
client (2.4.0) uses to publish a model: whoami, create/delete a repo, repo info and tree,
the README metadata check, preupload (regular or LFS, with the remote oid of each path so
the client can drop unchanged files), the git-LFS batch API with the "basic" transfer (one
PUT of the whole file to a signed href, then a verify call), the NDJSON commit, and file
downloads (``resolve``) so a published file can be read back with ``hf_hub_download``.

Xet: the emulator does not speak the Xet protocol (chunking and CAS storage). Its LFS
batch answers always choose "basic" and never offer "xet", and its ``xet-*-token``
endpoints answer 501 with an explanation. But ``huggingface_hub`` >= 1.0 with ``hf_xet``
installed sends every LFS-mode file through Xet on its own, whatever the server says
(``upload_folder`` uses its Xet pipeline, ``_upload_files`` its Xet path): the client
process must set ``HF_HUB_DISABLE_XET=1`` (read when ``huggingface_hub`` is imported; in a
process that imported it already, set ``huggingface_hub.constants.HF_HUB_DISABLE_XET``).

State lives in memory: ``emulator.repos["owner/name"]`` (datasets and spaces under
``"datasets/owner/name"``, ``"spaces/owner/name"``) is a ``Repo`` whose ``files`` maps each
path to its bytes, ``lfs`` maps the paths stored through LFS to their sha256, and
``commits`` lists ``Commit(oid, message, files, deleted, lfs, ...)`` oldest first. As on
the Hub, creating a repo makes an "initial commit" holding ``.gitattributes``.
``emulator.lfs_uploads`` lists every LFS object received by PUT.

Auth: ``Authorization: Bearer <token>``. Tokens map to (user, role); role "write" may
write to its user's namespace, "read" may not (403). A write without a known token gets
401, a write to another owner's namespace 403, a missing repo 404 (X-Error-Code
RepoNotFound), an existing repo on create 409.

Everything stays on 127.0.0.1 (by default); the emulator never opens a connection, every
request body is bounded (413 above the limit) and every connection times out.

    python -m tests.hub_emulator --port 8766 [--username imggenhub] [--token hf_...]
    HF_ENDPOINT=http://127.0.0.1:8766 HF_HUB_DISABLE_XET=1 HF_TOKEN=hf_... python ...
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from .emulator_main import Served, serve

DEFAULT_USER = "imggenhub"
DEFAULT_TOKEN = "hf_emulator_write_token"
DEFAULT_READ_TOKEN = "hf_emulator_read_token"
MAX_API_BODY = 64 << 20  # JSON and NDJSON bodies (regular files travel base64 in the commit)
MAX_LFS_BODY = 1 << 30  # one LFS object PUT (kept in memory)
LFS_THRESHOLD = 10 << 20  # larger files must go through LFS, as on the Hub
CONNECTION_TIMEOUT = 30.0  # a client that stalls mid-request frees its thread after this
UPLOAD_URL_SECONDS = 3600.0  # how long a signed LFS upload href stays valid
MAX_PENDING_UPLOADS = 10_000  # signed hrefs handed out and not used yet
REPO_TYPES = ("model", "dataset", "space")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# The .gitattributes the Hub writes in a new model repo (the LFS part of it).
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
    "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
    "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
    "*.zst", "*tfevents*"))
XET_REFUSAL = ("this Hub emulator speaks git-LFS 'basic' transfer only, not Xet: set "
               "HF_HUB_DISABLE_XET=1 in the client")


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob (what the client compares a regular file against)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Commit:
    oid: str
    message: str
    description: str
    parent: str | None
    files: dict  # path -> bytes added or changed by this commit
    deleted: list  # paths removed by this commit
    lfs: set  # the paths of ``files`` that came as LFS pointers (lfsFile)
    author: str
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str  # owner/name
    type: str  # model, dataset or space
    owner: str
    private: bool
    files: dict = field(default_factory=dict)  # path -> bytes (the tree at the head)
    lfs: dict = field(default_factory=dict)  # path -> sha256 of the paths stored through LFS
    objects: dict = field(default_factory=dict)  # sha256 -> bytes: LFS storage of this repo
    commits: list = field(default_factory=list)
    created: str = field(default_factory=_now)
    trees: dict = field(default_factory=dict)  # commit oid -> (files, lfs) as they stood then

    @property
    def key(self) -> str:
        return self.repo_id if self.type == "model" else f"{self.type}s/{self.repo_id}"

    @property
    def head(self) -> str:
        return self.commits[-1].oid

    def remote_oid(self, path: str) -> str | None:
        """The oid the client compares its file against: sha256 for LFS, git sha1 else."""
        if path not in self.files:
            return None
        return self.lfs.get(path) or git_blob_oid(self.files[path])

    def entry(self, path: str) -> dict:
        data = self.files[path]
        if path in self.lfs:
            pointer = lfs_pointer(self.lfs[path], len(data))
            return {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(pointer),
                    "lfs": {"oid": self.lfs[path], "size": len(data), "pointerSize": len(pointer)}}
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}


@dataclass
class LfsUpload:
    """One LFS object received by PUT on a signed href."""

    repo: str  # the repo key
    oid: str
    size: int


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class Emulator(Served):
    """The emulator. ``tokens`` maps each token it knows to ``(user, role)``, role "write"
    or "read"; ``add_user`` adds more (e.g. another owner). ``calls`` lists
    ``(method, path)`` of every request, in order."""

    def __init__(self, username: str = DEFAULT_USER, token: str = DEFAULT_TOKEN,
                 read_token: str | None = DEFAULT_READ_TOKEN, max_api_body: int = MAX_API_BODY,
                 max_lfs_body: int = MAX_LFS_BODY):
        self.username, self.token, self.read_token = username, token, read_token
        self.tokens: dict[str, tuple[str, str]] = {token: (username, "write")}
        self.cannot_pay: set[str] = set()  # users whose whoami says canPay false (no credit)
        self.on_request = None  # tests: called with (method, path) before each request is answered
        # fault knobs: each consumed by one request of its kind. commit_faults: "drop" reads
        # half the commit's body and closes the connection (an upload cut in half), nothing
        # committed
        self.commit_faults: list[str] = []
        if read_token:
            self.tokens[read_token] = (username, "read")
        self.max_api_body, self.max_lfs_body = max_api_body, max_lfs_body
        self.repos: dict[str, Repo] = {}
        self.lfs_uploads: list[LfsUpload] = []
        self.upload_urls: dict[str, tuple[str, str, int, float]] = {}  # secret -> repo, oid, size, expiry
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        from .jobs_emulator import Jobs

        self.jobs = Jobs(lambda: self.url)  # Hugging Face Jobs (tests/jobs_emulator.py)

    # --- lifecycle ---------------------------------------------------------------

    thread_name = "hub-emulator"

    def handler(self) -> type:
        return _Handler

    def stop(self) -> None:
        self.close_server()

    # --- state -------------------------------------------------------------------

    def add_user(self, username: str, token: str, role: str = "write") -> None:
        if role not in ("read", "write"):
            raise ValueError("role must be 'read' or 'write'")
        with self.lock:
            self.tokens[token] = (username, role)

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"]

    def create(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Make a repo as the Hub does (an initial commit with .gitattributes); for tests
        that need one of another owner without going through HTTP."""
        owner, _, name = repo_id.partition("/")
        if not NAME.match(owner) or not NAME.match(name) or name.endswith((".git", "-", ".")) \
                or "--" in name or ".." in name:  # the Hub's rules for a repo's name
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        with self.lock:
            repo = Repo(repo_id, repo_type, owner, private)
            if repo.key in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", "RepoExists")
            self.repos[repo.key] = repo
            self._commit(repo, "initial commit", "", owner,
                         {".gitattributes": GITATTRIBUTES.encode()}, set(), [])
            return repo

    def _commit(self, repo: Repo, message: str, description: str, author: str, files: dict,
                lfs: set, deleted: list, lfs_oids: dict | None = None) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else None
        # what the commit changes, as git records it: a file sent again unchanged is no change
        files = {path: data for path, data in files.items() if repo.files.get(path) != data}
        for path in deleted:
            repo.files.pop(path, None)
            repo.lfs.pop(path, None)
        for path, data in files.items():
            repo.files[path] = data
            if path in lfs:
                repo.lfs[path] = (lfs_oids or {}).get(path) or hashlib.sha256(data).hexdigest()
            else:
                repo.lfs.pop(path, None)
        tree = hashlib.sha1()
        for path in sorted(repo.files):
            tree.update(f"{path}\0{repo.remote_oid(path)}\n".encode())
        seed = f"{parent}\n{message}\n{tree.hexdigest()}\n{time.time_ns()}\n{len(repo.commits)}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), message, description, parent,
                        dict(files), list(deleted), set(lfs), author)
        repo.commits.append(commit)
        repo.trees[commit.oid] = (dict(repo.files), dict(repo.lfs))  # readable at its commit
        return commit


def _lfs_patterns(attributes: str) -> list[str]:
    patterns = []
    for line in attributes.splitlines():
        parts = line.split()
        if len(parts) > 1 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches(path: str, pattern: str) -> bool:
    if "/" not in pattern.rstrip("/"):  # a bare pattern matches the file name at any depth
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/").replace("**/", "*"))


def _ignored(path: str, gitignore: str | None) -> bool:
    if not gitignore:
        return False
    ignored = False
    for line in gitignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        if _matches(path, pattern.rstrip("/")) or (
                pattern.endswith("/") and path.startswith(pattern.lstrip("/"))):
            ignored = not negate
    return ignored


class _TooLarge(Exception):
    pass


_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(.*))?$")
_LFS = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)\.git/info/lfs/objects/(batch|verify)$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    emulator: Emulator
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT

    def log_message(self, fmt, *args):  # quiet
        pass

    # --- plumbing ----------------------------------------------------------------

    def _send(self, code: int, body: bytes, ctype: str = "application/json", headers=None,
              head_only: bool = False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:  # the request body was left unread: this connection ends
            self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _json(self, code: int, data, headers=None, ctype: str = "application/json"):
        self._send(code, json.dumps(data).encode(), ctype, headers)

    def _error(self, err: HubError):
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message}, headers)

    def _body(self, limit: int) -> bytes:
        """The request body (Content-Length or chunked), refused past ``limit`` bytes."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise HubError(400, "Malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    self._consumed = True
                    return bytes(out)
                if len(out) + size > limit:
                    raise _TooLarge()
                out += self.rfile.read(size)
                self.rfile.readline(8)  # the CRLF after each chunk
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HubError(400, "Malformed Content-Length") from None
        if length < 0:
            raise HubError(400, "Malformed Content-Length")
        if length > limit:
            raise _TooLarge()
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise HubError(400, "Body shorter than its Content-Length")
        self._consumed = True
        return data

    def _json_body(self) -> dict:
        try:
            data = json.loads(self._body(self.emulator.max_api_body) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HubError(400, "Body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HubError(400, "Body must be a JSON object")
        return data

    def _base(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    def _user(self) -> tuple[str, str] | None:
        auth = self.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return self.emulator.tokens.get(auth[7:].strip())
        return None

    def _writer(self, owner: str) -> str:
        """The user allowed to write in ``owner``'s namespace, or the HubError to answer."""
        auth = self.headers.get("Authorization", "")
        who = self._user()
        if who is None:
            if auth:
                raise HubError(401, "Invalid credentials in Authorization header")
            raise HubError(401, "Authorization header is required for this operation")
        user, role = who
        if role != "write":
            raise HubError(403, "This token has read access only: a write token is needed")
        if owner != user:
            raise HubError(403, f"You don't have the rights to write in the namespace {owner}")
        return user

    def _readable(self, key: str) -> Repo:
        repo = self.emulator.repos.get(key)
        who = self._user()
        if repo is None or (repo.private and (who is None or who[0] != repo.owner)):
            raise HubError(404 if self.headers.get("Authorization") else 401,
                           "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, key: str, owner: str) -> tuple[Repo, str]:
        user = self._writer(owner)
        repo = self.emulator.repos.get(key)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo, user

    @staticmethod
    def _revision(repo: Repo, revision: str) -> None:
        """A write goes to the branch: main (or its head, by oid)."""
        if unquote(revision) not in ("main", repo.head):
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")

    def _at(self, repo: Repo, revision: str) -> tuple[Repo, str]:
        """A read: the repo as it stood at ``revision`` (main, or any commit's oid, as on the
        Hub: a client that resolved main to an oid reads there while others commit), and
        that oid."""
        from dataclasses import replace

        rev = unquote(revision)
        with self.emulator.lock:
            oid = repo.head if rev == "main" else rev
            if oid not in repo.trees:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            files, lfs = repo.trees[oid]
            return replace(repo, files=files, lfs=lfs), oid

    # --- verbs -------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        with self.emulator.lock:
            self.emulator.calls.append((method, path))
        if self.emulator.on_request is not None:
            self.emulator.on_request(method, path)
        self._consumed = False
        has_body = (self.headers.get("Transfer-Encoding") or
                    (self.headers.get("Content-Length") or "0").strip() not in ("", "0"))
        try:
            try:
                self._route(method, path, query)
            except HubError as err:
                if has_body and not self._consumed:
                    self.close_connection = True  # answered before reading the body: drop it
                self._error(err)
        except _TooLarge:
            self.close_connection = True  # the rest of the body is not read
            self._error(HubError(413, "Request body too large for this emulator"))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _route(self, method: str, path: str, query: dict) -> None:
        from .jobs_emulator import route as jobs_route

        if jobs_route(self, method, path, query):
            return None
        if path == "/api/whoami-v2" and method == "GET":
            return self._whoami()
        if path == "/api/repos/create" and method == "POST":
            return self._create()
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete()
        if path == "/api/validate-yaml" and method == "POST":
            self._json_body()
            return self._json(200, {"errors": [], "warnings": []})
        if path.startswith("/lfs-upload/") and method == "PUT":
            return self._lfs_put(path[len("/lfs-upload/"):])
        m = _API_REPO.match(path)
        if m:
            kind, owner, name, rest = m.group(1), unquote(m.group(2)), unquote(m.group(3)), m.group(4) or ""
            key = f"{owner}/{name}" if kind == "models" else f"{kind}/{owner}/{name}"
            action, _, tail = rest.partition("/")
            if method == "GET" and action in ("", "revision"):
                return self._info(key, tail or "main", query)
            if method == "GET" and action == "tree":
                revision, _, sub = tail.partition("/")
                return self._tree(key, revision, unquote(sub), query)
            if method == "POST" and action == "preupload":
                return self._preupload(key, owner, tail)
            if method == "POST" and action == "commit":
                return self._commit(key, owner, tail, query)
            if action in ("xet-write-token", "xet-read-token"):
                raise HubError(501, XET_REFUSAL)
        m = _LFS.match(path)
        if m and method == "POST":
            kind, owner, name, action = m.groups()
            key = f"{owner}/{name}" if kind is None else f"{kind}/{owner}/{name}"
            return self._lfs_batch(key, owner) if action == "batch" else self._lfs_verify(key, owner)
        m = _RESOLVE.match(path)
        if m and method in ("GET", "HEAD"):
            kind, owner, name, revision, file = m.groups()
            key = f"{owner}/{name}" if kind is None else f"{kind}/{owner}/{name}"
            return self._resolve(key, revision, unquote(file), method == "HEAD")
        raise HubError(404, f"No such endpoint in the Hub emulator: {method} {path}")

    # --- endpoints ---------------------------------------------------------------

    def _whoami(self):
        who = self._user()
        if who is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        user, role = who
        self._json(200, {
            "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
            "fullname": user, "email": f"{user}@example.invalid", "emailVerified": True,
            "isPro": False, "orgs": [], "canPay": user not in self.emulator.cannot_pay,
            "auth": {"type": "access_token",
                     "accessToken": {"displayName": f"emulator {role} token", "role": role}}})

    def _create(self):
        body = self._json_body()
        who = self._user()
        owner = body.get("organization") or (who[0] if who else "")
        self._writer(owner)
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        name = body.get("name")
        if not isinstance(name, str):
            raise HubError(400, "name is required")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        try:
            repo = self.emulator.create(f"{owner}/{name}", repo_type, private)
        except HubError as err:
            if err.status == 409:
                self._json(409, {"error": err.message, "url": self._repo_url(owner, name, repo_type)},
                           {"X-Error-Message": err.message})
                return
            raise
        self._json(200, {"url": self._repo_url(owner, name, repo_type), "name": repo.repo_id,
                         "id": hashlib.sha1(repo.key.encode()).hexdigest()[:24]})

    def _repo_url(self, owner: str, name: str, repo_type: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self._base()}/{prefix}{owner}/{name}"

    def _delete(self):
        body = self._json_body()
        who = self._user()
        owner = body.get("organization") or (who[0] if who else "")
        self._writer(owner)
        repo_type = body.get("type") or "model"
        key = f"{owner}/{body.get('name')}"
        key = key if repo_type == "model" else f"{repo_type}s/{key}"
        with self.emulator.lock:
            if self.emulator.repos.pop(key, None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
        self._send(200, b"", "text/plain")

    def _info(self, key: str, revision: str, query: dict):
        repo, oid = self._at(self._readable(key), revision)
        with self.emulator.lock:
            blobs = query.get("blobs", [""])[0].lower() == "true"
            siblings = []
            for path in sorted(repo.files):
                sibling = {"rfilename": path}
                if blobs:
                    entry = repo.entry(path)
                    sibling.update(size=entry["size"], blobId=entry["oid"])
                    if "lfs" in entry:
                        sibling["lfs"] = {"size": entry["lfs"]["size"], "sha256": entry["lfs"]["oid"],
                                          "pointerSize": entry["lfs"]["pointerSize"]}
                siblings.append(sibling)
            self._json(200, {
                "_id": hashlib.sha1(key.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.owner, "sha": oid, "private": repo.private, "disabled": False,
                "gated": False, "lastModified": repo.commits[-1].date, "createdAt": repo.created,
                "tags": [], "downloads": 0, "likes": 0, "siblings": siblings})

    def _tree(self, key: str, revision: str, sub: str, query: dict):
        repo, _ = self._at(self._readable(key), revision)
        recursive = query.get("recursive", [""])[0].lower() == "true"
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        entries, folders = [], set()
        with self.emulator.lock:
            for path in sorted(repo.files):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix):]
                parts = rest.split("/")
                for depth in range(1, len(parts)):
                    if recursive or depth == 1:
                        folders.add(prefix + "/".join(parts[:depth]))
                if recursive or len(parts) == 1:
                    entries.append(repo.entry(path))
        if prefix and not entries and not folders:
            raise HubError(404, f"{sub} does not exist on {revision}", "EntryNotFound")
        out = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
               for f in sorted(folders)]
        self._json(200, out + entries)

    def _preupload(self, key: str, owner: str, revision: str):
        body = self._json_body()
        repo, _ = self._writable(key, owner)
        self._revision(repo, revision)
        files = body.get("files")
        if not isinstance(files, list) or len(files) > 1000:
            raise HubError(400, "files must be a list of at most 1000 entries")
        with self.emulator.lock:
            patterns = _lfs_patterns(repo.files.get(".gitattributes", b"").decode("utf-8", "replace"))
            gitignore = body.get("gitIgnore")
            if not isinstance(gitignore, str):
                gitignore = repo.files.get(".gitignore", b"").decode("utf-8", "replace") or None
            out = []
            for item in files:
                if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                    raise HubError(400, "each file needs a path")
                path = item["path"]
                try:
                    sample = base64.b64decode(item.get("sample") or "", validate=True)
                    size = int(item.get("size") or 0)
                except (ValueError, TypeError):
                    raise HubError(400, f"bad sample or size for {path}") from None
                lfs = (any(_matches(path, p) for p in patterns) or size > LFS_THRESHOLD
                       or b"\0" in sample)
                out.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                            "shouldIgnore": _ignored(path, gitignore),
                            "oid": repo.remote_oid(path)})
            self._json(200, {"files": out, "commitOid": repo.head})

    def _lfs_batch(self, key: str, owner: str):
        body = self._json_body()
        repo, _ = self._writable(key, owner)
        if body.get("operation") != "upload":
            raise HubError(422, "this emulator's LFS batch API serves uploads only")
        transfers = body.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise HubError(422, "this emulator offers the 'basic' LFS transfer only, not "
                                f"{transfers}; " + XET_REFUSAL)
        if (body.get("hash_algo") or "sha256") != "sha256":
            raise HubError(422, "only sha256 is supported")
        objects = body.get("objects")
        if not isinstance(objects, list) or len(objects) > 1000:
            raise HubError(422, "objects must be a list of at most 1000 entries")
        out = []
        base = self._base()
        auth = self.headers.get("Authorization", "")
        with self.emulator.lock:
            now = time.monotonic()
            for secret in [s for s, t in self.emulator.upload_urls.items() if t[3] < now]:
                del self.emulator.upload_urls[secret]
            if len(self.emulator.upload_urls) + len(objects) > MAX_PENDING_UPLOADS:
                raise HubError(429, "Too many LFS uploads announced and not done")
            for obj in objects:
                oid, size = (obj or {}).get("oid"), (obj or {}).get("size")
                if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid)
                        and isinstance(size, int) and size >= 0):
                    out.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "oid must be a sha256, size an int"}})
                    continue
                if size > self.emulator.max_lfs_body:
                    out.append({"oid": oid, "size": size, "error": {
                        "code": 413, "message": f"larger than this emulator's {self.emulator.max_lfs_body}"
                                                " byte limit"}})
                    continue
                if oid in repo.objects:  # already stored: no actions, the client skips the PUT
                    out.append({"oid": oid, "size": size})
                    continue
                secret = secrets.token_urlsafe(24)
                self.emulator.upload_urls[secret] = (repo.key, oid, size,
                                                     time.monotonic() + UPLOAD_URL_SECONDS)
                prefix = "" if repo.type == "model" else f"{repo.type}s/"
                out.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{base}/lfs-upload/{secret}", "expires_in": int(UPLOAD_URL_SECONDS)},
                    "verify": {"href": f"{base}/{prefix}{repo.repo_id}.git/info/lfs/objects/verify",
                               "header": {"Authorization": auth}}}})
        self._json(200, {"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                   ctype="application/vnd.git-lfs+json")

    def _lfs_put(self, secret: str):
        em = self.emulator
        with em.lock:
            ticket = em.upload_urls.get(secret)
        if ticket is None or ticket[3] < time.monotonic():
            raise HubError(403, "Unknown or expired upload URL")
        key, oid, size, _ = ticket
        data = self._body(min(size, em.max_lfs_body))
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match the announced oid {oid} and size {size}")
        with em.lock:
            em.upload_urls.pop(secret, None)
            repo = em.repos.get(key)
            if repo is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            repo.objects[oid] = data
            em.lfs_uploads.append(LfsUpload(key, oid, size))
        self._send(200, b"", "text/plain")

    def _lfs_verify(self, key: str, owner: str):
        body = self._json_body()
        repo, _ = self._writable(key, owner)
        with self.emulator.lock:
            data = repo.objects.get(body.get("oid"))
        if data is None or len(data) != body.get("size"):
            raise HubError(404, "Object not found or of another size")
        self._json(200, {"success": True})

    def _commit(self, key: str, owner: str, revision: str, query: dict):
        with self.emulator.lock:
            fault = self.emulator.commit_faults.pop(0) if self.emulator.commit_faults else None
        if fault == "drop":  # half the body read, then the connection goes: nothing committed
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length // 2)
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        raw = self._body(self.emulator.max_api_body)
        repo, user = self._writable(key, owner)
        self._revision(repo, revision)
        if query.get("create_pr", ["0"])[0] not in ("0", ""):
            raise HubError(400, "pull requests are not emulated")
        try:
            lines = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HubError(400, "Body is not valid NDJSON") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the header")
        header = lines[0].get("value") or {}
        message = header.get("summary")
        if not isinstance(message, str) or not message.strip():
            raise HubError(400, "A commit summary is required")
        files, lfs, lfs_oids, deleted = {}, set(), {}, []
        with self.emulator.lock:
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            for line in lines[1:]:
                kind, value = (line or {}).get("key"), (line or {}).get("value") or {}
                path = value.get("path")
                if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path {path!r}")
                if kind == "file":
                    content = value.get("content") or ""
                    try:
                        data = (base64.b64decode(content, validate=True)
                                if value.get("encoding") == "base64" else content.encode("utf-8"))
                    except ValueError:
                        raise HubError(400, f"{path}: content is not valid base64") from None
                    if b"\0" in data[:8000]:
                        raise HubError(400, "Your push was rejected because it contains binary "
                                            f"files ({path}): store them through LFS")
                    if len(data) > LFS_THRESHOLD:
                        raise HubError(400, f"{path} is larger than 10 MB: store it through LFS")
                    files[path] = data
                elif kind == "lfsFile":
                    oid = value.get("oid")
                    data = repo.objects.get(oid)
                    if data is None:
                        raise HubError(400, f"Your push was rejected because an LFS pointer ({path}) "
                                            "pointed to a file that does not exist")
                    if value.get("size") is not None and value.get("size") != len(data):
                        raise HubError(400, f"{path}: LFS size does not match the object")
                    files[path], lfs_oids[path] = data, oid
                    lfs.add(path)
                elif kind in ("deletedFile", "deletedFolder"):
                    if kind == "deletedFile":
                        if path not in repo.files:
                            raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                        deleted.append(path)
                    else:
                        folder = path.rstrip("/") + "/"
                        inside = [p for p in repo.files if p.startswith(folder)]
                        if not inside:
                            raise HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                        deleted.extend(inside)
                else:
                    raise HubError(400, f"Unknown commit operation {kind!r}")
            commit = self.emulator._commit(repo, message, header.get("description") or "", user,
                                           files, lfs, deleted, lfs_oids)
        prefix = "" if repo.type == "model" else f"{repo.type}s/"
        self._json(200, {"success": True, "commitOid": commit.oid,
                         "commitUrl": f"{self._base()}/{prefix}{repo.repo_id}/commit/{commit.oid}",
                         "hookOutput": ""})

    def _resolve(self, key: str, revision: str, path: str, head_only: bool):
        repo, oid = self._at(self._readable(key), revision)
        with self.emulator.lock:
            if path not in repo.files:
                raise HubError(404, "Entry not found", "EntryNotFound")
            data = repo.files[path]
            entry = repo.entry(path)
            headers = {"X-Repo-Commit": oid, "ETag": f'"{entry["oid"]}"',
                       "Accept-Ranges": "none"}
            if "lfs" in entry:
                headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
                headers["X-Linked-Size"] = str(len(data))
        self._send(200, data, "application/octet-stream", headers, head_only=head_only)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Local Hugging Face Hub emulator for imggenhub's tests")
    parser.add_argument("--port", type=int, default=8766, help="0: any free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--username", default=DEFAULT_USER)
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="the user's write token")
    parser.add_argument("--read-token", default=DEFAULT_READ_TOKEN, help="the user's read-only token")
    parser.add_argument("--max-body-mb", type=int, default=MAX_LFS_BODY >> 20,
                        help="the largest LFS object accepted, in MiB")
    args = parser.parse_args(argv)
    em = Emulator(args.username, args.token, args.read_token or None,
                  max_lfs_body=args.max_body_mb << 20)
    return serve(em.start, em.stop, args.host, args.port,
                 lambda url: f"Hub emulator ready at {url} (user {args.username}; set "
                             f"HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1)")


if __name__ == "__main__":
    sys.exit(main())
