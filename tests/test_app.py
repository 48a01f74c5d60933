"""imggenhub app: the web page over the same runs. Its work (a form made a job by the CLI's
builders, uploads checked and kept by their content, a drawn mask made a picture, the
listening rules) is tested here directly; the page itself in headless Chromium through
Playwright against a real `imggenhub app` process on the local backend with the tiny
model (the `long` tier): compose and run, progress and pictures arriving, a hostile prompt
kept text, a run of the CLI listed, a mask drawn with the mouse reaching the engine, and
a request for a file outside the runs refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imggenhub.errors import SpecError

# how long the page may take to show what a step waits on: generous, as the second tier runs
# beside training on two busy cores (a wait ends as soon as what it waits for is there)
WAIT = 180_000


def test_a_host_beyond_this_machine_needs_auth(cli, tmp_path):
    code, out, err = cli("app", "--host", "0.0.0.0", "--no-open", cwd=tmp_path)
    assert code == 2 and "--host 0.0.0.0 lets other machines reach the app" in err
    assert "give --auth USER:PASSWORD" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("app", "--host", "0.0.0.0", "--auth", "nopassword", cwd=tmp_path)
    assert code == 2 and "--auth is USER:PASSWORD" in err
    from imggenhub.webapp import check_listen

    assert check_listen("127.0.0.1", None) is None and check_listen("::1", None) is None
    assert check_listen("0.0.0.0", "me:s3cret") == ("me", "s3cret")


def test_the_form_is_built_and_refused_as_the_cli_does():
    from imggenhub.webapp import service

    job = service.compose(service.Form(prompts="a red circle\n\n a blue square ", model="tiny-shapes",
                                       seed=3, num_images=2, steps=4))
    assert [p.prompt for p in job.prompts] == ["a red circle", "a blue square"]
    assert job.image_count == 4 and job.prompts[0].steps == 4
    for form, said in [(service.Form(prompts=""), "Write a prompt"),
                       (service.Form(prompts="x", model="no/such-model!"), "--model"),
                       (service.Form(prompts="x", width=63), "width"),
                       (service.Form(prompts="x", sweeps="colour=1,2"), "sweep")]:
        with pytest.raises(SpecError) as caught:
            service.compose(form)
        assert said in str(caught.value) and "\n" not in str(caught.value)


def test_uploads_are_checked_and_kept_by_their_content(tmp_path):
    from imggenhub.webapp import service

    picture = tmp_path / "p.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(picture)
    kept = service.keep_picture(picture)
    assert Path(kept).parent == service.uploads_dir() and service.keep_picture(picture) == kept
    (tmp_path / "not.png").write_bytes(b"<svg onload=alert(1)>")
    with pytest.raises(SpecError, match="not a picture imggenhub can read"):
        service.keep_picture(tmp_path / "not.png")
    huge = tmp_path / "huge.png"  # a header that says 10,000 x 10,000: refused unread
    Image.new("1", (10_000, 10_000)).save(huge)
    with pytest.raises(SpecError, match="megapixels"):
        service.keep_picture(huge)


def test_a_drawn_layer_becomes_a_mask_of_the_pictures_size():
    from imggenhub.webapp import service

    layer = np.zeros((32, 32, 4), np.uint8)
    layer[:, :10, :] = 255  # painted the left third
    mask = np.asarray(Image.open(service.mask_from_layers([layer], (64, 64))))
    assert mask.shape == (64, 64) and mask[:, :18].min() == 255 and mask[:, 22:].max() == 0
    assert service.mask_from_layers([np.zeros((32, 32, 4), np.uint8)], (64, 64)) is None
    # the note under the editor says what Run would send
    picture = np.zeros((32, 48, 3), np.uint8)
    assert service.describe_picture(None).startswith("No picture")
    said = service.describe_picture({"background": picture, "layers": [np.zeros((32, 48, 4))]})
    assert "48 x 32 picture, nothing painted" in said
    layer = np.zeros((32, 48, 4), np.uint8)
    layer[:, :12, 3] = 255
    assert "25% of it painted" in service.describe_picture({"background": picture,
                                                            "layers": [layer]})


# --- the page, in a browser -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    """`imggenhub app` as a user starts it, in its own process, this test's run store."""
    port = _free_port()
    exe = Path(sys.executable).with_name("imggenhub")
    private_tmp = tmp_path / "tmp"  # Gradio serves the system's temp folder: not /tmp here,
    private_tmp.mkdir()  # so that the runs' and the uploads' folders count on their own
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "TMPDIR": str(private_tmp)}
    process = subprocess.Popen([str(exe), "app", "--port", str(port), "--no-open"], cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url + "/config", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the app did not answer within 180 s"
            time.sleep(0.3)
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    from .test_gallery_browser import chromium

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 1400})
        tab.errors, tab.dialogs = [], []
        tab.on("pageerror", lambda e: tab.errors.append(str(e)))
        tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
        yield tab
        browser.close()


