"""The runs on record: the list of them, one at a glance, its gallery, its contact sheets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Json, RunId
from .output import STATE, echo, interrupted_hint, result, run_data, shard_lines, shown_state


def list_runs(limit: Annotated[int, typer.Option(
        min=0, help="Show the newest N runs (0: all of them).")] = 20,
        json: Json = False) -> None:
    """List the run records, newest first: id, name, backend, state, what it made (images or
    weights), when, kernel, output folder."""
    import time

    from ..run.runs import all_runs

    STATE["json"] = json
    every = all_runs()
    rows = every[::-1][:limit or None]
    if json:
        result([run_data(r) for r in rows], "", True)
        return
    if not rows:
        echo("No runs yet.")
        return
    echo(f"{'run':<28} {'name':<12} {'backend':<7} {'state':<12} {'made':<17}  "
         f"{'created':<16}  {'kernel':<28} output")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        kernel = f"{r.kernel_ref} v{r.version}" if r.kernel_ref and r.version else (r.kernel_ref or "-")
        echo(f"{r.run_id:<28} {(r.name or '-'):<12} {r.backend:<7} {shown_state(r):<12} "
             f"{made(r):<17}  {when:<16}  {kernel:<28} {r.out_dir}")
        for line in shard_lines(r):
            echo(line)
    if len(rows) < len(every):
        echo(f"({len(every) - len(rows)} older not shown: --limit 0 shows them all)")


def made(run) -> str:
    """What a run has brought home of what it makes: '3/4 images', '1/1 weights'."""
    from ..errors import SpecError
    from ..run import kinds

    try:
        unit = kinds.of(run.kind).name
    except SpecError:  # a record of a kind this version does not know
        unit = "items"
    return f"{run.images_fetched}/{run.image_count} {unit}"


def open_gallery(run_id: RunId = None, json: Json = False) -> None:
    """Open a run's gallery.html in the default browser (and print where it is)."""
    import webbrowser

    from ..outputs import artifacts
    from ..run import runs

    STATE["json"] = json
    run = runs.load(run_id)
    page = artifacts.fresh_gallery(run)
    opened = webbrowser.open(page.as_uri())
    result({"ok": True, "run_id": run.run_id, "gallery": str(page), "opened": bool(opened)},
           str(page) if opened else f"{page} (no browser found here: open it by hand)", json)


def grid(run_id: RunId = None, cols: Annotated[Optional[int], typer.Option(
        "--cols", min=1, max=50, help="Tiles a row (default: up to 10, about square).")] = None,
        json: Json = False) -> None:
    """Remake a run's contact sheets (grid.png, ...: every image as a labelled tile) and its
    sweep grids (sweep-NN.png)."""
    from ..outputs import artifacts
    from ..run import runs

    STATE["json"] = json
    run = runs.load(run_id)
    paths = artifacts.remake_sheets(run, cols)
    result({"ok": True, "run_id": run.run_id, "sheets": [str(p) for p in paths]},
           "\n".join(str(p) for p in paths), json)


def show(run_id: RunId = None, thumbnails: Annotated[bool, typer.Option(
        "--thumbnails", help="Show the contact sheet inline (kitty, iTerm2).")] = False,
        json: Json = False) -> None:
    """One run at a glance: state, model, images, seconds per image, score, where its files are."""
    from ..outputs import show as shown
    from ..run import runs

    STATE["json"] = json
    run = runs.load(run_id)
    info = shown.summary(run)
    info["state"] = shown_state(run)
    text, image = "\n".join(shown.lines(info)), ""
    if info["state"] == "interrupted":
        text += "\n" + interrupted_hint(run)
    if thumbnails and not json:
        protocol = shown.terminal_images()
        if protocol is None:
            text += "\n(this terminal shows no images: open the gallery with 'imggenhub open')"
        elif info["sheets"]:
            image = shown.inline_image(Path(info["folder"]) / info["sheets"][0], protocol)
    result({"ok": True, **info}, text, json, image=image)
