"""Run kinds: what a run produces, said through one small interface, so that the driver, the
record and the lifecycle need no word of it. Generation produces images; a kind that
produces weights and checkpoints (fine-tuning) is one more module that registers here.

A kind plans a job document's work items (a share of them for a shard, a session or a
resume; what is owed is the plan minus the manifest), counts them in sentences, and makes
what the user looks at from a fetched manifest (for images: the contact sheet, the sweep
grids and the gallery)."""

from __future__ import annotations

from pathlib import Path

from ..engine import Plan, images_text
from ..errors import SpecError


class RunKind:
    name = ""

    def plan(self, document: dict) -> Plan:
        """The share of the job a notebook with this document makes."""
        return Plan.of(document)

    def count(self, n: int) -> str:
        """``n`` of its items, as a sentence says it."""
        raise NotImplementedError

    def views(self, out_dir: Path, manifest: dict, complete: bool) -> None:
        """What is made here from the products a fetch brought (``complete``: every one of
        them checked)."""


class Images(RunKind):
    """Generation: one PNG a work item, with its parameters embedded."""

    name = "images"

    def count(self, n: int) -> str:
        return images_text(n)

    def views(self, out_dir: Path, manifest: dict, complete: bool) -> None:
        from ..outputs import artifacts

        artifacts.write_views(out_dir, manifest, sheets_too=complete)  # grid.png, gallery


KINDS: dict[str, RunKind] = {}


def register(kind: RunKind) -> None:
    KINDS[kind.name] = kind


def of(name: str) -> RunKind:
    if name not in KINDS:
        raise SpecError(f"Unknown run kind '{name}'; known: {', '.join(sorted(KINDS))}.")
    return KINDS[name]


register(Images())
