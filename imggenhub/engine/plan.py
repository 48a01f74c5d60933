"""The plan: a job's work items, planned once, in a fixed order (pure, stdlib).

An item is an image (its index, seed, prompt, settings and file name), or for a training
job its one product, the trained weights. A shard, a
session and a resume each make a share of the plan (a subset of its indices, as
[start, end) ranges in the job document's ``only``); what is still owed is the share
minus what a manifest lists (``Plan.minus``), reckoned here and nowhere else, for the
engine and the host alike. The items keep the whole plan's indices, seeds and file names
whichever share makes them.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass

from .wire import IMAGE_PARAMS, SEED_MODULUS, SWEEP_PARAMS, WEIGHTS


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


def models_of(job: dict) -> list[dict]:
    """A job document's model and a model sweep's others (each cell's)."""
    return [job["model"], *(p["model"] for p in job.get("prompts") or () if p.get("model"))]


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
                "index": index, "prompt_index": prompt_index, "prompt": item["prompt"],
                **{name: item.get(name) for name in IMAGE_PARAMS + SWEEP_PARAMS},
                "seed": seed,
                "model": item.get("model") or job["model"],  # a model sweep's cell, else the job's
                "file": f"{index + 1:04d}-{slugify(item['prompt'])}.png",
            })
            index += 1
    return tasks


def planned(job: dict) -> int:
    """How many items a job plans: a generation job's images; a training job one, its
    trained weights (a session that ends before them leaves a checkpoint, not an item)."""
    if job.get("kind") == WEIGHTS:
        return 1
    return sum(int(p["num_images"]) for p in job["prompts"])


def ranges_of(indices) -> list[list[int]]:
    """Sorted indices as [start, end) ranges: [0, 1, 2, 5] -> [[0, 3], [5, 6]]."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def split(items: list, rank: int, world: int) -> list:
    """Contiguous share ``rank`` of ``world`` of ``items`` (as accelerate splits)."""
    per, extra = divmod(len(items), world)
    start = rank * per + min(rank, extra)
    return items[start:start + per + (1 if rank < extra else 0)]


def made(manifest: dict | None) -> set[int]:
    """The item indices a manifest lists (records without an index name none)."""
    if not manifest:
        return set()
    return {r.get("index") for r in manifest.get("images") or ()
            if isinstance(r, dict) and isinstance(r.get("index"), int)}


@dataclass(frozen=True)
class Plan:
    """A share of a job's plan: ``total`` items in the whole job, this share's indices."""

    total: int
    indices: tuple[int, ...]

    @classmethod
    def whole(cls, total: int) -> "Plan":
        return cls(total, tuple(range(total)))

    @classmethod
    def of(cls, job: dict) -> "Plan":
        """The share a job document makes: all of it, or its ``only`` ranges."""
        return cls.whole(planned(job)).only(job.get("only"))

    def only(self, ranges) -> "Plan":
        """The items whose index lies in ``ranges`` ([start, end) pairs; None: all)."""
        if ranges is None:
            return self
        keep = {i for a, b in ranges for i in range(a, b)}
        return Plan(self.total, tuple(i for i in self.indices if i in keep))

    def minus(self, done) -> "Plan":
        """What this share still owes: its items that ``done`` (a manifest, or indices)
        does not hold. The one reckoning of what is left to make."""
        have = made(done) if isinstance(done, dict) or done is None else set(done)
        return Plan(self.total, tuple(i for i in self.indices if i not in have))

    def split(self, rank: int, world: int) -> "Plan":
        """Contiguous share ``rank`` of ``world`` (kernels of a sharded run, GPU processes)."""
        return Plan(self.total, tuple(split(list(self.indices), rank, world)))

    def ranges(self) -> list[list[int]]:
        return ranges_of(self.indices)

    def tasks(self, job: dict) -> list[dict]:
        """This share's items, with the whole plan's indices, seeds and file names."""
        keep = set(self.indices)
        return [t for t in plan_images(job) if t["index"] in keep]

    def __len__(self) -> int:
        return len(self.indices)

    def __bool__(self) -> bool:
        return bool(self.indices)


def batches(tasks: list[dict], batch_size: int) -> list[list[dict]]:
    """Tasks that share size, steps, guidance, mode, scheduler, LoRA scale and model, at
    most batch_size each: grouped across the plan, not only when neighbours (a sweep
    interleaves its cells prompt by prompt), each model's groups together so that a model
    sweep loads each model once, and otherwise in the plan's order."""
    groups: dict[tuple, list[dict]] = {}
    models: list = []
    for task in tasks:
        model = (task.get("model") or {}).get("id")
        key = (model, task["width"], task["height"], task["steps"], task["guidance"],
               task.get("init_image") is not None, task.get("mask_image") is not None,
               task.get("strength"), task.get("scheduler"), task.get("lora_scale"),
               task.get("refiner_start"))
        groups.setdefault(key, []).append(task)
        if model not in models:
            models.append(model)
    ordered = sorted(groups.values(), key=lambda g: models.index((g[0].get("model") or {}).get("id")))
    return [group[i:i + batch_size] for group in ordered for i in range(0, len(group), batch_size)]


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
