"""Hugging Face Jobs as a second remote (--backend hf-jobs), against the Hub emulator's jobs
(tests/jobs_emulator.py) through the real huggingface_hub client: jobs started with their
labels and secret, outputs uploaded by each job and brought home verified, the cost
refused before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .hub_emulator import DEFAULT_TOKEN, DEFAULT_USER


@pytest.fixture(autouse=True)
def _jobs_client(cli, tmp_path):
    """An older huggingface_hub (the oldest-versions run) has no job labels: the backend
    says so in one sentence, and these tests have nothing more to check there."""
    import inspect

    from huggingface_hub import HfApi

    if "labels" not in inspect.signature(HfApi.run_job).parameters:
        code, out, err = cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p",
                             "x", cwd=tmp_path)
        assert code == 2 and "needs a huggingface_hub whose jobs take labels" in err
        pytest.skip("this huggingface_hub has no job labels (its refusal is checked)")


def _generate(cli, tmp_path, *extra):
    return cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a red circle",
               "-p", "a blue square", "--num-images", "2", "--seed", "3", "--out",
               str(tmp_path / "out"), "--json", *extra, cwd=tmp_path)


def _run_repo(hf_jobs, run_id: str):
    """The private dataset of the run's files (its name: the run's id and a random tag)."""
    (key,) = [k for k in hf_jobs.repos if k.startswith(f"datasets/{DEFAULT_USER}/imggenhub-{run_id}-")]
    return hf_jobs.repos[key]


def test_shards_run_as_jobs_and_their_images_come_home_verified(hf_jobs, cli, tmp_path):
    code, out, err = _generate(cli, tmp_path, "--shards", "2", "--flavor", "a10g-small")
    assert code == 0, err
    result = json.loads(out)
    assert result["state"] == "downloaded" and result["images_fetched"] == 4
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(r["file"] for r in manifest["images"]) == [
        "0001-a-red-circle.png", "0002-a-red-circle.png", "0003-a-blue-square.png",
        "0004-a-blue-square.png"]
    jobs = list(hf_jobs.jobs.jobs.values())
    assert len(jobs) == 2 and {j.spec["flavor"] for j in jobs} == {"a10g-small"}
    assert {j.stage for j in jobs} == {"COMPLETED"}
    # each job named by its run and session, so that an interrupted start is found again
    # (and a random tag: two machines starting the same job in the same second never share)
    labels = sorted(j.spec["labels"]["imggenhub-run"] for j in jobs)
    assert [label.rsplit("-", 1)[0] for label in labels] == [
        f"{result['run_id']}-shard-1", f"{result['run_id']}-shard-2"]
    assert all(len(label.rsplit("-", 1)[1]) == 8 for label in labels)
    assert all(j.spec["labels"]["imggenhub-session"] == "1" for j in jobs)
    # the time limit is set, never the Hub's 30-minute default by omission
    assert all(j.spec["timeoutSeconds"] >= 1800 + 600 for j in jobs)  # the session and a margin
    assert "estimate: 2 jobs on a10g-small ($1.00/h)" in err
    # the record keeps the estimate and the minutes billed (each shard's)
    from imggenhub.run import runs

    for shard in runs.shards_of(runs.load(result["run_id"])):
        assert shard.estimate_hours > 0 and shard.timings["billed_minutes"] == 1
        assert shard.timings["billed_usd"] == round(1.00 / 60, 4)


def test_the_token_reaches_the_job_as_a_secret_and_nowhere_else(hf_jobs, cli, tmp_path):
    code, out, err = _generate(cli, tmp_path)
    assert code == 0, err
    (job,) = hf_jobs.jobs.jobs.values()
    assert job.spec["secrets"] == {"HF_TOKEN": DEFAULT_TOKEN}
    seen = json.dumps({k: v for k, v in job.spec.items() if k != "secrets"})
    assert DEFAULT_TOKEN not in seen  # not in the command, the environment or the labels
    assert DEFAULT_TOKEN not in json.dumps(job.info())  # inspect shows the secret's name only
    assert DEFAULT_TOKEN not in out + err + "\n".join(job.logs)
    home = Path(__import__("os").environ["IMGGENHUB_HOME"])
    assert not [p for p in home.rglob("*") if p.is_file() and DEFAULT_TOKEN.encode() in p.read_bytes()]
    assert not [p for p in (tmp_path / "out").rglob("*") if DEFAULT_TOKEN.encode() in p.read_bytes()]
    # the run's files went to a private dataset of the user's, the run's own
    repo = _run_repo(hf_jobs, json.loads(out)["run_id"])
    assert repo.private and any(p.endswith("/out/manifest.json") for p in repo.files)
    assert not [p for p, data in repo.files.items() if DEFAULT_TOKEN.encode() in data]
    # the repo mirrors what the engine left: no temporary file, no stale part
    assert not [p for p in repo.files if p.endswith(".tmp") or "/.parts/" in p]


def test_over_max_cost_is_refused_before_anything_starts(hf_jobs, cli, tmp_path):
    code, out, err = _generate(cli, tmp_path, "--flavor", "h200", "--max-cost", "0.01")
    assert code == 7 and "is over --max-cost $0.01; nothing was started" in err
    assert not hf_jobs.jobs.jobs and not [k for k in hf_jobs.repos if "imggenhub-" in k]


def test_an_unknown_flavor_is_one_sentence(hf_jobs, cli, tmp_path):
    code, out, err = _generate(cli, tmp_path, "--flavor", "t4-huge")
    assert code == 2 and "--flavor 't4-huge' is not a Hugging Face Jobs flavor; choose one of" in err
    assert "a10g-small" in err and "cpu-basic" not in err.split("choose one of")[1]
    assert not hf_jobs.jobs.jobs



def test_an_interrupted_start_is_found_by_its_labels_and_never_started_twice(hf_jobs, cli, tmp_path):
    hf_jobs.jobs.faults = ["500-after"]  # the job was made, the answer lost
    code, out, err = _generate(cli, tmp_path)
    assert code == 5 and "may or may not have started" in err
    run_id = json.loads(out)["run_id"] if out.strip() else None
    code, out, err = cli("resume", *([run_id] if run_id else []), "--json", cwd=tmp_path)
    assert code == 0, err
    assert "had started job" in err and len(hf_jobs.jobs.jobs) == 1
    assert json.loads(out)["images_fetched"] == 4


def test_a_start_that_never_reached_the_hub_is_started_on_resume(hf_jobs, cli, tmp_path):
    hf_jobs.jobs.faults = ["500"]  # nothing was made
    code, out, err = _generate(cli, tmp_path)
    assert code == 5
    code, out, err = cli("resume", "--json", cwd=tmp_path)
    assert code == 0, err
    assert "never started a job" in err and len(hf_jobs.jobs.jobs) == 1


def test_a_job_that_fails_keeps_its_images_and_resume_makes_only_the_rest(hf_jobs, cli, tmp_path):
    hf_jobs.jobs.job_env = [{"IMGGENHUB_ENGINE_FAIL_AFTER": "2"}]
    code, out, err = _generate(cli, tmp_path)
    assert code == 1 and "Job failed with exit code: 1" in err
    assert len(list((tmp_path / "out").glob("*.png"))) == 2 + 1  # and the contact sheet
    code, out, err = cli("resume", "--json", cwd=tmp_path)
    assert code == 0, err
    first, second = sorted(hf_jobs.jobs.jobs.values(), key=lambda j: j.created)
    assert second.spec["labels"]["imggenhub-session"] == "2"
    assert any("2 images with tiny-random" in line for line in second.logs)  # the rest only
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["images"]) == 4


def test_cancel_stops_every_job_of_the_run_and_keeps_what_they_made(hf_jobs, cli, tmp_path):
    import time

    hf_jobs.jobs.image_seconds = 0.5  # 4 images a job: long enough to be stopped midway
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--num-images", "8", "--seed", "3", "--shards", "2", "--out",
                         str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    jobs = list(hf_jobs.jobs.jobs.values())
    assert len(jobs) == 2
    deadline = time.monotonic() + 60  # each job has made an image: there is something to keep
    while not all(any(l.startswith("[imggenhub] image 1/") for l in j.logs) for j in jobs):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    code, out, err = cli("cancel", run_id, "--json", cwd=tmp_path)
    assert code == 0, err
    assert {j.stage for j in jobs} == {"CANCELED"}
    assert json.loads(out)["state"] == "cancelled"
    assert err.count("cancelled job") == 2
    kept = json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]
    assert 2 <= len(kept) < 8  # what they made before the cancel: uploaded as they stopped
    # cancelling again: nothing left to stop, still 0; resume makes the rest
    code, out, err = cli("cancel", run_id, cwd=tmp_path)
    assert code == 0, err
    hf_jobs.jobs.image_seconds = 0.0
    code, out, err = cli("resume", run_id, "--json", cwd=tmp_path)
    assert code == 0, err
    assert len(json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]) == 8


def test_kaggle_cannot_cancel_and_says_so(emulator, cli, tmp_path):
    code, out, err = cli("deploy", "--model", "tiny-random", "-p", "a", "--json", cwd=tmp_path)
    assert code == 0, err
    code, out, err = cli("cancel", cwd=tmp_path)
    assert code == 2 and "Kaggle cannot cancel a run from here; stop it on its page" in err


@pytest.mark.long  # its jobs take seconds on purpose
def test_progress_streams_in_from_each_jobs_live_log_even_when_the_stream_drops(hf_jobs, cli,
                                                                                tmp_path):
    hf_jobs.jobs.image_seconds = 0.8
    hf_jobs.jobs.log_drops = [1]  # the first stream is cut after a line: none said twice
    code, out, err = _generate(cli, tmp_path)
    assert code == 0, err
    for n in (1, 2, 3, 4):
        assert err.count(f"image {n}/4 ") == 1, err
    assert err.index("image 4/4") < err.index("bringing the outputs")  # said as it ran
    assert "it/s]" not in err  # no progress bar of the job's downloads


def test_a_failed_jobs_record_says_the_engines_own_error(hf_jobs, cli, tmp_path):
    hf_jobs.jobs.job_env = [{"IMGGENHUB_ENGINE_FAIL_AFTER": "1"}]
    code, out, err = _generate(cli, tmp_path)
    assert code == 1 and "RuntimeError: injected failure after 1 image" in err


def test_doctor_says_whether_the_account_can_run_jobs(hf_jobs, cli, tmp_path, monkeypatch):
    code, out, err = cli("doctor", "--backend", "hf-jobs", "--json", cwd=tmp_path)
    assert code == 0, err
    report = json.loads(out)
    assert report["signed_in_as"] == DEFAULT_USER and report["can_run_jobs"] is True
    assert report["flavors"]["t4-small"] == 0.4 and "cpu-basic" not in report["flavors"]
    hf_jobs.cannot_pay.add(DEFAULT_USER)
    code, out, err = cli("doctor", "--backend", "hf-jobs", cwd=tmp_path)
    assert code == 4 and "cannot run jobs: the account has no credit" in err
    from .hub_emulator import DEFAULT_READ_TOKEN

    hf_jobs.cannot_pay.clear()
    monkeypatch.setenv("HF_TOKEN", DEFAULT_READ_TOKEN)
    code, out, err = cli("doctor", "--backend", "hf-jobs", cwd=tmp_path)
    assert code == 4 and "the token is read-only" in err and DEFAULT_READ_TOKEN not in out + err


def test_clean_deletes_the_runs_files_on_the_hub_once_its_images_are_home(hf_jobs, cli, tmp_path):
    code, out, err = _generate(cli, tmp_path, "--shards", "2")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    assert f"'imggenhub clean {run_id}' deletes them" in err
    repo = _run_repo(hf_jobs, run_id)  # one for the run: both shards' folders in it
    assert any(p.startswith(f"{run_id}-shard-1-") for p in repo.files)
    assert any(p.startswith(f"{run_id}-shard-2-") for p in repo.files)
    code, out, err = _generate(cli, tmp_path, "--out", str(tmp_path / "other"))  # another run
    assert code == 0, err
    other = json.loads(out)["run_id"]
    code, out, err = cli("clean", run_id, "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["deleted"] == [repo.repo_id]
    assert not [k for k in hf_jobs.repos if run_id in k]  # the repo, history and all
    assert _run_repo(hf_jobs, other).files  # another run's files stay
    assert len(list((tmp_path / "out").glob("0*.png"))) == 4  # the images here are untouched
    code, out, err = cli("clean", run_id, cwd=tmp_path)
    assert code == 0 and "nothing left to delete" in out


def test_clean_refuses_a_run_whose_images_are_not_home(hf_jobs, cli, tmp_path):
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--json", cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    code, out, err = cli("clean", cwd=tmp_path)
    assert code == 6 and "nothing of it is deleted" in err
    repo = _run_repo(hf_jobs, run_id)
    assert any("/s1/in/" in p for p in repo.files)


@pytest.mark.parametrize("moment", [
    pytest.param("uploading the job", marks=pytest.mark.long), "starting the job",
    pytest.param("following the job", marks=pytest.mark.long)])
def test_a_kill_9_at_any_moment_then_resume_starts_no_job_twice(hf_jobs, tmp_path, moment):
    """The CLI killed (SIGKILL: no cleanup) as the Hub receives its inputs, its job's start,
    or its first look at the job; 'resume' then finds what did start by its labels."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from .conftest import run_cli_subprocess

    exe = Path(sys.executable).with_name("imggenhub")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "imggenhub"]
    process = subprocess.Popen(
        [*cmd, "generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
         "--num-images", "2", "--seed", "3", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = threading.Event()
    match = {"uploading the job": lambda m, p: m == "POST" and "/commit/" in p,
             "starting the job": lambda m, p: m == "POST" and p == f"/api/jobs/{DEFAULT_USER}",
             "following the job": lambda m, p: m == "GET" and p.startswith(
                 f"/api/jobs/{DEFAULT_USER}/") and p.count("/") == 4}[moment]

    def kill(method, path):
        if not killed.is_set() and match(method, path):
            killed.set()
            os.kill(process.pid, signal.SIGKILL)

    hf_jobs.on_request = kill
    process.wait(timeout=120)
    hf_jobs.on_request = None
    assert killed.is_set() and process.returncode == -signal.SIGKILL
    done = run_cli_subprocess("resume", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(hf_jobs.jobs.jobs) == 1  # started once, whatever the moment
    assert json.loads(done.stdout)["images_fetched"] == 2


@pytest.mark.long
def test_eight_jobs_with_the_real_engine_make_the_local_backends_files(hub, hf_jobs, cli, tmp_path):
    """The real engine (tiny model, on this CPU) in 8 jobs at once: the same pictures, byte
    for byte, as the local backend makes in one run."""
    hf_jobs.jobs.runner = "engine"
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    flags = ["--model", "tiny-random", *[x for p in prompts for x in ("-p", p)], "--num-images",
             "2", "--seed", "5", "--json"]
    code, out, err = cli("generate", "--backend", "hf-jobs", "--shards", "8", "--out",
                         str(tmp_path / "jobs"), *flags, cwd=tmp_path)
    assert code == 0, err
    code, out, err = cli("generate", "--backend", "local", "--out", str(tmp_path / "here"),
                         *flags, cwd=tmp_path)
    assert code == 0, err
    there = json.loads((tmp_path / "jobs" / "manifest.json").read_text())["images"]
    here = json.loads((tmp_path / "here" / "manifest.json").read_text())["images"]
    assert len(hf_jobs.jobs.jobs) == 8 and len(there) == len(here) == 8
    assert {r["file"]: r["sha256"] for r in there} == {r["file"]: r["sha256"] for r in here}


def test_the_bootstrap_speaks_the_engines_wire():
    from imggenhub.backends.hfjobs import bootstrap
    from imggenhub.engine import ERROR_PREFIX

    assert bootstrap.ERROR_PREFIX == ERROR_PREFIX  # it cannot import the engine: checked here


def test_max_cost_caps_each_jobs_time_so_the_run_cannot_bill_past_it(hf_jobs, cli, tmp_path):
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--flavor", "a10g-small", "--max-cost", "1.2", "--shards", "2",
                         "--num-images", "2", "--json",
                         cwd=tmp_path)
    assert code == 0, err
    assert "each job stops after about 26 min of images" in err
    for job in hf_jobs.jobs.jobs.values():  # two jobs at $1/h bill $1.20 in 36 minutes each
        assert job.spec["timeoutSeconds"] <= 36 * 60
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "b",
                         "--flavor", "h200", "--max-cost", "1", "--shards", "2", "--num-images",
                         "2", cwd=tmp_path)
    assert code == 7 and "less than a job needs to start, load and upload" in err


def test_what_the_hub_holds_beside_the_outputs_is_never_taken_home(hf_jobs, cli, tmp_path):
    """A file in the run's folder on the Hub that its manifest does not list (a claim file,
    a stray dot-file) stays there: only the listed pictures, the manifest and the log come."""
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--out", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    hf_jobs.jobs.wait_all()
    repo = _run_repo(hf_jobs, run_id)
    out_folder = next(p for p in repo.files if p.endswith("/s1/out/manifest.json")).rsplit("/", 1)[0]
    with hf_jobs.lock:
        hf_jobs._commit(repo, "stray", "", DEFAULT_USER, {
            f"{out_folder}/.imggenhub-run.json": b'{"run_id": "someone-else"}',
            f"{out_folder}/notes.txt": b"not an output"}, set(), [])
    code, out, err = cli("resume", run_id, "--json", cwd=tmp_path)
    assert code == 0, err
    claim = json.loads((tmp_path / "out" / ".imggenhub-run.json").read_text())
    assert claim["run_id"] == run_id and not (tmp_path / "out" / "notes.txt").exists()


def test_refused_rates_server_errors_and_an_upload_cut_in_half_lose_nothing(hf_jobs, cli, tmp_path):
    hf_jobs.jobs.status_faults = [429, 503, 429]  # the status polls: retried after a pause
    hf_jobs.commit_faults = ["drop"]  # the first upload (the job's inputs) is cut in half
    code, out, err = _generate(cli, tmp_path)
    assert code == 0, err
    assert "did not answer reading the job's status (HTTP 429); trying again" in err
    assert "did not answer uploading the job" in err
    assert json.loads(out)["images_fetched"] == 4 and len(hf_jobs.jobs.jobs) == 1


def test_a_job_stopped_at_its_time_limit_keeps_what_it_uploaded_and_resume_makes_the_rest(
        hf_jobs, cli, tmp_path):
    import time

    hf_jobs.jobs.image_seconds = 0.5
    hf_jobs.jobs.max_timeout = 2.5  # the Hub stops it before its 4 images are made
    hf_jobs.jobs.grace = 5.0
    code, out, err = _generate(cli, tmp_path)
    assert code == 1 and "Job timeout" in err
    kept = json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]
    assert 1 <= len(kept) < 4
    hf_jobs.jobs.max_timeout = None
    t0 = time.monotonic()
    code, out, err = cli("resume", "--json", cwd=tmp_path)
    assert code == 0, err
    assert len(json.loads((tmp_path / "out" / "manifest.json").read_text())["images"]) == 4
    second = max(hf_jobs.jobs.jobs.values(), key=lambda j: j.created)
    assert any(f"{4 - len(kept)} images with tiny-random" in l or
               f"{4 - len(kept)} image with tiny-random" in l for l in second.logs)
    assert time.monotonic() - t0 < 60


