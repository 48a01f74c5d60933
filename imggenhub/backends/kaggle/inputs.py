"""Files on this machine, on Kaggle: the init images, masks, LoRA and embedding files a job
names travel to the kernel as one private Kaggle dataset, through the official client's
blob upload (StartBlobUpload, a resumable PUT, CreateDataset), and the push waits until
Kaggle says the dataset is ready.

Content-addressed: each file is stored as ``<sha256><ext>`` (never under the user's name,
so no name can break the notebook or escape the dataset), and the dataset's slug is made
from those names. The same inputs always make the same dataset: a job whose inputs are
unchanged finds it ready and uploads nothing. A dataset is never versioned over with
other files, so a queued kernel never loses the inputs it was pushed with; Kaggle's API
cannot add a file to a dataset without sending the others again, so a job whose set of
inputs differs uploads its own dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from ...config import Deadline
from ...engine import KAGGLE_INPUT, counted, sha256_of
from ...engine.inputs import move_paths
from ...errors import KaggleApiError, NothingYet, SpecError, TransferError
from ...run import runs
from . import api as kaggle_api

INPUTS_FILE = "inputs.json"  # beside the notebook: what the push must ship first
SLUG_PREFIX = "imggenhub-inputs-"
LICENSE = "copyright-authors"  # "Data files (c) Original Authors": the user's own files
READY = "READY"
BROKEN = ("FAILED", "DELETED")  # a new version with the same files mends these


@dataclass(frozen=True)
class InputFile:
    path: str  # where it is on this machine
    sha256: str
    size: int
    ext: str  # ".png", ".safetensors" ("" when the name has none a loader would need)
    stored: str | None = None  # its name in the dataset when not its content's (the token)
    # its bytes, when they are on no disk (the token: never written on this machine)
    data: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """Its name in the dataset: its content, never the user's name."""
        return self.stored or self.sha256 + self.ext

    @property
    def label(self) -> str:
        return self.stored or Path(self.path).name


@dataclass(frozen=True)
class Shipment:
    owner: str
    slug: str
    files: tuple[InputFile, ...]

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def kernel_path(self, f: InputFile) -> str:
        return f"{KAGGLE_INPUT}/{self.slug}/{f.name}"


def _sha256(path: str) -> tuple[str, int]:
    try:
        return sha256_of(path), Path(path).stat().st_size
    except OSError as exc:
        raise SpecError(f"The input file {path} cannot be read ({exc.strerror or exc}).") from None


def _ext(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,12}", suffix) else ""


def unchanged(f: InputFile) -> None:
    """The file as the run was made with it, or one sentence (it changed, or is gone)."""
    sha, size = (hashlib.sha256(f.data).hexdigest(), len(f.data)) if f.data is not None \
        else _sha256(f.path)
    if (sha, size) != (f.sha256, f.size):
        raise SpecError(f"The input file {f.path} changed after this run was made; make a new "
                        "run with it.")


def plan(job, owner: str) -> Shipment | None:
    """The dataset that carries the job's local files to Kaggle (None: the job has none)."""
    files = []
    for path in job.local_files():
        sha, size = _sha256(path)
        files.append(InputFile(path, sha, size, _ext(path)))
    if not files:
        return None
    unique = sorted({f.name for f in files})
    slug = SLUG_PREFIX + hashlib.sha256("\n".join(unique).encode("ascii")).hexdigest()[:16]
    return Shipment(owner, slug, tuple(files))


def kernel_document(document: dict, shipment: Shipment) -> dict:
    """The job document as the kernel reads it: each local path replaced by the file's path
    under /kaggle/input, and ``inputs`` saying each one's sha256 and its name here. The
    job id stays the spec's: the run's records and its manifest name that job."""
    doc = move_paths(document, {f.path: shipment.kernel_path(f) for f in shipment.files})
    doc["inputs"] = {shipment.kernel_path(f): {"name": f.label, "sha256": f.sha256}
                     for f in shipment.files}
    return doc


def save(folder: Path, shipment: Shipment) -> None:
    data = {"owner": shipment.owner, "slug": shipment.slug,
            "files": [{k: v for k, v in asdict(f).items() if k != "data"}  # bytes stay in memory
                      for f in shipment.files]}
    (Path(folder) / INPUTS_FILE).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def load(folder: Path) -> Shipment | None:
    path = Path(folder) / INPUTS_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Shipment(data["owner"], data["slug"], tuple(InputFile(**f) for f in data["files"]))


class _Broken(IOError):
    """An upload that stopped short (a 308, a 503, a cut connection): worth resuming."""


def _worth_resuming(exc: BaseException) -> bool:
    return isinstance(exc, _Broken) or kaggle_api.is_transient(exc)


