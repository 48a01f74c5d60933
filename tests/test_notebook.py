"""The rendered notebook: the job as data, the engine inlined, same spec -> same bytes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat

from imggenhub import engine
from imggenhub.backends.kaggle.meta import METADATA_FILE, KernelOptions, kernel_metadata
from imggenhub.job.notebook import CODE_FILE, read_job_document, render_notebook
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags

from .adversarial import corpus
from .conftest import REPO


def job_for(prompts, **flags):
    return build_job(parse_settings(**{"model": "tiny-random", "seed": 11, **flags}),
                     prompts_from_flags(prompts))


def cells(text):
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    return nb


def test_structure_kernelspec_and_tags():
    nb = cells(render_notebook(job_for(["a lighthouse"])))
    assert nb.metadata.kernelspec.name == "python3"
    kinds = [c.cell_type for c in nb.cells]
    assert kinds == ["markdown", "code"] + ["code"] * (1 + len(engine.MODULES)) + ["code"]
    assert nb.cells[1].metadata.tags == ["parameters"]
    # the engine is inlined unchanged, one readable cell per module: one source serves both sides
    folder = Path(engine.__file__).parent
    for cell, name in zip(nb.cells[3:-1], engine.MODULES):
        head, _, body = cell.source.partition("\n")
        assert head == f"%%writefile imggenhub_engine/{name}.py"
        assert body == (folder / f"{name}.py").read_text(encoding="utf-8")
    assert "import imggenhub_engine" in nb.cells[-1].source


def test_same_spec_same_bytes_and_a_change_changes_them():
    a = render_notebook(job_for(["x", "y"]))
    assert a == render_notebook(job_for(["x", "y"]))
    assert a != render_notebook(job_for(["x", "y"], seed=12))


def parameters_value(text):
    """The parameters cell must be exactly one assignment of one string constant."""
    source = cells(text).cells[1].source
    tree = ast.parse(source)
    assert len(tree.body) == 1
    node = tree.body[0]
    assert isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["JOB_JSON"]
    assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    assert source.isascii()
    return json.loads(node.value.value)


def test_adversarial_prompts_stay_data(tmp_path):
    prompts = corpus(str(tmp_path / "PWNED"))
    job = job_for(prompts, negative_prompt="neg ''' \"\"\" \\ {} %s\n!rm -rf /")
    text = render_notebook(job)
    doc = parameters_value(text)
    assert doc == {**job.document(), "run_id": None}
    assert read_job_document(text) == doc
    assert [p["prompt"] for p in doc["prompts"]] == prompts
    nb = cells(text)
    # no user text in the markdown or in any code cell but the parameters cell
    for i, cell in enumerate(nb.cells):
        if i != 1:
            assert "PWNED" not in cell.source and "lighthouse" not in cell.source


def test_kernel_metadata_defaults_and_flags():
    meta = kernel_metadata(KernelOptions())
    assert meta["code_file"] == CODE_FILE and meta["kernel_type"] == "notebook"
    assert meta["is_private"] is True and meta["enable_gpu"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_internet"] is True
    cpu = kernel_metadata(KernelOptions(kernel_id="alice/my-batch", gpu=False, internet=False))
    assert cpu["id"] == "alice/my-batch" and cpu["title"] == "my batch"
    assert cpu["enable_gpu"] is False and "machine_shape" not in cpu and cpu["enable_internet"] is False
    owned = kernel_metadata(KernelOptions(), owner="bob")
    assert owned["id"] == "bob/imggenhub-batch"


def test_repo_template_is_read_not_rewritten(tmp_path, cli):
    template = REPO / "kernel-metadata.json"
    before = template.read_bytes()
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "-p", "x", "--model", "tiny-random",
                         "--seed", "1", "--metadata-template", str(template), "--title", "My own title")
    assert code == 0, err
    assert template.read_bytes() == before
    meta = json.loads((tmp_path / "r" / METADATA_FILE).read_text())
    assert meta["title"] == "My own title" and meta["id"] == json.loads(before)["id"]
    assert (tmp_path / "r" / CODE_FILE).exists()
