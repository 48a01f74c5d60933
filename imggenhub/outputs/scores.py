"""`imggenhub score DIR`: CLIP scores for any folder of PNGs that carry their prompt (the
record imggenhub embeds, or A1111's `parameters` text), computed on this machine with
the engine's scorer. Where the folder holds a manifest, the scores go into it (and so
into the gallery)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..engine import PictureTooLarge, counted, images_text
from ..errors import MissingDependencyError, SpecError, Unreachable

LORA_TAG = re.compile(r"\s*<lora:[^>]*>")
BATCH = 8


def too_large(exc: PictureTooLarge, path: Path) -> SpecError:
    return SpecError(f"{path} {exc.reason}; move it out of the folder (or shrink it) and "
                     "score again.")


def prompt_of(path: Path) -> str | None:
    """The prompt a PNG carries: imggenhub's own record first, else A1111's parameters.
    A picture over MAX_PIXELS is refused here, from its header, before any model loads."""
    from ..engine import open_picture

    try:
        with open_picture(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except PictureTooLarge as exc:
        raise too_large(exc, path) from None
    except (OSError, ValueError):
        return None
    try:
        record = json.loads(text.get("imggenhub", ""))
        if isinstance(record, dict) and isinstance(record.get("prompt"), str):
            return record["prompt"]
    except ValueError:
        pass
    params = text.get("parameters")
    if not params:
        return None
    first = params.split("\nNegative prompt:")[0].split("\nSteps: ")[0]
    return LORA_TAG.sub("", first).strip() or None


# the pictures of pictures this program writes beside the images (contact sheets, sweep
# grids): not images of the job, never scored
VIEWS = re.compile(r"grid(-\d+)?\.png|sweep-\d+(-[A-Za-z0-9._-]*)?\.png")


def score_folder(folder: Path, model: str | None, on_event) -> dict:
    from ..engine import DEFAULT_SCORE_MODEL
    from . import artifacts

    folder = Path(folder)
    if not folder.is_dir():
        raise SpecError(f"{folder} is not a folder of images.")
    import importlib.util

    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, why="Scoring here")
    from ..engine import Scorer

    found = sorted(p for p in folder.glob("*.png") if not VIEWS.fullmatch(p.name))
    pairs = [(p, prompt_of(p)) for p in found]
    pairs = [(p, prompt) for p, prompt in pairs if prompt]
    model = model or DEFAULT_SCORE_MODEL
    if not pairs:  # nothing to load a model for
        return {"folder": str(folder), "model": model, "images": [], "score_mean": None}
    skipped = len(found) - len(pairs)
    on_event(f"scoring {images_text(len(pairs))} with {model}"
             + (f" ({counted(skipped, 'PNG')} without a prompt "
               f"{'is' if skipped == 1 else 'are'} skipped)" if skipped else ""))
    try:
        scorer = Scorer(model)
    except OSError as exc:  # transformers' words for a model it could not load
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        said = first.replace(model, "")  # the id or path itself says nothing
        if "couldn't connect" in said or "offline mode" in said.lower():
            raise Unreachable(f"The CLIP model {model!r} could not be loaded: it is not in the "
                              "Hugging Face cache here and the Hub could not be reached; connect "
                              "once to cache it, or give --model a local CLIP folder.") from None
        raise SpecError(f"The CLIP model {model!r} could not be loaded ({first}); check the "
                        "model id or folder.") from None
    results = []
    from ..engine import open_picture

    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start:start + BATCH]
        images = []
        for path, _ in chunk:
            try:
                with open_picture(path) as image:
                    images.append(image.convert("RGB"))
            except PictureTooLarge as exc:  # changed since its prompt was read
                raise too_large(exc, path) from None
            except (OSError, ValueError) as exc:
                raise SpecError(f"{path} cannot be read as a picture ({exc}); move it out of "
                                "the folder and score again.") from None
        for (path, prompt), value in zip(chunk, scorer.scores(images, [p for _, p in chunk])):
            results.append({"file": path.name, "prompt": prompt, "score": value})
    mean = round(sum(r["score"] for r in results) / len(results), 4) if results else None
    manifest = artifacts.read_manifest(folder)
    if manifest is not None and results:  # the run's own record, and its gallery, get them
        by_file = {r["file"]: r["score"] for r in results}
        for record in manifest["images"]:
            if record.get("file") in by_file:
                record["score"] = by_file[record["file"]]
        manifest["score_model"] = model
        from ..engine.manifest import add_score_mean

        add_score_mean(manifest)
        artifacts.write_manifest(folder, manifest)
        artifacts.write_gallery(folder, manifest)
    return {"folder": str(folder), "model": model, "images": results, "score_mean": mean}
