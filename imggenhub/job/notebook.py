"""Render a JobSpec into the notebook that runs it (the same notebook on Kaggle and here).

The job travels as DATA: one string literal holding ASCII JSON, written with
``repr``, so no user text is ever formatted into code. Same spec and run, same bytes.
The document carries the run id, so a notebook found on Kaggle can be recognised.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .. import __version__, engine
from .spec import JobSpec

CODE_FILE = "imggenhub-job.ipynb"


def _template() -> dict:
    try:
        text = resources.files("imggenhub.notebooks").joinpath("imggenhub.ipynb").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # a source checkout without install
        text = (Path(__file__).resolve().parents[2] / "notebooks" / "imggenhub.ipynb").read_text("utf-8")
    return json.loads(text)


def job_document(job: JobSpec, run_id: str | None = None) -> dict:
    return {**job.document(), "run_id": run_id}


def parameters_source(job: JobSpec, run_id: str | None = None, document: dict | None = None) -> str:
    """The parameters cell: one assignment of one string constant, nothing else.
    ``document`` replaces the job's own (the Kaggle backend's, with shipped inputs)."""
    return _parameters(document or job_document(job, run_id))


def _parameters(document: dict) -> str:
    doc = json.dumps(document, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return ("# The job, as data: imggenhub reads it with json.loads and never runs it.\n"
            f"JOB_JSON = {doc!r}")


def with_document(notebook_text: str, document: dict) -> str:
    """The same notebook with another job document in its parameters cell."""
    nb = json.loads(notebook_text)
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = _parameters(document).splitlines(keepends=True)
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def read_job_document(notebook_text: str) -> dict | None:
    """The job document of a rendered notebook (None if it is not one), without running it:
    for a notebook found on Kaggle (was an interrupted push this run's?), and the records
    of runs made before the record kept its document."""
    import ast

    try:
        nb = json.loads(notebook_text)
        for cell in nb.get("cells", []):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            if "JOB_JSON = " not in source:
                continue
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                        and [getattr(t, "id", None) for t in node.targets] == ["JOB_JSON"]:
                    return json.loads(node.value.value)
    except (ValueError, SyntaxError, TypeError, AttributeError, RecursionError):
        return None
    return None


def engine_cells() -> list[dict]:
    """The engine, one readable cell per module, written unchanged into a package beside the
    notebook (a first cell makes its folder)."""
    package = engine.ENGINE_PACKAGE
    folder = Path(engine.__file__).parent
    sources = [f"# The engine: one cell per module of the package {package}/.\n"
               f"import pathlib\n\npathlib.Path({package!r}).mkdir(exist_ok=True)"]
    sources += [f"%%writefile {package}/{name}.py\n" + (folder / f"{name}.py").read_text("utf-8")
                for name in engine.MODULES]
    names = ["mkdir", *[m.strip("_") or "init" for m in engine.MODULES]]
    return [{"cell_type": "code", "execution_count": None, "id": f"imggenhub-engine-{n}",
             "metadata": {}, "outputs": [], "source": src.splitlines(keepends=True)}
            for n, src in zip(names, sources)]


def render_notebook(job: JobSpec, run_id: str | None = None, document: dict | None = None) -> str:
    """The notebook's JSON text for this job (and run)."""
    nb = _template()
    about = {"{{job_id}}": job.job_id, "{{version}}": __version__, "{{run_id}}": run_id or "-",
             "{{summary}}": job.summary()}
    cells = []
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if source.startswith("# imggenhub:engine"):
            cells += engine_cells()
            continue
        if cell["cell_type"] == "markdown":
            for key, value in about.items():
                source = source.replace(key, value)
        elif "parameters" in cell.get("metadata", {}).get("tags", []):
            source = parameters_source(job, run_id, document)
        cell["source"] = source.splitlines(keepends=True)
        cells.append(cell)
    nb["cells"] = cells
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def write_notebook(out_dir: Path, job: JobSpec, run_id: str | None = None,
                   document: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CODE_FILE
    path.write_text(render_notebook(job, run_id, document), encoding="utf-8")
    return path
