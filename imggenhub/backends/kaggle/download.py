"""Downloading a Kaggle kernel version's outputs: the paged listing (bounded), then
parallel downloads to unique temporary names, each bounded by the size the manifest
gives (or a cap for files outside it) and by a whole-file deadline, verified, renamed
into place. A server's answers are untrusted input."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import urllib3

from ...engine import BUNDLES_DIR, LOG_FILE, MANIFEST, OUTPUT_DIR, images_text, sha256_of
from ...errors import DamagedOutputError, TransferError, UnsafeOutputError
from ...outputs import artifacts
from ...run.runs import Run
from . import api as kaggle_api

OUTPUT_PREFIX = OUTPUT_DIR + "/"
PAGE_SIZE = 500  # what Kaggle serves a page
BUNDLE_TMP = ".imggenhub-bundles"  # in the output folder while bundles are unpacked
KERNEL_MANIFEST = ".imggenhub-kernel-manifest.json"  # the version's own, before it is merged
HASH_ATTEMPTS = 3


def log_text(raw: str | None) -> str:
    """Kaggle's log is a JSON array of {stream_name, time, data}; keep the text."""
    if not raw:
        return ""
    try:
        entries = json.loads(raw)
        return "".join(str(e.get("data", "")) for e in entries)
    except (ValueError, AttributeError, TypeError, RecursionError):
        return str(raw)


def output_page(backend, run: Run, token: str | None, size: int, on_event):
    from kagglesdk.kernels.types.kernels_api_service import (
        ApiListKernelSessionOutputRequest,
    )

    req = ApiListKernelSessionOutputRequest()
    req.user_name, req.kernel_slug = backend._slug(run)
    req.version_label = f"v{run.version}"
    req.page_size = size
    if token:
        req.page_token = token
    return backend._call("listing the kernel outputs",
                         lambda: backend.api.list_kernel_session_output(req), on_event)


def list_outputs(backend, run: Run, on_event) -> tuple[dict[str, str], str]:
    """Every output file of the version (name -> signed URL) and the log; bounded."""
    files, log, token, seen = {}, None, None, set()
    for _ in range(backend.tunables.max_pages):
        page = output_page(backend, run, token, PAGE_SIZE, on_event)
        if log is None:
            log = page.log or ""
        for item in page.files or []:
            files[item.file_name] = item.url
        token = page.next_page_token
        if not token:
            return files, log
        if token in seen:
            raise UnsafeOutputError(f"Kaggle's output listing of run {run.run_id} repeats its page "
                                    f"token {token[:20]!r}; stopped.")
        seen.add(token)
    raise UnsafeOutputError(f"Kaggle's output listing of run {run.run_id} did not end after "
                            f"{backend.tunables.max_pages} pages; stopped (IMGGENHUB_MAX_PAGES).")


def part_name(dest: Path) -> Path:
    """The temporary name a file is written under beside ``dest``: from a hash of its whole
    path (two files of one name in different folders, two bundles of one name, never share
    one), this process and this thread, after the start of its name; bounded, whatever the
    name's length."""
    digest = hashlib.sha256(os.fsencode(dest)).hexdigest()[:20]
    return dest.with_name(f".{dest.name[:100]}.{digest}-{os.getpid()}-{threading.get_ident()}.part")


