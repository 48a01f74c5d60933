"""The Kaggle emulator itself: the stub runner, its fidelity to what the unmodified kaggle
CLI expects, its command line, and each hostile-server knob at the HTTP level."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from imggenhub.outputs import artifacts

from .conftest import REPO, kaggle_cli, sigint_default
from .kaggle_emulator import ENDLESS_MAX, JUNK, TRICKLE_MAX_BYTES, Emulator, main

REF = "imggenhub/stub-test"
KAGGLE_FAILURE = "Your notebook hit an unhandled error while executing"


# --- helpers ------------------------------------------------------------------------

def job_document(prompts=("a", "b"), run_id="run-0001", **settings) -> dict:
    from imggenhub.job import resolve, spec

    job = resolve.build_job(spec.parse_settings(model="tiny-random", seed=1, **settings),
                            spec.prompts_from_flags(list(prompts)))
    return {**job.document(), "run_id": run_id}


def notebook_text(doc: dict | None = None, cells: list[dict] | None = None) -> str:
    if cells is None:
        cells = [{"cell_type": "markdown", "metadata": {}, "source": "# an imggenhub job"},
                 {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]},
                  "outputs": [], "source": "JOB_JSON = " + repr(json.dumps(doc))}]
    cells = [{"id": f"cell-{i}", **cell} for i, cell in enumerate(cells)]
    return json.dumps({"cells": cells, "metadata": {"kernelspec": {
        "display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5})


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # straight to the emulator, whatever proxy the environment names
    return s


def api(em: Emulator, method: str, body: dict, service: str = "kernels.KernelsApiService"):
    return session().post(f"{em.url}/api/v1/{service}/{method}", json=body,
                          auth=(em.username, em.key), timeout=10)


def push(em: Emulator, text: str, ref: str = REF, **extra) -> int:
    resp = api(em, "SaveKernel", {"slug": ref, "newTitle": "stub test", "text": text,
                                  "language": "python", "kernelType": "notebook", **extra})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert not data.get("error"), data
    return data["versionNumber"]


def status(em: Emulator, number: int, ref: str = REF) -> dict:
    owner, slug = ref.split("/")
    return api(em, "GetKernelSessionStatus", {"userName": owner, "kernelSlug": slug,
                                              "versionLabel": f"v{number}"}).json()


def wait_for(em: Emulator, number: int, want=("COMPLETE", "ERROR"), ref: str = REF,
             timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = status(em, number, ref)
        if data.get("status") in want:
            return data
        assert time.monotonic() < deadline, f"still {data} after {timeout}s"
        time.sleep(0.01)


def list_output(em: Emulator, number: int, ref: str = REF, page_size: int = 500,
                max_pages: int = 20) -> tuple[list[dict], str]:
    owner, slug = ref.split("/")
    files, log, token = [], "", ""
    for _ in range(max_pages):
        body = {"userName": owner, "kernelSlug": slug, "versionLabel": f"v{number}",
                "pageSize": page_size}
        if token:
            body["pageToken"] = token
        data = api(em, "ListKernelSessionOutput", body).json()
        files += data["files"]
        log = log or data.get("log", "")
        token = data.get("nextPageToken")
        if not token:
            return files, log
    raise AssertionError(f"more than {max_pages} pages")


def download(em: Emulator, number: int, dest: Path, ref: str = REF) -> list[str]:
    files, _ = list_output(em, number, ref)
    s = session()
    for f in files:
        path = dest / artifacts.safe_relative(f["fileName"])
        path.parent.mkdir(parents=True, exist_ok=True)
        resp = s.get(f["url"], timeout=10)
        assert resp.status_code == 200
        path.write_bytes(resp.content)
    return [f["fileName"] for f in files]


def log_entries(log: str) -> list[dict]:
    return json.loads(log) if log else []


def kaggle_env(em: Emulator) -> dict:
    return {**os.environ, "HTTP_PROXY": em.url, "http_proxy": em.url,
            "KAGGLE_USERNAME": em.username, "KAGGLE_KEY": em.key}


@pytest.fixture
def em():
    emulator = Emulator(queue_seconds=0.0)
    emulator.start()
    yield emulator
    emulator.stop(timeout=10)


@pytest.fixture
def done(em):
    """A finished stub run of 4 images: (emulator, version number, listed files by name)."""
    number = push(em, notebook_text(job_document(num_images=2)))
    assert wait_for(em, number)["status"] == "COMPLETE"
    files, _ = list_output(em, number)
    return em, number, {f["fileName"]: f["url"] for f in files}


def real_bytes(em: Emulator, number: int, name: str) -> bytes:
    return (em.versions(REF)[number - 1].workdir / name).read_bytes()


# --- the stub runner ------------------------------------------------------------------

def test_the_stub_is_the_default_and_its_outputs_verify(em, tmp_path):
    assert em.runner == "stub" and em.image_seconds == 0.0
    doc = job_document(num_images=2, run_id="run-stub-1")
    t0 = time.monotonic()
    number = push(em, notebook_text(doc))
    assert wait_for(em, number)["status"] == "COMPLETE"
    assert time.monotonic() - t0 < 2
    names = download(em, number, tmp_path / "dl")
    assert "output/manifest.json" in names and "imggenhub_job.json" in names
    assert not [n for n in names if "/.parts/" in n or n.endswith(".tmp")]
    out = tmp_path / "dl" / "output"
    assert artifacts.verify(out) == []
    manifest = artifacts.read_manifest(out)
    assert manifest["planned_images"] == 4 and manifest["complete"] is True
    assert manifest["run_id"] == "run-stub-1" and manifest["job_id"] == doc["job_id"]
    assert manifest["processes"][0]["device"] == "Tesla T4 (emulated)" and manifest["processes_total"] == 1
    assert [i["file"] for i in manifest["images"]] == ["0001-a.png", "0002-a.png", "0003-b.png",
                                                       "0004-b.png"]
    assert [i["seed"] for i in manifest["images"]] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "dl" / "imggenhub_job.json").read_text()) == doc
    version = em.versions(REF)[0]
    assert version.runner == "stub" and version.job == doc
    text = "".join(e["data"] for e in version.log)
    assert re.search(r"^\[imggenhub\] image 1/4 0001-a\.png in \d+\.\d\ds \(elapsed \d+\.\ds\)$",
                     text, re.M)
    assert re.search(r"^\[imggenhub\] done: 4 images in \d+\.\ds$", text, re.M)
    # the engine's %%writefile cell is honoured like the notebook does it
    cells = json.loads(notebook_text(doc))["cells"]
    cells.insert(2, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": "%%writefile imggenhub_engine.py\nprint('engine')\n"})
    number = push(em, notebook_text(cells=cells))
    assert wait_for(em, number)["status"] == "COMPLETE"
    assert (em.versions(REF)[1].workdir / "imggenhub_engine.py").read_text() == "print('engine')\n"


def test_image_seconds_paces_the_stub(em):
    em.image_seconds = 0.1
    number = push(em, notebook_text(job_document(num_images=2)))
    assert wait_for(em, number)["status"] == "COMPLETE"
    # the run's own clock, from RUNNING to its end: 4 images at 0.1 s at least (a poll for
    # RUNNING from here may come only after the end on a busy machine)
    version = em.versions(REF)[number - 1]
    assert version.finished - version.running_since >= 4 * 0.1


def test_fail_notebook_gives_error_and_keeps_one_image(em, tmp_path):
    em.faults.set(fail_notebook=True)
    number = push(em, notebook_text(job_document(num_images=2)))
    data = wait_for(em, number)
    assert data == {"status": "ERROR", "failureMessage": KAGGLE_FAILURE}
    _, log = list_output(em, number)
    entries = log_entries(log)
    lines = [e["data"] for e in entries]
    for line in ("Traceback (most recent call last):\n",
                 "RuntimeError: injected failure after 1 image\n",
                 "[imggenhub] error: RuntimeError: injected failure after 1 image\n"):
        assert line in lines
    last = entries[-1]
    assert last == {**last, "stream_name": "stderr", "data": "RuntimeError: imggenhub engine "
                    "failed: RuntimeError: injected failure after 1 image\n"}
    download(em, number, tmp_path / "dl")
    manifest = artifacts.read_manifest(tmp_path / "dl" / "output")
    assert len(manifest["images"]) == 1 and manifest["complete"] is False
    assert manifest["planned_images"] == 4
    assert artifacts.verify(tmp_path / "dl" / "output") == []


def test_a_bad_job_cell_is_an_error_not_a_hang(em):
    number = push(em, notebook_text(cells=[{"cell_type": "code", "metadata": {}, "outputs": [],
                                            "source": "JOB_JSON = '{}'\nimport os"}]))
    assert wait_for(em, number) == {"status": "ERROR", "failureMessage": KAGGLE_FAILURE}
    number = push(em, notebook_text(cells=[{"cell_type": "code", "metadata": {}, "outputs": [],
                                            "source": "JOB_JSON = '{}'"}]))  # no prompts
    assert wait_for(em, number)["status"] == "ERROR"


def test_cancel_stops_after_the_current_image(em, tmp_path):
    em.hold_image = 2  # the run waits in image 2 until the cancel: no race with its clock
    number = push(em, notebook_text(job_document(num_images=2)))
    version = em.versions(REF)[0]
    assert em.held.wait(60)
    assert any("image 1/4" in e["data"] for e in list(version.log))
    assert em.cancel(REF, number) == "CANCEL_ACKNOWLEDGED"  # during image 2
    assert status(em, number) == {"status": "CANCEL_ACKNOWLEDGED"}
    download(em, number, tmp_path / "dl")
    manifest = artifacts.read_manifest(tmp_path / "dl" / "output")
    assert len(manifest["images"]) == 2 and manifest["complete"] is False
    assert artifacts.verify(tmp_path / "dl" / "output") == []
    # a queued version is cancelled before it runs; an ended one is left alone
    em.queue_seconds = 60
    number = push(em, notebook_text(job_document()))
    t0 = time.monotonic()
    assert em.cancel(REF) == "CANCEL_ACKNOWLEDGED" and time.monotonic() - t0 < 10
    assert list_output(em, number)[0] == []
    assert em.cancel(REF, 1) == "CANCEL_ACKNOWLEDGED"
    em.queue_seconds, em.hold_image = 0, None
    number = push(em, notebook_text(job_document()))
    wait_for(em, number)
    assert em.cancel(REF, number) == "COMPLETE"


@pytest.mark.slow
def test_a_notebook_without_a_job_cell_runs_in_a_real_kernel(em):
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
              "source": "import pathlib\nprint('hello from a kernel')\n"
                        "pathlib.Path('bench.txt').write_text('ok')"}]
    number = push(em, notebook_text(cells=cells))
    assert wait_for(em, number, timeout=120)["status"] == "COMPLETE"
    files, log = list_output(em, number)
    assert [f["fileName"] for f in files] == ["bench.txt"]
    assert "hello from a kernel" in "".join(e["data"] for e in log_entries(log))
    assert em.versions(REF)[0].runner == "notebook"


# --- fidelity to the unmodified kaggle CLI -------------------------------------------------

def test_kaggle_kernels_pull_writes_slug_ipynb_and_metadata(em, tmp_path):
    text1 = notebook_text(job_document(prompts=("first",)))
    text2 = notebook_text(job_document(prompts=("second",)))
    push(em, text1, enableGpu=False, datasetDataSources=[])
    push(em, text2)
    env = kaggle_env(em)
    proc = kaggle_cli(["kernels", "pull", REF, "-p", str(tmp_path / "pull")], env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (tmp_path / "pull" / "stub-test.ipynb").read_text() == text2
    proc = kaggle_cli(["kernels", "pull", REF, "-p", str(tmp_path / "meta"), "-m"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Source code and metadata downloaded to" in proc.stdout
    meta = json.loads((tmp_path / "meta" / "kernel-metadata.json").read_text())
    assert meta["id"] == REF and meta["id_no"] == em.kernel_id(REF)
    assert meta["code_file"] == "stub-test.ipynb" and meta["title"] == "stub test"
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert (tmp_path / "meta" / "stub-test.ipynb").exists()
    # OWNER/SLUG/N pulls version N (the CLI sends kernelSlug "SLUG/N")
    proc = kaggle_cli(["kernels", "pull", REF + "/1", "-p", str(tmp_path / "v1")], env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (tmp_path / "v1" / "stub-test.ipynb").read_text() == text1


def test_kaggle_kernels_files_lists_the_outputs_with_paging(done, tmp_path):
    em, number, listed = done
    env = kaggle_env(em)
    proc = kaggle_cli(["kernels", "files", REF], env, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "creationDate" in proc.stdout.splitlines()[0]
    for name in listed:
        assert name in proc.stdout
    size = real_bytes(em, number, "output/manifest.json").__len__()
    assert any(line.split()[:2] == ["output/manifest.json", str(size)]
               for line in proc.stdout.splitlines())
    proc = kaggle_cli(["kernels", "files", REF, "--page-size", "2"], env, tmp_path)
    assert proc.returncode == 0 and "Next Page Token = 2" in proc.stdout
    proc = kaggle_cli(["kernels", "files", REF, "--page-size", "2", "--page-token", "6"], env,
                      tmp_path)
    assert proc.returncode == 0 and "Next Page Token" not in proc.stdout
    # straight over HTTP: every page together is the whole list, each name once
    names, token = [], None
    for _ in range(10):
        body = {"userName": "imggenhub", "kernelSlug": "stub-test", "pageSize": 3,
                **({"pageToken": token} if token else {})}
        data = api(em, "ListKernelFiles", body).json()
        names += [f["name"] for f in data["files"]]
        assert all(f["creationDate"].endswith("Z") and f["size"] > 0 for f in data["files"])
        token = data.get("nextPageToken")
        if not token:
            break
    assert sorted(names) == sorted(listed)


# --- the command line ---------------------------------------------------------------------

def run_module(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "tests.kaggle_emulator", *args], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs, preexec_fn=sigint_default)


def test_a_busy_port_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_module("--port", str(port), env={"TMPDIR": str(tmp_path)})
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out == "" and len(err.splitlines()) == 1, err
    assert "in use" in err and "--port" in err and str(port) in err
    assert list(tmp_path.iterdir()) == []  # its temporary folder went too


def test_stop_removes_the_temporary_folder(em):
    push(em, notebook_text(job_document()))
    em.wait_idle(60)
    assert any(em.root.rglob("*.png"))
    em.stop()
    assert not em.root.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_command_line_emulator_cleans_up_when_stopped(tmp_path, sig):
    proc = run_module("--port", "0", "--runner", "stub", "--queue-seconds", "0",
                      env={"TMPDIR": str(tmp_path)})
    try:
        line = proc.stdout.readline()
        assert line.startswith("Kaggle emulator ready at http://127.0.0.1:"), line
        url = line.split()[4]
        em = SimpleNamespace(url=url, username="imggenhub", key="emulator-key")
        number = push(em, notebook_text(job_document()))
        wait_for(em, number)
        assert [p.name for p in tmp_path.iterdir()][0].startswith("kaggle-emulator-")
        assert any(tmp_path.rglob("manifest.json"))
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_help_names_the_counter_knobs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--drop-after", "--oversize", "--corrupt", "--endless-body", "--trickle",
                 "--endless-pages", "--runner", "--image-seconds"):
        assert flag in text


# --- hostile knobs ------------------------------------------------------------------------

def test_drop_after_handles_the_push_but_never_answers(em):
    em.faults.set(drop_after=1, only=["SaveKernel"])
    with pytest.raises(requests.ConnectionError):
        api(em, "SaveKernel", {"slug": REF, "newTitle": "stub test", "language": "python",
                               "kernelType": "notebook", "text": notebook_text(job_document())})
    assert len(em.versions(REF)) == 1 and em.faults.fired == {"drop_after": 1}
    assert wait_for(em, 1)["status"] == "COMPLETE"  # the push did happen
    assert push(em, notebook_text(job_document())) == 2  # only the next N


def test_oversize_sends_a_mebibyte_of_junk_more(done):
    em, number, listed = done
    em.faults.set(oversize=1)
    name = "output/0001-a.png"
    resp = session().get(listed[name], timeout=10)
    real = real_bytes(em, number, name)
    assert len(resp.content) == len(real) + JUNK == int(resp.headers["Content-Length"])
    assert resp.content.startswith(real) and em.faults.fired == {"oversize": 1}
    assert session().get(listed[name], timeout=10).content == real


def test_corrupt_flips_one_byte(done):
    em, number, listed = done
    em.faults.set(corrupt=1)
    name = "output/0002-a.png"
    got = session().get(listed[name], timeout=10).content
    real = real_bytes(em, number, name)
    assert len(got) == len(real) and sum(a != b for a, b in zip(got, real)) == 1
    assert session().get(listed[name], timeout=10).content == real


def test_content_faults_spare_the_manifest(done):
    em, number, listed = done
    em.faults.set(oversize=1, corrupt=1, endless_body=1)
    name = "output/manifest.json"
    for _ in range(3):
        assert session().get(listed[name], timeout=10).content == real_bytes(em, number, name)
    assert em.faults.fired == {} and em.faults.oversize == em.faults.corrupt == 1


def test_endless_pages_always_offers_another_page(done):
    em, number, listed = done
    em.faults.set(endless_pages=True)
    body = {"userName": "imggenhub", "kernelSlug": "stub-test", "versionLabel": f"v{number}",
            "pageSize": 500}
    tokens = []
    for _ in range(5):
        data = api(em, "ListKernelSessionOutput", body).json()
        assert sorted(f["fileName"] for f in data["files"]) == sorted(listed)
        tokens.append(data["nextPageToken"])
        body["pageToken"] = data["nextPageToken"]
    assert len(set(tokens)) == 5 and em.faults.fired["endless_pages"] == 5


def test_manifest_body_replaces_every_manifest(done):
    em, number, listed = done
    em.faults.set(manifest_body=b'{"images": [{"file": "../evil"}]}')
    s = session()
    assert s.get(listed["output/manifest.json"], timeout=10).content == \
        b'{"images": [{"file": "../evil"}]}'
    assert s.get(listed["output/0001-a.png"], timeout=10).content == \
        real_bytes(em, number, "output/0001-a.png")
    em.faults.set(manifest_body=None)
    assert s.get(listed["output/manifest.json"], timeout=10).content == \
        real_bytes(em, number, "output/manifest.json")


def test_endless_body_streams_junk_without_a_length_and_stops_by_itself(done):
    em, number, listed = done
    em.faults.set(endless_body=2)
    with session().get(listed["output/0001-a.png"], stream=True, timeout=10) as resp:
        assert "Content-Length" not in resp.headers
        got = 0
        for chunk in resp.iter_content(1 << 16):
            got += len(chunk)
            if got >= 4 << 20:
                break  # the client goes away
    assert got >= 4 << 20
    t0 = time.monotonic()
    with session().get(listed["output/0001-a.png"], stream=True, timeout=10) as resp:
        total = sum(len(c) for c in resp.iter_content(1 << 20))
    assert total == ENDLESS_MAX and time.monotonic() - t0 < 30
    assert em.faults.fired == {"endless_body": 2}
    name = "output/0001-a.png"
    assert session().get(listed[name], timeout=10).content == real_bytes(em, number, name)


def test_trickle_sends_one_byte_at_a_time_then_stops(done):
    em, number, listed = done
    em.faults.set(trickle=0.005)
    name = "output/manifest.json"
    real = real_bytes(em, number, name)
    assert len(real) > TRICKLE_MAX_BYTES
    t0 = time.monotonic()
    got = b""
    with session().get(listed[name], stream=True, timeout=10) as resp:
        assert int(resp.headers["Content-Length"]) == len(real)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in resp.iter_content(1):
                got += chunk
    assert got == real[:TRICKLE_MAX_BYTES]
    assert time.monotonic() - t0 >= (TRICKLE_MAX_BYTES - 1) * 0.005
    assert em.faults.fired == {"trickle": 1}


def test_extra_names_can_be_nul_absolute_or_no_file(done):
    em, number, listed = done
    odd = ["/etc/x", "output/.", "a\0b", "../up", "C:\\x"]
    em.faults.set(extra_names=odd)
    files, _ = list_output(em, number)
    names = [f["fileName"] for f in files]
    assert names[-len(odd):] == odd and sorted(names[:-len(odd)]) == sorted(listed)
    for f in files[-len(odd):]:
        assert session().get(f["url"], timeout=10).status_code == 200
    # and through the official client's parser
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputResponse

    raw = api(em, "ListKernelSessionOutput", {"userName": "imggenhub", "kernelSlug": "stub-test",
                                              "pageSize": 500}).text
    parsed = ApiListKernelSessionOutputResponse.from_json(raw)
    assert [f.file_name for f in parsed.files][-len(odd):] == odd


def test_fail_rate_and_truncate_rate_are_seeded_chances(done):
    em, number, listed = done
    em.faults.set(fail_rate=0.5, truncate_rate=0.5, seed=3, retry_after="0",
                  only=["GetKernelSessionStatus"])
    outcomes = []
    for _ in range(40):
        try:
            outcomes.append(str(status(em, number).get("status") or "error"))
        except requests.ConnectionError:
            outcomes.append("dropped")
    fired = dict(em.faults.fired)
    assert fired.get("rate_limit") and fired.get("server_error") and fired.get("drop")
    assert outcomes.count("COMPLETE") == 40 - sum(fired.values())
    assert api(em, "ListKernelFiles", {"userName": "imggenhub", "kernelSlug": "stub-test"}).ok
    cut = 0
    for _ in range(20):
        try:
            got = session().get(listed["output/manifest.json"], timeout=10).content
            cut += got != real_bytes(em, number, "output/manifest.json")
        except requests.exceptions.ChunkedEncodingError:
            cut += 1
    assert cut == em.faults.fired["truncate"] and 0 < cut < 20
    em.faults.set(seed=3, fail_rate=0.5)  # the same seed, the same dice
    again = []
    em.faults.fired.clear()
    for _ in range(40):
        try:
            again.append(str(status(em, number).get("status") or "error"))
        except requests.ConnectionError:
            again.append("dropped")
    assert again.count("COMPLETE") == outcomes.count("COMPLETE")
