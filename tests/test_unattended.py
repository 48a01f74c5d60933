"""Runs you can leave alone: what happens when nobody watches. Interrupted pushes, an
unreachable Kaggle, bounded waits, Ctrl-C, two processes at once, bad local folders,
machine-readable output. Against the emulator's stub runner (fast)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from imggenhub.outputs import artifacts
from imggenhub.backends.kaggle import api as kaggle_api
from imggenhub.run import runs
from imggenhub.config import Clock, Tunables
from imggenhub.errors import Stopped
from imggenhub.job.notebook import read_job_document

from .conftest import run_cli_subprocess, sigint_default
from .test_kaggle import SPEC

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ imggenhub: ")


def versions_of(emulator, run_id):
    """The kernel versions whose pushed notebook carries this run id."""
    return [(ref, v.number) for ref, vs in emulator.kernels.items() for v in vs
            if (read_job_document(v.text) or {}).get("run_id") == run_id]


def pushes(emulator):
    return len([m for m, _ in emulator.calls if m == "SaveKernel"])


def test_a_push_that_failed_with_503_is_explained_then_resumed(emulator, cli, tmp_path):
    emulator.faults.set(server_error=1, only=["SaveKernel"])
    code, out, err = cli("deploy", *SPEC, cwd=tmp_path)
    assert code == 5 and "may or may not have reached Kaggle" in err
    run = runs.load()
    assert run.state.value == "push-unknown" and run.kernel_ref == "imggenhub/imggenhub-batch"
    code, out, err = cli("poll")  # finds out it never landed: nothing to poll yet
    assert code == 6 and f"'imggenhub resume {run.run_id}'" in err and "Internal error" not in err
    assert runs.load().state.value == "rendered"
    code, out, err = cli("download")
    assert code == 6 and "nothing to download yet" in err
    code, out, err = cli("resume")
    assert code == 0, err
    assert runs.load().state.value == "downloaded" and len(versions_of(emulator, run.run_id)) == 1


def test_a_push_whose_answer_was_lost_is_adopted_not_pushed_twice(emulator, cli, tmp_path):
    emulator.faults.set(drop_after=1, only=["SaveKernel"])
    code, out, err = cli("deploy", *SPEC, cwd=tmp_path)
    assert code == 5 and runs.load().state.value == "push-unknown"
    assert len(emulator.versions("imggenhub/imggenhub-batch")) == 1  # Kaggle made it
    code, out, err = cli("resume", "--timeout", "30")
    assert code == 0, err
    assert "had landed as version 1" in err
    run = runs.load()
    assert run.state.value == "downloaded" and run.version == 1
    assert pushes(emulator) == 1 and versions_of(emulator, run.run_id) == [
        ("imggenhub/imggenhub-batch", 1)]
    assert artifacts.verify(Path(run.out_dir)) == []


def test_an_unreachable_kaggle_is_exit_5_within_the_timeout(emulator, cli, tmp_path, monkeypatch):
    code, out, err = cli("deploy", *SPEC, cwd=tmp_path)
    assert code == 0, err
    emulator.wait_idle()
    emulator.stop()  # the network is down
    monkeypatch.setenv("IMGGENHUB_RETRY_MAX_WAIT", "1")
    t0 = time.monotonic()
    code, out, err = cli("poll", "--timeout", "1.5")
    assert code == 5 and "Could not reach Kaggle" in err
    assert time.monotonic() - t0 < 6
    assert runs.load().state.value == "pushed"  # the run goes on; nothing recorded as failed
    t0 = time.monotonic()
    code, out, err = cli("doctor", "--timeout", "1")
    assert code == 5 and time.monotonic() - t0 < 6


def test_download_before_the_end_is_exit_6_and_a_cancelled_run_is_exit_1(emulator, cli, tmp_path):
    emulator.hold_image = 2  # the run waits in image 2 until the cancel below
    code, out, err = cli("deploy", *SPEC, "--json", cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    code, out, err = cli("download", "--json")
    assert code == 6 and "is pushed, so there is nothing to download yet" in err
    assert json.loads(out) == {"ok": False, "exit_code": 6, "error": err.strip()[len("Error: "):],
                               "run_id": run_id}
    version = emulator.versions("imggenhub/imggenhub-batch")[0]
    assert emulator.held.wait(60) and "image 1/" in "".join(e["data"] for e in list(version.log))
    emulator.cancel("imggenhub/imggenhub-batch", 1)
    code, out, err = cli("resume", "--timeout", "30")
    assert code == 1 and "Kaggle reports cancelled" in err
    assert runs.load(run_id).state.value == "cancelled"
    assert cli("poll")[0] == 1 and cli("download")[0] == 1
    # what it finished before the cancel is kept and verified
    kept = runs.load(run_id)
    assert artifacts.verify(Path(kept.out_dir)) == [] and kept.images_fetched == 2


def test_the_gpu_slot_wait_is_bounded_by_the_timeout(emulator, cli, tmp_path):
    emulator.faults.set(gpu_cap=1000)
    t0 = time.monotonic()
    code, out, err = cli("deploy", *SPEC, "--timeout", "1", cwd=tmp_path)
    assert code == 6 and "GPU sessions stayed busy" in err and time.monotonic() - t0 < 5
    assert runs.load().state.value == "rendered"
    emulator.faults.set(gpu_cap=0)
    assert cli("resume")[0] == 0


@pytest.mark.parametrize("signum,code,how", [(signal.SIGINT, 130, "Interrupted"),
                                              (signal.SIGTERM, 143, "Stopped by SIGTERM"),
                                              (signal.SIGHUP, 129, "Stopped by SIGHUP")])
def test_a_signal_says_the_kaggle_run_goes_on_and_how_to_pick_it_up(signum, code, how, emulator,
                                                                   tmp_path):
    """Ctrl-C, SIGTERM (`timeout`, systemd) and SIGHUP (a closed terminal) while a Kaggle run
    is queued: one sentence that the run goes on and how to pick it up, the signal's code."""
    emulator.queue_seconds = 30
    proc = subprocess.Popen(
        [str(Path(os.sys.executable).with_name("imggenhub")), "generate", *SPEC],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ), preexec_fn=sigint_default)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "pushed imggenhub/imggenhub-batch version 1" in line:
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    err = "".join(lines) + err
    run_id = runs.load().run_id
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(f"Error: {how}; the Kaggle run {run_id}"), err
    assert "goes on and uses GPU quota" in err and f"'imggenhub resume {run_id}'" in err
    assert "Traceback" not in err
    assert all(STAMP.match(l) for l in lines)  # no TTY: timestamped lines, no ANSI codes
    assert "\x1b[" not in err


