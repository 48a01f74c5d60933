"""render: the job's notebook and kernel-metadata.json, written here; nothing runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import job_options
from .output import echo


@job_options
def render(
    job, kernel,
    out: Annotated[Path, typer.Option(help="Folder for the notebook and kernel-metadata.json.")],
) -> None:
    """Write the job's notebook and kernel-metadata.json; run nothing."""
    from ..backends.kaggle.meta import PLACEHOLDER_OWNER
    from ..backends.kaggle.meta import render as render_kernel
    from ..engine import images_text

    path, meta = render_kernel(job, kernel, out)
    echo(f"{path} (job {job.job_id}, {images_text(job.image_count)})")
    if meta["id"].startswith(PLACEHOLDER_OWNER + "/"):
        echo(f"note: kernel-metadata.json names the owner '{PLACEHOLDER_OWNER}' (no Kaggle "
             "username was found here without the network): put yours in its \"id\" "
             "before 'kaggle kernels push'", err=True)
