"""Outputs: the output folder (checked before anything is pushed, locked while written),
the manifest (untrusted when it comes from a server), verification and the gallery."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from filelock import FileLock, Timeout
from pydantic import ValidationError

from ..config import writable_folder
from ..engine import MANIFEST, Plan, merge, sha256_of, write_json_atomic
from ..errors import NothingYet, SpecError, UnsafeOutputError
from .gallery import GALLERY  # noqa: F401  (the name every side uses)
from .schema import Manifest, first_problem

CLAIM = ".imggenhub-run.json"  # which run fills this folder
LOCK = ".imggenhub.lock"
MAX_MANIFEST_BYTES = 64 << 20


def safe_relative(name: str) -> PurePosixPath:
    """A file name from a kernel's outputs as a safe relative path; refuses '..', absolute
    names, NUL, drive letters, and names that are no file ('.', 'output/.')."""
    path = PurePosixPath(str(name).replace("\\", "/"))
    if (not name or path.is_absolute() or ".." in path.parts or ":" in name or "\0" in name
            or path.name in ("", ".") or str(name).endswith(("/", "/."))):
        raise UnsafeOutputError(f"Refusing the output file name {name!r}: it leaves the output "
                                "folder or names no file.")
    return path


def parse_manifest(data: bytes | str, where: str) -> dict:
    """A manifest's text, validated (``schema``: every field the host reads, its type and
    bounds): every image has a safe name, a sha256 and a size."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise UnsafeOutputError(f"{where} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; refused.")
    try:
        raw = json.loads(data)
        manifest = Manifest.model_validate(raw)
    except (ValueError, RecursionError, ValidationError) as exc:
        first = first_problem(exc) if isinstance(exc, ValidationError) else type(exc).__name__
        raise UnsafeOutputError(f"{where} is not an imggenhub manifest ({first[:200]}).") from None
    for record in manifest.images:
        safe_relative(record.file)
    return raw


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UnsafeOutputError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB.")
    return parse_manifest(path.read_bytes(), str(path))


def write_manifest(folder: Path, manifest: dict) -> None:
    """The folder's manifest.json, replaced whole (as the engine writes it)."""
    write_json_atomic(Path(folder) / MANIFEST, manifest)


def combine(old: dict | None, new: dict) -> dict:
    """One manifest from the one already here and a later session's (or a shard's): the
    engine's merge, against the whole job's plan (what the whole job still lacks here)."""
    planned = new.get("planned_images")
    return merge(old, new, Plan.whole(planned) if isinstance(planned, int) else None)


MISSING = "is missing"  # how verify_image says it; anything else it says is a damaged file


def verify_image(folder: Path, record: dict, hashed: bool = True) -> str | None:
    """None if the image on disk matches its manifest record, else what is wrong (its
    sha256 is left unchecked with ``hashed=False``: a file checked when it arrived)."""
    path = Path(folder) / safe_relative(record["file"])
    if not path.exists():
        return f"{record['file']} {MISSING}"
    if path.stat().st_size != record["bytes"]:
        return f"{record['file']} has {path.stat().st_size} bytes, the manifest says {record['bytes']}"
    if hashed and sha256_of(path) != record["sha256"]:
        return f"{record['file']} does not match its sha256 in the manifest"
    return None


def check(folder: Path, manifest: dict, unhashed=None) -> list[str]:
    """Every problem between the folder's images and ``manifest``: each file is there with
    its size; those in ``unhashed`` (None: all) also match their sha256. A fetch hashes
    each file once, on arrival: what it hashed already, and what earlier fetches brought,
    are not hashed again."""
    return [p for p in (verify_image(folder, r, unhashed is None or r["file"] in unhashed)
                        for r in manifest["images"]) if p]


def verify(folder: Path) -> list[str]:
    """Every problem found between the folder's images and its manifest (every sha256)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder} has no {MANIFEST}"]
    return check(folder, manifest)


def prepare_destination(out_dir: Path, run_id: str, job_id: str, is_active,
                        claim: bool = True) -> None:
    """Before anything is pushed: the folder can be written, holds no other job's images and
    is not being filled by another run that is still going (``is_active(run_id)``). Then
    claim it for this run (unless ``claim`` is false: a check only)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecError(f"The output folder {out_dir} is a file; choose another --out.")
    problem = writable_folder(out_dir)
    if problem:
        raise SpecError(f"The output folder {out_dir} cannot be written ({problem}); choose "
                        "another --out.")
    try:
        manifest = read_manifest(out_dir)
    except UnsafeOutputError:
        manifest = {"job_id": None}
    if manifest is not None and manifest.get("job_id") != job_id:
        raise SpecError(f"The folder {out_dir} already holds the images of another job; choose "
                        "another --out.")

    def check(held: dict | None) -> None:
        if held and held.get("run_id") != run_id:
            if held.get("job_id") != job_id:
                raise SpecError(f"The folder {out_dir} belongs to run {held.get('run_id')} of "
                                "another job; choose another --out.")
            if is_active(held.get("run_id")):
                raise SpecError(f"The folder {out_dir} is being filled by run {held.get('run_id')}, "
                                "which is still going; choose another --out.")

    if not claim:
        check(_read_claim(out_dir))  # a look only: the claim checks again under the lock
        return
    tmp = out_dir / f".{CLAIM}.{os.getpid()}.tmp"
    try:
        with folder_lock(out_dir):
            check(_read_claim(out_dir))
            tmp.write_text(json.dumps({"run_id": run_id, "job_id": job_id}), encoding="utf-8")
            os.replace(tmp, out_dir / CLAIM)
    except OSError as exc:  # a full disk, a quota: said before anything is pushed
        tmp.unlink(missing_ok=True)
        raise SpecError(f"The output folder {out_dir} cannot be written "
                        f"({exc.strerror or exc}); choose another --out.") from None


