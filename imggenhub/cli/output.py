"""What a command prints: its result (one line, or one JSON document with --json), its
progress while it works, and a run as data.

Everything a command writes goes through ``echo``, ``err``, ``result`` or the reporter,
and each shows text with its control characters made visible (``text.printable``): a
run's failure, a server's message, a path or a name may come from outside, and a terminal
must not act on it. A JSON document keeps the exact text, escaped (``text.json_text``)."""

from __future__ import annotations

import typer

from ..text import json_text, printable

STATE = {"json": False, "reporter": None}


def echo(line: str, err: bool = False) -> None:
    """One line (or several) on stdout, or stderr, as text: control characters visible."""
    typer.echo(printable(line), err=err)


def err(message: str) -> None:
    echo(message, err=True)


def reporter():
    """Progress for long commands: a live line on a terminal, timestamped lines elsewhere."""
    from ..report import make_reporter

    STATE["reporter"] = STATE["reporter"] or make_reporter()
    return STATE["reporter"]


def close_reporter() -> None:
    if STATE["reporter"] is not None:
        STATE["reporter"].close()
        STATE["reporter"] = None


def result(data, human: str, as_json: bool, image: str = "") -> None:
    """The command's result: one JSON document on stdout with --json, else one line.
    ``image``: an inline image for the terminal, our own escape sequences, written as they
    are after the line (never with --json)."""
    close_reporter()
    if as_json:
        typer.echo(json_text(data))
        return
    echo(human)
    if image:
        typer.echo(image)


def shown_state(run) -> str:
    """A run's state as status, runs and show say it: 'interrupted' for a run of this machine
    recorded as running whose process is gone."""
    from ..run.jobs import interrupted

    return "interrupted" if interrupted(run) else run.state.value


def interrupted_hint(run) -> str:
    return (f"run {run.run_id} was running here and its process is gone; 'imggenhub resume "
            f"{run.run_id}' keeps what it finished and makes the rest")


def run_data(run) -> dict:
    data = run.model_dump(mode="json", include={
        "run_id", "name", "backend", "state", "job_id", "kernel_ref", "version", "url",
        "image_count", "images_fetched", "out_dir", "failure", "session", "created"})
    data["interrupted"] = shown_state(run) == "interrupted"
    if run.shards:
        from ..run.runs import shards_of

        data["shards"] = [s.model_dump(mode="json", include={
            "run_id", "shard", "state", "kernel_ref", "version", "url", "image_count",
            "images_fetched", "session"}) for s in shards_of(run)]
    return {"ok": True, **data}


def done(run, as_json: bool) -> None:
    """A run's result: where its images are, or else its state."""
    if run.state.value == "downloaded" or run.images_fetched:
        from ..run import kinds

        human = (f"{kinds.of(run.kind).count(run.images_fetched)} in {run.out_dir} "
                 f"(manifest.json; run {run.run_id})")
    else:
        human = f"{run.run_id} {run.state.value} {run.url or ''}".rstrip()
    result(run_data(run), human, as_json)


def shard_lines(run) -> list[str]:
    if not run.shards:
        return []
    from ..run.runs import shards_of

    return [f"  shard {s.shard}: {s.state.value:<10} {s.kernel_ref or '-'} v{s.version or '-'} "
            f"{s.images_fetched}/{s.image_count} images" for s in shards_of(run)]
