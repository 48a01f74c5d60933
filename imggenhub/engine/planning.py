"""Planning: the job document -> one task per image, in a fixed order (pure, stdlib)."""

from __future__ import annotations

import re
import unicodedata

from .wire import SEED_MODULUS


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
                "file": f"{index + 1:04d}-{slugify(item['prompt'])}.png",
            })
            index += 1
    return tasks


def batches(tasks: list[dict], batch_size: int) -> list[list[dict]]:
    """Consecutive tasks that share size, steps and guidance, at most batch_size each."""
    out: list[list[dict]] = []
    for task in tasks:
        key = (task["width"], task["height"], task["steps"], task["guidance"],
               task.get("init_image") is not None, task.get("mask_image") is not None,
               task.get("strength"))
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
