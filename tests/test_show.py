"""`imggenhub show`: a run at a glance, in words and as JSON; the contact sheet inline
where the terminal shows images."""

from __future__ import annotations

import base64
import json

from imggenhub import runs, sheets, artifacts

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
    monkeypatch.setenv("TERM", "xterm")
    code, out, err = cli("show", "r-show", "--thumbnails")
    assert "this terminal shows no images" in out
