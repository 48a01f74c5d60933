"""`imggenhub show`: a run at a glance, in words and as JSON; the contact sheet inline
where the terminal shows images."""

from __future__ import annotations

import base64
import json

from imggenhub.run import runs
from imggenhub.outputs import sheets, artifacts

from .test_gallery_browser import run_folder


def test_show_sums_up_a_run(cli, tmp_path, monkeypatch):
    run_folder(tmp_path / "out", 5, not_made=1)
    sheets.write(tmp_path / "out", artifacts.read_manifest(tmp_path / "out"))
    runs.save(runs.Run(run_id="r-show", name="nightly", backend="kaggle", job_id="j",
                       image_count=6, out_dir=str(tmp_path / "out"), state="partial",
                       kernel_ref="me/batch", version=3, estimate_hours=0.5, engine_hours=0.4))
    code, out, err = cli("show", "r-show")
    assert code == 0, err
    assert "r-show (nightly)" in out and "partial on the kaggle backend" in out
    assert "5 of 6 here" in out and "me/batch v3" in out and "grid.png" in out
    assert "CLIP score" in out and "estimated 0.5, engine 0.4" in out
    code, out, err = cli("show", "nightly", "--json")
    info = json.loads(out)
    assert info["images_here"] == 5 and info["sheets"] == ["grid.png"] and info["score_mean"] > 0
    # a kitty terminal gets the sheet inline; another terminal is told to open the gallery
    monkeypatch.setenv("KITTY_WINDOW_ID", "1")
    code, out, err = cli("show", "r-show", "--thumbnails")
    assert "\033_Ga=T,f=100," in out
    payload = "".join(part.split(";", 1)[1] for part in out.split("\033_G")[1:]).replace("\033\\", "")
    assert base64.b64decode(payload.strip()) == (tmp_path / "out" / "grid.png").read_bytes()
    monkeypatch.delenv("KITTY_WINDOW_ID")
    monkeypatch.setenv("TERM", "foot")  # a sixel terminal
    code, out, err = cli("show", "r-show", "--thumbnails")
    assert "\033Pq" in out and "\033\\" in out
    monkeypatch.setenv("TERM", "xterm")
    code, out, err = cli("show", "r-show", "--thumbnails")
    assert "this terminal shows no images" in out


def test_sixel_draws_the_sheet_band_by_band(tmp_path):
    """The sixel text decodes back to the picture: each colour's run of characters sets the
    rows of a six-row band where that colour is."""
    import re

    from PIL import Image

    from imggenhub.outputs import show

    picture = Image.new("RGB", (10, 12), (255, 0, 0))
    for x in range(10):
        for y in range(6, 12):
            picture.putpixel((x, y), (0, 0, 255) if x < 5 else (255, 0, 0))
    picture.save(tmp_path / "p.png")
    text = show.sixel(tmp_path / "p.png")
    assert text.startswith("\033Pq\"1;1;10;12") and text.rstrip().endswith("\033\\")
    colours = dict(re.findall(r"#(\d+);2;(\d+;\d+;\d+)", text))
    red = next(c for c, rgb in colours.items() if rgb == "100;0;0")
    blue = next(c for c, rgb in colours.items() if rgb == "0;0;100")
    body = text[text.index("#", text.index(f"#{max(colours, key=int)};2;") + 3):]
    bands = body.split("-")[:2]

    def expand(runs):
        return re.sub(r"!(\d+)(.)", lambda m: m.group(2) * int(m.group(1)), runs)

    first = dict(re.findall(r"#(\d+)([^#$]*)", bands[0]))
    assert expand(first[red]) == "~" * 10  # band 1: all six rows red
    second = dict(re.findall(r"#(\d+)([^#$]*)", bands[1]))
    assert expand(second[blue]) == "~" * 5 + "?" * 5 and expand(second[red]) == "?" * 5 + "~" * 5


def test_a_run_with_no_images_yet_shows_its_model_and_runs_json_its_creation(
        emulator, cli, tmp_path, monkeypatch):
    emulator.stop()  # deploy renders, sends nothing: a run with no manifest yet
    monkeypatch.setenv("IMGGENHUB_RETRY_MAX_WAIT", "0.1")
    code, out, err = cli("deploy", "--model", "tiny-random", "-p", "a fox", "--timeout", "1",
                         cwd=tmp_path)
    assert code == 5, err
    code, out, err = cli("show", "--json")
    assert code == 0 and json.loads(out)["model"] == "tiny-random"
    code, out, err = cli("runs", "--json")
    [row] = json.loads(out)
    assert row["state"] == "rendered" and row["created"] == runs.load().created
