"""Outputs: collecting them into the output folder, and checking them against the manifest."""

from __future__ import annotations

import hashlib
import html
import json
import shutil
from pathlib import Path, PurePosixPath

from .engine import MANIFEST
from .errors import ImggenhubError


def safe_relative(name: str) -> PurePosixPath:
    """A file name from a kernel's outputs as a safe relative path; refuses '..' and absolutes."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or ".." in path.parts or ":" in name or "\0" in name:
        raise ImggenhubError(f"Refusing the output file name {name!r}: it leaves the output folder.")
    return path


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_image(folder: Path, record: dict) -> str | None:
    """None if the image on disk matches its manifest record, else what is wrong."""
    path = Path(folder) / safe_relative(record["file"])
    if not path.exists():
        return f"{record['file']} is missing"
    if path.stat().st_size != record["bytes"]:
        return f"{record['file']} has {path.stat().st_size} bytes, the manifest says {record['bytes']}"
    if sha256_of(path) != record["sha256"]:
        return f"{record['file']} does not match its sha256 in the manifest"
    return None


def verify(folder: Path) -> list[str]:
    """Every problem found between the folder's images and its manifest."""
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder} has no {MANIFEST}"]
    return [p for p in (verify_image(folder, r) for r in manifest["images"]) if p]


def check_destination(out_dir: Path, job_id: str) -> None:
    """Refuse to mix two jobs' images in one folder (nothing already there is lost)."""
    manifest = read_manifest(out_dir)
    if manifest is not None and manifest.get("job_id") != job_id:
        raise ImggenhubError(f"The folder {out_dir} already holds the images of another job; choose "
                             "another --out.")


def collect(src: Path, out_dir: Path) -> list[str]:
    """Move everything under ``src`` into ``out_dir`` (same layout); return the names moved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    moved = []
    if not src.exists():
        return moved
    for path in sorted(src.rglob("*")):
        if path.is_file():
            rel = path.relative_to(src)
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), dest)
            moved.append(rel.as_posix())
    return moved


GALLERY = "gallery.html"


def write_gallery(folder: Path) -> Path | None:
    """A static page of the folder's images with their prompts and seeds (all text escaped)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    cards = []
    for r in manifest["images"]:
        src = html.escape(str(safe_relative(r["file"])), quote=True)
        caption = html.escape(r["prompt"])
        extra = html.escape(f"seed {r['seed']} · {r['steps']} steps · cfg {r['guidance']} · "
                            f"{r['width']}x{r['height']}")
        cards.append(f'<figure><a href="{src}"><img src="{src}" loading="lazy"></a>'
                     f"<figcaption>{caption}<br><small>{extra}</small></figcaption></figure>")
    title = html.escape(f"imggenhub {manifest.get('job_id', '')}: {len(cards)} images, "
                        f"{manifest.get('model', '')}")
    page = ("<!doctype html><meta charset=utf-8><title>" + title + "</title><style>"
            "body{font-family:sans-serif;margin:1em}figure{display:inline-block;width:256px;"
            "margin:.5em;vertical-align:top}img{width:256px;image-rendering:pixelated}"
            "figcaption{font-size:.85em;white-space:pre-wrap;overflow-wrap:anywhere}</style>"
            f"<h1>{title}</h1>" + "".join(cards) + "\n")
    path = Path(folder) / GALLERY
    path.write_text(page, encoding="utf-8")
    return path
