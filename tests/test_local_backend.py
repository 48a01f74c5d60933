"""End to end: the CLI renders the notebook and runs it in a real Jupyter kernel here."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from PIL import Image

from imggenhub.outputs import artifacts
from imggenhub import engine
from imggenhub.run import runs

from .adversarial import corpus
from .conftest import REPO, run_cli_subprocess, write_json


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One real run of the repo's example prompts.json, as the README's quickstart does it
    (tiny-shapes, the model trained here whose weights ship with imggenhub)."""
    import os

    work = tmp_path_factory.mktemp("quick")
    (work / "prompts.json").write_bytes((REPO / "prompts.json").read_bytes())
    env = {"IMGGENHUB_HOME": str(work / "state"), "HOME": str(work), "HF_HUB_OFFLINE": "1"}
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        os.environ.pop(var, None)
    proc = run_cli_subprocess("generate", "--backend", "local", "--model", "tiny-shapes",
                              "--seed", "42", cwd=work, env=env)
    return work, proc


@pytest.mark.slow
def test_the_quickstarts_pictures_show_what_their_prompts_ask(quick_run):
    """Read back by the shapes checker: each picture's background, and the colour and shape
    of what is on it, are the prompt's (prompts.json asks for pairs seen in training)."""
    from imggenhub import shapes

    work, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    [out] = list((work / "outputs").iterdir())
    asked, seen = [], []
    for record in artifacts.read_manifest(out)["images"]:
        words = record["prompt"].split()
        asked.append((*[w for w in words if w in shapes.COLOURS or w in shapes.SHAPES],
                      words[-2]))
        with Image.open(out / record["file"]) as png:
            got = shapes.read(png)
        seen.append((got.colour, got.shape, got.background))
    assert seen == asked


@pytest.mark.slow
def test_generate_leaves_verified_pngs_and_manifest(quick_run):
    work, proc = quick_run
    assert proc.returncode == 0, proc.stderr
    [out] = list((work / "outputs").iterdir())
    manifest = artifacts.read_manifest(out)
    expected = json.loads((REPO / "prompts.json").read_text())
    n = sum(e.get("num_images", 1) if isinstance(e, dict) else 1 for e in expected)
    assert len(manifest["images"]) == n and manifest["complete"] is True
    assert artifacts.verify(out) == []
    log = (out / "kernel.log").read_text()
    assert log.count("[imggenhub] image ") == n
    assert "requires torchvision" not in log  # transformers' note on its Pillow fallback
    first = manifest["images"][0]
    for key in ("prompt", "negative_prompt", "seed", "model", "steps", "guidance", "width", "height",
                "scheduler", "file", "sha256", "bytes", "seconds", "device"):
        assert key in first
    assert manifest["processes"][0]["model_load_seconds"] > 0
    img = Image.open(out / first["file"])
    assert img.size == (64, 64)
    assert json.loads(img.text["imggenhub"])["seed"] == first["seed"] == 42
    assert f"{n} images in {out}" in proc.stdout
    assert "image 1/" in proc.stderr  # progress shown while it runs


@pytest.mark.slow
def test_the_run_record_is_kept(quick_run):
    work, _ = quick_run
    records = list((work / "state" / "runs").glob("*/run.json"))
    assert len(records) == 1
    data = json.loads(records[0].read_text())
    assert data["state"] == "downloaded" and data["backend"] == "local"
    assert set(data["timings"]) >= {"kernel_start", "notebook", "fetch"}


