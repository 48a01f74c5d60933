"""Outputs: PNGs with their parameters, the per-process manifest parts (JSON lines) and
their merge, and the writer thread that keeps all of it off the generation loop."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .planning import plan_images, ranges_of, sha256_of, to_make
from .wire import BUNDLES_DIR, MANIFEST, PARTS_DIR, log


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


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


def _read_part(path: Path) -> tuple[dict, dict | None, list[dict], list[dict]]:
    header, process, images, bundles = {}, None, [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash
        header = entry.get("header", header)
        process = entry.get("process", process)
        if "image" in entry:
            images.append(entry["image"])
        if "bundle" in entry:
            bundles.append(entry["bundle"])
    return header, process, images, bundles


def merge_manifest(out_dir: Path, job: dict | None = None) -> dict | None:
    """Merge the per-process manifest parts into ``manifest.json``; return it.

    Safe to call after a crash: it lists what was finished, and nothing else.
    """
    out_dir = Path(out_dir)
    parts_dir = out_dir / PARTS_DIR
    existing = out_dir / MANIFEST
    images: dict[int, dict] = {}
    bundles: dict[str, dict] = {}
    runs = []
    header: dict = {}
    if existing.exists():
        old = json.loads(existing.read_text(encoding="utf-8"))
        header = {k: v for k, v in old.items() if k not in ("images", "processes", "bundles")}
        runs = old.get("processes", [])
        images.update({img["index"]: img for img in old.get("images", [])})
        bundles.update({b["file"]: b for b in old.get("bundles", [])})
    part_files = sorted(parts_dir.glob("rank-*.jsonl")) if parts_dir.exists() else []
    if not part_files and not existing.exists():
        return None
    for part_file in part_files:
        part_header, process, part_images, part_bundles = _read_part(part_file)
        header = part_header or header
        if process is not None:
            runs.append(process)
        images.update({img["index"]: img for img in part_images})
        bundles.update({b["file"]: b for b in part_bundles})
    manifest = {**header, "processes": runs, "images": [images[i] for i in sorted(images)]}
    if bundles:
        manifest["bundles"] = [bundles[name] for name in sorted(bundles)]
    if job is not None:
        manifest["planned_images"] = len(plan_images(job))
        # what this kernel was to make and did not (a session that ended early, a crash)
        made = {r["index"] for r in manifest["images"]}
        manifest["remaining"] = ranges_of(t["index"] for t in to_make(job) if t["index"] not in made)
    manifest["complete"] = manifest.get("planned_images") == len(manifest["images"])
    add_score_mean(manifest)
    _write_json_atomic(existing, manifest)
    for part_file in part_files:
        part_file.unlink()
    if parts_dir.exists() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    return manifest


def add_score_mean(manifest: dict) -> None:
    """The run's mean CLIP score, over the images that have one."""
    scores = [r["score"] for r in manifest.get("images", []) if isinstance(r.get("score"), (int, float))]
    if scores:
        manifest["score_mean"] = round(sum(scores) / len(scores), 4)


BUNDLE_BYTES = 256 << 20  # the most one bundle holds (IMGGENHUB_BUNDLE_BYTES changes it)