def test_max_cost_counts_what_was_billed_before_resume_starts_another_job(hf_jobs, cli, tmp_path):
    hf_jobs.jobs.image_seconds = 0.5
    hf_jobs.jobs.max_timeout = 2.0  # the first job is stopped: a minute billed, images left
    hf_jobs.jobs.grace = 5.0
    code, out, err = _generate(cli, tmp_path, "--flavor", "a10g-small", "--max-cost", "0.26")
    assert code == 1 and "Job timeout" in err
    hf_jobs.jobs.max_timeout = None
    code, out, err = cli("resume", cwd=tmp_path)
    assert code == 7 and "have billed $0.02 of its --max-cost $0.26" in err
    assert len(hf_jobs.jobs.jobs) == 1  # nothing more was started
    from imggenhub.run import runs

    assert runs.load(None).state.value == "error"  # the refusal changed nothing


def test_local_files_go_once_to_the_runs_dataset_under_their_content(hf_jobs, cli, tmp_path):
    """An init image, a mask and a LoRA file on this machine: uploaded into the run's repo
    once (shards and later sessions find them there), named by their sha256, found and
    checked by the job's engine."""
    import hashlib

    from .test_kaggle_inputs import inputs

    init, m, lora = inputs(tmp_path)
    hf_jobs.jobs.job_env = [{"IMGGENHUB_ENGINE_FAIL_AFTER": "1"}]  # shard 1 stops after an image
    code, out, err = _generate(cli, tmp_path, "--shards", "2", "--init-image", str(init),
                               "--mask-image", str(m), "--strength", "0.5", "--lora", f"{lora}:0.7")
    assert code == 1, err
    run_id = json.loads(out)["run_id"]
    assert err.count("inputs: uploading") == 3  # each file once, for both shards
    code, out, err = cli("resume", run_id, "--json", cwd=tmp_path)
    assert code == 0, err
    assert "inputs: uploading" not in err and json.loads(out)["images_fetched"] == 4
    repo = _run_repo(hf_jobs, run_id)
    shipped = sorted(p.rsplit("/", 1)[1] for p in repo.files if p.startswith("inputs/"))
    assert shipped == sorted(hashlib.sha256(f.read_bytes()).hexdigest() + f.suffix
                             for f in (init, m, lora))
    assert not [p for p in repo.files if "init.png" in p or "style" in p]  # never the user's names
    for job in hf_jobs.jobs.jobs.values():  # and the job document names no path of this machine
        doc = json.loads(repo.files[next(p for p in repo.files if p.endswith("/in/job.json")
                                         and job.spec["environment"]["IMGGENHUB_PREFIX"] in p)])
        assert str(tmp_path) not in json.dumps({k: v for k, v in doc.items() if k != "inputs"})


