"""Backends: where a rendered job runs. One protocol; implementations register by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..errors import SpecError
from ..runs import Run

OnEvent = Callable[[str], None]


class Backend(Protocol):
    name: str

    def submit(self, run: Run, notebook_dir: Path, on_event: OnEvent) -> Run:
        """Start the run of the notebook rendered in ``notebook_dir``."""

    def wait(self, run: Run, on_event: OnEvent, timeout: float | None = None) -> Run:
        """Follow the run to a terminal state (or the timeout); return it updated."""

    def fetch(self, run: Run, out_dir: Path, on_event: OnEvent) -> Run:
        """Bring the run's outputs into ``out_dir``, verified."""


_REGISTRY: dict[str, Callable[[], Backend]] = {}


def register(name: str, factory: Callable[[], Backend]) -> None:
    _REGISTRY[name] = factory


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise SpecError(f"Unknown backend '{name}'; choose one of {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]()


def names() -> list[str]:
    return sorted(_REGISTRY)


def _local() -> Backend:
    from .local import LocalBackend

    return LocalBackend()


def _kaggle() -> Backend:
    from .kaggle import KaggleBackend

    return KaggleBackend()


register("local", _local)
register("kaggle", _kaggle)
