"""Inputs: the files a job names (init images, masks, LoRAs, embeddings, a token), found
where Kaggle mounts them and checked by sha256 (stdlib only); and the one way imggenhub
opens a picture, its size checked from the header before anything is decoded."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

from .wire import KAGGLE_INPUT

# The most pixels a picture imggenhub opens may have (8000 x 8000): a 48-megapixel photo
# passes; a small file whose header says 20000 x 20000 (a decompression bomb) is refused
# before it is decoded. Below Pillow's own limit (MAX_IMAGE_PIXELS, ~89 MP), so Pillow's
# warning and error never come first.
MAX_PIXELS = 64_000_000


class PictureTooLarge(ValueError):
    """A picture whose header says more than MAX_PIXELS pixels; nothing was decoded.
    ``reason`` says it without the file's name; ``str()`` with it."""

    def __init__(self, name: str, pixels: int, size: tuple[int, int] | None = None):
        shape = f"{size[0]}x{size[1]} pixels" if size else f"{pixels:,} pixels"
        self.name, self.pixels = name, pixels
        self.reason = (f"is {shape} ({pixels / 1e6:.0f} megapixels), more than the "
                       f"{MAX_PIXELS // 1_000_000} megapixels imggenhub opens")
        super().__init__(f"{name} {self.reason}")


@contextmanager
def open_picture(path):
    """A picture, opened by its header only (PIL's Image.open), refused with PictureTooLarge
    when its header says more than MAX_PIXELS pixels, before it is loaded or converted.
    Pillow's own decompression-bomb error, wherever it comes, is said the same way; its
    warning (between its limit and twice it) is moot under MAX_PIXELS and never shown."""
    from PIL import Image

    name = Path(path).name

    def bomb(exc: Exception) -> PictureTooLarge:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return PictureTooLarge(name, int(found.group(1)) if found else MAX_PIXELS + 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise bomb(exc) from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise PictureTooLarge(name, width * height, (width, height))
        try:
            yield image
        except Image.DecompressionBombError as exc:  # a frame past the first, say
            raise bomb(exc) from None


def mounted(path: str | None) -> str | None:
    """A /kaggle/input/... path where this kernel's sources are mounted (IMGGENHUB_KAGGLE_INPUT,
    which the tests' emulator sets; unset, as on Kaggle: the path itself)."""
    root = os.environ.get("IMGGENHUB_KAGGLE_INPUT")
    if path and root and (path == KAGGLE_INPUT or path.startswith(KAGGLE_INPUT + "/")):
        return root + path[len(KAGGLE_INPUT):]
    return path


def _locate(path: str, root: str) -> Path:
    """Where a shipped input ``/kaggle/input/<dataset>/<file>`` is mounted under ``root``:
    right there, or one or two folders deeper (a layout that names the owner)."""
    rel = Path(path).relative_to(KAGGLE_INPUT)
    for candidate in (Path(root) / rel, *sorted(Path(root).glob(f"*/{rel.as_posix()}")),
                      *sorted(Path(root).glob(f"*/*/{rel.as_posix()}"))):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the input file {rel.name} of dataset {rel.parent.as_posix()} is not "
                            f"mounted under {root}; is the dataset attached to the kernel?")


def sha256_of(path) -> str:
    """A file's sha256, read in blocks (the host's verification uses it too)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_inputs(job: dict, root: str | None = None) -> dict:
    """The job with its shipped input files found where they are mounted.

    On the local backend the job names files in place and has no ``inputs``. On Kaggle
    they came as a private dataset: the job names them ``/kaggle/input/<dataset>/<sha256>.ext``
    and ``inputs`` gives each one's sha256 and its name on the user's machine. Each file
    is checked against its sha256 before use; ``input_names`` maps the found paths back
    to the user's names, which the manifest records. ``root`` (else the environment's
    IMGGENHUB_KAGGLE_INPUT, else /kaggle/input) is where datasets are mounted.
    """
    inputs = job.get("inputs") or {}
    if not inputs:
        return job
    root = root or os.environ.get("IMGGENHUB_KAGGLE_INPUT") or KAGGLE_INPUT
    found, names = {}, {}
    for path, about in inputs.items():
        where = _locate(path, root)
        if sha256_of(where) != about["sha256"]:
            raise ValueError(f"the input file {about['name']!r} arrived changed (its sha256 "
                             "differs from the one shipped)")
        found[path] = str(where)
        names[str(where)] = about["name"]

    job = move_paths(job, found)
    for key in ("loras", "embeddings"):  # the user's names, which the manifest records
        job[key] = [{**r, "name": Path(inputs[p]["name"]).stem, "file": inputs[p]["name"]}
                    if (p := _origin(found, r["ref"])) else r for r in job.get(key) or []]
    return {**job, "input_names": names}


def _origin(found: dict, where: str):
    """The shipped path that was found at ``where`` (None: not a shipped input)."""
    return next((path for path, here in found.items() if here == where), None)


def move_paths(job: dict, where: dict) -> dict:
    """The job with each file path it names (init images, masks, local LoRAs and embeddings,
    training pictures) replaced as ``where`` maps it (paths it does not map stay): the one
    list of a job's file fields, for the host that ships them and the engine that finds them."""
    def moved(value):
        return where.get(value, value) if isinstance(value, str) else value

    job = dict(job)
    if "prompts" in job:
        job["prompts"] = [{**p, "init_image": moved(p.get("init_image")),
                           "mask_image": moved(p.get("mask_image"))} for p in job["prompts"]]
    for key in ("loras", "embeddings"):
        if key in job:
            job[key] = [{**r, "ref": moved(r["ref"])} for r in job[key] or []]
    if "examples" in job:
        job["examples"] = [{**e, "file": moved(e["file"])} for e in job["examples"]]
    return job


def use_hf_token(job: dict, root: str | None = None) -> bool:
    """A Hugging Face token shipped as a private dataset (``hf_token_file``): read into this
    process's environment, which the engine's own processes inherit and nothing prints.
    The notebook's kernel never holds it."""
    path = job.get("hf_token_file")
    if not path:
        return False
    root = root or os.environ.get("IMGGENHUB_KAGGLE_INPUT") or KAGGLE_INPUT
    token = _locate(path, root).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError("the Hugging Face token dataset holds an empty token")
    os.environ["HF_TOKEN"] = token
    return True
