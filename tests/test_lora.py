"""LoRA: a LoRA made on the tiny UNet with peft and saved as .safetensors, loaded with
diffusers' loader, weighted, fused, and recorded in the manifest and each PNG."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from PIL import Image

from imggenhub import engine
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags

from .test_kaggle import SPEC


def make_lora(folder):
    """A LoRA on the tiny UNet's attention, made with peft, saved as .safetensors in folder."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = engine.build_tiny_random_pipeline()
    torch.manual_seed(5)  # non-zero LoRA weights, so that it changes the images
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        weight_name="my-style.safetensors")
    return folder / "my-style.safetensors"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    return make_lora(tmp_path_factory.mktemp("lora"))


@pytest.mark.parametrize("value,words", [
    ("nothing-here.safetensors", "the file nothing-here.safetensors is not found here"),
    ("./loras/gone.safetensors", "is not found here"),
    ("owner/name/../x.safetensors", "neither"),
    ("just a name", "neither a .safetensors file here, a Hub repo"),
    ("owner/name:99", "outside -10..10"),
])
def test_bad_lora_refs_are_one_sentence(cli, tmp_path, value, words):
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "-p", "x", "--lora", value,
                         cwd=tmp_path)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_hub_loras_parse_and_render_refuses_a_local_one(cli, tmp_path):
    job = build_job(parse_settings(model="tiny-random", seed=1,
                                   lora=["owner/style", "owner/style/w.safetensors:0.5"]),
                    prompts_from_flags(["x"]))
    assert [(l.ref, l.scale, l.local) for l in job.loras] == [
        ("owner/style", 1.0, False), ("owner/style/w.safetensors", 0.5, False)]
    (tmp_path / "mine.safetensors").write_bytes(b"x")
    code, out, err = cli("render", "--out", str(tmp_path / "r"), *SPEC, "--lora",
                         str(tmp_path / "mine.safetensors"), cwd=tmp_path)
    assert code == 2 and "imggenhub deploy" in err


@pytest.mark.slow
def test_scale_0_is_no_lora_scale_1_is_another_image_and_both_are_recorded(lora_file, tmp_path):
    def image(lora):
        job = build_job(parse_settings(model="tiny-random", seed=1, steps=2, gpu=False,
                                       lora=lora), prompts_from_flags(["a fox"])).document()
        folder = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        engine.run_worker(job, folder)
        manifest = engine.merge_manifest(folder, job)
        record = manifest["images"][0]
        png = Image.open(folder / record["file"])
        return np.asarray(png).astype(float), manifest, record, png

    none, _, plain, _ = image(None)
    zero, _, _, _ = image([f"{lora_file}:0"])
    one, manifest, record, png = image([f"{lora_file}:1"])
    assert "loras" not in plain
    assert np.array_equal(none, zero)
    assert np.abs(none - one).mean() > 0.5
    recorded = [{"name": "my-style", "scale": 1.0, "file": "my-style.safetensors"}]
    assert manifest["loras"] == record["loras"] == recorded
    assert png.text["parameters"].splitlines()[0] == "a fox <lora:my-style:1.0>"
    assert json.loads(png.text["imggenhub"])["loras"] == recorded
    # the gallery's command names the file, which run in its folder makes this image again
    from imggenhub.outputs import gallery

    argv = shlex.split(gallery.command(record, manifest))
    assert argv[argv.index("--lora") + 1] == "my-style.safetensors:1.0"
