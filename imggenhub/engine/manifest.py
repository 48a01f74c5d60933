"""The manifest: one record per item made, under a header that says which job and run made
them, and the processes that did (stdlib only).

One owner for its shape and its merge. The engine writes it as per-process parts (JSON
lines, appended as images are written) and merges them into ``manifest.json``; the host
joins a later session's or a shard's manifest to the one already home with the same
``merge``. What is still owed is the plan minus the manifest (``plan.Plan.minus``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .plan import Plan
from .wire import MANIFEST, PARTS_DIR

BODY = ("images", "processes", "bundles")  # the lists; every other key is the header


def write_json_atomic(path: Path, data) -> None:
    """``path`` replaced whole by ``data`` as JSON (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def header(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in BODY}


def _key(record: dict):
    """An image's identity: its index (a server's manifest may lack it: then its file)."""
    index = record.get("index")
    return (0, index, "") if isinstance(index, int) else (1, 0, str(record.get("file")))


def merge(old: dict | None, new: dict, plan: Plan | None = None) -> dict:
    """One manifest from ``old`` and ``new`` (a later part, session or shard): the newer
    header, every image once by its index, each process once, every bundle once by file.
    With a ``plan``: the items planned, those it still owes (``remaining``) and whether
    none is owed (``complete``)."""
    old = old or {}
    images = {_key(r): r for r in old.get("images") or []}
    images.update({_key(r): r for r in new.get("images") or []})
    processes = list(old.get("processes") or [])
    processes += [p for p in new.get("processes") or [] if p not in processes]
    bundles = {b["file"]: b for b in (*(old.get("bundles") or []), *(new.get("bundles") or []))
               if isinstance(b, dict) and isinstance(b.get("file"), str)}
    merged = {**header(old), **header(new), "processes": processes,
              "images": [images[k] for k in sorted(images)]}
    if bundles:
        merged["bundles"] = [bundles[name] for name in sorted(bundles)]
    if plan is not None:
        merged["planned_images"] = plan.total
        merged["remaining"] = plan.minus(merged).ranges()
    merged["complete"] = merged.get("planned_images") == len(images)
    add_score_mean(merged)
    return merged


def add_score_mean(manifest: dict) -> None:
    """The run's mean CLIP score, over the images that have one."""
    scores = [r["score"] for r in manifest.get("images", []) if isinstance(r.get("score"), (int, float))]
    if scores:
        manifest["score_mean"] = round(sum(scores) / len(scores), 4)


class PartLog:
    """One process's manifest part, as JSON lines appended as images are written: a header
    line, one line per image, and process lines (the last one wins). Appending costs the
    same for the thousandth image as for the first, and a crash loses at most a torn last
    line, which the merge skips."""

    def __init__(self, path: Path, header: dict, process: dict):
        self.path = Path(path)
        self.process = dict(process)
        with open(self.path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"header": header}, ensure_ascii=False) + "\n")
            fh.write(json.dumps({"process": self.process}, ensure_ascii=False) + "\n")

    def _append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def image(self, record: dict) -> None:
        self._append({"image": record})

    def bundle(self, record: dict) -> None:
        self._append({"bundle": record})

    def update_process(self, **fields) -> None:
        self.process.update(fields)
        self._append({"process": self.process})


def read_part(path: Path) -> dict:
    """A part as a manifest of its own (its header, its process, its images and bundles)."""
    head, process, images, bundles = {}, None, [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash
        head = entry.get("header", head)
        process = entry.get("process", process)
        if "image" in entry:
            images.append(entry["image"])
        if "bundle" in entry:
            bundles.append(entry["bundle"])
    return {**head, "processes": [process] if process is not None else [], "images": images,
            "bundles": bundles}


def merge_manifest(out_dir: Path, job: dict | None = None) -> dict | None:
    """Merge the per-process manifest parts into ``manifest.json``; return it. With the
    job: what its share planned and still owes. Safe to call after a crash: it lists what
    was finished, and nothing else."""
    out_dir = Path(out_dir)
    parts_dir = out_dir / PARTS_DIR
    existing = out_dir / MANIFEST
    part_files = sorted(parts_dir.glob("rank-*.jsonl")) if parts_dir.exists() else []
    if not part_files and not existing.exists():
        return None
    manifest = json.loads(existing.read_text(encoding="utf-8")) if existing.exists() else None
    for part_file in part_files:
        manifest = merge(manifest, read_part(part_file))
    plan = Plan.of(job) if job is not None else None
    manifest = merge(None, manifest, plan)
    write_json_atomic(existing, manifest)
    for part_file in part_files:
        part_file.unlink()
    if parts_dir.exists() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    return manifest
