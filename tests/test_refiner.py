"""SDXL base + refiner (the ensemble of experts) and Kandinsky 2.2, on tiny SDXL-shaped and
Kandinsky-shaped pipelines built offline: the flags are checked before anything runs, the
refiner shares the base's second text encoder and VAE, the steps are split as asked and
recorded; Kandinsky's prior and decoder honour negative prompts and sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imggenhub import engine
from imggenhub.errors import SpecError
from imggenhub.job.notebook import read_job_document
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags

from .test_img2img import picture


def job(**flags):
    prompts = flags.pop("prompts", ["a lighthouse"])
    return build_job(parse_settings(seed=1, gpu=False, **flags), prompts_from_flags(prompts))


def test_a_bare_refiner_is_the_models_own_and_the_start_defaults_to_0_8():
    assert job(model="sdxl", refiner="default").refiner == {
        "id": "stabilityai/stable-diffusion-xl-refiner-1.0", "start": 0.8}
    assert job(model="tiny-sdxl", refiner="default", refiner_start=0.7).refiner == {
        "id": "tiny-random-sdxl-refiner", "start": 0.7}
    assert job(model="sdxl", refiner="me/my-refiner").refiner["id"] == "me/my-refiner"
    assert job(model="sdxl").refiner is None


@pytest.mark.parametrize("flags,words", [
    ({"model": "sd15", "refiner": "default"}, "not an SDXL model"),
    ({"model": "kandinsky-2.2", "refiner": "default"}, "not an SDXL model"),
    ({"model": "sdxl", "refiner_start": 0.5}, "applies with --refiner"),
    ({"model": "sdxl", "refiner": "not a repo"}, "neither a Hugging Face model id"),
    ({"model": "tiny-sdxl", "refiner": "stabilityai/stable-diffusion-xl-refiner-1.0"}, "does not fit"),
    ({"model": "sdxl", "refiner": "tiny-random-sdxl-refiner"}, "does not fit"),
    ({"model": "sdxl", "refiner": "default", "steps": 3, "refiner_start": 0.9}, "leave the refiner no step"),
    ({"model": "sdxl", "refiner": "default", "steps": 1}, "use at least"),
    ({"model": "tiny-kandinsky", "lora": ["owner/style"]}, "LoRAs and embeddings apply to SD and SDXL"),
])
def test_bad_refiner_and_kandinsky_combinations_are_one_sentence(flags, words):
    with pytest.raises(SpecError, match=words):
        job(**flags)


def test_refiner_and_image_to_image_do_not_mix_and_kandinsky_has_no_image_to_image(tmp_path):
    img = str(picture(tmp_path / "a.png", 1))
    with pytest.raises(SpecError, match="text-to-image prompts"):
        job(model="tiny-sdxl", refiner="default", init_image=img)
    with pytest.raises(SpecError, match="not for tiny-kandinsky"):
        job(model="tiny-kandinsky", init_image=img)


@pytest.mark.parametrize("argv,expected", [
    (["--refiner", "-p", "x"], "tiny-random-sdxl-refiner"),
    (["-p", "x", "--refiner"], "tiny-random-sdxl-refiner"),
    (["--refiner", "tiny-random-sdxl-refiner", "-p", "x"], "tiny-random-sdxl-refiner"),
])
def test_refiner_takes_an_optional_model_on_the_command_line(cli, tmp_path, argv, expected):
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "--model", "tiny-sdxl", *argv,
                         cwd=tmp_path)
    assert code == 0, err
    doc = read_job_document((tmp_path / "r" / "imggenhub-job.ipynb").read_text())
    assert doc["refiner"] == {"id": expected, "start": 0.8}


@pytest.mark.slow
def test_the_refiner_shares_the_base_components_and_takes_the_last_steps(tmp_path):
    base = engine.build_tiny_sdxl_pipeline()
    refiner = engine.load_refiner(base, {"id": engine.TINY_SDXL_REFINER, "start": 0.8}, "cpu",
                                  __import__("torch").float32)
    assert refiner.vae is base.vae and refiner.text_encoder_2 is base.text_encoder_2
    assert refiner.unet is not base.unet and refiner.scheduler is not base.scheduler

    def run(name, **flags):
        doc = job(model="tiny-sdxl", negative_prompt="blurry", **flags).document()
        engine.run_worker(doc, tmp_path / name)
        record = engine.merge_manifest(tmp_path / name, doc)["images"][0]
        return record, np.asarray(Image.open(tmp_path / name / record["file"])).astype(float)

    plain, a = run("plain", steps=10)
    refined, b = run("refined", steps=10, refiner="default")
    # the UNet steps each pipeline ran, counted: 8 by the base, 2 by the refiner
    assert refined["refiner"] == {"model": "tiny-random-sdxl-refiner", "start": 0.8,
                                  "base_steps": 8, "refiner_steps": 2}
    # random weights: no look to check, but the more steps the refiner takes over, the further
    # the image moves from what the base alone makes
    _, early = run("early", steps=10, refiner="default", refiner_start=0.3)
    assert "refiner" not in plain and not np.array_equal(a, b)
    assert np.abs(a - early).mean() > 3 * np.abs(a - b).mean(), (np.abs(a - early).mean(),
                                                                  np.abs(a - b).mean())
    again, c = run("again", steps=10, refiner="default")
    assert np.array_equal(b, c)  # reproducible from the recorded seed
    more, _ = run("more", steps=25, refiner="default", refiner_start=0.6)
    assert (more["refiner"]["base_steps"], more["refiner"]["refiner_steps"]) == (15, 10)
    text = Image.open(tmp_path / "refined" / refined["file"]).text["parameters"]
    assert "Refiner: tiny-random-sdxl-refiner, Refiner switch at: 0.8" in text


@pytest.mark.slow
def test_kandinsky_honours_negative_prompts_and_sizes(tmp_path):
    def run(name, **flags):
        doc = job(model="tiny-kandinsky", **flags).document()
        engine.run_worker(doc, tmp_path / name)
        record = engine.merge_manifest(tmp_path / name, doc)["images"][0]
        return np.asarray(Image.open(tmp_path / name / record["file"])).astype(float)

    plain = run("plain", width=64, height=48)
    assert plain.shape == (48, 64, 3)
    assert run("square", width=32, height=32).shape == (32, 32, 3)
    negative = run("negative", width=64, height=48, negative_prompt="blurry")
    assert np.abs(plain - negative).mean() > 1  # the prior takes the negative prompt
    assert np.array_equal(plain, run("again", width=64, height=48))