@pytest.mark.parametrize("signum,raised", [(signal.SIGINT, KeyboardInterrupt),
                                           (signal.SIGTERM, Stopped)])
def test_a_signal_that_lands_in_a_finalizer_is_raised_at_the_next_wait(signum, raised):
    """Python drops an exception raised in a __del__ (it prints 'Exception ignored in'): a
    Ctrl-C that landed while the garbage collector ran a file lock's finalizer was lost once,
    and the command waited on for its queued run. imggenhub's handlers keep such a signal's
    exception for the next Clock.sleep, where every wait for a remote run passes."""
    from imggenhub.cli import _stop_on_signals

    before = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                           else signal.SIG_DFL)  # as a command starts
    previous = _stop_on_signals()
    try:
        assert signum in previous

        class Finalized:
            def __del__(self):
                os.kill(os.getpid(), signum)
                for _ in range(10_000):  # the handler runs here, inside the finalizer
                    pass

        Finalized()  # dropped at once: its __del__ runs
        with pytest.raises(raised):
            Clock().sleep(0.01)
        Clock().sleep(0.0)  # raised once, not again
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.signal(signum, before)


def test_a_hangup_ignored_at_start_stays_ignored(emulator, tmp_path):
    """Under nohup (SIGHUP ignored when imggenhub starts) a hang-up changes nothing: the run
    goes on to its end."""
    emulator.queue_seconds = 1
    emulator.hold_image = 1  # the kernel waits at its first image until released

    def nohup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen(
        [str(Path(os.sys.executable).with_name("imggenhub")), "generate", *SPEC],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ), preexec_fn=nohup)
    assert emulator.held.wait(60)  # the run is on, the command waits for it
    proc.send_signal(signal.SIGHUP)
    with pytest.raises(subprocess.TimeoutExpired):  # a handled hang-up would end it at once
        proc.wait(1)
    emulator.release.set()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_only_network_errors_become_could_not_reach():
    def bug():
        raise KeyError("a bug of ours")

    with pytest.raises(KeyError):
        kaggle_api.call(Tunables(), None, "reading the kernel status", bug)


