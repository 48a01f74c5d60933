"""The Kaggle account: which credential is used and whether the API answers; the GPU quota."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import ApiTimeout, Json
from .output import STATE, reporter, result


def doctor(timeout: ApiTimeout = 30.0, json: Json = False,
           backend: Annotated[str, typer.Option(
               help="Which remote to check: 'kaggle' or 'hf-jobs'.")] = "kaggle") -> None:
    """Say where credentials were looked for, which one is used (never the secret), and
    whether the remote's API answers (hf-jobs: whether the account can run jobs)."""
    from ..backends import get_backend

    STATE["json"] = json
    report = get_backend(backend).health(reporter(), timeout)
    lines = report.pop("lines")
    result({"ok": True, **report}, "\n".join(lines), json)


def quota(timeout: ApiTimeout = 30.0, json: Json = False) -> None:
    """Kaggle's GPU quota this week: hours used and left, and when it refreshes."""
    from ..backends import get_backend

    STATE["json"] = json
    backend = get_backend("kaggle")
    backend.bound(timeout)
    q = backend.quota(reporter())
    when = f"; it refreshes at {q['refreshes_at']}" if q["refreshes_at"] else ""
    if q["gpu_hours_used"] is None:
        total = f"{q['gpu_hours_total']:.1f} h a week" if q["gpu_hours_total"] is not None \
            else "unknown"
        human = f"GPU quota: {total}; the hours used this week are unknown{when}"
    elif q["gpu_hours_total"] is None:
        human = f"GPU quota: {q['gpu_hours_used']:.1f} h used this week; Kaggle did not say the total"
    else:
        human = (f"GPU quota: {q['gpu_hours_used']:.1f} h used of {q['gpu_hours_total']:.1f} h "
                 f"this week, {q['gpu_hours_left']:.1f} h left{when}")
    result({"ok": True, **q}, human, json)
