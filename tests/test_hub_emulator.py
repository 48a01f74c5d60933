"""The Hugging Face Hub emulator (tests/hub_emulator.py), driven by the real
huggingface_hub client: a model published with create_repo + upload_folder arrives byte for
byte (binaries through git-LFS basic transfer), an unchanged re-upload makes no commit, the
auth failures reach the client as its own HTTP errors, and the command line serves whoami."""

from __future__ import annotations

import hashlib
import json
import http.client
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .hub_emulator import DEFAULT_READ_TOKEN, DEFAULT_TOKEN

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "imggenhub/tiny-lora"
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def api(hub, token=DEFAULT_TOKEN):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url, token=token)


def model_folder(root: Path) -> dict[str, bytes]:
    """A published model's folder: two text files, 3 MB of weights and a picture."""
    files = {
        "README.md": b"---\nlicense: mit\n---\n# tiny-lora\n\nA LoRA trained by imggenhub.\n",
        "loss.csv": b"step,loss\n" + b"".join(b"%d,%.4f\n" % (i, 1 / (i + 1)) for i in range(50)),
        "tiny-lora.safetensors": os.urandom(3 << 20),
        "samples/validation.png": PNG_HEAD + os.urandom(4096),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def http_errors() -> tuple:
    """The client's HTTP errors: HfHubHTTPError (huggingface_hub < 1.0 also raises requests'
    HTTPError itself from whoami, its response kept)."""
    from huggingface_hub.errors import HfHubHTTPError

    if huggingface_hub_1():
        return (HfHubHTTPError,)
    import requests

    return (HfHubHTTPError, requests.HTTPError)


def status_of(excinfo) -> int:
    assert isinstance(excinfo.value, http_errors()), repr(excinfo.value)
    return excinfo.value.response.status_code


def huggingface_hub_1() -> bool:
    import huggingface_hub

    return int(huggingface_hub.__version__.split(".")[0]) >= 1


def test_a_published_model_arrives_byte_exact_with_binaries_through_lfs(hub, tmp_path):
    client = api(hub)
    assert client.whoami()["name"] == "imggenhub"
    url = client.create_repo(REPO_ID, repo_type="model", private=True, exist_ok=True)
    assert url.repo_id == REPO_ID
    folder = tmp_path / "model"
    files = model_folder(folder)
    info = client.upload_folder(repo_id=REPO_ID, folder_path=folder, commit_message="tiny-lora v1")

    repo = hub.repos[REPO_ID]
    assert repo.private and info.oid == repo.head
    # the Hub's own initial commit (.gitattributes), then exactly one commit of the upload
    assert [c.message for c in repo.commits] == ["initial commit", "tiny-lora v1"]
    assert repo.commits[-1].files == files
    assert {path: repo.files[path] for path in files} == files
    binaries = {"tiny-lora.safetensors", "samples/validation.png"}
    assert set(repo.lfs) == binaries and repo.commits[-1].lfs == binaries
    assert {(u.oid, u.size) for u in hub.lfs_uploads} == {
        (hashlib.sha256(files[p]).hexdigest(), len(files[p])) for p in binaries}
    assert ("POST", f"/{REPO_ID}.git/info/lfs/objects/batch") in hub.calls
    assert sum(method == "PUT" for method, _ in hub.calls) == 2
    assert not any("xet" in path for _, path in hub.calls)
    # the files read back through the client's own download path match too
    from huggingface_hub import hf_hub_download

    got = hf_hub_download(REPO_ID, "tiny-lora.safetensors", endpoint=hub.url, token=DEFAULT_TOKEN,
                          cache_dir=tmp_path / "cache")
    assert Path(got).read_bytes() == files["tiny-lora.safetensors"]


def test_an_unchanged_upload_makes_no_commit_and_a_change_makes_one(hub, tmp_path):
    client = api(hub)
    client.create_repo(REPO_ID, exist_ok=True)
    folder = tmp_path / "model"
    files = model_folder(folder)
    client.upload_folder(repo_id=REPO_ID, folder_path=folder, commit_message="v1")
    repo = hub.repos[REPO_ID]
    head, puts = repo.head, len(hub.lfs_uploads)

    info = client.upload_folder(repo_id=REPO_ID, folder_path=folder, commit_message="v1 again")
    assert len(repo.commits) == 2 and repo.head == head == info.oid
    assert len(hub.lfs_uploads) == puts  # the LFS objects were already there: no PUT either

    (folder / "loss.csv").write_bytes(files["loss.csv"] + b"50,0.0196\n")
    client.upload_folder(repo_id=REPO_ID, folder_path=folder, commit_message="v2")
    assert [c.message for c in repo.commits] == ["initial commit", "v1", "v2"]
    assert repo.commits[-1].files == {"loss.csv": files["loss.csv"] + b"50,0.0196\n"}
    assert repo.files["tiny-lora.safetensors"] == files["tiny-lora.safetensors"]
    assert len(hub.lfs_uploads) == puts


def test_auth_failures_reach_the_client_as_its_http_errors(hub, tmp_path):
    HfHubHTTPError = http_errors()

    folder = tmp_path / "model"
    model_folder(folder)
    hub.add_user("someone-else", "hf_someone_else")
    api(hub, "hf_someone_else").create_repo("someone-else/their-model")
    api(hub).create_repo(REPO_ID)
    before = {key: len(repo.commits) for key, repo in hub.repos.items()}

    with pytest.raises(HfHubHTTPError) as no_token:
        api(hub, token=False).create_repo("imggenhub/anonymous")
    assert status_of(no_token) == 401
    with pytest.raises(HfHubHTTPError) as no_token_upload:
        api(hub, token=False).upload_folder(repo_id=REPO_ID, folder_path=folder, commit_message="x")
    assert status_of(no_token_upload) == 401
    with pytest.raises(HfHubHTTPError) as bad_token:
        api(hub, "hf_not_a_token").whoami()
    assert status_of(bad_token) == 401

    read_only = api(hub, DEFAULT_READ_TOKEN)
    assert read_only.whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as read_create:
        read_only.create_repo("imggenhub/other")
    assert status_of(read_create) == 403
    with pytest.raises(HfHubHTTPError) as read_upload:
        read_only.upload_folder(repo_id=REPO_ID, folder_path=folder, commit_message="x")
    assert status_of(read_upload) == 403

    with pytest.raises(HfHubHTTPError) as foreign:
        api(hub).upload_folder(repo_id="someone-else/their-model", folder_path=folder,
                               commit_message="x")
    assert status_of(foreign) == 403
    with pytest.raises(HfHubHTTPError) as foreign_create:
        api(hub).create_repo("someone-else/new-model")
    assert status_of(foreign_create) == 403

    with pytest.raises(HfHubHTTPError) as exists:
        api(hub).create_repo(REPO_ID)
    assert status_of(exists) == 409
    api(hub).create_repo(REPO_ID, exist_ok=True)  # the same, allowed to exist

    assert {key: len(repo.commits) for key, repo in hub.repos.items()} == before
    assert not hub.lfs_uploads


def test_the_emulator_refuses_what_a_real_hub_would(hub):
    """Bodies over the limit, LFS objects that do not match, binaries sent as regular files,
    and Xet (the client must disable it)."""
    hub.max_api_body = 1000
    host, port = hub.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("POST", f"/api/models/{REPO_ID}/commit/main")
    conn.putheader("Authorization", f"Bearer {DEFAULT_TOKEN}")
    conn.putheader("Content-Length", str(10 << 20))
    conn.endheaders()  # announced, never sent: refused without reading it
    assert conn.getresponse().status == 413
    conn.close()
    hub.max_api_body = 64 << 20

    hub.create(REPO_ID)
    client = api(hub)
    # a client that skipped LFS: the commit's NDJSON carries the binary base64, as a
    # regular file (huggingface_hub's commit format, written here by hand)
    import base64

    lines = [{"key": "header", "value": {"summary": "x", "description": ""}},
             {"key": "file", "value": {"path": "weights.bin", "encoding": "base64",
                                       "content": base64.b64encode(PNG_HEAD).decode("ascii")}}]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", f"/api/models/{REPO_ID}/commit/main", body=body,
                 headers={"Authorization": f"Bearer {DEFAULT_TOKEN}",
                          "Content-Type": "application/x-ndjson"})
    binary = conn.getresponse()
    assert binary.status == 400 and b"binary" in binary.read()
    conn.close()

    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", f"/api/models/{REPO_ID}/xet-write-token/main",
                 headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
    answer = conn.getresponse()
    assert answer.status == 501 and b"HF_HUB_DISABLE_XET" in answer.read()
    conn.close()
    assert len(hub.repos[REPO_ID].commits) == 1 and client.repo_info(REPO_ID).sha == hub.repos[REPO_ID].head


def test_the_command_line_serves_whoami_and_stops_cleanly(hf):
    proc = subprocess.Popen([sys.executable, "-m", "tests.hub_emulator", "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
        lines: list[str] = []
        reader.start()
        reader.join(timeout=15)  # the first line, or give up (the child is killed below)
        line = lines[0] if lines else ""
        assert line.startswith("Hub emulator ready at http://127.0.0.1:"), repr(line)
        url = line.split()[4]
        from huggingface_hub import HfApi

        assert HfApi(endpoint=url, token=DEFAULT_TOKEN).whoami()["name"] == "imggenhub"
        proc.terminate()  # SIGTERM: the emulator closes and exits 0
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
