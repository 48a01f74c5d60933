"""score: CLIP scores for a folder of images, made here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Json
from .output import STATE, reporter, result


def score(folder: Annotated[Path, typer.Argument(help="A folder of PNGs that carry their prompt.")],
          model: Annotated[Optional[str], typer.Option(
              "--model", help="The CLIP model (default openai/clip-vit-large-patch14).")] = None,
          json: Json = False) -> None:
    """CLIP-score a folder's PNGs (ours, or A1111's 'parameters'), here; with a manifest,
    record the scores there and in the gallery."""
    from ..outputs import scores

    STATE["json"] = json
    found = scores.score_folder(folder, model, reporter())
    mean = found["score_mean"]
    lines = [f"{r['score']:7.2f}  {r['file']}" for r in found["images"]]
    lines.append(f"mean {mean:.2f} over {len(found['images'])} images ({found['model']})"
                 if mean is not None else "no image with a prompt to score")
    result({"ok": True, **found}, "\n".join(lines), json)
