"""Contact sheets: every image of a run as a tile with a short label (its number, seed and
the start of its prompt), in ``grid.png`` beside the images, and ``grid-2.png``, ... when
a run has more than one sheet holds (100 tiles). Made with Pillow from the manifest and
the files here; an image listed but missing here is a dark tile saying so."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from ..errors import UnsafeOutputError

SHEET = "grid.png"
TILE = 192  # pixels a side
LABEL = 30  # pixels under each tile
MAX_TILES = 100  # per sheet
BACKGROUND = (17, 17, 17)


OWN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")  # a sheet's or grid's name


def own_path(folder: Path, name: str) -> Path:
    """Where a file this program makes (a sheet, a grid) is written: ``name`` only of
    [A-Za-z0-9._-], at most 120 characters, no '..', and the path checked to lie in
    ``folder`` itself. Names are made here from indices and slugs; this is the last check."""
    folder = Path(folder)
    path = folder / name
    if not OWN_NAME.fullmatch(name) or ".." in name or \
            Path(os.path.abspath(path)).parent != Path(os.path.abspath(folder)):
        raise UnsafeOutputError(f"Refusing to write {name[:80]!r} into {folder}: not a name "
                                "imggenhub makes there.")
    return path


def save(image, folder: Path, name: str) -> Path:
    """``image`` as the PNG ``name`` in ``folder`` (``own_path``), replaced whole."""
    path = own_path(folder, name)
    tmp = path.with_name(f".{name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def sheet_names(count: int) -> list[str]:
    return [SHEET] + [f"grid-{n}.png" for n in range(2, count + 1)]


def ascii_text(text, limit: int) -> str:
    """Text any font draws (printable ASCII), at most ``limit`` characters."""
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit - 1] + "~"


def number(record: dict) -> str:
    """'#N': the record's place in the job (1-based), '#?' without an index."""
    index = record.get("index")
    return f"#{index + 1}" if isinstance(index, int) and not isinstance(index, bool) else "#?"


def _label(record: dict) -> tuple[str, str]:
    return (f"{number(record)} seed {record.get('seed', '?')}", str(record.get("prompt", "")))


def fit(draw, text: str, text_font, width: int) -> str:
    """``text`` (printable ASCII), cut with '~' to at most ``width`` pixels in ``text_font``:
    a caption never runs into the next tile."""
    text = ascii_text(text, 300)
    if draw.textlength(text, font=text_font) <= width:
        return text
    lo, hi = 0, len(text)  # the longest cut that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + "~", font=text_font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "~"


def font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow before 10.1
        return ImageFont.load_default()


def frame(draw, left: int, top: int) -> None:
    """An empty tile, framed in red: a picture missing here, or a cell never made."""
    draw.rectangle((left + 2, top + 2, left + TILE - 3, top + TILE - 3), outline=(200, 80, 80))


def paste_tile(sheet, draw, path: Path, left: int, top: int) -> str | None:
    """The picture at ``path`` fitted into the tile at (left, top); a red frame if it cannot
    be shown here, and why (None: it is shown). A picture over MAX_PIXELS is refused from
    its header, never decoded."""
    from PIL import ImageOps

    from ..engine import PictureTooLarge, open_picture

    try:
        with open_picture(path) as image:
            tile = ImageOps.contain(image.convert("RGB"), (TILE - 4, TILE - 4))
    except FileNotFoundError:
        problem = "missing here"
    except PictureTooLarge:
        problem = "too large to show"
    except (OSError, ValueError):
        problem = "unreadable"
    else:
        sheet.paste(tile, (left + (TILE - tile.width) // 2, top + (TILE - tile.height) // 2))
        return None
    frame(draw, left, top)
    return problem


def write(folder: Path, manifest: dict, cols: int | None = None) -> list[Path]:
    """Remake the run's contact sheets; return their paths."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    records = manifest.get("images", [])
    if not records:
        return []
    cols = cols or min(10, math.ceil(math.sqrt(len(records))))
    rows_per_sheet = max(1, MAX_TILES // cols)
    per_sheet = cols * rows_per_sheet
    chunks = [records[i:i + per_sheet] for i in range(0, len(records), per_sheet)]
    text_font = font()
    paths = []
    for name, chunk in zip(sheet_names(len(chunks)), chunks):
        rows = math.ceil(len(chunk) / cols)
        sheet = Image.new("RGB", (cols * TILE, rows * (TILE + LABEL)), BACKGROUND)
        draw = ImageDraw.Draw(sheet)
        for k, record in enumerate(chunk):
            x, y = (k % cols) * TILE, (k // cols) * (TILE + LABEL)
            problem = paste_tile(sheet, draw, folder / record["file"], x, y)
            lines = _label(record) if problem is None else (number(record), problem)
            for row, line in enumerate(lines):  # two lines, each within the tile's width
                draw.text((x + 4, y + TILE + 2 + 13 * row), fit(draw, line, text_font, TILE - 8),
                          fill=(230, 230, 230), font=text_font)
        paths.append(save(sheet, folder, name))
    for stale in folder.glob("grid-*.png"):  # sheets of an earlier, larger remake
        if stale not in paths and stale.name[5:-4].isdigit():
            stale.unlink()
    return paths