def test_a_local_file_changed_before_its_upload_is_refused_in_one_sentence(hf_jobs, cli, tmp_path):
    from .test_img2img import picture

    init = picture(tmp_path / "init.png", 1)
    hf_jobs.commit_faults = ["drop"] * 4  # the upload never gets through: nothing started
    code, out, err = _generate(cli, tmp_path, "--init-image", str(init))
    assert code == 5 and not hf_jobs.jobs.jobs, err
    picture(init, 2)
    code, out, err = cli("resume", cwd=tmp_path)
    assert code == 2 and f"The input file {init} changed after this run was made" in err
    assert "Traceback" not in err and not hf_jobs.jobs.jobs


@pytest.mark.long
def test_local_files_through_a_job_of_the_real_engine_make_the_local_backends_files(
        hub, hf_jobs, cli, tmp_path):
    """An init image, a mask and a real LoRA file, shipped to a job of the real engine: the
    same pictures, byte for byte, as the local backend makes with the files in place."""
    from .test_img2img import picture
    from .test_kaggle_inputs import mask
    from .test_lora import make_lora

    hf_jobs.jobs.runner = "engine"
    flags = ["--model", "tiny-random", "--seed", "7", "--steps", "4", "-p", "a fox",
             "--init-image", str(picture(tmp_path / "init.png", 1, size=96)), "--mask-image",
             str(mask(tmp_path / "mask.png")), "--strength", "0.75", "--lora",
             f"{make_lora(tmp_path / 'lora')}:0.8", "--num-images", "2", "--json"]
    code, out, err = cli("generate", "--backend", "hf-jobs", "--out", str(tmp_path / "job"),
                         *flags, cwd=tmp_path)
    assert code == 0, err
    code, out, err = cli("generate", "--backend", "local", "--out", str(tmp_path / "here"),
                         *flags, cwd=tmp_path)
    assert code == 0, err
    there = json.loads((tmp_path / "job" / "manifest.json").read_text())["images"]
    here = json.loads((tmp_path / "here" / "manifest.json").read_text())["images"]
    assert len(there) == len(here) == 2
    assert {r["file"]: r["sha256"] for r in there} == {r["file"]: r["sha256"] for r in here}