def test_an_output_folder_is_checked_and_claimed_before_the_push(emulator, cli, tmp_path):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        code, _, err = cli("deploy", *SPEC, "--out", str(out), cwd=tmp_path)
        assert code == 2 and "choose another --out" in err and len(err.strip().splitlines()) == 1
    emulator.queue_seconds = 5  # the first run is still going when the second one starts
    shared = tmp_path / "shared"
    assert cli("deploy", *SPEC, "--out", str(shared))[0] == 0
    code, _, err = cli("deploy", "--model", "tiny-random", "-p", "another job", "--out", str(shared))
    assert code == 2 and "of another job" in err
    code, _, err = cli("deploy", *SPEC, "--out", str(shared))  # the same job, a second run
    assert code == 2 and "which is still going" in err
    assert pushes(emulator) == 1


def test_a_broken_state_folder_or_prompts_file_is_one_sentence(cli, tmp_path, monkeypatch):
    (tmp_path / "nested.json").write_text("[" * 100000 + "]" * 100000)
    code, _, err = cli("render", "--out", str(tmp_path / "r"), "--prompts-file",
                       str(tmp_path / "nested.json"), cwd=tmp_path)
    assert code == 2 and "nested too deeply" in err and "Traceback" not in err
    t0 = time.monotonic()
    code, _, err = cli("render", "--out", str(tmp_path / "r"), "--prompts-file", "/dev/zero")
    assert code == 2 and "larger than 16 MiB" in err and time.monotonic() - t0 < 10
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(["with a BOM"]).encode())
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "--prompts-file",
                         str(tmp_path / "bom.json"), "--model", "tiny-random")
    assert code == 0, err
    for bad in ("myslug", "a/b", "/x", "a/" + "x" * 60):
        code, _, err = cli("render", "--out", str(tmp_path / "r"), "-p", "x", "--kernel-id", bad)
        assert code == 2 and "is not of the form owner/slug" in err, bad
    monkeypatch.setenv("IMGGENHUB_HOME", "/dev/null/state")
    for args in (["runs"], ["status"], ["generate", "--backend", "local", "-p", "x",
                                        "--model", "tiny-random"]):
        code, _, err = cli(*args)
        assert code == 2 and "set IMGGENHUB_HOME to a writable folder" in err, args


def test_two_processes_one_run_or_one_folder(emulator, cli, tmp_path):
    code, out, err = cli("deploy", *SPEC, "--json", cwd=tmp_path)
    run_id = json.loads(out)["run_id"]
    assert cli("poll")[0] == 0
    emulator.faults.set(slow_files=0.2)
    env = dict(os.environ)
    procs = [subprocess.Popen([str(Path(os.sys.executable).with_name("imggenhub")), "download",
                               run_id], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 6]), results
    assert all("Internal error" not in e and "Traceback" not in e for _, e in results)
    out_dir = Path(runs.load(run_id).out_dir)
    assert artifacts.verify(out_dir) == [] and not list(out_dir.rglob("*.part"))


def test_run_ids_made_at_once_never_collide():
    made, errors = [], []

    def make():
        try:
            made.append(runs.new_run_id("samejob0123456789"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(made)) == 16


def test_json_output_and_version(emulator, cli, tmp_path):
    code, out, _ = cli("--version")
    assert code == 0 and re.match(r"^\d+\.\d+\.\d+$", out.strip())
    code, out, err = cli("generate", *SPEC, "--json", "--name", "nightly", cwd=tmp_path)
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] and data["state"] == "downloaded" and data["images_fetched"] == 4
    assert data["name"] == "nightly"
    for args in (["status", "nightly"], ["poll", "nightly"], ["download", "nightly"],
                 ["resume", "nightly"], ["deploy", *SPEC, "--name", "nightly"]):
        code, out, err = cli(*args, "--json")
        assert code == 0 and json.loads(out)["run_id"] == data["run_id"], (args, err)
    assert pushes(emulator) == 1  # the name picked up the same run every time
    for args in (["runs"], ["models"], ["doctor"]):
        code, out, err = cli(*args, "--json")
        assert code == 0 and json.loads(out), args
    code, out, err = cli("poll", "no-such-run", "--json")
    assert code == 2 and json.loads(out)["ok"] is False


