"""Planning: the job document -> one task per image, in a fixed order (pure, stdlib)."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from .wire import KAGGLE_INPUT, SEED_MODULUS


def slugify(text: str, max_len: int = 40) -> str:
    """A file-name-safe slug of a prompt: ASCII letters and digits joined by '-'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > max_len:
            break
        slug = candidate
    return slug or "image"


def plan_images(job: dict) -> list[dict]:
    """Expand a job into one task per image, in a fixed order.

    Image ``k`` of a prompt with its own ``seed`` gets ``seed + k``, so the first
    image of such a prompt uses exactly that seed. Other images get the job's base
    seed plus their global index. Every seed is recorded in the manifest, so any
    image can be made again exactly.
    """
    tasks = []
    index = 0
    for prompt_index, item in enumerate(job["prompts"]):
        for k in range(item["num_images"]):
            if item.get("seed") is not None:
                seed = (item["seed"] + k) % SEED_MODULUS
            else:
                seed = (job["seed"] + index) % SEED_MODULUS
            tasks.append({
                "index": index,
                "prompt_index": prompt_index,
                "prompt": item["prompt"],
                "negative_prompt": item.get("negative_prompt"),
                "seed": seed,
                "width": item.get("width"),
                "height": item.get("height"),
                "steps": item["steps"],
                "guidance": item["guidance"],
                "init_image": item.get("init_image"),
                "mask_image": item.get("mask_image"),
                "strength": item.get("strength"),
                "scheduler": item.get("scheduler"),  # this prompt's own, else the job's
                "lora_scale": item.get("lora_scale"), "refiner_start": item.get("refiner_start"),
                "model": item.get("model") or job["model"],
                "cell": item.get("cell"), "sweep_of": item.get("sweep_of"),
                "file": f"{index + 1:04d}-{slugify(item['prompt'])}.png",
            })
            index += 1
    return tasks


def to_make(job: dict) -> list[dict]:
    """The tasks this kernel makes: all of the plan, or those whose index lies in the job's
    ``only`` ranges ([start, end) pairs: the images a shard, or a later session, makes).
    Indices, seeds and file names stay the whole plan's."""
    tasks = plan_images(job)
    ranges = job.get("only")
    if ranges is None:
        return tasks
    return [t for t in tasks if any(a <= t["index"] < b for a, b in ranges)]


def ranges_of(indices) -> list[list[int]]:
    """Sorted indices as [start, end) ranges: [0, 1, 2, 5] -> [[0, 3], [5, 6]]."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


class SessionClock:
    """Kaggle ends a session at its time limit, and a session that is cut off keeps no
    output. The engine stops before: it starts no batch it may not finish, keeping a reserve
    (a twentieth of the session, at most 10 minutes) for writing the manifest and the
    outputs. ``session_seconds`` in the job (absent: no limit); ``started`` is when the
    engine began (its workers get it from IMGGENHUB_ENGINE_STARTED)."""

    def __init__(self, job: dict, started: float | None = None):
        import time

        self.limit = job.get("session_seconds")
        self.started = started if started is not None else float(
            os.environ.get("IMGGENHUB_ENGINE_STARTED") or time.time())
        self.reserve = min(600.0, 0.05 * self.limit) if self.limit else 0.0
        self.longest = 0.0  # the longest batch so far

    def lap(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)

    def time_up(self) -> bool:
        import time

        if not self.limit:
            return False
        return time.time() - self.started + self.reserve + 1.5 * self.longest > self.limit


def batches(tasks: list[dict], batch_size: int) -> list[list[dict]]:
    """Consecutive tasks that share size, steps and guidance, at most batch_size each."""
    out: list[list[dict]] = []
    for task in tasks:
        key = (task["width"], task["height"], task["steps"], task["guidance"],
               task.get("init_image") is not None, task.get("mask_image") is not None,
               task.get("strength"), task.get("scheduler"), task.get("lora_scale"),
               task.get("refiner_start"), (task.get("model") or {}).get("id"))
        if out and len(out[-1]) < batch_size and out[-1][0]["_key"] == key:
            out[-1].append({**task, "_key": key})
        else:
            out.append([{**task, "_key": key}])
    return [[{k: v for k, v in t.items() if k != "_key"} for t in b] for b in out]


def shard(items: list, rank: int, world: int) -> list:
    """Contiguous share of ``items`` for process ``rank`` of ``world`` (as accelerate splits)."""
    per, extra = divmod(len(items), world)
    start = rank * per + min(rank, extra)
    return items[start:start + per + (1 if rank < extra else 0)]


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