def test_a_runs_measured_speed_on_its_flavors_gpu_corrects_the_next_estimate(hf_jobs, cli,
                                                                             tmp_path):
    """The first estimate comes from the T4 table; a run on t4-small (whose engine, the
    stub, records its pictures' seconds on a T4) teaches the history, and the next estimate
    there says so and uses it. A flavor of another GPU keeps the table."""
    from imggenhub.backends.kaggle import estimate
    from imggenhub.config import state_dir

    hf_jobs.jobs.image_seconds = 0.3  # 30 times the tiny table's figure
    code, out, err = _generate(cli, tmp_path)
    assert code == 0, err
    assert "(an estimate from the T4 table, scaled by the GPU's speed)" in err
    (entry,) = estimate.read_history(state_dir())
    assert entry["model"] == "tiny-random" and entry["ratio"] > 2 and " jobs T4" in entry["endpoint"]
    hf_jobs.jobs.image_seconds = 0.0  # the jobs below are only started
    from imggenhub.run import runs

    def deploy(*flags):
        code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "tiny-random", "-p",
                             "x", "--num-images", "100", "--json", *flags, cwd=tmp_path)
        assert code == 0, err
        return err, runs.load(json.loads(out)["run_id"]).estimate_hours

    err, learned = deploy()
    assert "(an estimate from 1 of your runs of tiny-random on T4)" in err
    err, table = deploy("--flavor", "a10g-small")
    assert "(an estimate from the T4 table, scaled by the GPU's speed)" in err
    assert learned > table  # the table is 30 times faster than the stub was
    hf_jobs.jobs.wait_all()
    code, out, err = cli("resume", cwd=tmp_path)  # its pictures' device is not an A10G
    assert code == 0, err
    assert len(estimate.read_history(state_dir())) == 1  # the first t4-small run's only