def size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Shipper:
    """Makes sure a shipment's dataset exists and is ready, uploading only what it must."""

    def __init__(self, backend, on_event):
        self.backend = backend
        self.tunables = backend.tunables
        self.on_event = on_event

    @property
    def datasets(self):
        return self.backend.client.datasets.dataset_api_client

    def status(self, shipment: Shipment) -> str | None:
        """Kaggle's status of the dataset (None: no such dataset)."""
        from kagglesdk.datasets.types.dataset_api_service import (
            ApiGetDatasetStatusRequest,
        )

        req = ApiGetDatasetStatusRequest()
        req.owner_slug, req.dataset_slug = shipment.owner, shipment.slug
        try:
            resp = self.backend._call("reading the inputs dataset's status",
                                      lambda: self.datasets.get_dataset_status(req), self.on_event)
        except KaggleApiError as exc:
            if exc.status == 404:
                return None
            raise
        status = resp.status
        return getattr(status, "name", None) or str(status or "").upper()

    def ship(self, shipment: Shipment, run_id: str | None, current=lambda: True) -> None:
        """Make sure the dataset holds the shipment and is ready. ``current()`` says whether a
        ready dataset of that slug holds these very files (always, for content-addressed
        slugs); when it does not, a new version is sent."""
        status = self.status(shipment)
        if status == READY and current():
            self.on_event(f"inputs: dataset {shipment.ref} is ready ({counted(len(shipment.files), 'file')}); "
                          "nothing to upload")
            return
        if status is None or status in BROKEN or status == READY:
            wait = self.backend._lock_wait()
            with runs.uploading(shipment.ref, wait=wait):
                status = self.status(shipment)  # another process may have made it meanwhile
                if status is None or status in BROKEN or (status == READY and not current()):
                    tokens = [self.upload(f) for f in self._distinct(shipment)]
                    self.create(shipment, tokens, exists=status is not None)
        self.wait_ready(shipment, run_id)

    @staticmethod
    def _distinct(shipment: Shipment) -> list[InputFile]:
        seen, out = set(), []
        for f in shipment.files:
            if f.name not in seen:
                seen.add(f.name)
                out.append(f)
        return out

    # --- one file, resumable -------------------------------------------------------

    def upload(self, f: InputFile) -> str:
        """Upload one file; return its blob token. A cut-off upload resumes where the server
        says it stopped; an expired one starts again."""
        unchanged(f)
        self.on_event(f"inputs: uploading {f.label} ({size_text(f.size)})")
        session = requests.Session()
        adapter = kaggle_api._TimeoutAdapter(self.backend._timeout)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        upload: dict = {}

        def once() -> str:
            offset = self._received(session, upload, f) if upload else 0
            if not upload:
                upload.update(self._start(f))
            if offset < f.size:
                self._put(session, upload, f, offset)
            return upload["token"]

        try:
            for attempt in kaggle_api.retrying(self.tunables, self.backend.deadline, self._retry_note,
                                               _worth_resuming):
                with attempt:
                    return once()
        except (_Broken, requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            raise TransferError(f"The upload of {f.label} kept breaking off ({type(exc).__name__}); "
                                "run the same command again: it resumes, and nothing half-uploaded "
                                "is used.") from None
        except requests.RequestException as exc:
            raise kaggle_api.explain(exc, f"uploading {f.label}",
                                     kaggle_api.endpoint(self.backend.tunables)) from None
        raise AssertionError("unreachable")

    def _retry_note(self, text: str) -> None:
        self.on_event(f"inputs: upload interrupted ({text}); resuming")

    def _start(self, f: InputFile) -> dict:
        from kagglesdk.blobs.types.blob_api_service import (
            ApiBlobType,
            ApiStartBlobUploadRequest,
        )

        req = ApiStartBlobUploadRequest()
        req.type = ApiBlobType.DATASET
        req.name = f.name
        req.content_length = f.size
        req.last_modified_epoch_seconds = int(time.time() if f.data is not None
                                              else Path(f.path).stat().st_mtime)
        resp = self.backend._call("starting an upload", lambda: self.backend.client.blobs
                                  .blob_api_client.start_blob_upload(req), self.on_event)
        return {"token": resp.token, "url": resp.create_url}

    def _received(self, session, upload: dict, f: InputFile) -> int:
        """How many bytes the server has (0, and a fresh start, if the upload expired)."""
        resp = session.put(upload["url"], data=b"",
                           headers={"Content-Range": f"bytes */{f.size}"})
        if resp.status_code in (200, 201):
            return f.size
        if resp.status_code == 308:
            match = re.fullmatch(r"bytes=0-(\d+)", resp.headers.get("Range", ""))
            return int(match.group(1)) + 1 if match else 0
        if resp.status_code == 404:
            self.on_event(f"inputs: the upload of {f.label} expired; starting it again")
            upload.clear()
            return 0
        resp.raise_for_status()
        raise _Broken(f"HTTP {resp.status_code}")

    def _put(self, session, upload: dict, f: InputFile, offset: int) -> None:
        headers = {}
        if offset:
            headers["Content-Range"] = f"bytes {offset}-{f.size - 1}/{f.size}"
        with (io.BytesIO(f.data) if f.data is not None else open(f.path, "rb")) as handle:
            handle.seek(offset)
            resp = session.put(upload["url"], data=handle, headers=headers)
        if resp.status_code in (200, 201):
            return
        if resp.status_code == 404:
            upload.clear()
            raise _Broken("the upload expired")
        if resp.status_code == 308:
            raise _Broken("the server kept part of it")
        resp.raise_for_status()
        raise _Broken(f"HTTP {resp.status_code}")

    # --- the dataset ---------------------------------------------------------------

    def create(self, shipment: Shipment, tokens: list[str], exists: bool) -> None:
        from kagglesdk.datasets.types.dataset_api_service import (
            ApiCreateDatasetRequest,
            ApiCreateDatasetVersionRequest,
            ApiCreateDatasetVersionRequestBody,
            ApiDatasetNewFile,
        )

        files = []
        for token in tokens:
            new = ApiDatasetNewFile()
            new.token = token
            files.append(new)
        if exists:  # failed on Kaggle, or out of date: the files again, as a new version
            req = ApiCreateDatasetVersionRequest()
            req.owner_slug, req.dataset_slug = shipment.owner, shipment.slug
            req.body = ApiCreateDatasetVersionRequestBody()
            req.body.version_notes = "imggenhub inputs, sent again"
            req.body.files = files
            call = lambda: self.datasets.create_dataset_version(req)  # noqa: E731
        else:
            req = ApiCreateDatasetRequest()
            req.owner_slug, req.slug = shipment.owner, shipment.slug
            req.title = "imggenhub inputs " + shipment.slug[len(SLUG_PREFIX):][:12]
            req.license_name = LICENSE
            req.is_private = True
            req.files = files
            call = lambda: self.datasets.create_dataset(req)  # noqa: E731
        resp = self.backend._call("creating the inputs dataset", call, self.on_event)
        if resp.error and "already exists" not in resp.error:  # made by a retry or another run
            raise KaggleApiError(f"Kaggle refused the inputs dataset {shipment.ref}: "
                                 f"{resp.error.rstrip('.')}.", 400)
        self.on_event(f"inputs: dataset {shipment.ref} created; waiting for Kaggle to make it ready")

    def wait_ready(self, shipment: Shipment, run_id: str | None) -> None:
        clock = self.tunables.clock
        mine = Deadline(self.tunables, self.tunables.dataset_wait)
        interval = self.tunables.poll_interval
        while True:
            status = self.status(shipment)
            if status == READY:
                self.on_event(f"inputs: dataset {shipment.ref} is ready")
                return
            again = f"'imggenhub resume {run_id}'" if run_id else "the same command"
            if status is None or status in BROKEN:
                raise KaggleApiError(f"Kaggle {'lost' if status is None else 'failed to process'} "
                                     f"the dataset {shipment.ref}; {again} uploads it again.", 400)
            if mine.passed(after=interval) or self.backend.deadline.passed(after=interval):
                what = f"run {run_id} was not pushed" if run_id else "nothing was pushed"
                raise NothingYet(f"Kaggle is still processing the dataset {shipment.ref} "
                                 f"({status}); {what}; {again} pushes once it is ready.")
            clock.sleep(interval)
            interval = min(self.tunables.poll_max_interval, interval * 1.5)


# --- a Hugging Face token, for gated and private models -----------------------------------

TOKEN_SLUG = "imggenhub-hf-token"
TOKEN_FILE = "token"
TOKEN_MARKS = "hf-token-datasets.json"  # in the state dir: sha256 of the token each one holds


def token_kernel_path() -> str:
    return f"{KAGGLE_INPUT}/{TOKEN_SLUG}/{TOKEN_FILE}"


def ship_token(shipper: Shipper, owner: str, token: str) -> str:
    """Put the token in the private dataset OWNER/imggenhub-hf-token (a new version only when
    it holds another token), wait until it is ready, and return the dataset's ref. The token
    goes from memory: it is written nowhere on this machine (a kill at any point leaves no
    copy of it)."""
    from ...config import state_dir

    data = token.encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()
    marks_path = state_dir() / TOKEN_MARKS
    try:
        marks = json.loads(marks_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marks = {}
    ref = f"{owner}/{TOKEN_SLUG}"
    token_file = InputFile(f"<the token, from memory>/{TOKEN_FILE}", sha, len(data), "",
                           TOKEN_FILE, data)
    shipper.ship(Shipment(owner, TOKEN_SLUG, (token_file,)), None,
                 current=lambda: marks.get(ref) == sha)
    marks[ref] = sha
    marks_path.write_text(json.dumps(marks, indent=1) + "\n", encoding="utf-8")
    return ref
