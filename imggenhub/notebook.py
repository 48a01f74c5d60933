"""Render a JobSpec into the notebook (and the kernel-metadata.json a Kaggle push uses).

The job travels as DATA: one string literal holding ASCII JSON, written with
``repr``, so no user text is ever formatted into code. Same spec, same bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import __version__, engine
from .errors import SpecError
from .spec import JobSpec

CODE_FILE = "imggenhub-job.ipynb"
METADATA_FILE = "kernel-metadata.json"
ENGINE_FILE = "imggenhub_engine.py"
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
KERNEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]{2,49}$")


def _template() -> dict:
    try:
        text = resources.files("imggenhub.notebooks").joinpath("imggenhub.ipynb").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # a source checkout without install
        text = (Path(__file__).resolve().parents[1] / "notebooks" / "imggenhub.ipynb").read_text("utf-8")
    return json.loads(text)


def parameters_source(job: JobSpec) -> str:
    """The parameters cell: one assignment of one string constant, nothing else."""
    doc = json.dumps(job.document(), ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return ("# The job, as data: imggenhub reads it with json.loads and never runs it.\n"
            f"JOB_JSON = {doc!r}")


def engine_source() -> str:
    return f"%%writefile {ENGINE_FILE}\n" + Path(engine.__file__).read_text(encoding="utf-8")


def render_notebook(job: JobSpec) -> str:
    """The notebook's JSON text for this job."""
    nb = _template()
    about = {"{{job_id}}": job.job_id, "{{version}}": __version__,
             "{{image_count}}": str(job.image_count), "{{model_id}}": job.model["id"]}
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            for key, value in about.items():
                source = source.replace(key, value)
        elif "parameters" in cell.get("metadata", {}).get("tags", []):
            source = parameters_source(job)
        elif source.startswith("# imggenhub:engine"):
            source = engine_source()
        cell["source"] = source.splitlines(keepends=True)
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


@dataclass(frozen=True)
class KernelOptions:
    """Flags that shape the Kaggle kernel; None keeps the template's value."""

    kernel_id: str | None = None
    title: str | None = None
    gpu: bool | None = None
    internet: bool | None = None
    private: bool | None = None


def load_metadata_template(path: Path | None) -> dict:
    """The user's kernel-metadata.json template (read, never rewritten), else the defaults."""
    if path is None or not Path(path).exists():
        return dict(DEFAULT_KERNEL_METADATA)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"Kernel metadata template '{path}' is not valid JSON ({exc}); fix or "
                        "remove it.") from None
    if not isinstance(data, dict):
        raise SpecError(f"Kernel metadata template '{path}' must hold a JSON object.")
    return {**DEFAULT_KERNEL_METADATA, **data}


def _title_for(slug: str) -> str:
    return slug.replace("-", " ")


def kernel_metadata(template: dict, options: KernelOptions, owner: str | None = None) -> dict:
    """kernel-metadata.json for a push: the template, then the flags, then fixed fields."""
    meta = dict(template)
    if options.kernel_id:
        meta["id"] = options.kernel_id
        if not options.title:
            meta["title"] = _title_for(options.kernel_id.split("/", 1)[1])
    if owner and meta["id"].split("/", 1)[0] == PLACEHOLDER_OWNER:
        meta["id"] = f"{owner}/{meta['id'].split('/', 1)[1]}"
    if options.title:
        meta["title"] = options.title
    if not KERNEL_ID.match(meta["id"]):
        raise SpecError(f"Kernel id '{meta['id']}' is not of the form owner/slug (slug: 3 to 50 "
                        "lowercase letters, digits or '-'); fix --kernel-id or kernel-metadata.json.")
    if len(meta.get("title", "")) < 5:
        raise SpecError("The kernel title must have at least 5 characters; set --title.")
    if options.gpu is not None:
        meta["enable_gpu"] = options.gpu
    if options.internet is not None:
        meta["enable_internet"] = options.internet
    if options.private is not None:
        meta["is_private"] = options.private
    if meta.get("enable_gpu"):
        meta["machine_shape"] = meta.get("machine_shape") or "NvidiaTeslaT4"
    else:
        meta.pop("machine_shape", None)
    meta.update(code_file=CODE_FILE, language="python", kernel_type="notebook")
    return meta


def write_render(out_dir: Path, job: JobSpec, metadata: dict) -> Path:
    """Write the notebook and kernel-metadata.json into ``out_dir``; return the notebook path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook_path = out_dir / CODE_FILE
    notebook_path.write_text(render_notebook(job), encoding="utf-8")
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return notebook_path
