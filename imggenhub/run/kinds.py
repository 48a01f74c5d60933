"""Run kinds: what a run produces, said through one small interface, so that the driver, the
record and the lifecycle need no word of it. Generation produces images; a kind that
produces weights and checkpoints (fine-tuning) is one more module that registers here.

A kind plans a job document's work items (a share of them for a shard, a session or a
resume; what is owed is the plan minus the manifest), counts them in sentences, and makes
what the user looks at from a fetched manifest (for images: the contact sheet, the sweep
grids and the gallery)."""

from __future__ import annotations

from pathlib import Path

from ..engine import WEIGHTS, Plan, images_text
from ..errors import SpecError


class RunKind:
    name = ""
    continues = False  # a next session needs the output of those before it
    def plan(self, document: dict) -> Plan:
        """The share of the job a notebook with this document makes."""
        return Plan.of(document)

    def count(self, n: int) -> str:
        """``n`` of its items, as a sentence says it."""
        raise NotImplementedError

    def views(self, out_dir: Path, manifest: dict, complete: bool) -> None:
        """What is made here from the products a fetch brought (``complete``: every one of
        them checked)."""

    def continue_from(self, document: dict, previous_output: str | None) -> dict:
        """The next session's document (its share is set by the caller), for a kind that
        ``continues``: what it needs of the sessions before it, found at ``previous_output``."""
        return document


class Images(RunKind):
    """Generation: one PNG a work item, with its parameters embedded."""

    name = "images"

    def count(self, n: int) -> str:
        return images_text(n)

    def views(self, out_dir: Path, manifest: dict, complete: bool) -> None:
        from ..outputs import artifacts

        artifacts.write_views(out_dir, manifest, sheets_too=complete)  # grid.png, gallery


class Weights(RunKind):
    """Training: one item, the trained weights (a LoRA or an embedding, as diffusers' loaders
    read them), beside its loss curve, validation strips, checkpoints and training.json. A
    session that ends before the last step leaves a checkpoint, and the next one continues
    from it (``continue_from``)."""

    name = WEIGHTS
    continues = True

    def count(self, n: int) -> str:
        return "trained weights" if n == 1 else f"{n} sets of trained weights"

    def views(self, out_dir: Path, manifest: dict, complete: bool) -> None:
        """Weights that came home whole are registered under their name (the manifest's
        ``name``, checked there), for ``generate --lora NAME`` and ``publish``."""
        from ..outputs.artifacts import safe_relative
        from . import trained

        record = next((r for r in manifest.get("images") or [] if r.get("index") == 0), None)
        if complete and record is not None:
            trained.register(manifest.get("name"), out_dir / safe_relative(record["file"]),
                             {**record, "run_id": manifest.get("run_id")})

    def continue_from(self, document: dict, previous_output: str | None) -> dict:
        """The next session's document: it continues from the newest checkpoint in the
        previous session's output (``previous_output``: where that session's output is as
        the next one sees it)."""
        return {**document, "resume_from": previous_output}


KINDS: dict[str, RunKind] = {}


def register(kind: RunKind) -> None:
    KINDS[kind.name] = kind


def of(name: str) -> RunKind:
    if name not in KINDS:
        raise SpecError(f"Unknown run kind '{name}'; known: {', '.join(sorted(KINDS))}.")
    return KINDS[name]


register(Images())
register(Weights())
