"""The training script still trains: scripts/train_tiny_shapes.py from nothing on a short
schedule (2,000 scenes, 600 VAE steps, 3,000 UNet steps of 16: about 10 minutes on 2 cores),
then the shapes checker reads what its VAE gives back and what the model it wrote draws.
Marked `training`: the suite leaves it out (pyproject.toml's `-m "not training"`); CI runs
it after the suite, and so does `bash scripts/test.sh -m training`."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.training
@pytest.mark.timeout(2400)  # minutes of training; more on a busy machine
def test_the_script_trains_a_model_that_draws_the_asked_colour_and_shape(tmp_path, monkeypatch):
    out = tmp_path / "tiny-shapes"
    monkeypatch.setattr(sys, "argv", [
        "train_tiny_shapes.py", "--out", str(out), "--images", "2000", "--vae-steps", "600",
        "--unet-steps", "3000", "--batch", "16", "--eval", "100",
        # both cores: the suite's one-thread rule (conftest) is for many tests at once; the
        # training checks end with this one alone (the figures are the same on one thread)
        "--threads", "2"])
    runpy.run_path(str(REPO / "scripts" / "train_tiny_shapes.py"), run_name="__main__")
    made = json.loads((out / "training.json").read_text())
    assert made["args"]["unet_steps"] == 3000 and made["seconds"]["all"] > 0
    # measured (one thread): round trip 100 % / 88 %; held-out prompts colour 95 %, shape
    # 63 %; training prompts 96 % / 93 % (chance: 1 in 6 for colour, 1 in 3 for shape).
    # The shipped model (the full schedule) reads 99 % / 71 % on 400 held-out pictures.
    assert made["vae_round_trip"]["colour"] >= 0.9 and made["vae_round_trip"]["shape"] >= 0.7
    assert made["training"]["colour"] >= 0.85 and made["training"]["shape"] >= 0.8, made
    assert made["held-out"]["colour"] >= 0.85 and made["held-out"]["shape"] >= 0.5, made
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out)  # it loads as any diffusers folder
    assert pipe.tokenizer.tokenize("a red circle") == ["a</w>", "red</w>", "circle</w>"]


@pytest.mark.training
def test_a_v_prediction_model_is_saved_with_a_scheduler_that_predicts_v(tmp_path, monkeypatch):
    # the option measured in docs/testing.md (not the shipped recipe): a UNet trained on v
    # saved beside a scheduler that reads its output as noise would draw nothing
    out = tmp_path / "v"
    monkeypatch.setattr(sys, "argv", [
        "train_tiny_shapes.py", "--out", str(out), "--images", "32", "--vae-steps", "2",
        "--unet-steps", "2", "--eval", "0", "--prediction", "v_prediction"])
    runpy.run_path(str(REPO / "scripts" / "train_tiny_shapes.py"), run_name="__main__")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert json.loads((out / "training.json").read_text())["args"]["prediction"] == "v_prediction"
