"""The Kaggle kernel's metadata: the user's kernel-metadata.json template, the kernel
flags, and Kaggle's rules for them. Only the Kaggle backend and `render` use it; it
imports nothing of kagglesdk, so checking it costs no start-up time."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import CredentialsError, SpecError
from ...job.notebook import CODE_FILE, job_document, write_notebook

METADATA_FILE = "kernel-metadata.json"
PLACEHOLDER_OWNER = "your-kaggle-username"
DEFAULT_KERNEL_METADATA = {
    "id": f"{PLACEHOLDER_OWNER}/imggenhub-batch",
    "title": "imggenhub batch",
    "code_file": CODE_FILE,
    "language": "python",
    "kernel_type": "notebook",
    "is_private": True,
    "enable_gpu": True,
    "enable_tpu": False,
    "enable_internet": True,
    "machine_shape": "NvidiaTeslaT4",
    "dataset_sources": [],
    "competition_sources": [],
    "kernel_sources": [],
    "model_sources": [],
}
OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{2,49}$")
MAX_TEMPLATE_BYTES = 1 << 20


@dataclass(frozen=True)
class KernelOptions:
    """Flags that shape the Kaggle kernel; None keeps the template's value."""

    kernel_id: str | None = None
    title: str | None = None
    gpu: bool | None = None
    internet: bool | None = None
    private: bool | None = None
    template: Path | None = None
    hf_token_env: str | None = None  # ship the token in this variable (gated/private models)
    force: bool = False  # push even when the estimate exceeds the quota left
    bundle: bool | None = None  # pack the images in tar bundles too (None: by the image count)
    # the remote's options that are not Kaggle's (hf-jobs): the GPU flavor, the cost cap (USD)
    flavor: str | None = None
    max_cost: float | None = None


def check_renderable(job) -> None:
    """`render` uploads nothing: a job naming files on this machine needs deploy."""
    if any(p.init_image or p.mask_image for p in job.prompts) or any(
            x.local for x in (*job.loras, *job.embeddings)):
        raise SpecError("This job names files on this machine (--init-image, --mask-image, a local "
                        "--lora or --embedding), which reach Kaggle as a private dataset that "
                        "render does not upload; use 'imggenhub deploy' (or generate) instead.")


def split_kernel_id(kernel_id: str, where: str = "--kernel-id") -> tuple[str, str]:
    """'owner/slug' -> (owner, slug), or one sentence saying what is wrong."""
    owner, sep, slug = str(kernel_id).partition("/")
    if not sep or not OWNER.match(owner) or not SLUG.match(slug):
        raise SpecError(f"Kernel id '{str(kernel_id)[:80]}' is not of the form owner/slug (slug: 3 "
                        f"to 50 lowercase letters, digits or '-'); fix {where}.")
    return owner, slug


def load_metadata_template(path: Path | None) -> dict:
    """The user's kernel-metadata.json template (read, never rewritten), else the defaults."""
    if path is None or not Path(path).exists():
        return dict(DEFAULT_KERNEL_METADATA)
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise SpecError(f"Kernel metadata template '{path}' is larger than 1 MiB; it is not a "
                            "kernel-metadata.json.")
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SpecError(f"Kernel metadata template '{path}' is not valid JSON ({exc}); fix or "
                        "remove it.") from None
    except OSError as exc:
        raise SpecError(f"Kernel metadata template '{path}' cannot be read ({exc.strerror}).") from None
    if not isinstance(data, dict):
        raise SpecError(f"Kernel metadata template '{path}' must hold a JSON object.")
    return {**DEFAULT_KERNEL_METADATA, **data}


def _title_for(slug: str) -> str:
    return slug.replace("-", " ")


def kernel_metadata(options: KernelOptions, owner: str | None = None,
                    template: dict | None = None) -> dict:
    """kernel-metadata.json for a push: the template, then the flags, then fixed fields."""
    meta = dict(template if template is not None else load_metadata_template(options.template))
    where = "--kernel-id" if options.kernel_id else "the 'id' of kernel-metadata.json"
    if options.kernel_id:
        meta["id"] = options.kernel_id
        if not options.title:
            meta["title"] = _title_for(split_kernel_id(options.kernel_id)[1])
    if not isinstance(meta.get("id"), str):
        raise SpecError("kernel-metadata.json needs an 'id' of the form owner/slug.")
    meta_owner, slug = split_kernel_id(meta["id"], where)
    if owner and meta_owner == PLACEHOLDER_OWNER:
        meta["id"] = f"{owner}/{slug}"
    if options.title:
        meta["title"] = options.title
    if not isinstance(meta.get("title"), str) or len(meta["title"].strip()) < 5:
        raise SpecError("The kernel title must have at least 5 characters; set --title.")
    for flag, key in ((options.gpu, "enable_gpu"), (options.internet, "enable_internet"),
                      (options.private, "is_private")):
        if flag is not None:
            meta[key] = flag
    if meta.get("enable_gpu"):
        meta["machine_shape"] = meta.get("machine_shape") or "NvidiaTeslaT4"
    else:
        meta.pop("machine_shape", None)
    meta.update(code_file=CODE_FILE, language="python", kernel_type="notebook")
    return meta


def write_metadata(out_dir: Path, metadata: dict) -> Path:
    path = Path(out_dir) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return path


def render(job, options, out_dir: Path, session_seconds: int | None = None) -> tuple[Path, dict]:
    """The job's notebook and kernel-metadata.json in ``out_dir``, as deploy would push them;
    nothing runs. The notebook's path and the metadata. ``session_seconds``: the session's
    cap, which the engine stops cleanly before (deploy's --timeout-hours)."""
    from .credentials import find_credentials

    check_renderable(job)
    try:  # fill in the owner as deploy would, where it needs no network
        creds = find_credentials()
    except CredentialsError:  # render needs none: a broken one only leaves the placeholder
        creds = None
    meta = kernel_metadata(options, owner=creds.username if creds else None)
    doc = job_document(job)
    if session_seconds:
        doc["session_seconds"] = session_seconds
    path = write_notebook(out_dir, job, document=doc)
    write_metadata(out_dir, meta)
    return path, meta
