"""A sweep's results: for each prompt, a labelled grid image (the A1111 X/Y/Z plot): the
first swept parameter across, the second down, one grid per value of the others, each
tile the cell's first image; and the same as a table for the gallery."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from .sheets import BACKGROUND, LABEL, TILE, ascii_text, font, frame, paste_tile, save

HEAD = 24  # the column labels
TITLE = 30
SIDE = 120  # the row labels
SLUG = 24  # characters of a value in a grid's file name


def slug(value) -> str:
    """A swept value as a piece of a file name: only [A-Za-z0-9._-] (anything else a '-'),
    no '..', at most SLUG characters; 'v' when nothing is left."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)[:4 * SLUG])
    text = re.sub(r"\.{2,}", ".", text)
    return text[:SLUG].strip("-.") or "v"


def grid_name(prompt: int, z: tuple) -> str:
    """sweep-NN.png, or sweep-NN-<value>-<value>.png for the values of the axes past the
    second: made here from the prompt's number and slugs, never from the text as given."""
    return f"sweep-{prompt + 1:02d}" + "".join("-" + slug(v) for v in z) + ".png"


def _order(record: dict):
    index = record.get("index")
    return index if isinstance(index, int) else float("inf")


def plots(manifest: dict) -> list[dict]:
    """Per prompt and per value of the axes past the second: the cells, as rows x columns
    (a combination without any cell made is left out). Each names its grid file: distinct
    names, however alike the slugs of two values are."""
    axes = manifest.get("sweep") or []
    if not axes:
        return []
    cells: dict = {}
    for record in manifest.get("images", []):
        cell, prompt = record.get("cell"), record.get("sweep_of")
        if not isinstance(cell, dict) or not isinstance(prompt, int):
            continue
        key = (prompt, tuple(str(cell.get(name)) for name, _ in axes))
        if key not in cells or _order(record) < _order(cells[key]):
            cells[key] = record  # the cell's first image
    x_name, x_values = axes[0]
    y_name, y_values = axes[1] if len(axes) > 1 else (None, [None])
    rest = axes[2:]
    out, files = [], set()
    for prompt in sorted({p for p, _ in cells}):
        for z in itertools.product(*(vals for _, vals in rest)):
            rows, found = [], False
            for y in y_values:
                row = []
                for x in x_values:
                    values = [str(x)] + ([str(y)] if y_name else []) + [str(v) for v in z]
                    record = cells.get((prompt, tuple(values)))
                    found = found or record is not None
                    row.append({"file": record["file"], "score": record.get("score")}
                               if record else None)
                rows.append(row)
            if not found:
                continue
            file, n = grid_name(prompt, z), 1
            while file in files:  # two values of one slug: the later grid gets a number
                n += 1
                file = f"{grid_name(prompt, z)[:-4]}-{n}.png"
            files.add(file)
            text = next((r.get("prompt", "") for (p, _), r in cells.items() if p == prompt), "")
            out.append({"prompt_number": prompt + 1, "prompt": text, "x": [x_name, x_values],
                        "y": [y_name, y_values] if y_name else None,
                        "z": {name: v for (name, _), v in zip(rest, z)}, "rows": rows,
                        "file": file})
    return out


def write(folder: Path, manifest: dict) -> list[Path]:
    """The grid images of the folder's sweep; return their paths."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    text_font = font()
    paths = []
    for plot in plots(manifest):
        rows = plot["rows"]
        side = SIDE if plot["y"] else 0
        width, height = side + len(rows[0]) * TILE, TITLE + HEAD + len(rows) * (TILE + LABEL)
        image = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        axes = f"{plot['x'][0]} across" + (f", {plot['y'][0]} down" if plot["y"] else "") + \
            "".join(f", {k}={v}" for k, v in plot["z"].items())
        draw.text((6, 8), ascii_text(f"#{plot['prompt_number']} {plot['prompt']}  ({axes})",
                                 max(20, width // 7)), fill=(240, 240, 240), font=text_font)
        for c, x in enumerate(plot["x"][1]):
            draw.text((side + c * TILE + 6, TITLE + 4), ascii_text(f"{plot['x'][0]} {x}", 28),
                      fill=(160, 200, 255), font=text_font)
        for r, row in enumerate(rows):
            top = TITLE + HEAD + r * (TILE + LABEL)
            if plot["y"]:
                draw.text((6, top + TILE // 2), ascii_text(f"{plot['y'][0]} {plot['y'][1][r]}", 16),
                          fill=(160, 200, 255), font=text_font)
            for c, cell in enumerate(row):
                left = side + c * TILE
                if cell is None:
                    frame(draw, left, top)
                    continue
                paste_tile(image, draw, folder / cell["file"], left, top)
                if isinstance(cell.get("score"), (int, float)):
                    draw.text((left + 4, top + TILE + 8), f"score {cell['score']:.1f}",
                              fill=(230, 230, 230), font=text_font)
        paths.append(save(image, folder, plot["file"]))
    return paths
