"""A Hugging Face token for gated and private models reaches the kernel only through a
private Kaggle dataset, and only when the user says so (--hf-token-env VAR). A planted
canary token must be nowhere else: not in the pushed notebook, the API calls, the run
record, the outputs, the logs, or anything else the emulator keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imggenhub.config import state_dir

CANARY = "hf_CANARYcanary0123456789abcdefXYZ"
SPEC = ["--model", "tiny-random", "--seed", "2", "-p", "a fox"]
TOKEN_REF = "imggenhub/imggenhub-hf-token"


def everywhere_but_the_dataset(emulator, *folders: Path) -> list[str]:
    """Where the canary shows up, apart from the token dataset itself and its mount."""
    found = []
    for method, body in emulator.calls:
        if CANARY in json.dumps(body):
            found.append(f"API call {method}")
    for ref, versions in emulator.kernels.items():
        for v in versions:
            if CANARY in v.text or CANARY in json.dumps(v.log) or CANARY in json.dumps(v.meta):
                found.append(f"kernel {ref} v{v.number}")
    for ref, dataset in emulator.datasets.items():
        if ref != TOKEN_REF and any(CANARY.encode() in data for version in dataset["versions"]
                                    for data in version.values()):
            found.append(f"dataset {ref}")
    for folder in (emulator.root, *folders):
        for path in Path(folder).rglob("*"):
            if path.is_file() and "imggenhub-hf-token" not in path.parts \
                    and CANARY.encode() in path.read_bytes():
                found.append(str(path))
    return found


def test_the_token_goes_only_to_its_private_dataset(emulator, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_HF", CANARY)
    code, out, err = cli("generate", *SPEC, "--hf-token-env", "MY_HF", "--out", str(tmp_path / "o"),
                         cwd=tmp_path)
    assert code == 0, err
    dataset = emulator.datasets[TOKEN_REF]
    assert dataset["private"] and dataset["versions"][-1] == {"token": CANARY.encode()}
    push = [body for method, body in emulator.calls if method == "SaveKernel"][-1]
    assert TOKEN_REF in push["datasetDataSources"]
    assert emulator.versions("imggenhub/imggenhub-batch")[-1].token_seen == CANARY  # the kernel has it
    assert CANARY not in out + err
    assert everywhere_but_the_dataset(emulator, tmp_path, state_dir()) == []

    # the same token again: nothing uploaded; another token: a new version of the dataset
    uploads = sum(1 for method, _ in emulator.calls if method == "StartBlobUpload")
    code, out, err = cli("deploy", *SPEC, "--hf-token-env", "MY_HF", cwd=tmp_path)
    assert code == 0, err
    assert sum(1 for method, _ in emulator.calls if method == "StartBlobUpload") == uploads
    monkeypatch.setenv("MY_HF", "hf_another_token")
    code, out, err = cli("deploy", *SPEC, "-p", "another", "--hf-token-env", "MY_HF", cwd=tmp_path)
    assert code == 0, err
    assert [m for m, _ in emulator.calls].count("CreateDatasetVersion") == 1
    assert emulator.datasets[TOKEN_REF]["versions"][-1] == {"token": b"hf_another_token"}


def test_no_token_is_sent_unless_asked(emulator, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", CANARY)
    code, out, err = cli("generate", *SPEC, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    assert TOKEN_REF not in emulator.datasets
    assert everywhere_but_the_dataset(emulator, tmp_path, state_dir()) == []


@pytest.mark.parametrize("var,words", [("NOT_SET_ANYWHERE", "is not set or empty"),
                                       ("bad name!", "is not an environment variable name")])
def test_a_missing_or_bad_token_variable_is_one_sentence(emulator, cli, tmp_path, var, words):
    code, out, err = cli("deploy", *SPEC, "--hf-token-env", var, cwd=tmp_path)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not [m for m, _ in emulator.calls if m in ("SaveKernel", "StartBlobUpload")]


@pytest.fixture
def hub(monkeypatch):
    """A local stand-in for the Hub's /api/models/<id>, answering as the Hub does: ids with
    'missing' in them are unknown (404), with 'trubo' too (401 and its RepoNotFound code, as
    for an anonymous question), 'private' ones are seen only with the canary token, 'gated'
    ones are gated, and the token 'hf_expired' is refused on any id (401, no code).
    HF_ENDPOINT names it and the Hub is not offline. Yields each (path, Authorization)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked = []

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            auth = self.headers.get("Authorization")
            asked.append((self.path, auth))
            gated = "manual" if "gated" in self.path else False
            private = "private" in self.path
            if auth == "Bearer hf_expired":
                status, code = 401, None
            elif "missing" in self.path:
                status, code = 404, "RepoNotFound"
            elif "trubo" in self.path or (private and auth != f"Bearer {CANARY}"):
                status, code = 401, "RepoNotFound"
            else:
                status, code = 200, None
            body = json.dumps({"error": "no"} if status != 200 else
                              {"id": self.path.split("/api/models/")[-1], "gated": gated,
                               "private": private}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield asked
    server.shutdown()
    server.server_close()


def test_hf_token_goes_when_the_hub_says_the_model_is_gated(emulator, cli, tmp_path, monkeypatch,
                                                            hub):
    """HF_TOKEN set and the model gated on the Hub: that counts as the user's word; an open
    model, or no HF_TOKEN, sends nothing."""
    monkeypatch.setenv("HF_TOKEN", CANARY)
    code, out, err = cli("deploy", "--model", "owner/open-model", "-p", "x", cwd=tmp_path)
    assert code == 0, err
    assert TOKEN_REF not in emulator.datasets
    code, out, err = cli("deploy", "--model", "owner/gated-model", "-p", "x", cwd=tmp_path)
    assert code == 0, err
    assert "owner/gated-model is gated on the Hub and HF_TOKEN is set" in err
    assert emulator.datasets[TOKEN_REF]["versions"][-1] == {"token": CANARY.encode()}
    assert hub[-1] == ("/api/models/owner/gated-model", f"Bearer {CANARY}")
    assert everywhere_but_the_dataset(emulator, tmp_path, state_dir()) == []


def test_a_model_id_the_hub_does_not_know_is_refused_before_the_push(emulator, cli, tmp_path,
                                                                     monkeypatch, hub):
    # versions made (a push refused while two GPU sessions run is pushed again, not counted)
    saves = lambda: len(emulator.kernels.get("imggenhub/imggenhub-batch", []))  # noqa: E731
    code, out, err = cli("deploy", "--model", "stabilityai/sdxl-trubo", "-p", "x", cwd=tmp_path)
    assert code == 2 and saves() == 0, err
    assert err.strip().splitlines()[-1] == (
        "Error: The Hub has no model stabilityai/sdxl-trubo (did you mean "
        "'stabilityai/sdxl-turbo'?); nothing was pushed (a private one needs HF_TOKEN set here).")
    assert hub[-1] == ("/api/models/stabilityai/sdxl-trubo", None)  # public: no token sent
    # a model sweep's ids are asked too
    code, out, err = cli("deploy", "--model", "owner/open-model", "-p", "x", "--sweep",
                         "model=owner/open-model,owner/missing-model", cwd=tmp_path)
    assert code == 2 and "no model owner/missing-model" in err and saves() == 0, err
    code, out, err = cli("deploy", "--model", "owner/open-model", "-p", "x", cwd=tmp_path)
    assert code == 0 and saves() == 1, err
    # a near miss of a preset's name is said at once, Hub or not
    code, out, err = cli("deploy", "--model", "sdxl-trubo", "-p", "x", cwd=tmp_path)
    assert code == 2 and "did you mean 'sdxl-turbo'?" in err, err
    # a token the Hub refuses is said, and the Hub asked without it (a public model goes on)
    monkeypatch.setenv("HF_TOKEN", "hf_expired")
    code, out, err = cli("deploy", "--model", "owner/open-model", "-p", "x", cwd=tmp_path)
    assert code == 0 and saves() == 2, err
    assert "did not accept your Hugging Face token" in err and hub[-1][1] is None
    # a token with a character no header can carry: a note, never an internal error
    monkeypatch.setenv("HF_TOKEN", "hf_abc\u200b")
    code, out, err = cli("deploy", "--model", "owner/open-model", "-p", "x", cwd=tmp_path)
    assert code == 0 and saves() == 3 and "could not ask the Hub" in err, err
    monkeypatch.delenv("HF_TOKEN")
    # a private model, the token in --hf-token-env's variable: the Hub is asked with it
    monkeypatch.setenv("MY_HF", CANARY)
    code, out, err = cli("deploy", "--model", "owner/private-model", "-p", "x",
                         "--hf-token-env", "MY_HF", cwd=tmp_path)
    assert code == 0 and saves() == 4, err
    assert hub[-1] == ("/api/models/owner/private-model", f"Bearer {CANARY}")
    code, out, err = cli("deploy", "--model", "owner/private-model", "-p", "x", cwd=tmp_path)
    assert code == 2 and "a private one needs HF_TOKEN set here" in err, err
    # no answer from the Hub: a note, and the push goes on
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code, out, err = cli("deploy", "--model", "owner/missing-model", "-p", "x", cwd=tmp_path)
    assert code == 0 and saves() == 5, err
    assert "could not ask the Hub about owner/missing-model" in err


def test_a_kill_during_the_tokens_upload_leaves_no_copy_of_it_here(emulator, tmp_path):
    """The token goes to Kaggle from memory: killed (-9) while its dataset is being made,
    imggenhub has written it nowhere on this machine (the temporary folder included)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    emulator.faults.set(dataset_pending=10_000)  # the token's dataset stays in the making
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "MY_HF": CANARY, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("imggenhub")), "deploy", *SPEC,
                             "--hf-token-env", "MY_HF"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    give_up = time.monotonic() + 60
    def waiting_on_the_made_dataset() -> bool:
        calls = [m for m, _ in list(emulator.calls)]
        made = calls.index("CreateDataset") if "CreateDataset" in calls else len(calls)
        return "GetDatasetStatus" in calls[made:]

    while not waiting_on_the_made_dataset():  # uploaded, made, and waited on
        assert proc.poll() is None and time.monotonic() < give_up, "the upload never happened"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert emulator.datasets[TOKEN_REF]["versions"][-1] == {"token": CANARY.encode()}
    assert everywhere_but_the_dataset(emulator, tmp_path, state_dir()) == []


@pytest.mark.parametrize("preset, repo", [("flux-dev", "black-forest-labs/FLUX.1-dev"),
                                          ("sd35-large", "stabilityai/stable-diffusion-3.5-large")])
def test_gated_presets_take_the_token_path(emulator, cli, tmp_path, monkeypatch, preset, repo):
    """FLUX.1-dev and SD 3.5 are gated: without a token the job is refused before the push
    (it would fail in the kernel, its GPU time spent); with HF_TOKEN set the preset's word
    sends it (the Hub is not asked here: offline), only to the private dataset."""
    code, out, err = cli("deploy", "--model", preset, "-p", "x", cwd=tmp_path)
    assert code == 4 and "--hf-token-env" in err, err
    assert err.strip().splitlines()[-1].startswith(f"Error: {repo} is gated on the Hub: accept")
    assert not [m for m, _ in emulator.calls if m in ("SaveKernel", "StartBlobUpload")]
    monkeypatch.setenv("HF_TOKEN", CANARY)
    code, out, err = cli("deploy", "--model", preset, "-p", "x", cwd=tmp_path)
    assert code == 0, err
    assert f"{repo} is gated on the Hub and HF_TOKEN is set" in err
    assert emulator.datasets[TOKEN_REF]["versions"][-1] == {"token": CANARY.encode()}
    assert CANARY not in out + err
    assert everywhere_but_the_dataset(emulator, tmp_path, state_dir()) == []