class Bundler:
    """Packs each written PNG into uncompressed tar bundles of bounded size as it goes (a
    PNG is compressed already), so that a big job's outputs download as a few files
    rather than thousands. A bundle is written under a dot-name and renamed, and recorded
    in the manifest part, when it is closed: a crash leaves only whole bundles listed."""

    def __init__(self, out_dir: Path, rank: int, part: PartLog, max_bytes: int | None = None,
                 job: dict | None = None):
        self.folder = Path(out_dir) / BUNDLES_DIR
        self.folder.mkdir(exist_ok=True)
        self.rank, self.part = rank, part
        # named by run and session too: the bundles of a run's shards and sessions never clash
        key = f"{(job or {}).get('run_id')}:{(job or {}).get('session', 1)}"
        self.tag = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
        self.max_bytes = max_bytes or int(os.environ.get("IMGGENHUB_BUNDLE_BYTES", BUNDLE_BYTES))
        self.number, self.tar, self.path, self.size, self.count = 0, None, None, 0, 0

    @property
    def name(self) -> str:
        return f"{BUNDLES_DIR}/bundle-{self.tag}-{self.rank:02d}-{self.number:04d}.tar"

    def add(self, file: str, data: bytes) -> str:
        """Put one image in the current bundle; return that bundle's name."""
        import io
        import tarfile

        entry = 512 + -(-len(data) // 512) * 512
        if self.tar is not None and self.count and self.size + entry > self.max_bytes:
            self.close()
        if self.tar is None:
            self.number += 1
            self.path = self.folder / f".{Path(self.name).name}.part"
            self.tar = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)
            self.size, self.count = 1024, 0  # the closing blocks
        info = tarfile.TarInfo(file)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        self.tar.addfile(info, io.BytesIO(data))
        self.size += entry
        self.count += 1
        return self.name

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        final = self.folder / Path(self.name).name
        os.replace(self.path, final)
        self.part.bundle({"file": self.name, "images": self.count, "bytes": final.stat().st_size,
                          "sha256": sha256_of(final)})
        self.tar = None


class ImageWriter:
    """Encodes, hashes and records finished images on a thread of its own, while the GPU
    makes the next ones; a bounded queue keeps memory flat. ``close`` drains it, so every
    image handed over is written, also when generation fails."""

    def __init__(self, out_dir: Path, part: PartLog, total: int, tag: str, started: float,
                 depth: int = 4, bundler: Bundler | None = None):
        import queue
        import threading

        self.out_dir, self.part, self.total, self.tag = Path(out_dir), part, total, tag
        self.bundler = bundler
        self.started, self.written, self.error = started, 0, None
        self.queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, name="imggenhub-writer", daemon=True)
        self.thread.start()

    def put(self, file: str, image, record: dict, seconds: float) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((file, image, record, seconds))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # keep draining so that put() never blocks forever
            file, image, record, seconds = item
            try:
                data = save_png(image, self.out_dir / file, record)
                record = {**record, "file": file, "sha256": hashlib.sha256(data).hexdigest(),
                          "bytes": len(data), "seconds": round(seconds, 4)}
                if self.bundler is not None:
                    record["bundle"] = self.bundler.add(file, data)
                self.part.image(record)
                self.written += 1
                log(f"{self.tag}image {self.written}/{self.total} {file} in {seconds:.2f}s "
                    f"(elapsed {time.monotonic() - self.started:.1f}s)")
            except BaseException as exc:  # surfaced in the generating thread
                self.error = exc

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.bundler is not None:
            self.bundler.close()
        if self.error is not None:
            raise self.error


def a1111_parameters(record: dict) -> str:
    """The A1111-style ``parameters`` text that many image viewers and tools read."""
    lines = [record["prompt"]]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    if record.get("loras"):  # the convention A1111 and image sites read
        lines[0] += "".join(f" <lora:{Path(l['name']).name}:{l['scale']}>" for l in record["loras"])
    settings = (f"Steps: {record['steps']}, Sampler: {record['scheduler']}, CFG scale: "
                f"{record['guidance']}, Seed: {record['seed']}, Size: {record['width']}x"
                f"{record['height']}, Model: {record['model']}")
    if record.get("strength") is not None:
        settings += f", Denoising strength: {record['strength']}"
    if record.get("refiner"):  # as A1111 writes its refiner
        settings += f", Refiner: {record['refiner']['model']}, Refiner switch at: {record['refiner']['start']}"
    lines.append(settings)
    return "\n".join(lines)


def save_png(image, path: Path, record: dict) -> bytes:
    """Write the PNG with its parameters embedded; return its bytes."""
    import io

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(record))
    info.add_text("imggenhub", json.dumps(record, ensure_ascii=True, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    data = buf.getvalue()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data
