"""Error paths of the run store, the job library and the kernel metadata: each is one
sentence with its exit code, never an internal error."""

from __future__ import annotations

import json

import pytest

from imggenhub.run import jobs, runs
from imggenhub.backends.kaggle.meta import KernelOptions, kernel_metadata, load_metadata_template
from imggenhub.errors import RunNotFoundError, SpecError
from imggenhub.run.lifecycle import Exit, RunState
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags


def record(run_id, **fields):
    run = runs.Run(run_id=run_id, backend="kaggle", job_id="j" * 16, image_count=1,
                   out_dir="/tmp/x", **fields)
    runs.runs_dir().joinpath(run_id).mkdir(exist_ok=True)
    return runs.save(run)


def test_loading_runs_by_id_prefix_name_and_the_errors():
    with pytest.raises(RunNotFoundError, match="There are no runs yet"):
        runs.load()
    record("20260101-000000-aaaa", name="first")
    record("20260101-000000-aaab")
    assert runs.load("first").run_id == "20260101-000000-aaaa"
    assert runs.load("20260101-000000-aaab").run_id == "20260101-000000-aaab"
    assert runs.load("aaab").run_id == "20260101-000000-aaab"  # any unique part: the tail
    assert runs.load("0-aaaa").run_id == "20260101-000000-aaaa"
    for bad, words in (("20260101", r"'20260101' matches 2 runs \(20260101-000000-aaaa, "
                                    r"20260101-000000-aaab\); give more"),
                       ("nope", "No run matches 'nope'"),
                       ("aaa", r"'aaa' matches 2 runs"),
                       ("../../etc", "is not a run id"), ("x" * 500, "is not a run id")):
        with pytest.raises(RunNotFoundError, match=words) as info:
            runs.load(bad)
        assert info.value.exit_code == Exit.BAD_INPUT


def test_torn_and_old_records_are_read_or_skipped():
    record("20260101-000000-good")
    (runs.runs_dir() / "torn").mkdir()
    (runs.runs_dir() / "torn" / "run.json").write_text('{"run_id": "torn", "sta')
    old = runs.runs_dir() / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({
        "run_id": "old", "backend": "local", "job_id": "j", "image_count": 2, "out_dir": "/tmp/o",
        "state": "error", "created": 1.0, "updated": 1.0,
        "failure": json.dumps({"cell_index": 3, "ename": "RuntimeError", "evalue": "boom"})}))
    ids = [r.run_id for r in runs.all_runs()]
    assert "torn" not in ids and {"old", "20260101-000000-good"} <= set(ids)
    failure = runs.load("old").failure
    assert (failure.ename, failure.cell_index) == ("RuntimeError", 3)
    assert jobs.failure_error(runs.load("old")).exit_code == Exit.RUN_FAILED
    assert "in cell 4: RuntimeError: boom" in str(jobs.failure_error(runs.load("old")))


def test_a_run_that_cannot_be_prepared_leaves_no_record(tmp_path):
    job = build_job(parse_settings(model="tiny-random", seed=1), prompts_from_flags(["x"]))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecError):
        jobs.start(job, "local", tmp_path / "file", None, lambda m: None)
    with pytest.raises(SpecError, match="--name"):
        jobs.start(job, "local", None, None, lambda m: None, name="bad name/with slash")
    assert runs.all_runs() == [] and not any(runs.runs_dir().iterdir())


@pytest.mark.parametrize("content,words", [
    ("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object"),
    ('{"id": 5}', "needs an 'id'"), ('{"id": "alice/ok-slug", "title": "abc"}', "at least 5"),
    ('{"id": "alice"}', "is not of the form owner/slug"),
    ("[" * 50000 + "]" * 50000, "is not valid JSON"),
])
def test_bad_kernel_metadata_templates(tmp_path, content, words):
    path = tmp_path / "kernel-metadata.json"
    path.write_text(content)
    with pytest.raises(SpecError, match=words) as info:
        kernel_metadata(KernelOptions(template=path))
    assert info.value.exit_code == Exit.BAD_INPUT


def test_a_template_with_a_bom_is_read():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel-metadata.json"
        path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "alice/my-kernel"}).encode())
        assert load_metadata_template(path)["id"] == "alice/my-kernel"


def test_state_names_are_the_wire_values():
    assert [s.value for s in RunState] == [
        "rendered", "pushing", "push-unknown", "push-failed", "pushed", "queued", "running",
        "complete", "error", "cancelled", "downloaded", "partial"]


def test_the_gallery_takes_a_servers_manifest_with_only_the_required_fields(tmp_path):
    from imggenhub.outputs.artifacts import write_gallery

    (tmp_path / "manifest.json").write_text(json.dumps({"images": [
        {"file": "0001-x.png", "sha256": "0" * 64, "bytes": 3}]}))
    from imggenhub.outputs.gallery import read_data

    data = read_data(write_gallery(tmp_path).read_text())
    assert [i["file"] for i in data["images"]] == ["0001-x.png"]
    assert data["images"][0]["command"].startswith("imggenhub generate --prompt ''")


def test_runs_lists_the_newest_first_and_the_newest_20_unless_asked(cli):
    import json

    for i in range(23):
        record(f"20260101-0000{i:02d}-aaaa", created=1_700_000_000 + i)
    code, out, _ = cli("runs")
    lines = out.strip().splitlines()
    assert code == 0 and lines[1].startswith("20260101-000022-aaaa")  # after the header
    assert len(lines) == 1 + 20 + 1 and "3 older not shown" in lines[-1]
    code, out, _ = cli("runs", "--limit", "0", "--json")
    ids = [r["run_id"] for r in json.loads(out)]
    assert len(ids) == 23 and ids[0] == "20260101-000022-aaaa" and ids[-1] == "20260101-000000-aaaa"