def test_flux_is_planned_for_the_flavors_cards_before_anything_starts(hf_jobs, cli, tmp_path):
    """The memory plan is made for the flavor's machine (its cards, their memory and
    capability, the host's memory): unquantized FLUX is refused on a T4 in one sentence,
    nothing uploaded or started, and runs in bf16 on an A100."""
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "flux-schnell", "-p", "x",
                         "--quantize", "none", "--flavor", "t4-small", cwd=tmp_path)
    assert code == 2 and "flux unquantized does not fit" in err, err
    assert "(planned for t4-small (1 x T4))" in err and len(err.strip().splitlines()) == 1
    assert not hf_jobs.jobs.jobs and not [k for k in hf_jobs.repos if "imggenhub-" in k]
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "flux-schnell", "-p", "x",
                         "--quantize", "none", "--flavor", "a100-large", cwd=tmp_path)
    assert code == 0, err
    assert "memory plan (flux): replicate, 1 process" in err and "transformer bf16" in err
    assert "(on a100-large (1 x A100))" in err


def test_a_local_file_changed_while_it_is_sent_never_lands_under_its_old_sha(hf_jobs, cli,
                                                                            tmp_path):
    """The file is hashed when the run is made and again as its bytes are sent: changed in
    between, nothing is committed under the old name (which would break every session)."""
    from .conftest import on_stderr
    from .test_img2img import picture

    init = picture(tmp_path / "init.png", 1)
    with on_stderr("inputs: uploading", lambda: picture(init, 2)):
        code, out, err = _generate(cli, tmp_path, "--init-image", str(init))
    assert code == 2 and f"The input file {init} changed after this run was made" in err, err
    assert not hf_jobs.jobs.jobs
    assert not [p for k, r in hf_jobs.repos.items() if "imggenhub-" in k for p in r.files
                if p.startswith("inputs/")]