def _read(selector: str, what: str = "innerText") -> str:
    """A page read for wait_for_function, null-safe: the page mounts its parts one by one,
    and a throw ends a wait at once."""
    return f"(document.querySelector({selector!r})?.{what} || '')"


def _run_and_wait(page, timeout: float = 300) -> str:
    page.click("#run")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = page.input_value("#status textarea")
        if status.split("\n")[-1] == "done" or "error:" in status:
            return status
        time.sleep(0.3)
    raise AssertionError(f"the run did not end: {status}")


def _choose(page, dropdown: str, value: str) -> None:
    page.click(f"{dropdown} input")
    page.locator("ul[role=listbox] li", has_text=value).first.click()


@pytest.mark.long
def test_compose_run_watch_browse_compare_and_run_again(app_url, page, cli, tmp_path):
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#prompts textarea", timeout=WAIT)
    hostile = '<img src=x onerror="window.__pwned=1;alert(1)">'
    page.fill("#prompts textarea", f"a red circle\n{hostile}")
    page.fill("#seed input, #seed textarea", "3")
    page.fill("#width textarea, #width input", "wide")  # a bad field: its sentence beside it
    page.click("#run")
    page.wait_for_function(f"{_read('#width')}.includes("
                           "\"Width 'wide' is not a whole number\")", timeout=WAIT)
    assert "error: Width 'wide'" in page.input_value("#status textarea")
    page.fill("#width textarea, #width input", "")
    page.click("#estimate")  # before a run: its cost, as the backend says it
    page.wait_for_function(f"{_read('#status textarea', 'value')}.includes("
                           "'no GPU hours or dollars counted')", timeout=WAIT)
    status = _run_and_wait(page)
    assert status.endswith("\ndone"), status
    assert "image 2/2" in status  # the engine's progress, as it came
    page.wait_for_function("document.querySelectorAll('#made img').length >= 2", timeout=WAIT)
    assert page.evaluate("window.__pwned") is None and not page.dialogs and not page.errors
    run_id = status.split("\n")[0].split()[1]
    code, out, err = cli("runs", "--json", cwd=tmp_path)  # the app's run is the store's
    assert code == 0 and run_id in out
    manifest = json.loads(next((tmp_path / "outputs").glob(f"{run_id}/manifest.json")).read_text())
    assert [r["prompt"] for r in manifest["images"]] == ["a red circle", hostile]
    # a run of the command line shows in the app's list
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"  # outside the app's folder
    code, out, err = cli("generate", "--backend", "local", "--model", "tiny-random", "-p", "x",
                         "--out", str(elsewhere), "--json", cwd=tmp_path)
    assert code == 0, err
    theirs = json.loads(out)["run_id"]
    page.get_by_role("tab", name="Runs").click()
    page.click("#refresh")
    page.wait_for_function(f"{_read('#runs')}.includes({theirs!r})", timeout=WAIT)
    _choose(page, "#chosen", run_id)  # the page's own run: its text, a picture's settings
    page.wait_for_function(f"{_read('#about textarea', 'value')}.includes("
                           "'downloaded on local; 2 of 2 pictures home')", timeout=WAIT)
    page.wait_for_function("document.querySelectorAll('#browsed img').length >= 2",
                           timeout=WAIT)
    page.fill("#query textarea, #query input", "circle")  # the gallery's filter
    page.wait_for_function("document.querySelectorAll('#browsed img').length === 1",
                           timeout=WAIT)
    page.locator("#browsed img").first.click()
    page.wait_for_function(f"{_read('#settings')}.includes('seed')", timeout=WAIT)
    assert "a red circle" in page.locator("#settings").inner_text()
    page.click("#again")  # run again with changes: the form holds the run's job
    page.wait_for_function(f"{_read('#prompts textarea', 'value')}.length > 0",
                           timeout=WAIT)
    assert page.input_value("#prompts textarea") == f"a red circle\n{hostile}"
    assert page.input_value("#seed input, #seed textarea") == "3"
    # the same answer selects the Compose tab: on a busy machine the page can apply that
    # after the form's values, so wait for it before leaving for Compare
    page.get_by_role("tab", name="Compose", selected=True).wait_for(timeout=WAIT)
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#left input", state="visible", timeout=WAIT)
    _choose(page, "#left", run_id)
    _choose(page, "#right", theirs)
    page.wait_for_function("document.querySelectorAll('#left-pictures img').length >= 2 && "
                           "document.querySelectorAll('#right-pictures img').length >= 1",
                           timeout=WAIT)
    assert page.evaluate("window.__pwned") is None and not page.dialogs and not page.errors
    # nothing outside the app's files is served
    for path in ("/gradio_api/file=/etc/passwd", "/file=/etc/passwd",
                 f"/gradio_api/file={tmp_path}/outputs/{run_id}/manifest.json"):
        try:
            answer = urllib.request.urlopen(app_url + path, timeout=10)
            assert b"root:" not in answer.read() and path.endswith("passwd") is False, path
        except urllib.error.HTTPError as exc:
            assert exc.code in (403, 404), path


