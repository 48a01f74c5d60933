"""The Kaggle path end to end: imggenhub drives the official client against the local
Kaggle emulator, which runs each pushed notebook with the local runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imggenhub.outputs import artifacts
from imggenhub.run import runs

from .conftest import REPO, kaggle_cli, run_cli_subprocess, write_json


SPEC = ["--model", "tiny-random", "--seed", "7", "-p", "a lighthouse at dusk", "-p", "a red fox",
        "--num-images", "2"]


def shas(folder: Path) -> list[str]:
    return [i["sha256"] for i in artifacts.read_manifest(folder)["images"]]


def test_deploy_poll_download_as_separate_processes(emulator, tmp_path):
    env = {k: os.environ[k] for k in os.environ}
    proc = run_cli_subprocess("deploy", *SPEC, "--kernel-id", "imggenhub/cron-batch",
                              "--no-internet", "--timeout-hours", "2", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    run_id, url = proc.stdout.split()
    assert url.endswith("/code/imggenhub/cron-batch")
    push = next(body for method, body in emulator.calls if method == "SaveKernel")
    assert push["enableInternet"] is False  # sent, and false (absent, Kaggle's default applies)
    assert push["sessionTimeoutSeconds"] == 7200 and push["newTitle"] == "cron batch"
    proc = run_cli_subprocess("poll", cwd=tmp_path, env=env)  # the latest run
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{run_id} complete"
    proc = run_cli_subprocess("download", run_id, "--out", str(tmp_path / "imgs"), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(shas(tmp_path / "imgs")) == 4 and artifacts.verify(tmp_path / "imgs") == []
    assert (tmp_path / "imgs" / "kernel.log").exists()
    # a second download finds everything verified and fetches no image again
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "imgs").glob("*.png")}
    proc = run_cli_subprocess("download", run_id, "--out", str(tmp_path / "imgs"), cwd=tmp_path, env=env)
    assert proc.returncode == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "imgs").glob("*.png")}
    proc = run_cli_subprocess("runs", cwd=tmp_path, env=env)
    assert run_id in proc.stdout and "downloaded" in proc.stdout and "imggenhub/cron-batch v1" in proc.stdout
    assert proc.stdout.splitlines()[0].split()[:4] == ["run", "name", "backend", "state"]
    assert str(tmp_path / "imgs") in proc.stdout  # each run's output folder
    proc = run_cli_subprocess("status", run_id, cwd=tmp_path, env=env)
    assert proc.stdout.split()[:2] == [run_id, "downloaded"]


def test_every_fault_knob_and_the_run_still_ends_verified(emulator, cli, tmp_path):
    emulator.faults.set(rate_limit=2, server_error=2, drop=2, truncate=3, gpu_cap=1, slow=0.05,
                        only=["GetKernelSessionStatus", "ListKernelSessionOutput"])
    code, out, err = cli("generate", *SPEC, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 0, err
    assert artifacts.verify(tmp_path / "out") == [] and len(shas(tmp_path / "out")) == 4
    fired = emulator.faults.fired
    for knob in ("rate_limit", "server_error", "drop", "truncate", "gpu_cap"):
        assert fired.get(knob), knob
    assert "Maximum batch GPU session count of 2 reached; waiting" in err
    assert "HTTP 429; retry" in err and "HTTP 503; retry" in err
    pushes = [m for m, _ in emulator.calls if m == "SaveKernel"]
    assert len(emulator.versions("imggenhub/imggenhub-batch")) == 1  # one version made
    assert len(pushes) == 2  # the GPU-cap answer, then the push that went through


def test_a_push_is_retried_on_429_but_not_after_a_dropped_connection(emulator, cli, tmp_path):
    emulator.faults.set(rate_limit=2, only=["SaveKernel"])
    code, out, err = cli("deploy", *SPEC, cwd=tmp_path)
    assert code == 0, err
    assert err.count("HTTP 429; retry") == 2
    emulator.faults.set(drop=1)
    code, out, err = cli("deploy", *SPEC)
    assert code == 5 and "may or may not have reached Kaggle" in err
    assert runs.load().state.value == "push-unknown"
    assert len([m for m, _ in emulator.calls if m == "SaveKernel"]) == 4  # 3 + 1, never repeated
    emulator.wait_idle()


def test_status_is_of_the_pushed_version_not_the_previous_run(emulator, cli, tmp_path):
    code, _, err = cli("generate", "--model", "tiny-random", "--seed", "1", "-p", "first run",
                       "--out", str(tmp_path / "one"), cwd=tmp_path)
    assert code == 0, err
    emulator.faults.set(stale_status=100)  # unversioned status would describe v1 (COMPLETE)
    code, _, err = cli("generate", "--model", "tiny-random", "--seed", "1", "-p", "second run",
                       "--out", str(tmp_path / "two"))
    assert code == 0, err
    assert [i["prompt"] for i in artifacts.read_manifest(tmp_path / "two")["images"]] == ["second run"]
    assert runs.load().version == 2


def test_a_failing_notebook_exits_1_with_kaggles_message_and_the_traceback(emulator, cli, tmp_path):
    emulator.faults.set(fail_notebook=True)
    code, out, err = cli("generate", *SPEC, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 1
    assert "Kaggle reports error for imggenhub/imggenhub-batch v1: Your notebook hit an unhandled " \
           "error while executing" in err
    assert "RuntimeError: imggenhub engine failed: RuntimeError: injected failure after 1 image" in err
    assert "Traceback (most recent call last)" not in err.split("Error:")[-1]
    # what was finished is kept and verified
    assert len(shas(tmp_path / "out")) == 1 and artifacts.verify(tmp_path / "out") == []
    # resume pushes a new session for the rest, after saying why the last one failed
    saves = lambda: len(emulator.kernels["imggenhub/imggenhub-batch"])  # noqa: E731  (versions)
    code, out, err = cli("resume", cwd=tmp_path)
    assert code == 1 and saves() == 2, err
    assert "session 1 of run" in err and "ended error (" in err and "injected failure" in err
    assert "session 2 of run" in err and "the 3 images still to make" in err
    assert len(shas(tmp_path / "out")) == 2  # the second session's one image came home too
    # the same failure twice: not pushed a third time without --force
    code, out, err = cli("resume", cwd=tmp_path)
    assert code == 1 and saves() == 2, err
    assert "failed the same way twice" in err.splitlines()[-1] and "--force" in err
    emulator.faults.set(fail_notebook=False)  # the cause fixed
    code, out, err = cli("resume", "--force", cwd=tmp_path)
    assert code == 0 and saves() == 3, err
    assert len(shas(tmp_path / "out")) == 4 and artifacts.verify(tmp_path / "out") == []


def test_push_errors_show_the_servers_text_and_exit_non_zero(emulator, cli, tmp_path):
    code, out, err = cli("deploy", *SPEC, "--kernel-id", "someoneelse/their-kernel", cwd=tmp_path)
    assert code == 1
    assert err.strip().splitlines()[-1] == ("Error: Kaggle refused the push of someoneelse/their-kernel: You cannot "
                           "push to someoneelse's notebooks.")
    template = tmp_path / "kernel-metadata.json"
    template.write_text(json.dumps({"id": "imggenhub/with-data", "title": "with data",
                                    "dataset_sources": ["nobody/missing-data"]}))
    code, out, err = cli("deploy", *SPEC)
    assert code == 1 and "invalid dataset sources: nobody/missing-data" in err


def test_bad_credentials_are_not_retried(emulator, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    code, out, err = cli("deploy", *SPEC, cwd=tmp_path)
    assert code == 4 and "rejected the credentials" in err and "(HTTP 401)" in err
    assert len([m for m, _ in emulator.calls if m == "SaveKernel"]) == 1
    assert "wrong" not in err


def test_poll_timeout_exits_3_and_poll_later_picks_it_up(emulator, cli, tmp_path):
    emulator.queue_seconds = 60  # queued until lowered below, however slow this machine is
    code, out, err = cli("deploy", *SPEC, cwd=tmp_path)
    assert code == 0, err
    code, out, err = cli("poll", "--timeout", "0.5")
    assert code == 3 and "still queued" in err
    emulator.queue_seconds = 0.1
    code, out, err = cli("poll")
    assert code == 0 and out.strip().endswith("complete")


def test_download_refuses_escaping_names_and_resumes_after_a_broken_download(emulator, cli, tmp_path,
                                                                            monkeypatch):
    code, out, err = cli("deploy", *SPEC, cwd=tmp_path)
    assert code == 0, err
    assert cli("poll")[0] == 0
    emulator.faults.set(extra_names=["output/../../escape.png"])
    code, out, err = cli("download", "--out", str(tmp_path / "imgs"))
    assert code == 1 and "Refusing the output file name 'output/../../escape.png'" in err
    assert not (tmp_path / "escape.png").exists()
    emulator.faults.set(extra_names=[], truncate=50)  # more than the retries: the download fails
    monkeypatch.setenv("IMGGENHUB_DOWNLOAD_WORKERS", "1")
    code, out, err = cli("download", "--out", str(tmp_path / "imgs"))
    assert code == 5 and "The transfer kept breaking off while downloading" in err
    assert not list((tmp_path / "imgs").rglob("*.part"))
    emulator.faults.set(truncate=0)
    code, out, err = cli("download", "--out", str(tmp_path / "imgs"))
    assert code == 0, err
    assert artifacts.verify(tmp_path / "imgs") == [] and len(shas(tmp_path / "imgs")) == 4


def test_the_unmodified_kaggle_cli_pushes_polls_and_downloads(emulator, cli, tmp_path):
    code, out, err = cli("render", *SPEC, "--out", str(tmp_path / "job"), "--kernel-id",
                         "imggenhub/from-cli", cwd=tmp_path)
    assert code == 0, err
    env = {**os.environ, "HTTP_PROXY": emulator.url, "http_proxy": emulator.url}
    proc = kaggle_cli(["kernels", "push", "-p", str(tmp_path / "job")], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Kernel version 1 successfully pushed" in proc.stdout
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        proc = kaggle_cli(["kernels", "status", "imggenhub/from-cli"], env, tmp_path)
        assert proc.returncode == 0, proc.stderr
        if "COMPLETE" in proc.stdout:
            break
        time.sleep(0.5)
    assert 'imggenhub/from-cli has status "KernelWorkerStatus.COMPLETE"' in proc.stdout
    proc = kaggle_cli(["kernels", "output", "imggenhub/from-cli", "-p", str(tmp_path / "dl")], env,
                      tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Output file downloaded to" in proc.stdout
    assert artifacts.verify(tmp_path / "dl" / "output") == []
    assert (tmp_path / "dl" / "from-cli.log").exists()
    # and what imggenhub deploy pushes is the same notebook the kaggle CLI pushed
    pushed = [b for m, b in emulator.calls if m == "SaveKernel"]
    assert json.loads(pushed[0]["text"])["cells"][1]["source"].startswith("# The job, as data")


def test_dataset_upload_endpoints_and_a_kernel_that_uses_the_dataset(emulator, cli, tmp_path):
    import requests
    from kagglesdk.blobs.types.blob_api_service import ApiBlobType, ApiStartBlobUploadRequest
    from kagglesdk.datasets.types.dataset_api_service import (ApiCreateDatasetRequest,
                                                              ApiDatasetNewFile,
                                                              ApiGetDatasetStatusRequest)

    from imggenhub.config import tunables
    from imggenhub.backends.kaggle.api import make_client

    client = make_client(tunables())
    status = ApiGetDatasetStatusRequest()
    status.owner_slug, status.dataset_slug = "imggenhub", "inputs"
    with pytest.raises(requests.HTTPError):
        client.datasets.dataset_api_client.get_dataset_status(status)
    start = ApiStartBlobUploadRequest()
    start.type, start.name, start.content_length = ApiBlobType.DATASET, "init.png", 4
    start.last_modified_epoch_seconds = int(time.time())
    upload = client.blobs.blob_api_client.start_blob_upload(start)
    assert requests.put(upload.create_url, data=b"\x89PNG").status_code == 200
    create = ApiCreateDatasetRequest()
    create.owner_slug, create.slug, create.title = "imggenhub", "inputs", "imggenhub inputs"
    create.license_name = "CC0-1.0"
    new_file = ApiDatasetNewFile()
    new_file.token = upload.token
    create.files = [new_file]
    assert not client.datasets.dataset_api_client.create_dataset(create).error
    assert client.datasets.dataset_api_client.get_dataset_status(status).status.name == "READY"
    template = tmp_path / "kernel-metadata.json"
    template.write_text(json.dumps({"id": "imggenhub/with-data", "title": "with data",
                                    "dataset_sources": ["imggenhub/inputs"]}))
    code, out, err = cli("deploy", *SPEC, cwd=tmp_path)
    assert code == 0, err


def test_doctor_names_the_credential_never_the_secret(emulator, cli, tmp_path, monkeypatch):
    code, out, err = cli("doctor")
    assert code == 0, err
    assert "KAGGLE_USERNAME/KAGGLE_KEY" in out and "signed in as imggenhub" in out
    assert emulator.key not in out + err
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", emulator.token)
    code, out, err = cli("doctor")
    assert code == 0 and "KAGGLE_API_TOKEN (token)" in out and emulator.token not in out + err
    code, out, err = cli("doctor", "--json")  # fields, not free text
    data = json.loads(out)
    assert data["credential"] == {"source": "KAGGLE_API_TOKEN", "kind": "token", "username": None}
    assert data["api_url"] == emulator.url and data["signed_in_as"] == "imggenhub"
    assert data["quota"]["gpu_hours_total"] == 30.0 and emulator.token not in out + err
    emulator.stop()  # no answer: it still says which credential it tried, and where
    code, out, err = cli("doctor", "--timeout", "1")
    assert code == 5 and "credential: KAGGLE_API_TOKEN (token)" in err
    assert f"Could not reach Kaggle at {emulator.url} while" in err.splitlines()[-1]
    code, out, err = cli("doctor", "--timeout", "1", "--json")
    data = json.loads(out)
    assert data["exit_code"] == 5 and data["api_url"] == emulator.url
    assert data["credential"]["kind"] == "token" and data["signed_in_as"] is None
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text('{"username": "u"}')
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, out, err = cli("doctor")
    assert code == 4 and "No Kaggle credentials found" in err.splitlines()[-1]
    assert "looked at KAGGLE_API_TOKEN: not set" in err
    assert f"looked at {tmp_path}/home/.kaggle/kaggle.json: found, without key" in err
    code, out, err = cli("doctor", "--json")
    data = json.loads(out)
    assert data["exit_code"] == 4 and data["credential"] is None
    assert {"where": "KAGGLE_KEY", "found": "not set"} in data["looked_at"]


def test_the_emulator_serves_get_kernel_list_kernels_and_quota(emulator, cli, tmp_path):
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest, ApiListKernelsRequest

    from imggenhub.config import tunables
    from imggenhub.backends.kaggle.api import make_client

    assert cli("deploy", *SPEC, cwd=tmp_path)[0] == 0
    api = make_client(tunables()).kernels.kernels_api_client
    req = ApiGetKernelRequest()
    req.user_name, req.kernel_slug = "imggenhub", "imggenhub-batch"
    kernel = api.get_kernel(req)
    assert kernel.metadata.current_version_number == 1 and "JOB_JSON" in kernel.blob.source
    assert [k.ref for k in api.list_kernels(ApiListKernelsRequest()).kernels] == ["imggenhub/imggenhub-batch"]
    emulator.wait_idle()


def test_the_emulator_runs_from_the_command_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tests.kaggle_emulator", "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Kaggle emulator ready at http://127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_no_gpu_pushes_a_cpu_kernel(emulator, cli, tmp_path):
    code, out, err = cli("deploy", *SPEC, "--no-gpu", cwd=tmp_path)
    assert code == 0, err
    push = next(body for method, body in emulator.calls if method == "SaveKernel")
    assert push["enableGpu"] is False and "machineShape" not in push  # sent, and false
    import ast

    source = json.loads(push["text"])["cells"][1]["source"]
    doc = json.loads(ast.literal_eval(source.split("JOB_JSON = ", 1)[1]))
    assert doc["gpu"] is False


def test_download_fetches_again_what_was_deleted_since_whatever_the_record_says(emulator, cli,
                                                                               tmp_path):
    """A downloaded run whose folder lost an image (and another one cut short) since:
    download checks the folder against the manifest and fetches what is missing, exit 0,
    the folder whole and verified again; a whole folder is not fetched again."""
    code, out, err = cli("generate", *SPEC, "--json", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    first, second = sorted((tmp_path / "o").glob("0*.png"))[:2]
    first.unlink()
    second.write_bytes(second.read_bytes()[:10])
    code, out, err = cli("download", run_id, cwd=tmp_path)
    assert code == 0, err
    assert "2 of its files are missing or changed" in err
    assert artifacts.verify(tmp_path / "o") == [] and runs.load(run_id).state.value == "downloaded"
    listed = sum(1 for m, _ in emulator.calls if m == "ListKernelSessionOutput")
    code, out, err = cli("download", run_id, cwd=tmp_path)
    assert code == 0 and "missing or changed" not in err
    assert sum(1 for m, _ in emulator.calls if m == "ListKernelSessionOutput") == listed


def test_models_a_kernel_cannot_load_are_refused_before_the_push(emulator, cli, tmp_path):
    """tiny-shapes' weights ship with imggenhub and a folder on this machine is not on
    Kaggle: both are one sentence and exit 2, and nothing is pushed."""
    made = lambda: len(emulator.kernels.get("imggenhub/imggenhub-batch", []))  # noqa: E731
    code, out, err = cli("deploy", "--model", "tiny-shapes", "-p", "a red circle", cwd=tmp_path)
    assert code == 2 and made() == 0, err
    assert err.strip().splitlines()[-1] == (
        "Error: --model tiny-shapes ships with imggenhub and runs on this machine only for now "
        "(--backend local); a Kaggle kernel cannot load it yet.")
    folder = tmp_path / "my-model"
    folder.mkdir()
    write_json(folder / "model_index.json", {"_class_name": "StableDiffusionPipeline"})
    code, out, err = cli("deploy", "--model", str(folder), "-p", "a red circle", cwd=tmp_path)
    assert code == 2 and made() == 0 and "is a folder on this machine" in err, err
    code, out, err = cli("deploy", *SPEC, "--sweep", "model=tiny-random,tiny-shapes", cwd=tmp_path)
    assert code == 2 and made() == 0 and "--sweep model tiny-shapes ships" in err, err
