"""The training script still trains: scripts/train_tiny_shapes.py from nothing on a short
schedule (2,000 scenes, 600 VAE steps, 3,000 UNet steps of 16: about 12 minutes on 2 cores),
then the shapes checker reads what its VAE gives back and what the model it wrote draws.
Marked `training`: the suite leaves those out (pyproject.toml's `-m "not training"`); CI
runs them after the suite, and so does `bash scripts/test.sh -m training`. The last test,
of the VAE's cut batches, is quick and in the suite."""

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
        # the VAE's own six colours, no cut batches: the shipped recipe's extra pictures need
        # its 1,500 steps (at 600 its round trip read the colour in 28.5 %)
        "--vae-colours", "named", "--vae-stitch", "0",
        # both cores: the suite's one-thread rule (conftest) is for many tests at once; the
        # training checks end with this one alone (the figures are the same on one thread)
        "--threads", "2"])
    runpy.run_path(str(REPO / "scripts" / "train_tiny_shapes.py"), run_name="__main__")
    made = json.loads((out / "training.json").read_text())
    assert made["args"]["unet_steps"] == 3000 and made["seconds"]["all"] > 0
    # measured (the same with one thread or two; seeded): round trip 100 % / 93 %; at the
    # preset's guidance, 2, held-out prompts colour 100 %, shape 78 %, training prompts
    # 100 % / 87 % (at 7: 93 / 86 % and 100 / 82 %; chance: 1 in 6 for colour, 1 in 3 for
    # shape). The held-out goal, 90 / 70 %, holds on this short schedule too; the shipped
    # model (the full schedule) reads 100 / 96 % over 400 held-out pictures at 2.
    assert made["vae_round_trip"]["colour"] >= 0.9 and made["vae_round_trip"]["shape"] >= 0.8
    assert made["training"]["colour"] >= 0.9 and made["training"]["shape"] >= 0.75, made
    assert made["held-out"]["colour"] >= 0.9 and made["held-out"]["shape"] >= 0.7, made
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


def test_the_vae_learns_on_latents_cut_together_as_inpainting_decodes_them():
    # a quarter of the batch: one picture's latents up to a straight cut, another's beyond
    # it, and the target picture cut at the same place, four pixels to a latent (what the
    # decoder gets when inpainting keeps one picture's latents beside drawn ones)
    import torch

    stitched = runpy.run_path(str(REPO / "scripts" / "train_tiny_shapes.py"))["stitched"]
    z = torch.arange(16.0)[:, None, None, None].expand(16, 4, 16, 16).clone()
    x = torch.arange(16.0)[:, None, None, None].expand(16, 3, 64, 64).clone()
    cut_z, cut_x = stitched(z, x, torch.Generator().manual_seed(3), 0.25)
    kept = [*range(4), *range(8, 16)]
    assert torch.equal(cut_z[kept], z[kept]) and torch.equal(cut_x[kept], x[kept])
    band = torch.arange(16)
    for i in range(4, 8):
        assert cut_z[i].unique().tolist() == [i - 4, i]  # its own latents and another's
        assert (cut_z[i] == cut_z[i, :1]).all()  # the same cut in every latent channel
        own = cut_z[i, 0] == i
        width, height = int(own.all(dim=0).sum()), int(own.all(dim=1).sum())
        assert (torch.equal(own, (band < width)[None, :].expand(16, 16)) and 0 < width < 16
                or torch.equal(own, (band < height)[:, None].expand(16, 16)) and 0 < height < 16)
        assert torch.equal(cut_x[i] == i,
                           own.repeat_interleave(4, 0).repeat_interleave(4, 1).expand(3, 64, 64))
