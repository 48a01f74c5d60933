"""`imggenhub show [RUN]`: one run at a glance (state, model, images, seconds per image,
score, hours, where the files are) and, in a terminal that shows images (kitty, iTerm2,
sixel), its contact sheet inline."""

from __future__ import annotations

import base64
import os
import statistics
from pathlib import Path


def summary(run) -> dict:
    from ..errors import UnsafeOutputError
    from ..run.runs import shards_of
    from . import artifacts

    folder = Path(run.out_dir)
    try:
        manifest = artifacts.read_manifest(folder)
    except UnsafeOutputError:  # a damaged manifest: the summary says what it can
        manifest = None
    images = (manifest or {}).get("images", [])
    seconds = [r["seconds"] for r in images if isinstance(r.get("seconds"), (int, float))]
    scores = [r["score"] for r in images if isinstance(r.get("score"), (int, float))]
    sheets = sorted(p.name for p in folder.glob("grid*.png")) if folder.is_dir() else []
    gallery = folder / artifacts.GALLERY
    return {
        "run_id": run.run_id, "name": run.name, "backend": run.backend, "state": run.state.value,
        "model": (manifest or {}).get("model") or _job_model(run), "images_here": len(images),
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
        "kind": run.kind, "weights": _weights(images) if run.kind == "weights" else None,
    }


def _weights(images: list) -> str | None:
    """A training run's product in a line: its file, method, steps and losses."""
    record = next((r for r in images if r.get("index") == 0), None)
    if record is None:
        return None
    first, last = record.get("loss_first"), record.get("loss_last")
    loss = (f", loss {first:.4f} to {last:.4f}" if isinstance(first, (int, float))
            and isinstance(last, (int, float)) else "")
    return f"{record.get('file')} ({record.get('method')}, {record.get('steps')} steps{loss})"


def lines(info: dict) -> list[str]:
    def row(label, value):
        return f"{label:<18}{value}"

    out = [row("run", info["run_id"] + (f" ({info['name']})" if info["name"] else "")),
           row("state", f"{info['state']} on the {info['backend']} backend"),
           row("model", info["model"] or "-")]
    if info.get("kind") == "weights":
        out.append(row("weights", info["weights"] or "not here yet"))
    else:
        out.append(row("images", f"{info['images_here']} of {info['images_planned']} here"))
    if info["seconds_per_image"] is not None and info.get("kind") != "weights":
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


SIXEL_TERMS = ("foot", "mlterm", "contour", "yaft")  # terminals that show sixel by default
SIXEL_WIDTH, SIXEL_COLOURS = 480, 48


def terminal_images() -> str | None:
    """The inline-image protocol this terminal speaks, if any (IMGGENHUB_TERMINAL_IMAGES:
    kitty, iterm2 or sixel says so where the environment cannot)."""
    forced = os.environ.get("IMGGENHUB_TERMINAL_IMAGES", "")
    if forced in ("kitty", "iterm2", "sixel"):
        return forced
    if os.environ.get("KITTY_WINDOW_ID") or "kitty" in os.environ.get("TERM", ""):
        return "kitty"
    if os.environ.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm"):
        return "iterm2"
    if os.environ.get("TERM", "").startswith(SIXEL_TERMS):
        return "sixel"
    return None


def sixel(path: Path) -> str:
    """A PNG as DEC sixel graphics: scaled to SIXEL_WIDTH, SIXEL_COLOURS colours, each band
    of six rows drawn colour by colour, runs of a character compressed (Pillow only)."""
    from ..engine import open_picture

    with open_picture(path) as opened:  # over MAX_PIXELS: PictureTooLarge, never decoded
        image = opened.convert("RGB")
    if image.width > SIXEL_WIDTH:
        image = image.resize((SIXEL_WIDTH, max(1, image.height * SIXEL_WIDTH // image.width)))
    indexed = image.quantize(colors=SIXEL_COLOURS)
    palette = indexed.getpalette()[: 3 * SIXEL_COLOURS]
    width, height = indexed.size
    pixels = list(indexed.tobytes())  # one palette index a pixel
    out = ["\033Pq", f'"1;1;{width};{height}']
    for c in range(len(palette) // 3):
        r, g, b = (round(v * 100 / 255) for v in palette[3 * c:3 * c + 3])
        out.append(f"#{c};2;{r};{g};{b}")
    for top in range(0, height, 6):
        lines: dict[int, list[int]] = {}  # colour -> the band's six bits a column
        for k, y in enumerate(range(top, min(top + 6, height))):
            for x, colour in enumerate(pixels[y * width:(y + 1) * width]):
                line = lines.get(colour)
                if line is None:
                    line = lines[colour] = [0] * width
                line[x] |= 1 << k
        for n, (colour, line) in enumerate(sorted(lines.items())):
            out.append(f"#{colour}" + _runs([63 + v for v in line])
                       + ("$" if n < len(lines) - 1 else ""))
        out.append("-")
    out.append("\033\\")
    return "".join(out) + "\n"


def _runs(codes: list[int]) -> str:
    parts, i = [], 0
    while i < len(codes):
        j = i
        while j < len(codes) and codes[j] == codes[i]:
            j += 1
        char, count = chr(codes[i]), j - i
        parts.append(f"!{count}{char}" if count > 3 else char * count)
        i = j
    return "".join(parts)


def inline_image(path: Path, protocol: str) -> str:
    """The escape sequence that shows a PNG in the terminal (a line saying why not, for a
    sheet sixel cannot decode: damaged, or over MAX_PIXELS)."""
    if protocol == "sixel":
        try:
            return sixel(path)
        except (OSError, ValueError) as exc:  # PictureTooLarge is a ValueError
            return f"(the contact sheet {Path(path).name} cannot be shown: {exc})\n"
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


def _job_model(run) -> str | None:
    """The model the run's notebook asks for (before any image is here)."""
    from ..run.runs import document

    return ((document(run) or {}).get("model") or {}).get("id")