def _read_claim(out_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(out_dir) / CLAIM).read_text("utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def check_claim(out_dir: Path, run_id: str, job_id: str) -> dict | None:
    """At fetch time: the folder is still this run's (or nobody's), and holds no other job.
    Returns the folder's manifest (None: none yet), parsed once for the whole fetch."""
    claim = _read_claim(out_dir)
    if claim and claim.get("run_id") != run_id and claim.get("job_id") != job_id:
        raise SpecError(f"The folder {out_dir} now belongs to run {claim.get('run_id')}; download "
                        "into another folder with --out.")
    manifest = read_manifest(out_dir)
    if manifest is not None and manifest.get("job_id") not in (None, job_id):
        raise SpecError(f"The folder {out_dir} already holds the images of another job; download "
                        "into another folder with --out.")
    return manifest


@contextmanager
def folder_lock(out_dir: Path):
    """One writer per output folder: a second process is refused with a sentence."""
    lock = FileLock(str(Path(out_dir) / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise NothingYet(f"Another imggenhub process is writing into {out_dir}; nothing to do here.") \
            from None
    try:
        yield
    finally:
        lock.release()


def sweep_partials(out_dir: Path) -> int:
    """Remove temporary download files a killed process left (call under the folder lock)."""
    n = 0
    for path in Path(out_dir).rglob(".*.part"):
        path.unlink(missing_ok=True)
        n += 1
    return n


def collect(src: Path, out_dir: Path, skip: frozenset[str] = frozenset(),
            only: set[str] | None = None) -> list[str]:
    """Move everything under ``src`` into ``out_dir`` (same layout), but the names in
    ``skip`` (``only``: just these names); return the names moved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    moved = []
    if not src.exists():
        return moved
    for path in sorted(src.rglob("*")):
        name = path.relative_to(src).as_posix()
        if path.is_file() and name not in skip and (only is None or name in only):
            rel = path.relative_to(src)
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), dest)
            moved.append(rel.as_posix())
    return moved


def write_gallery(folder: Path, manifest: dict | None = None) -> Path | None:
    """gallery.html beside the folder's images (see ``gallery``); None without a manifest.
    ``manifest``: the folder's, when the caller has it parsed already."""
    from . import gallery

    manifest = manifest if manifest is not None else read_manifest(folder)
    return gallery.write(folder, manifest) if manifest is not None else None


def _no_images_yet(run, what: str = "") -> SpecError:
    return SpecError(f"Run {run.run_id} has no images in {run.out_dir} yet{what}; 'imggenhub "
                     f"resume {run.run_id}' brings them (it takes the run on from wherever it "
                     "stands).")


def fresh_gallery(run) -> Path:
    """A run's gallery.html, written again (the manifest may have grown since)."""
    folder = Path(run.out_dir)
    page = folder / GALLERY
    manifest = read_manifest(folder)
    if manifest is not None:
        page = write_gallery(folder, manifest)
    if not page.exists():
        raise _no_images_yet(run, ", so no gallery")
    return page


def remake_sheets(run, cols: int | None = None) -> list[Path]:
    """A run's contact sheets and sweep grids made again from its manifest, and its gallery
    (it links them); the sheets' paths."""
    folder = Path(run.out_dir)
    manifest = read_manifest(folder)
    if manifest is None or not manifest["images"]:
        raise _no_images_yet(run)
    return write_views(folder, manifest, cols)


def write_views(folder: Path, manifest: dict, cols: int | None = None,
                sheets_too: bool = True) -> list[Path]:
    """What the user looks at, made from the folder's manifest: the contact sheets and a
    sweep's grids (unless ``sheets_too`` is false: images not all checked), then the gallery,
    which links them; the sheets' paths."""
    from . import sheets, sweeps

    paths = sheets.write(folder, manifest, cols) + sweeps.write(folder, manifest) \
        if sheets_too else []
    write_gallery(folder, manifest)
    return paths
