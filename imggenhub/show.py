"""`imggenhub show [RUN]`: one run at a glance (state, model, images, seconds per image,
score, hours, where the files are) and, in a terminal that shows images (kitty, iTerm2),
its contact sheet inline."""

from __future__ import annotations

import base64
import os
import statistics
from pathlib import Path


def summary(run) -> dict:
    from . import artifacts
    from .runs import shards_of

    folder = Path(run.out_dir)
    manifest = None
    try:
        manifest = artifacts.read_manifest(folder)
    except Exception:  # a damaged manifest: the summary says what it can
        manifest = None
    images = (manifest or {}).get("images", [])
    seconds = [r["seconds"] for r in images if isinstance(r.get("seconds"), (int, float))]
    scores = [r["score"] for r in images if isinstance(r.get("score"), (int, float))]
    sheets = sorted(p.name for p in folder.glob("grid*.png")) if folder.is_dir() else []
    gallery = folder / artifacts.GALLERY
    return {
        "run_id": run.run_id, "name": run.name, "backend": run.backend, "state": run.state.value,
        "model": (manifest or {}).get("model"), "images_here": len(images),
        "images_planned": (manifest or {}).get("planned_images") or run.image_count,
        "seconds_per_image": round(statistics.median(seconds), 3) if seconds else None,
        "score_mean": (manifest or {}).get("score_mean") or (
            round(statistics.mean(scores), 4) if scores else None),
        "estimate_hours": run.estimate_hours, "engine_hours": run.engine_hours,
        "kernel": f"{run.kernel_ref} v{run.version}" if run.kernel_ref and run.version else None,
        "url": run.url, "folder": str(folder),
        "gallery": str(gallery) if gallery.exists() else None, "sheets": sheets,
        "shards": [f"shard {s.shard}: {s.state.value} {s.images_fetched}/{s.image_count}"
                   for s in shards_of(run)] if run.shards else [],
        "failure": run.failure.sentence() if run.failure else None,
    }


def lines(info: dict) -> list[str]:
    def row(label, value):
        return f"{label:<18}{value}"

    out = [row("run", info["run_id"] + (f" ({info['name']})" if info["name"] else "")),
           row("state", f"{info['state']} on the {info['backend']} backend"),
           row("model", info["model"] or "-"),
           row("images", f"{info['images_here']} of {info['images_planned']} here")]
    if info["seconds_per_image"] is not None:
        out.append(row("seconds an image", f"{info['seconds_per_image']:.2f} (median)"))
    if info["score_mean"] is not None:
        out.append(row("CLIP score", f"{info['score_mean']:.2f} (mean)"))
    if info["estimate_hours"] is not None or info["engine_hours"] is not None:
        out.append(row("GPU hours", f"estimated {info['estimate_hours'] or '-'}, engine "
                                    f"{info['engine_hours'] if info['engine_hours'] is not None else '-'}"))
    if info["kernel"]:
        out.append(row("kernel", f"{info['kernel']} {info['url'] or ''}".rstrip()))
    out += [row("", s) for s in info["shards"]]
    if info["failure"]:
        out.append(row("failure", info["failure"]))
    out.append(row("folder", info["folder"]))
    if info["gallery"]:
        out.append(row("gallery", info["gallery"]))
    if info["sheets"]:
        out.append(row("contact sheets", ", ".join(info["sheets"])))
    return out


def terminal_images() -> str | None:
    """The inline-image protocol this terminal speaks, if any."""
    if os.environ.get("KITTY_WINDOW_ID") or "kitty" in os.environ.get("TERM", ""):
        return "kitty"
    if os.environ.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm"):
        return "iterm2"
    return None


def inline_image(path: Path, protocol: str) -> str:
    """The escape sequence that shows a PNG in the terminal."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    if protocol == "iterm2":
        return f"\033]1337;File=inline=1;width=80%;preserveAspectRatio=1:{data}\a"
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)] or [""]
    parts = []
    for n, chunk in enumerate(chunks):
        more = 1 if n < len(chunks) - 1 else 0
        head = "a=T,f=100," if n == 0 else ""
        parts.append(f"\033_G{head}m={more};{chunk}\033\\")
    return "".join(parts) + "\n"
