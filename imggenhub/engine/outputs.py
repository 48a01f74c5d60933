"""Outputs: PNGs with their parameters, the bundles big jobs download as, and the writer
thread that keeps all of it off the generation loop (the records go to the manifest's
parts: ``manifest.PartLog``)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .inputs import sha256_of
from .manifest import PartLog
from .wire import BUNDLES_DIR, log

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
