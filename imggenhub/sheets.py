"""Contact sheets: every image of a run as a tile with a short label (its number, seed and
the start of its prompt), in ``grid.png`` beside the images, and ``grid-2.png``, ... when
a run has more than one sheet holds (100 tiles). Made with Pillow from the manifest and
the files here; an image listed but missing here is a dark tile saying so."""

from __future__ import annotations

import math
from pathlib import Path

SHEET = "grid.png"
TILE = 192  # pixels a side
LABEL = 30  # pixels under each tile
MAX_TILES = 100  # per sheet
BACKGROUND = (17, 17, 17)


def sheet_names(count: int) -> list[str]:
    return [SHEET] + [f"grid-{n}.png" for n in range(2, count + 1)]


def _label(record: dict) -> str:
    prompt = str(record.get("prompt", ""))
    text = f"#{record.get('index', 0) + 1} seed {record.get('seed', '?')}  {prompt}"
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)  # any font draws it
    return text if len(text) <= 34 else text[:33] + "~"


def write(folder: Path, manifest: dict, cols: int | None = None) -> list[Path]:
    """Remake the run's contact sheets; return their paths."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    folder = Path(folder)
    records = manifest.get("images", [])
    if not records:
        return []
    cols = cols or min(10, math.ceil(math.sqrt(len(records))))
    rows_per_sheet = max(1, MAX_TILES // cols)
    per_sheet = cols * rows_per_sheet
    chunks = [records[i:i + per_sheet] for i in range(0, len(records), per_sheet)]
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow before 10.1
        font = ImageFont.load_default()
    paths = []
    for name, chunk in zip(sheet_names(len(chunks)), chunks):
        rows = math.ceil(len(chunk) / cols)
        sheet = Image.new("RGB", (cols * TILE, rows * (TILE + LABEL)), BACKGROUND)
        draw = ImageDraw.Draw(sheet)
        for k, record in enumerate(chunk):
            x, y = (k % cols) * TILE, (k // cols) * (TILE + LABEL)
            label = _label(record)
            try:
                with Image.open(folder / record["file"]) as image:
                    tile = ImageOps.contain(image.convert("RGB"), (TILE - 4, TILE - 4))
                sheet.paste(tile, (x + (TILE - tile.width) // 2, y + (TILE - tile.height) // 2))
            except (OSError, ValueError):
                draw.rectangle((x + 2, y + 2, x + TILE - 3, y + TILE - 3), outline=(200, 80, 80))
                label = f"#{record.get('index', 0) + 1} missing here"
            draw.text((x + 4, y + TILE + 8), label, fill=(230, 230, 230), font=font)
        path = folder / name
        tmp = path.with_name(f".{name}.tmp")
        sheet.save(tmp, format="PNG")
        tmp.replace(path)
        paths.append(path)
    for stale in folder.glob("grid-*.png"):  # sheets of an earlier, larger remake
        if stale not in paths and stale.name[5:-4].isdigit():
            stale.unlink()
    return paths