def test_clean_of_a_run_recorded_when_runs_shared_one_dataset_deletes_its_folder_only(
        hf_jobs, cli, tmp_path):
    from imggenhub.backends.hfjobs.backend import JOB_FILE
    from imggenhub.run import runs

    code, out, err = _generate(cli, tmp_path)
    assert code == 0, err
    run = runs.load(json.loads(out)["run_id"])
    spec = json.loads((run.notebook_dir / JOB_FILE).read_text())
    shared = f"{DEFAULT_USER}/imggenhub-runs"
    spec.update(repo=shared, tag="old-a")  # as a record of the last version wrote it
    spec.pop("gpu")
    (run.notebook_dir / JOB_FILE).write_text(json.dumps(spec))
    repo = hf_jobs.create(shared, "dataset", private=True)
    with hf_jobs.lock:
        hf_jobs._commit(repo, "older runs", "", DEFAULT_USER, {
            "old-a/s1/out/manifest.json": b"{}", "old-b/s1/out/manifest.json": b"{}"}, set(), [])
    code, out, err = cli("clean", run.run_id, "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["deleted"] == [f"{shared}/old-a"]
    assert sorted(hf_jobs.repo(shared, "dataset").files) == [".gitattributes",
                                                             "old-b/s1/out/manifest.json"]
    code, out, err = cli("clean", run.run_id, cwd=tmp_path)
    assert code == 0 and "nothing left to delete" in out
