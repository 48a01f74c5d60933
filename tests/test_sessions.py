"""Jobs longer than a Kaggle session: the engine stops cleanly before the session's end
(a session that is cut off keeps no output), the manifest says what is still to make, and
the next push makes only that, with the same indices, seeds and file names, until the run
folder holds the whole job."""

from __future__ import annotations

import json

from imggenhub.outputs import artifacts
from imggenhub.run import runs
from imggenhub.run.lifecycle import RunState
from imggenhub.job.notebook import read_job_document

JOB = ["--model", "tiny-random", "--seed", "5", "-p", "a", "-p", "b", "--num-images", "10"]


def test_a_job_over_three_sessions_ends_whole(emulator, cli, tmp_path, monkeypatch):
    code, out, err = cli("generate", *JOB, "--out", str(tmp_path / "one"), cwd=tmp_path)
    assert code == 0, err  # the reference: one session, no limit
    emulator.calls.clear()
    # 20 images at 0.2 s: 4 s of work in sessions of 2 s (Kaggle kills at 2 s, keeping nothing)
    emulator.image_seconds = 0.2
    emulator.session_seconds = 2.0
    monkeypatch.setenv("IMGGENHUB_SESSION_SECONDS", "2")
    code, out, err = cli("generate", *JOB, "--json", "--out", str(tmp_path / "long"), cwd=tmp_path)
    assert code == 0, err
    run = runs.load(json.loads(out)["run_id"])
    assert run.state == RunState.DOWNLOADED and run.session >= 3
    versions = emulator.versions("imggenhub/imggenhub-batch")[-run.session:]
    assert all(v.status == "COMPLETE" for v in versions)  # none was cut off
    docs = [read_job_document(v.text) for v in versions]
    assert docs[0].get("only") is None and docs[1]["session"] == 2
    # each session is asked for fewer images: only those the ones before did not make
    asked = [set(i for a, b in d.get("only") or [[0, 20]] for i in range(a, b)) for d in docs]
    assert all(asked[i + 1] < asked[i] for i in range(len(asked) - 1))
    whole = artifacts.read_manifest(tmp_path / "long")
    reference = artifacts.read_manifest(tmp_path / "one")
    assert whole["complete"] and whole["remaining"] == [] and artifacts.verify(tmp_path / "long") == []
    assert [(r["index"], r["seed"], r["file"], r["sha256"]) for r in whole["images"]] == \
        [(r["index"], r["seed"], r["file"], r["sha256"]) for r in reference["images"]]
    assert "the session's time is nearly up" in err and "of 20 images are here" in err
    # an image of the first session lost here: Kaggle keeps only the latest session's
    # outputs, so download says resume makes it again, and resume does (the same bytes)
    first = whole["images"][0]
    (tmp_path / "long" / first["file"]).unlink()
    code, out, err = cli("download", run.run_id, cwd=tmp_path)
    assert code == 6 and "made by a session whose outputs Kaggle keeps no longer" in err, err
    emulator.session_seconds = None
    monkeypatch.delenv("IMGGENHUB_SESSION_SECONDS")
    code, out, err = cli("resume", run.run_id, cwd=tmp_path)
    assert code == 0, err
    again = artifacts.read_manifest(tmp_path / "long")
    assert [(r["index"], r["sha256"]) for r in again["images"]] == \
        [(r["index"], r["sha256"]) for r in whole["images"]]
    assert artifacts.verify(tmp_path / "long") == []


def test_a_partial_run_waits_for_resume(emulator, cli, tmp_path, monkeypatch):
    emulator.image_seconds = 0.2
    monkeypatch.setenv("IMGGENHUB_SESSION_SECONDS", "2")
    code, out, err = cli("deploy", *JOB, "--json", "--out", str(tmp_path / "o"), cwd=tmp_path)
    run_id = json.loads(out)["run_id"]
    assert cli("poll", run_id, cwd=tmp_path)[0] == 0
    code, out, err = cli("download", run_id, cwd=tmp_path)
    assert code == 6 and "is partial" in err and f"imggenhub resume {run_id}" in err
    partial = artifacts.read_manifest(tmp_path / "o")
    here = len(partial["images"])
    assert 0 < here < 20 and artifacts.verify(tmp_path / "o") == []
    assert partial["remaining"] == [[here, 20]] and not partial["complete"]  # what is still to do
    pushes = sum(1 for m, _ in emulator.calls if m == "SaveKernel")
    code, out, err = cli("deploy", *JOB, "--json", "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert code == 0  # another run entirely: the partial one is not touched
    code, out, err = cli("resume", run_id, cwd=tmp_path)
    assert code == 0, err
    assert len(artifacts.read_manifest(tmp_path / "o")["images"]) == 20
    assert sum(1 for m, _ in emulator.calls if m == "SaveKernel") >= pushes + 2