@pytest.mark.long
def test_a_mask_drawn_with_the_mouse_is_the_mask_the_engine_gets(app_url, page, tmp_path):
    """A red circle on white, the right part painted over with the brush, a green circle
    asked for: the mask the engine got is what was painted, the output changed inside it
    and kept the picture outside it (up to the tiny VAE's round trip)."""
    from imggenhub import shapes

    picture = tmp_path / "red.png"
    shapes.draw(shapes.Scene("red", "circle", "small", "top left")).save(picture)
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#prompts textarea", timeout=WAIT)
    # the editor's canvas is ready once it shows its zoom: a file given before that is lost
    # (a fresh clone's run once waited on it for good)
    zoom = f"{_read('#picture')}.match(/(\\d+)%/)"
    page.wait_for_function(f"{zoom} !== null", timeout=WAIT)
    empty_zoom = page.evaluate(f"{zoom}[1]")
    page.locator("#picture input[type=file]").first.set_input_files(str(picture))
    # the page's note under the editor is the server's reading of the editor's value: it
    # changes only once the editor has handed over what Run will send
    note = _read('#picture-note textarea', 'value')
    page.wait_for_function(f"{note}.includes('64 x 64 picture, nothing painted')",
                           timeout=WAIT)
    page.wait_for_function(f"{zoom} && {zoom}[1] !== {empty_zoom!r}",
                           timeout=WAIT)  # and the canvas has it, zoomed to fit
    box = page.locator("#picture canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx + 100, cy - 100)  # down the right side of the picture and back
    page.mouse.down()
    page.mouse.move(cx + 100, cy + 100, steps=20)
    page.mouse.move(cx + 60, cy + 100, steps=5)
    page.mouse.move(cx + 60, cy - 100, steps=20)
    page.mouse.up()
    page.wait_for_function(f"{note}.includes('% of it painted')", timeout=WAIT)
    page.fill("#prompts textarea", "a green circle at the bottom right on a white background")
    page.fill("#seed input, #seed textarea", "3")
    page.fill("#strength input[type=number]", "1")
    page.press("#strength input[type=number]", "Enter")
    status = _run_and_wait(page)
    assert status.endswith("\ndone"), status
    run_id = status.split("\n")[0].split()[1]
    from imggenhub.run import runs

    item = runs.document(runs.load(run_id))["prompts"][0]
    assert item["strength"] == 1.0
    mask = np.asarray(Image.open(item["mask_image"]).convert("L")) > 127
    assert mask.shape == (64, 64)
    assert mask[:, 52:].mean() > 0.9 and mask[:, :24].mean() < 0.05  # painted: the right part
    out = np.asarray(Image.open(next((tmp_path / "outputs" / run_id).glob("0001-*.png")))
                     .convert("RGB")).astype(float)
    given = np.asarray(Image.open(item["init_image"]).convert("RGB")).astype(float)
    change = np.abs(out - given).mean(axis=2)
    assert change[mask].mean() > 2 * change[~mask].mean(), (change[mask].mean(),
                                                            change[~mask].mean())


@pytest.mark.long
def test_a_port_already_taken_is_one_sentence(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exe = Path(sys.executable).with_name("imggenhub")
        done = subprocess.run([str(exe), "app", "--port", str(port), "--no-open"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert done.returncode == 2, done.stderr
    assert f"The app cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failed_run_is_described_and_the_page_resumes_it_as_the_cli_does(hf_jobs, cli, tmp_path):
    """The Runs tab's text for a failed run: its state, the failure's sentence and the log's
    last lines, what resume does next; its Resume button runs the CLI's resume (here on a
    thread, as the page does) to the end."""
    from imggenhub.webapp import service

    hf_jobs.jobs.job_env = [{"IMGGENHUB_ENGINE_FAIL_AFTER": "1"}]
    code, out, err = cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--num-images", "2", "--json", cwd=tmp_path)
    assert code == 1
    run_id = json.loads(out)["run_id"]
    said = service.describe(run_id)
    assert said.startswith(f"run {run_id}: error on hf-jobs; 1 of 2 pictures home")
    assert "failed: " in said and "injected failure after 1 image" in said
    assert "its log ends with:" in said and said.endswith("resume: fetch what it kept, push the rest, go on")
    runner = service.Runner()
    watch = runner.command(run_id, "resume")
    deadline = time.monotonic() + 60
    while not watch.done:
        assert time.monotonic() < deadline, watch.lines
        time.sleep(0.1)
    assert watch.error is None, watch.error
    assert service.describe(run_id).startswith(f"run {run_id}: downloaded on hf-jobs; 2 of 2")
    assert [p for p, _ in service.pictures(run_id)] and service.settings_of(run_id, 1)["index"] == 1
    again = service.form_of(run_id)
    assert again["prompts"] == "a" and again["model"] == "tiny-random" and again["num_images"] == 2
    assert service.compose(service.Form(**{k: again[k] for k in (
        "prompts", "model", "num_images", "seed")})).image_count == 2


def test_the_pace_and_time_left_come_from_the_engines_own_lines():
    from imggenhub.webapp.service import pace

    assert pace(["kernel started in 0.5s"]) is None
    lines = ["image 1/10 0001-a.png in 2.00s (elapsed 6.0s)", "image 3/10 0003-a.png in 2.00s (elapsed 12.0s)"]
    assert pace(lines) == "3 of 10 pictures, 4.0 s a picture, about 28 s left"
    assert pace(["image 2/100 x.png in 3.00s (elapsed 8.0s)"]) == \
        "2 of 100 pictures, 4.0 s a picture, about 7 min left"


def test_the_estimate_before_a_run_is_the_backends_own_sentence(hf_jobs, emulator, tmp_path):
    """The Estimate button: what a push or a start would say of the cost, nothing sent."""
    from imggenhub.webapp import service

    form = dict(prompts="a red circle", model="tiny-random", num_images=4)
    assert "runs it on this machine: no GPU hours or dollars counted" in service.estimate_of(
        service.Form(**form, backend="local"))
    said = service.estimate_of(service.Form(**form, backend="hf-jobs", flavor="a10g-small"))
    assert "estimate: 1 job on a10g-small ($1.00/h)" in said
    emulator.gpu_quota_hours = 30.0
    said = service.estimate_of(service.Form(**form, backend="kaggle"))
    assert said.startswith("estimate: about ") and "left this week" in said
    assert not hf_jobs.jobs.jobs and not [m for m, _ in emulator.calls if m == "SaveKernel"]
    with pytest.raises(SpecError, match="is not a Hugging Face Jobs flavor"):
        service.estimate_of(service.Form(**form, backend="hf-jobs", flavor="t4-huge"))


def test_a_runs_pictures_are_filtered_and_sorted_as_its_gallery_does(tmp_path):
    from imggenhub.run import runs
    from imggenhub.run.runs import Run
    from imggenhub.webapp import service

    from .test_gallery_browser import run_folder

    out = tmp_path / "out"
    run_folder(out, 5, missing=1)  # seeds 1000, 999...; scores 20, 21...; the second not home
    run = runs.save(Run(run_id="20261204-000000-abcdef12", backend="local", job_id="abcdef12",
                        image_count=5, out_dir=str(out)))

    def indices(*how):
        return [r["index"] for _, r in service.home(run.run_id, *how)]

    assert indices() == [0, 2, 3, 4]
    assert indices("red fox") == [3] and indices("LIGHTHOUSE ") == [4] and indices("fox") == [2, 3]
    assert indices("", "seed") == [4, 3, 2, 0]  # the lowest seed first
    assert indices("", "score") == [4, 3, 2, 0]  # the best score first
    assert service.settings_of(run.run_id, 0, "", "seed")["seed"] == 996
    shown = [Path(p) for p, _ in service.pictures(run.run_id)]
    assert all(p.parent == service.shown_dir() for p in shown) and len(set(shown)) == 4


def test_the_users_trained_loras_are_offered_and_used_by_name(tmp_path):
    from imggenhub.run import trained
    from imggenhub.webapp import service

    weights = tmp_path / "my-dog.safetensors"
    weights.write_bytes(b"weights")  # read by the engine, not by the form
    trained.register("my-dog", weights, {"method": "lora", "model": "tiny-random"})
    trained.register("my-word", weights, {"method": "textual-inversion", "token": "<w>"})
    trained.register("gone", tmp_path / "nothing.safetensors", {"method": "lora"})
    assert service.trained_loras() == ["my-dog"]
    job = service.compose(service.Form(prompts="a dog", model="tiny-random", trained=["my-dog"],
                                       loras=""))
    (lora,) = job.loras
    assert lora.local and Path(lora.ref) == Path(weights).resolve()


@pytest.mark.parametrize("form, field", [
    (dict(prompts=""), "prompts"), (dict(prompts="x", width=63), "width"),
    (dict(prompts="x", steps=0), "steps"), (dict(prompts="x", model="no/such model"), "model"),
    (dict(prompts="x", sweeps="colour=1,2"), "sweeps"), (dict(prompts="x", num_images=0), "num_images"),
    (dict(prompts="x", strength=1.5, init_image=str(Path(__file__))), "strength"),
    (dict(prompts="x", loras="/nowhere/style.safetensors"), "loras")])
def test_an_error_is_shown_beside_the_field_it_names(form, field):
    from imggenhub.webapp import service

    with pytest.raises(SpecError) as caught:
        service.compose(service.Form(**form))
    assert service.field_of(str(caught.value)) == field, str(caught.value)
