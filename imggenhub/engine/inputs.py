"""Inputs: the files a job names (init images, masks, LoRAs, embeddings, a token), found
where Kaggle mounts them and checked by sha256 (stdlib only)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .wire import KAGGLE_INPUT


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

    def moved(value):
        return found.get(value, value) if isinstance(value, str) else value

    prompts = [{**p, "init_image": moved(p.get("init_image")), "mask_image": moved(p.get("mask_image"))}
               for p in job["prompts"]]
    refs = {key: [{**r, "ref": moved(r["ref"]),
                   **({"name": Path(inputs[r["ref"]]["name"]).stem,
                       "file": inputs[r["ref"]]["name"]} if r["ref"] in inputs else {})}
                  for r in job.get(key) or []] for key in ("loras", "embeddings")}
    return {**job, "prompts": prompts, **refs, "input_names": names}


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