def test_the_kaggle_path_needs_no_engine_or_jupyter(emulator, tmp_path):
    """A Kaggle-only install (no [local] extra) is enough for deploy, poll and download.
    Pillow is in it (the contact sheets are made here after a download), but only download
    imports it."""
    import tomllib

    from .conftest import REPO

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    heavy = {"torch", "diffusers", "transformers", "accelerate", "nbclient", "nbformat",
             "ipykernel", "kaggle"}
    assert not {re.split(r"[<>=\[ ]", d)[0].lower() for d in deps} & heavy
    for args in (["deploy", *SPEC], ["poll"], ["download"]):
        proc = run_cli_subprocess(*args, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert proc.returncode == 0, proc.stderr
        imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "kagglesdk" in imported and not imported & {
            "torch", "diffusers", "transformers", "accelerate", "nbclient", "ipykernel",
            "kaggle"}, args
        assert ("PIL" in imported) == (args[0] == "download"), args


def test_the_local_backend_without_its_extra_says_what_to_install(cli, tmp_path, monkeypatch):
    from imggenhub.backends import local

    monkeypatch.setattr(local, "ENGINE_NEEDS", ("nbclient", "imggenhub_no_such_module"))
    code, out, err = cli("generate", "--backend", "local", "-p", "x", "--model", "tiny-random",
                         cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs the Python package 'imggenhub_no_such_module'" in err and "pip install '.[local]'" in err
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_a_full_disk_while_downloading_is_said_as_such(emulator, cli, tmp_path):
    """File writes beyond a limit fail with EFBIG, as a full disk fails with ENOSPC."""
    import resource

    code, out, err = cli("deploy", *SPEC, "--json", cwd=tmp_path)
    run_id = json.loads(out)["run_id"]
    assert cli("poll")[0] == 0

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    exe = str(Path(os.sys.executable).with_name("imggenhub"))
    proc = subprocess.run([exe, "download", run_id], cwd=tmp_path, env=dict(os.environ),
                          capture_output=True, text=True, preexec_fn=small_files, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Could not write the outputs of run" in proc.stderr and "File too large" in proc.stderr
    assert "Could not reach Kaggle" not in proc.stderr and "Internal error" not in proc.stderr
    assert cli("download", run_id)[0] == 0  # with room again, nothing was lost


def test_a_terminal_gets_a_live_progress_line(emulator, tmp_path):
    """On a TTY: a live line (state, images k/n, elapsed) instead of a wall of lines."""
    import pty

    # the kernel waits in image 3 until the terminal shows the live line with images k/4
    emulator.hold_image = 3
    live = re.compile(rb"images [12]/4 +elapsed \d+s")
    leader, follower = pty.openpty()
    exe = str(Path(os.sys.executable).with_name("imggenhub"))
    proc = subprocess.Popen([exe, "generate", *SPEC], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=follower,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
    os.close(follower)
    seen = b""
    shown_while_held = False
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if not emulator.release.is_set() and live.search(seen):
            shown_while_held = True
            emulator.release.set()
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0
    text = seen.decode("utf-8", "replace")
    assert shown_while_held and emulator.held.is_set()  # the live line, while the kernel ran
    assert re.search(r"images \d/4 +elapsed \d+s", text) and "\x1b[" in text
    assert not STAMP.search(text.splitlines()[0])  # no cron-style timestamps on a terminal
    assert out.decode().startswith("4 images in ")


def test_review_fixes_for_names_out_credentials_and_json(emulator, cli, tmp_path, monkeypatch):
    # --json answers bad input too, before any command runs
    code, out, err = cli("generate", "--json", "-p", "x", "--steps", "0", cwd=tmp_path)
    assert code == 2 and json.loads(out)["exit_code"] == 2
    # a 401 on push made nothing: the run can be resumed once the key is right
    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    code, out, err = cli("generate", *SPEC, "--name", "n1")
    assert code == 4 and runs.load("n1").state.value == "rendered"
    monkeypatch.setenv("KAGGLE_KEY", emulator.key)
    code, out, err = cli("resume", "n1")
    assert code == 0, err
    # --out on a run already downloaded is refused rather than pointing at an empty folder
    code, out, err = cli("download", "n1", "--out", str(tmp_path / "elsewhere"))
    assert code == 2 and "already" not in out and "--out applies only" in err
    assert runs.load("n1").out_dir != str(tmp_path / "elsewhere")
    # a failed named run is reported, never pushed again by the same line
    emulator.faults.set(fail_notebook=True)
    spec = ["--model", "tiny-random", "--seed", "5", "-p", "fails", "--num-images", "2", "--name", "n2"]
    assert cli("generate", *spec)[0] == 1
    before = pushes(emulator)
    code, out, err = cli("generate", *spec)
    assert code == 1 and pushes(emulator) == before and "Kaggle reports error" in err
    emulator.faults.set(fail_notebook=False)
    # a named run still going with another job: refused, nothing pushed
    emulator.queue_seconds = 5
    assert cli("deploy", "--model", "tiny-random", "--seed", "1", "-p", "a", "--name", "n3")[0] == 0
    code, out, err = cli("generate", "--model", "tiny-random", "--seed", "1", "-p", "b",
                         "--name", "n3")
    assert code == 2 and "with another job" in err
    # a finished named run of another job: a new run takes the name, and says so
    emulator.queue_seconds = 0
    first = runs.load("n1").run_id
    code, out, err = cli("generate", "--model", "tiny-random", "--seed", "99", "-p", "other",
                         "--name", "n1", "--json")
    assert code == 0 and f"the name 'n1' was run {first}'s" in err
    assert runs.load("n1").run_id == json.loads(out)["run_id"] != first


def test_a_manifest_of_another_run_never_lands(emulator, cli, tmp_path):
    run_id = json.loads(cli("deploy", *SPEC, "--json", cwd=tmp_path)[1])["run_id"]
    assert cli("poll")[0] == 0
    emulator.faults.set(manifest_body=json.dumps({"job_id": "someoneelse", "images": []}))
    code, out, err = cli("download")
    assert code == 1 and "belongs to another run" in err
    out_dir = Path(runs.load(run_id).out_dir)
    assert not (out_dir / "manifest.json").exists() and not list(out_dir.glob("*.png"))
    emulator.faults.set(manifest_body=None)
    assert cli("download")[0] == 0 and artifacts.verify(out_dir) == []


def test_every_step_is_bounded_by_the_timeout_when_kaggle_is_down(emulator, cli, tmp_path,
                                                                  monkeypatch):
    emulator.faults.set(drop=1, only=["SaveKernel"])
    assert cli("deploy", *SPEC, "--name", "down", cwd=tmp_path)[0] == 5  # push-unknown
    emulator.stop()
    monkeypatch.setenv("IMGGENHUB_RETRY_MAX_WAIT", "1")
    t0 = time.monotonic()
    code, out, err = cli("resume", "down", "--timeout", "1.5")
    assert code == 5 and time.monotonic() - t0 < 6, err


def test_no_signed_url_reaches_a_message():
    import requests

    response = requests.Response()
    response.status_code = 500
    exc = requests.HTTPError("500 Server Error for url: http://h/files/tok?Expires=1&Signature=s3cr3t",
                             response=response)
    message = str(kaggle_api.explain(exc, "downloading a.png"))
    assert "s3cr3t" not in message and "Signature" not in message and "http://h/files/tok" in message


def test_a_full_state_folder_is_one_sentence(tmp_path):
    import resource

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    exe = str(Path(os.sys.executable).with_name("imggenhub"))
    proc = subprocess.run([exe, "generate", "--backend", "local", "-p", "x", "--model",
                           "tiny-random"], cwd=tmp_path, env=dict(os.environ), capture_output=True,
                          text=True, preexec_fn=small_files, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "The state folder" in proc.stderr and "could not be written" in proc.stderr
    assert "Internal error" not in proc.stderr


def test_resume_without_credentials_leaves_the_run_as_it_was(emulator, cli, tmp_path, monkeypatch):
    """The credentials are looked up before the run is marked as being pushed: without
    them nothing is sent, and the record must not claim a push in flight."""
    emulator.stop()  # the network is down: deploy renders, sends nothing
    monkeypatch.setenv("IMGGENHUB_RETRY_MAX_WAIT", "0.1")
    code, out, err = cli("deploy", *SPEC, "--timeout", "1", cwd=tmp_path)
    assert code == 5 and "nothing was sent" in err
    assert runs.load().state.value == "rendered"
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    code, out, err = cli("resume")
    assert code == 4 and "No Kaggle credentials" in err
    assert runs.load().state.value == "rendered"
