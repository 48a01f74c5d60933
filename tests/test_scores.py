"""CLIP scores with a tiny random CLIP built from configs: the figure is the formula
(100 x the cosine of the image and prompt embeddings, floored at 0) checked by hand on the
same embeddings; --score records each image's and the run's mean; `imggenhub score DIR`
scores PNGs that carry their prompt (ours or A1111's) and fills a manifest's scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imggenhub.outputs import artifacts
from imggenhub import engine
from imggenhub.run import runs
from imggenhub.errors import SpecError
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags


def picture(seed):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (32, 32, 3), dtype=np.uint8))


@pytest.mark.slow
def test_the_score_is_the_floored_cosine_times_100():
    import torch

    scorer = engine.Scorer(engine.TINY_CLIP)
    images, prompts = [picture(i) for i in range(6)], ["a cat", "a dog", "snow", "x", "y", "z"]
    got = scorer.scores(images, prompts)
    # by hand, from the model itself: embeddings, their norms, the dot product
    with torch.no_grad():
        pixels = scorer.processor(images=images, return_tensors="pt")["pixel_values"]
        tokens = scorer.tokenizer(prompts, padding=True, return_tensors="pt")
        a = engine.scoring._features(scorer.model.get_image_features(pixel_values=pixels))
        b = engine.scoring._features(scorer.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
    cos = torch.nn.functional.cosine_similarity(a, b).tolist()
    assert got == pytest.approx([max(0.0, 100 * c) for c in cos], abs=1e-3)
    # the floor is exercised (the tiny random CLIP's cosines: some negative under transformers
    # 5, all of them under 4, whose random initialisation differs)
    assert all(0 <= s <= 100 for s in got) and any(c < 0 for c in cos)
    assert [s > 0 for s in got] == [c > 0 for c in cos]


@pytest.mark.slow
def test_score_records_each_image_and_the_mean(tmp_path):
    doc = build_job(parse_settings(model="tiny-random", seed=2, score=True,
                                   score_model="tiny-random-clip", num_images=3, gpu=False),
                    prompts_from_flags(["a fox"])).document()
    engine.run_worker(doc, tmp_path / "o")
    manifest = engine.merge_manifest(tmp_path / "o", doc)
    scores = [r["score"] for r in manifest["images"]]
    assert len(scores) == 3 and all(0 <= s <= 100 for s in scores)
    assert manifest["score_mean"] == pytest.approx(sum(scores) / 3, abs=1e-3)
    assert manifest["score_model"] == "tiny-random-clip"


def test_score_flags_are_checked():
    with pytest.raises(SpecError, match="applies with --score"):
        build_job(parse_settings(model="tiny-random", score_model="x/y"), prompts_from_flags(["a"]))
    with pytest.raises(SpecError, match="not a Hugging Face model id"):
        build_job(parse_settings(model="tiny-random", score=True, score_model="no good"),
                  prompts_from_flags(["a"]))
    job = build_job(parse_settings(model="tiny-random", score=True), prompts_from_flags(["a"]))
    assert job.score == "openai/clip-vit-large-patch14"


@pytest.mark.slow
def test_score_command_reads_our_pngs_and_a1111s(cli, tmp_path):
    from imggenhub.outputs.gallery import read_data

    folder = tmp_path / "pngs"
    folder.mkdir()
    ours = {"index": 0, "prompt": "a red fox", "seed": 1, "steps": 4, "scheduler": "DDIM",
            "guidance": 5.0, "width": 32, "height": 32, "model": "tiny-random"}
    engine.save_png(picture(1), folder / "0001-a.png", ours)
    info = PngInfo()
    info.add_text("parameters", "a blue bird <lora:style:0.5>\nNegative prompt: blur\nSteps: 20")
    picture(2).save(folder / "theirs.png", pnginfo=info)
    picture(3).save(folder / "no-prompt.png")
    data = (folder / "0001-a.png").read_bytes()
    (folder / "manifest.json").write_text(json.dumps({"job_id": "j", "images": [
        {**ours, "file": "0001-a.png", "bytes": len(data), "sha256": artifacts.sha256_of(folder / "0001-a.png")}]}))
    picture(4).save(folder / "grid.png")  # the views this program writes: never scored
    picture(5).save(folder / "sweep-01-ddim.png")
    code, out, err = cli("score", str(folder), "--model", "tiny-random-clip", "--json")
    assert code == 0, err
    assert "(1 PNG without a prompt is skipped)" in err  # no-prompt.png, not the views
    found = json.loads(out)
    assert [(r["file"], r["prompt"]) for r in found["images"]] == [
        ("0001-a.png", "a red fox"), ("theirs.png", "a blue bird")]
    manifest = artifacts.read_manifest(folder)
    assert manifest["images"][0]["score"] == found["images"][0]["score"]
    assert read_data((folder / "gallery.html").read_text())["images"][0]["score"] == \
        found["images"][0]["score"]
    # a run, by its name (or id): its output folder
    runs.save(runs.Run(run_id="20260101-000000-abcd", name="mine", backend="kaggle",
                       job_id="j", image_count=1, out_dir=str(folder)))
    code, out, err = cli("score", "mine", "--model", "tiny-random-clip", "--json")
    assert code == 0 and json.loads(out)["images"] == found["images"], err
    code, out, err = cli("score", str(tmp_path / "nothing"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "neither a folder nor a run" in err


def test_score_offline_without_the_model_is_one_sentence_and_an_empty_folder_loads_nothing(
        cli, tmp_path):
    """The Hub out of reach (HF_HUB_OFFLINE here) and the model not cached: exit 5 with a
    sentence, at once, not an internal error; no image to score: no model is loaded."""
    import time

    folder = tmp_path / "pngs"
    folder.mkdir()
    code, out, err = cli("score", str(folder), "--model", "nobody/no-such-clip")
    assert code == 0 and "no image with a prompt to score" in out
    engine.save_png(picture(1), folder / "0001-a.png", {
        "index": 0, "prompt": "a red fox", "seed": 1, "steps": 4, "scheduler": "DDIM",
        "guidance": 5.0, "width": 32, "height": 32, "model": "tiny-random"})
    picture(2).save(folder / "no-prompt.png")
    t0 = time.monotonic()
    code, out, err = cli("score", str(folder), "--model", "nobody/no-such-clip")
    assert code == 5, err
    assert "The CLIP model 'nobody/no-such-clip' could not be loaded: it is not in the " \
           "Hugging Face cache here and the Hub could not be reached" in err
    assert "1 PNG without a prompt is skipped" in err and "Internal error" not in err
    assert err.strip().splitlines()[-1].startswith("Error: ") and time.monotonic() - t0 < 30

    empty = tmp_path / "not-a-clip"  # a folder, but no model in it: bad input, not the network
    empty.mkdir()
    code, out, err = cli("score", str(folder), "--model", str(empty))
    assert code == 2 and "could not be loaded" in err and "Hub could not be reached" not in err
