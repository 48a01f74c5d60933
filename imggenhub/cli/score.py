"""score: CLIP scores for a folder of images, made here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Json
from .output import STATE, reporter, result


def score(target: Annotated[str, typer.Argument(
              metavar="FOLDER_OR_RUN",
              help="A folder of PNGs that carry their prompt, or a run (its id, a unique part "
                   "of it, or its --name).")],
          model: Annotated[Optional[str], typer.Option(
              "--model", help="The CLIP model (default openai/clip-vit-large-patch14).")] = None,
          json: Json = False) -> None:
    """CLIP-score a folder's PNGs (ours, or A1111's 'parameters'), here; with a manifest,
    record the scores there and in the gallery."""
    from ..outputs import scores

    STATE["json"] = json
    found = scores.score_folder(_folder_of(target), model, reporter())
    mean = found["score_mean"]
    lines = [f"{r['score']:7.2f}  {r['file']}" for r in found["images"]]
    lines.append(f"mean {mean:.2f} over {len(found['images'])} images ({found['model']})"
                 if mean is not None else "no image with a prompt to score")
    result({"ok": True, **found}, "\n".join(lines), json)


def _folder_of(target: str) -> Path:
    """A folder as given, else the output folder of the run it names."""
    from ..errors import RunNotFoundError, SpecError
    from ..run import runs

    if Path(target).is_dir():
        return Path(target)
    try:
        return Path(runs.load(target).out_dir)
    except RunNotFoundError:
        raise SpecError(f"{target!r} is neither a folder nor a run ('imggenhub runs' lists "
                        "them).") from None
