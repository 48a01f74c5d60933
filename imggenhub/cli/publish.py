"""``imggenhub publish``: a training run's weights, model card and samples to the Hugging Face
Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import Json
from .output import STATE, reporter, result


def publish(
    what: Annotated[str, typer.Argument(
        help="A name 'imggenhub train' gave its weights, or a training run's id or --name.")],
    repo: Annotated[str, typer.Option("--repo", help="The Hub repo, as OWNER/NAME (made if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Make the repo private.")] = False,
    json: Json = False,
) -> None:
    """Upload trained weights to the Hub with a model card, the loss curve and the validation
    pictures (the token from HF_TOKEN or 'hf auth login'; never written anywhere)."""
    from ..errors import RunNotFoundError, SpecError
    from ..outputs.publish import publish as upload
    from ..run import runs, trained

    STATE["json"] = json
    entry = trained.find(what)
    if entry is not None:
        folder = Path(entry["file"]).parent
    else:
        try:
            run = runs.load(what)
        except RunNotFoundError:
            raise SpecError(f"'{what[:80]}' is neither a name 'imggenhub train' gave its weights "
                            "nor a run here.") from None
        if run.kind != "weights":
            raise SpecError(f"Run {run.run_id} made images, not trained weights; publish takes "
                            "a training run.")
        folder = Path(run.out_dir)
    done = upload(folder, repo, private, reporter())
    said = "published" if done["changed"] else "already up to date (no new commit)"
    result({"ok": True, **done}, f"{said}: {done['url']} ({len(done['files'])} files)", json)