@pytest.mark.slow
@pytest.mark.long  # several notebook sessions (30-40 s): CI's second step
def test_adversarial_prompts_come_back_exact_also_from_a_notebook_that_fails(tmp_path, cli,
                                                                             monkeypatch):
    """Prompts that try to become code run as data through the real notebook and kernel and
    come back exact, in the manifest and in each PNG. Then the engine fails (a crash
    injected before the last prompt): the CLI names the exception in one sentence, keeps
    every image finished before it, verified, and records the run as failed."""
    mark = tmp_path / "PWNED"
    prompts = corpus(str(mark))
    # steps of its own make the last prompt a batch of its own: the crash comes before it
    write_json(tmp_path / "prompts.json", [*prompts, {"prompt": "never made", "steps": 2}])
    monkeypatch.setenv("IMGGENHUB_ENGINE_FAIL_AFTER", str(len(prompts)))
    code, out, err = cli("generate", "--backend", "local", "--model", "tiny-random", "--seed", "1",
                         "--steps", "1", "--out", str(tmp_path / "out"),
                         "--negative-prompt", f"'''\n!touch {mark}",
                         # the local backend knows nothing of Kaggle: kernel flags do not apply
                         "--kernel-id", "myslug", "--title", "abc", cwd=tmp_path)
    assert code == 1, err
    assert not mark.exists()
    last = err.strip().splitlines()[-1]
    run_cell = 3 + 1 + len(engine.MODULES)  # the last cell: markdown, job, mkdir, modules, run
    assert last.startswith(f"Error: The notebook failed in cell {run_cell}: RuntimeError: imggenhub "
                           "engine failed: RuntimeError: injected failure after "
                           f"{len(prompts)} images"), last
    assert f"the {len(prompts)} images finished before it are in" in last
    assert "Traceback" not in err
    assert runs.load().state == runs.RunState.ERROR
    manifest = artifacts.read_manifest(tmp_path / "out")
    assert [i["prompt"] for i in manifest["images"]] == prompts
    for record in manifest["images"]:
        meta = json.loads(Image.open(tmp_path / "out" / record["file"]).text["imggenhub"])
        assert meta["prompt"] == record["prompt"]
        assert meta["negative_prompt"] == f"'''\n!touch {mark}"
    assert artifacts.verify(tmp_path / "out") == []
    # the cause gone, resume runs a new session here for the one image not made
    monkeypatch.delenv("IMGGENHUB_ENGINE_FAIL_AFTER")
    code, out, err = cli("resume", cwd=tmp_path)
    assert code == 0, err
    assert "ended error (in cell" in err and "the 1 image still to make" in err
    manifest = artifacts.read_manifest(tmp_path / "out")
    assert [i["prompt"] for i in manifest["images"]] == [*prompts, "never made"]
    assert artifacts.verify(tmp_path / "out") == [] and runs.load().state == runs.RunState.DOWNLOADED
    # an image deleted since exists nowhere else: download says so, resume makes it again
    first = manifest["images"][0]
    (tmp_path / "out" / first["file"]).unlink()
    code, out, err = cli("download", cwd=tmp_path)
    assert code == 6, err
    assert "1 of its files is missing or changed" in err and "makes them again" in err
    assert runs.load().state == runs.RunState.PARTIAL
    code, out, err = cli("resume", cwd=tmp_path)
    assert code == 0, err
    again = {r["file"]: r for r in artifacts.read_manifest(tmp_path / "out")["images"]}
    assert again[first["file"]]["sha256"] == first["sha256"]  # the same seed, the same image
    assert len(again) == len(prompts) + 1 and artifacts.verify(tmp_path / "out") == []


def test_generate_without_credentials_or_backend_says_how(tmp_path, cli):
    code, out, err = cli("generate", "-p", "x", cwd=tmp_path)
    assert code == 4
    assert err.strip() == ("Error: No Kaggle credentials found: set KAGGLE_API_TOKEN (or save "
                           "~/.kaggle/kaggle.json from your Kaggle account page), or run on this "
                           "machine with --backend local.")
    assert not Path(tmp_path / "outputs").exists()


@pytest.mark.slow
def test_the_gallery_shows_every_image_with_its_prompt_escaped(quick_run, tmp_path):
    from imggenhub.outputs.artifacts import write_gallery

    work, _ = quick_run
    [out] = list((work / "outputs").iterdir())
    manifest = artifacts.read_manifest(out)
    from imggenhub.outputs.gallery import read_data

    data = read_data((out / "gallery.html").read_text())
    assert [i["file"] for i in data["images"]] == [r["file"] for r in manifest["images"]]
    # made here, so made again here: the same device and precision
    assert manifest["backend"] == "local"
    assert all(i["command"].startswith("imggenhub generate --backend local --prompt ")
               for i in data["images"])
    # prompts are data inside the page's JSON block, never markup (the browser test runs it)
    folder = tmp_path / "g"
    folder.mkdir()
    evil = {**manifest["images"][0], "prompt": "<script>alert(1)</script> & \"q\""}
    (folder / "manifest.json").write_text(json.dumps({"job_id": "x", "images": [evil]}))
    page = write_gallery(folder).read_text()
    assert "<script>alert" not in page and "</script> &" not in page
    assert read_data(page)["images"][0]["prompt"] == evil["prompt"]


