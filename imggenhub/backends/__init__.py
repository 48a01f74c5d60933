"""Backends: where a rendered job runs, registered by name (a third party registers the
same way). The protocol and its bookkeeping are ``base.Backend``."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import SpecError
from .base import Backend, Fetched, OnEvent, session_plan  # noqa: F401  (the protocol's names)

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
    from .kaggle.backend import KaggleBackend

    return KaggleBackend()


def _hf_jobs() -> Backend:
    from .hfjobs.backend import HfJobsBackend

    return HfJobsBackend()


register("local", _local)
register("kaggle", _kaggle)
register("hf-jobs", _hf_jobs)
