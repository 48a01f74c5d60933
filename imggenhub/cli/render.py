"""render: the job's notebook and kernel-metadata.json, written here; nothing runs."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from .options import Json, TimeoutHours, job_options
from .output import STATE, echo, result


@job_options
def render(
    job, kernel,
    out: Annotated[Path, typer.Option(help="Folder for the notebook and kernel-metadata.json.")],
    timeout_hours: TimeoutHours = None, json: Json = False,
) -> None:
    """Write the job's notebook and kernel-metadata.json; run nothing."""
    from ..backends.kaggle.meta import METADATA_FILE, PLACEHOLDER_OWNER
    from ..backends.kaggle.meta import render as render_kernel
    from ..engine import images_text

    STATE["json"] = json
    seconds = int(timeout_hours * 3600) if timeout_hours else None
    path, meta = render_kernel(job, kernel, out, seconds)
    push = f"kaggle kernels push -p {shlex.quote(str(out))}" + (f" -t {seconds}" if seconds else "")
    if meta["id"].startswith(PLACEHOLDER_OWNER + "/"):
        echo(f"note: kernel-metadata.json names the owner '{PLACEHOLDER_OWNER}' (no Kaggle "
             "username was found here without the network): put yours in its \"id\" "
             f"before '{push}'", err=True)
    elif seconds:  # the cap is the push's: kernel-metadata.json has no field for it
        echo(f"push it with '{push}' (the session's cap)", err=True)
    result({"notebook": str(path), "metadata": str(path.parent / METADATA_FILE),
            "kernel_id": meta["id"], "job_id": job.job_id, "images": job.image_count,
            "session_seconds": seconds, "push": push},
           f"{path} (job {job.job_id}, {images_text(job.image_count)})", json)