@pytest.mark.slow
@pytest.mark.long  # several notebook sessions (30-40 s): CI's second step
def test_sigterm_under_timeout_keeps_the_finished_images_and_resume_makes_only_the_rest(tmp_path):
    """SIGTERM in the middle of a local run, as `timeout` sends it (to the command and its
    process group; the Jupyter kernel and its engine live in a session of their own), is
    Ctrl-C's way out: exit 143 with one sentence and no traceback, the engine stopped with
    no process left behind, the finished images verified in the output folder, the run
    partial; resume makes only the images still missing, and the job ends whole, each image
    as a run without the interruption makes it."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    env = dict(os.environ)  # this test's own state folder (the isolated fixture's)
    exe = str(Path(sys.executable).with_name("imggenhub"))
    spec = ["--backend", "local", "--model", "tiny-random", "--seed", "5", "-p", "a fox",
            "--num-images", "12", "--steps", "2", "--name", "cut", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(["timeout", "600", exe, "generate", *spec], cwd=tmp_path, env=env,
                            text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "image 3/12" in line:
            break
    state = Path(os.environ["IMGGENHUB_HOME"])

    def ours():  # the kernel and the engine work in the run's folder
        found = []
        for p in psutil.process_iter(["cwd"]):
            with contextlib.suppress(psutil.Error, TypeError):
                if p.info["cwd"] and Path(p.info["cwd"]).is_relative_to(state):
                    found.append(p)
        return found

    assert ours(), "the engine should be running"
    proc.send_signal(signal.SIGTERM)  # timeout passes it on to the command's process group
    out, err = proc.communicate(timeout=60)
    err = "".join(lines) + err
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "Task exception" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: Stopped by SIGTERM; the ") and "'imggenhub resume" in last, err
    assert "makes the rest" in last, err
    psutil.wait_procs(ours(), timeout=10)
    assert ours() == [], "a process of the run was left behind"
    run = runs.load("cut")
    assert run.state.value == "partial"
    kept = artifacts.read_manifest(tmp_path / "out")
    assert 3 <= len(kept["images"]) < 12 and artifacts.verify(tmp_path / "out") == []

    again = subprocess.run([exe, "resume", "cut"], cwd=tmp_path, env=env, text=True,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"the {12 - len(kept['images'])} images still to make" in again.stderr
    manifest = artifacts.read_manifest(tmp_path / "out")
    assert len(manifest["images"]) == 12 and manifest["complete"] is True
    assert artifacts.verify(tmp_path / "out") == [] and runs.load("cut").state.value == "downloaded"
    for record in kept["images"]:  # the first session's images stayed as they were
        assert record in manifest["images"]
    # and the second session's are the images an uninterrupted run makes (its seeds)
    assert [r["seed"] for r in manifest["images"]] == [5 + i for i in range(12)]


def _engine_left(run, indices, merged):
    """What the engine leaves in the work folder having made ``indices`` of its session
    (``merged``: its own merge at the end ran; else only its manifest part, as after a kill)."""
    import hashlib

    from imggenhub.run import runs
    from imggenhub.engine import OUTPUT_DIR, PARTS_DIR, PartLog, Plan, merge_manifest, save_png

    doc = runs.document(run)
    out = run.folder / "work" / OUTPUT_DIR
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    part = PartLog(out / PARTS_DIR / "rank-00.jsonl", {"job_id": doc["job_id"],
                   "run_id": doc["run_id"], "model": "tiny-random"}, {"rank": 0})
    for task in Plan.of(doc).tasks(doc):
        if task["index"] in indices:
            record = {"index": task["index"], "prompt": "a fox", "seed": task["seed"],
                      "steps": 1, "scheduler": "DDIM", "guidance": 1.0, "width": 8,
                      "height": 8, "model": "tiny-random"}
            data = save_png(Image.new("RGB", (8, 8), (task["index"] * 20, 0, 0)),
                            out / task["file"], record)
            part.image({**record, "file": task["file"], "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    if merged:
        merge_manifest(out, doc)


def test_interrupts_and_kills_anywhere_in_a_local_run_lose_no_record(tmp_path, monkeypatch):
    """Ctrl-C after 3 of 6 images: they are kept, the run partial. The next session makes the
    rest and is killed between moving its images and writing the joined manifest: the next
    command finds every image and record (nothing listed is lost, nothing made is unlisted),
    the run complete, and download ends it verified, with its gallery."""
    from imggenhub.run import jobs
    from imggenhub.backends.local import LocalBackend
    from imggenhub.run.lifecycle import RunState
    from imggenhub.job.resolve import build_job
    from imggenhub.job.spec import parse_settings, prompts_from_flags

    job = build_job(parse_settings(model="tiny-random", seed=5, num_images=6),
                    prompts_from_flags(["a fox"]))
    run = jobs.start(job, "local", tmp_path / "out", None, lambda m: None)
    local = LocalBackend()
    run.state = RunState.RUNNING
    runs.save(run)
    _engine_left(run, {0, 1, 2}, merged=False)  # Ctrl-C: the engine never merged
    run = local._keep_what_was_made(run, lambda m: None)
    assert (run.state, run.images_fetched) == (RunState.PARTIAL, 3)
    assert [r["index"] for r in artifacts.read_manifest(tmp_path / "out")["images"]] == [0, 1, 2]

    run = local.render_rest(run, lambda m: None)  # resume: the next session, the rest only
    run.state = RunState.RUNNING
    runs.save(run)
    _engine_left(run, {3, 4, 5}, merged=True)
    run.state = RunState.COMPLETE
    runs.save(run)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # the kill lands after the images moved
        m.setattr(artifacts, "write_manifest", killed)
        with pytest.raises(KeyboardInterrupt):
            local.fetch(run, lambda m: None)
    assert len(list((tmp_path / "out").glob("*.png"))) == 6
    assert [r["index"] for r in artifacts.read_manifest(tmp_path / "out")["images"]] == [0, 1, 2]
    run = jobs.advance(runs.load(run.run_id), "download", lambda m: None)  # the next command
    manifest = artifacts.read_manifest(tmp_path / "out")
    assert [r["index"] for r in manifest["images"]] == list(range(6)) and manifest["complete"]
    assert run.state == RunState.DOWNLOADED and run.images_fetched == 6
    assert artifacts.verify(tmp_path / "out") == [] and (tmp_path / "out" / "gallery.html").exists()


def _killed_after_last_image(tmp_path, on_event):
    """A local run of 3 images killed after the engine made all of them, before the notebook
    returned; then what poll or resume does first with such a run (the rescue)."""
    from imggenhub.backends.local import LocalBackend
    from imggenhub.job.resolve import build_job
    from imggenhub.job.spec import parse_settings, prompts_from_flags
    from imggenhub.run import jobs
    from imggenhub.run.lifecycle import RunState

    job = build_job(parse_settings(model="tiny-random", seed=5, num_images=3),
                    prompts_from_flags(["a fox"]))
    run = jobs.start(job, "local", tmp_path / "out", None, lambda m: None)
    run.state = RunState.RUNNING
    runs.save(run)
    _engine_left(run, {0, 1, 2}, merged=False)
    [run] = LocalBackend().wait([run], lambda _: on_event)
    return run


def test_a_local_run_killed_after_its_last_image_is_complete_not_partial(tmp_path):
    """Every image made, the process killed before the notebook returned: the next command
    finds the run complete (not partial, which would have nothing to make), and download
    ends it."""
    from imggenhub.run import jobs
    from imggenhub.run.lifecycle import RunState

    events = []
    run = _killed_after_last_image(tmp_path, events.append)
    assert run.state == RunState.COMPLETE and "every image was finished" in events[-1]
    run = jobs.advance(run, "resume", lambda m: None)
    assert run.state == RunState.DOWNLOADED and artifacts.verify(tmp_path / "out") == []


def test_images_a_local_rescue_moved_are_still_hashed_by_the_next_fetch(tmp_path):
    """A killed run's images moved home by the rescue, one of them changed on disk since
    (same size): the next command's fetch checks its sha256 and refuses it (review): the
    run failed (exit 1), since fetching again brings the same file."""
    from imggenhub.errors import DamagedOutputError
    from imggenhub.run import jobs

    run = _killed_after_last_image(tmp_path, lambda m: None)
    first = tmp_path / "out" / artifacts.read_manifest(tmp_path / "out")["images"][0]["file"]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(DamagedOutputError, match="does not match its sha256") as caught:
        jobs.advance(run, "resume", lambda m: None)
    assert caught.value.exit_code == 1


def test_a_local_run_with_images_home_keeps_its_one_output_folder(tmp_path, cli):
    """download --out would leave the images already moved behind (review): refused."""
    from imggenhub.run import jobs
    from imggenhub.backends.local import LocalBackend
    from imggenhub.run.lifecycle import RunState
    from imggenhub.job.resolve import build_job
    from imggenhub.job.spec import parse_settings, prompts_from_flags

    job = build_job(parse_settings(model="tiny-random", seed=5, num_images=4),
                    prompts_from_flags(["a fox"]))
    run = jobs.start(job, "local", tmp_path / "out", None, lambda m: None)
    run.state = RunState.RUNNING
    runs.save(run)
    _engine_left(run, {0, 1}, merged=False)
    LocalBackend().bring(run, tmp_path / "out", None, lambda m: None)  # two images home, then
    run.state = RunState.COMPLETE  # the rest made, and their download failed (disk full)
    runs.save(run)
    code, out, err = cli("download", run.run_id, "--out", str(tmp_path / "elsewhere"))
    assert code == 2 and "keeps one output folder" in err
    assert runs.load(run.run_id).out_dir == str((tmp_path / "out").resolve())


def test_kaggle_only_flags_on_the_local_backend_are_named_as_left_aside(tmp_path, cli):
    (tmp_path / "a-file").write_text("x")  # an --out that stops the run before any kernel
    code, out, err = cli("generate", "--backend", "local", "--model", "tiny-random", "-p", "x",
                         "--kernel-id", "me/k", "--internet", "--out", str(tmp_path / "a-file"),
                         cwd=tmp_path)
    assert code == 2
    assert "note: --kernel-id, --internet shape the Kaggle kernel; the local backend has none" in err
    code, out, err = cli("generate", "--backend", "local", "--model", "tiny-random", "-p", "x",
                         "--out", str(tmp_path / "a-file"), cwd=tmp_path)
    assert code == 2 and "note:" not in err


def test_a_local_run_whose_process_is_gone_is_shown_interrupted(tmp_path, cli):
    """status, runs and show find out that a local run recorded as running has no process
    (its lock is free) and say 'interrupted' with the command that continues it; while a
    process holds it, it is running."""
    from imggenhub.job.resolve import build_job
    from imggenhub.job.spec import parse_settings, prompts_from_flags
    from imggenhub.run import jobs
    from imggenhub.run.lifecycle import RunState

    job = build_job(parse_settings(model="tiny-random", seed=5, num_images=3),
                    prompts_from_flags(["a fox"]))
    run = jobs.start(job, "local", tmp_path / "out", None, lambda m: None)
    run.state = RunState.RUNNING
    runs.save(run)
    with runs.working_on(run):  # a process works on it: running, as recorded
        code, out, _ = cli("status", run.run_id)
        assert code == 0 and out.split()[1] == "running"
    hint = f"'imggenhub resume {run.run_id}' keeps what it finished"
    code, out, _ = cli("status", run.run_id)
    assert code == 0 and out.split()[1] == "interrupted" and hint in out
    code, out, _ = cli("status", run.run_id, "--json")
    data = json.loads(out)
    assert data["state"] == "running" and data["interrupted"] is True  # the record stays as is
    code, out, _ = cli("runs")
    assert f"{run.run_id}" in out and "interrupted" in out
    code, out, _ = cli("show", run.run_id)
    assert "interrupted on the local backend" in out and hint in out
