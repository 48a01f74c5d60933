"""Shards: a job's images split over several kernels run at once, followed together and
downloaded into one folder with one manifest, the same files an unsharded run gives. At
most two GPU sessions run: a third shard waits for a slot. A failed shard is pushed
again alone by resume."""

from __future__ import annotations

import json

from imggenhub.outputs import artifacts
from imggenhub.run import runs
from imggenhub.run.lifecycle import RunState
from imggenhub.job.notebook import read_job_document

from .conftest import release_when

JOB = ["--model", "tiny-random", "--seed", "8", "-p", "a", "-p", "b", "--num-images", "6"]


def files(folder) -> list:
    return [(r["index"], r["seed"], r["file"], r["sha256"])
            for r in artifacts.read_manifest(folder)["images"]]


def test_three_shards_with_two_sessions_make_the_unsharded_files(emulator, cli, tmp_path):
    code, out, err = cli("generate", *JOB, "--shards", "1", "--out", str(tmp_path / "one"),
                         cwd=tmp_path)
    assert code == 0, err
    # shards 1 and 2 are held in their first image until shard 3's push was refused for want
    # of a GPU session: the refusal does not hang on how fast this machine pushes
    emulator.image_seconds = 0.05
    emulator.hold_image = 1
    release_when(emulator, lambda: "imggenhub/imggenhub-batch-3" in emulator.gpu_refused)
    code, out, err = cli("generate", *JOB, "--shards", "3", "--json", "--out",
                         str(tmp_path / "three"), cwd=tmp_path)
    assert code == 0, err
    data = json.loads(out)
    assert data["state"] == "downloaded" and [s["state"] for s in data["shards"]] == ["downloaded"] * 3
    assert files(tmp_path / "three") == files(tmp_path / "one")
    assert artifacts.read_manifest(tmp_path / "three")["complete"]
    assert artifacts.verify(tmp_path / "three") == []
    kernels = sorted(k for k in emulator.kernels if k != "imggenhub/imggenhub-batch")
    assert kernels == [f"imggenhub/imggenhub-batch-{k}" for k in (1, 2, 3)]
    shares = [read_job_document(emulator.versions(k)[0].text)["only"] for k in kernels]
    assert shares == [[[0, 4]], [[4, 8]], [[8, 12]]]
    # two GPU sessions at most: the third shard was refused once and pushed when one ended
    assert "[shard 3/3] Kaggle's GPU sessions are all taken" in err
    assert "[shard 1/3] image" in err  # each shard's progress, tagged
    code, listing, _ = cli("runs")
    assert code == 0 and all(f"shard {k}: downloaded" in listing for k in (1, 2, 3))
    pushes = [b for m, b in emulator.calls if m == "SaveKernel" and b["slug"].endswith("-3")]
    assert len(pushes) >= 2


def test_a_failed_shard_is_pushed_again_alone(emulator, cli, tmp_path):
    # queued until the fault is planted below, however slow this machine is
    emulator.image_seconds, emulator.queue_seconds = 0.05, 60
    code, out, err = cli("deploy", *JOB, "--shards", "2", "--json", "--out", str(tmp_path / "o"),
                         cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    # shard 2's kernel breaks after 2 of its 6 images
    emulator.versions("imggenhub/imggenhub-batch-2")[0].env["IMGGENHUB_ENGINE_FAIL_AFTER"] = "2"
    emulator.queue_seconds = 0.1
    code, out, err = cli("poll", run_id, cwd=tmp_path)
    assert code == 1 and "shard 2 (error)" in err and f"imggenhub resume {run_id}" in err
    code, out, err = cli("download", run_id, cwd=tmp_path)  # what both made comes home
    assert code == 1 and len(artifacts.read_manifest(tmp_path / "o")["images"]) == 8
    assert runs.load(run_id).state == RunState.ERROR
    before = len(emulator.versions("imggenhub/imggenhub-batch-1"))
    code, out, err = cli("resume", run_id, cwd=tmp_path)
    assert code == 0, err
    assert len(emulator.versions("imggenhub/imggenhub-batch-1")) == before  # not touched
    again = emulator.versions("imggenhub/imggenhub-batch-2")[-1]
    assert read_job_document(again.text)["only"] == [[8, 12]]  # only what it had not made
    assert runs.load(run_id).state == RunState.DOWNLOADED
    assert len(artifacts.read_manifest(tmp_path / "o")["images"]) == 12
    code, out, err = cli("status", run_id)
    assert code == 0 and "shard 1: downloaded" in out and "shard 2: downloaded" in out


def test_auto_shards_only_a_job_long_enough(emulator, cli, tmp_path):
    code, out, err = cli("deploy", *JOB, "--json", cwd=tmp_path)
    assert code == 0 and "shards" not in json.loads(out)  # 12 tiny images: one kernel
    code, out, err = cli("deploy", "--model", "sdxl", "-p", "x", "--num-images", "60", "--json",
                         cwd=tmp_path)
    assert code == 0, err  # 60 SDXL images: ~13 min of generation on T4 x2, two kernels
    assert len(json.loads(out)["shards"]) == 2


def test_a_sharded_deploy_prepares_the_job_once(emulator, cli, tmp_path):
    """The job-wide work (the owner, the quota, the inputs) is done once, not once a kernel:
    one quota call for three shards, each kernel with its share and its own estimate."""
    (tmp_path / "in.png").write_bytes(_png())
    code, out, err = cli("deploy", *JOB, "--shards", "3", "--init-image", str(tmp_path / "in.png"),
                         "--json", cwd=tmp_path)
    assert code == 0, err
    quota_calls = [m for m, _ in emulator.calls if m == "GetAcceleratorQuotaStatistics"]
    assert len(quota_calls) == 1
    assert err.count("inputs: 1 file on this machine goes to Kaggle") == 1
    shards = runs.shards_of(runs.load())
    assert [s.only for s in shards] == [[[0, 4]], [[4, 8]], [[8, 12]]]
    assert all(s.estimate_hours for s in shards)
    assert runs.load().estimate_hours == round(sum(s.estimate_hours for s in shards), 3)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_sharded_runs_lost_image_is_fetched_again_by_the_shard_that_made_it(emulator, cli,
                                                                             tmp_path):
    code, out, err = cli("generate", *JOB, "--shards", "2", "--json", "--out",
                         str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    records = artifacts.read_manifest(tmp_path / "o")["images"]
    gone = next(r for r in records if r["index"] == 7)  # shard 2's share is 6..11
    (tmp_path / "o" / gone["file"]).unlink()
    served, calls = len(emulator.served), len(emulator.calls)
    code, out, err = cli("download", run_id, "--json", cwd=tmp_path)
    assert code == 0, err
    assert "1 of its files is missing or changed" in err and "fetching them again" in err
    assert artifacts.verify(tmp_path / "o") == [] and json.loads(out)["state"] == "downloaded"
    assert emulator.served[served:] == ["output/manifest.json", f"output/{gone['file']}"]
    assert [s.state for s in runs.shards_of(runs.load(run_id))] == [RunState.DOWNLOADED] * 2
    listed = {b.get("kernelSlug") for m, b in emulator.calls[calls:] if m == "ListKernelSessionOutput"}
    assert listed == {"imggenhub-batch-2"}  # only the shard that made it was asked
    for index in (1, 7):  # one of each shard's: each shard brings its own
        (tmp_path / "o" / next(r for r in records if r["index"] == index)["file"]).unlink()
    code, out, err = cli("download", run_id, cwd=tmp_path)
    assert code == 0 and "2 of its files are missing" in err, err
    assert artifacts.verify(tmp_path / "o") == []