def bundle_landing(out_dir: Path, name: str) -> Path:
    """Where a bundle lands to be unpacked: named from its whole relative path, so that
    bundles of one name in different folders land apart."""
    rel = artifacts.safe_relative(name)
    digest = hashlib.sha256(rel.as_posix().encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return out_dir / BUNDLE_TMP / f"{digest}-{rel.name[-80:]}"


class _Oversize(Exception):
    pass


class _TooSlow(Exception):
    pass


class _Refused(Exception):
    pass


def download(backend, url: str, dest: Path, limit: int, record: dict | None, on_event,
             check=None) -> None:
    """GET a signed URL to a unique temporary name, check it (against its manifest record,
    or with ``check(path)``), and only then rename it into place."""
    tunables = backend.tunables
    tmp = part_name(dest)
    mismatches = [0]

    def once():
        # identity: the bytes as stored, so sizes and hashes are the manifest's
        with requests.get(url, stream=True, timeout=tunables.http_timeout,
                          headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status_code in (401, 403, 404, 410):
                raise _Refused(resp.status_code)
            resp.raise_for_status()
            expected = resp.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and int(expected) > limit:
                raise _Oversize(int(expected))
            # The whole-file deadline: read1 returns whatever has arrived, so a body that
            # trickles a byte at a time is still checked between reads.
            ends = time.monotonic() + tunables.file_deadline
            size = 0
            with open(tmp, "wb") as fh:
                while True:
                    try:
                        chunk = resp.raw.read1(1 << 16)
                    except (urllib3.exceptions.HTTPError, OSError) as exc:
                        raise kaggle_api.TruncatedDownload(f"{dest.name}: {exc}") from None
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise _Oversize(size)
                    fh.write(chunk)
                    if time.monotonic() > ends:
                        raise _TooSlow()
        whole = expected is not None and expected.isdigit()  # its length was announced
        if whole and size != int(expected):
            raise kaggle_api.TruncatedDownload(f"{dest.name}: {size} of {expected} bytes")
        if record is not None and size != record["bytes"] and not whole:
            # no length announced: a body cut short looks the same; worth a retry
            raise kaggle_api.TruncatedDownload(f"{dest.name}: {size} of {record['bytes']} bytes")
        differs = (f"with {size} bytes where the manifest says {record['bytes']}"
                   if size != record["bytes"] else "with a sha256 different from the manifest's"
                   if sha256_of(tmp) != record["sha256"] else None) if record is not None else None
        if differs:  # it arrived whole: a few tries, then it is what Kaggle keeps
            mismatches[0] += 1
            if mismatches[0] >= HASH_ATTEMPTS:
                raise DamagedOutputError(
                    f"{dest.name} arrived whole {mismatches[0]} times, each time {differs}: the "
                    "file is damaged on Kaggle's side and downloading it again brings the same "
                    "bytes, so the run counts as failed; the files that matched are kept.")
            raise kaggle_api.TruncatedDownload(f"{dest.name}: arrived {differs}")
        if check is not None:
            check(tmp)

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        backend._call(f"downloading {dest.name}", once, on_event)
        os.replace(tmp, dest)
    except _Oversize as exc:
        raise UnsafeOutputError(f"Kaggle served {dest.name} larger than the {limit} bytes "
                                f"expected ({exc.args[0]} bytes or more); refused.") from None
    except _Refused as exc:
        raise TransferError(f"Kaggle refused the download link of {dest.name} (HTTP "
                            f"{exc.args[0]}; signed links expire); run the same command again for "
                            "fresh links.") from None
    except _TooSlow:
        raise TransferError(f"Downloading {dest.name} took longer than {tunables.file_deadline:.0f}s "
                            "(IMGGENHUB_FILE_DEADLINE); run the same command again.") from None
    finally:
        tmp.unlink(missing_ok=True)  # no half file left behind; the next try starts clean


def bring_outputs(backend, run: Run, out_dir: Path, here: dict | None, on_event):
    """The version's outputs into ``out_dir``: its manifest joined to the one here, then
    each file it lists that is not here verified, downloaded and checked on arrival."""
    import shutil

    from ..base import Fetched

    shutil.rmtree(out_dir / BUNDLE_TMP, ignore_errors=True)  # a killed unpacking's leftovers
    files, log = list_outputs(backend, run, on_event)
    for name in files:
        artifacts.safe_relative(name)  # refuse '..', absolute and NUL names before anything
    (out_dir / LOG_FILE).write_text(log_text(log), encoding="utf-8")
    ours = {name[len(OUTPUT_PREFIX):]: url for name, url in files.items()
            if name.startswith(OUTPUT_PREFIX)}
    manifest_url = ours.pop(MANIFEST, None)
    records = {}
    cap = backend.tunables.unlisted_cap
    if manifest_url:
        parsed: dict = {}

        def ours_only(path: Path) -> None:  # checked before it replaces anything
            found = artifacts.parse_manifest(path.read_bytes(), f"Kaggle's {MANIFEST}")
            if found.get("job_id") not in (None, run.job_id) or \
                    found.get("run_id") not in (None, run.run_id):
                raise UnsafeOutputError(f"Kaggle's {MANIFEST} for run {run.run_id} belongs to "
                                        f"another run ({found.get('run_id') or found.get('job_id')}); "
                                        "nothing was kept.")
            parsed["manifest"] = found

        # the kernel's manifest joins the one here (a later session's, or a shard's, adds to it)
        landed = out_dir / KERNEL_MANIFEST
        download(backend, manifest_url, landed, artifacts.MAX_MANIFEST_BYTES, None, on_event,
                 check=ours_only)
        manifest = parsed.get("manifest") or artifacts.parse_manifest(
            landed.read_bytes(), f"Kaggle's {MANIFEST}")  # checked on an earlier try
        merged = artifacts.combine(here, manifest)
        artifacts.write_manifest(out_dir, merged)  # under the folder's lock
        landed.unlink()
        records = {r["file"]: r for r in manifest["images"]}
        bundles = [b for b in manifest.get("bundles") or [] if isinstance(b, dict)
                   and isinstance(b.get("file"), str) and b["file"] in ours
                   and isinstance(b.get("bytes"), int) and isinstance(b.get("sha256"), str)]
    else:
        merged, bundles = here, []
    todo, covered = [], set()
    for b in bundles:  # a whole bundle: one download for all its images
        members = [r for r in records.values() if r.get("bundle") == b["file"] and not
                   _not_an_image(str(r["file"]))]
        covered.update(r["file"] for r in members)
        missing = [r for r in members if artifacts.verify_image(out_dir, r) is not None]
        if missing:
            dest = bundle_landing(out_dir, b["file"])
            todo.append((ours[b["file"]], dest, int(b["bytes"]), b, missing))
    for name, url in sorted(ours.items()):
        if _not_an_image(name) or name in covered or name.startswith(BUNDLES_DIR + "/"):
            continue  # the engine's temporary files; images that come in a bundle; bundles
        dest = out_dir / artifacts.safe_relative(name)
        record = records.get(name)
        if record and dest.exists() and artifacts.verify_image(out_dir, record) is None:
            continue  # already here and verified
        todo.append((url, dest, record["bytes"] if record else cap, record, None))
    # every file of this kernel's manifest is hashed once here: on arrival, or when it was
    # here already (the checks above); one it does not list is left for the folder's check
    unhashed = set(records) - covered - {name for name in ours if name in records}
    done = [0]
    lock = threading.Lock()

    def one(item):
        url, dest, limit, record, members = item
        if members is None:
            download(backend, url, dest, limit, record, on_event)
        else:
            try:
                download(backend, url, dest, limit, record, on_event)
                unpack(dest, out_dir, members)
            except (TransferError, UnsafeOutputError) as exc:
                loose = [m for m in members if m["file"] in ours]
                if len(loose) < len(members):
                    raise
                on_event(f"the bundle {dest.name} could not be used ({exc}); fetching its "
                         f"{images_text(len(loose))} one by one")
                for m in loose:
                    download(backend, ours[m["file"]], out_dir / artifacts.safe_relative(m["file"]),
                             m["bytes"], m, on_event)
        with lock:
            done[0] += 1
            if done[0] % 25 == 0 or done[0] == len(todo):
                on_event(f"downloaded {done[0]}/{len(todo)} files")

    with ThreadPoolExecutor(max_workers=backend.tunables.download_workers) as pool:
        list(pool.map(one, todo))
    if (out_dir / BUNDLE_TMP).is_dir() and not any((out_dir / BUNDLE_TMP).iterdir()):
        (out_dir / BUNDLE_TMP).rmdir()
    # what this kernel's manifest lists and its output does not hold (another shard's or an
    # earlier session's files are not this listing's to hold)
    unlisted = set(records) - set(ours) - covered
    return Fetched(merged, unhashed, unlisted)


def _not_an_image(name: str) -> bool:
    """Names an image never has: the engine's temporary files, and this folder's own."""
    return name.startswith(".") or "/." in name or name in (MANIFEST, LOG_FILE, artifacts.GALLERY)


def unpack(tar_path: Path, out_dir: Path, members: list[dict]) -> None:
    """The images of a downloaded (and verified) bundle, each found by the manifest's name,
    checked against its record and renamed into place; then the bundle goes. Nothing is
    ever extracted by the archive's own names."""
    import tarfile

    try:
        with tarfile.open(tar_path, "r:") as tar:
            found = {m.name: m for m in tar.getmembers()}
            for record in members:
                info = found.get(record["file"])
                if info is None or not info.isfile() or info.size != record["bytes"]:
                    raise UnsafeOutputError(f"The bundle {tar_path.name} does not hold "
                                            f"{record['file']} as the manifest says; refused.")
                dest = out_dir / artifacts.safe_relative(record["file"])
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = part_name(dest)
                try:
                    with tar.extractfile(info) as src, open(tmp, "wb") as fh:
                        while block := src.read(1 << 20):
                            fh.write(block)
                    if sha256_of(tmp) != record["sha256"]:
                        raise UnsafeOutputError(f"{record['file']} in the bundle {tar_path.name} "
                                                "differs from the manifest's sha256; refused.")
                    os.replace(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)
    except tarfile.TarError as exc:
        raise UnsafeOutputError(f"The bundle {tar_path.name} is not a readable tar ({exc}); "
                                "refused.") from None
    finally:
        tar_path.unlink(missing_ok=True)
