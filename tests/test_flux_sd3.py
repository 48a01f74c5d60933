"""FLUX.1 and SD 3.5: the memory plan (a pure function of the model's sizes and the
machine), the presets, the checks before a push, tiny FLUX and SD3 pipelines through the
notebook, quantized loading through diffusers' own path, and the NaN/black detector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imggenhub.engine.memory import (KAGGLE_T4X2, DoesNotFit, Machine, for_job, plan_memory)
from imggenhub.errors import SpecError
from imggenhub.job.models import resolve_model
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags

REPO = Path(__file__).resolve().parents[1]
ONE_T4 = Machine(cards=1, card_gib=14.74, host_gib=29.0, capability=(7, 5))
A100 = Machine(cards=1, card_gib=80.0, host_gib=200.0, capability=(8, 0))


@pytest.mark.parametrize("family, quantize, machine, mode, quantized, processes", [
    # Kaggle's 2 x T4: FLUX in NF4 (T5's fp32 feed-forward outputs counted) does not fit a
    # card whole; each part goes to its card while it works, a copy a card in host memory
    ("flux", "auto", KAGGLE_T4X2, "offload", "nf4", 2),
    ("flux", "nf4", KAGGLE_T4X2, "offload", "nf4", 2),
    # SD 3.5 large in NF4 with T5's fp32 layers: no card holds it whole beside its work
    ("sd3-large", "auto", KAGGLE_T4X2, "offload", "nf4", 2),
    # int8 fits no card whole and the host holds one offloaded copy only: one process
    # either way, and split moves no weights between images
    ("sd3-large", "int8", KAGGLE_T4X2, "split", "int8", 1),
    ("sd3-medium", "auto", KAGGLE_T4X2, "replicate", "nf4", 2),
    ("sd3-medium", "int8", KAGGLE_T4X2, "offload", "int8", 2),
    ("sd3-medium", "none", KAGGLE_T4X2, "split", "none", 1),
    ("flux", "nf4", ONE_T4, "offload", "nf4", 1),
    # int8 FLUX and unquantized SD 3.5 large fit no card whole: the transformer spread over
    # both once the prompts are encoded, one process
    ("flux", "int8", KAGGLE_T4X2, "split", "int8", 1),
    ("sd3-large", "none", KAGGLE_T4X2, "split", "none", 1),
    # two 16 GiB cards: unquantized FLUX split, diffusers' recipe
    ("flux", "none", Machine(cards=2, card_gib=16.0), "split", "none", 1),
    # a card with bf16 and room: nothing quantized
    ("flux", "auto", A100, "replicate", "none", 1),
    ("sdxl", "auto", KAGGLE_T4X2, "replicate", "none", 2),
])
def test_the_memory_plan_places_each_family(family, quantize, machine, mode, quantized, processes):
    plan = plan_memory(family, machine, quantize)
    assert (plan.mode, plan.quantize, plan.processes) == (mode, quantized, processes)
    assert plan.peak_gib <= machine.card_gib  # the fullest card holds what it is given
    big = {"transformer", "unet", "text_encoder_3"} | ({"text_encoder_2"} if family == "flux" else set())
    for part in plan.parts:
        assert part.quant == (quantized if part.name in big else "none"), part
    line = plan.line()
    assert "\n" not in line and all(p.name in line for p in plan.parts) and mode in line


def test_the_plan_keeps_fp16_unsafe_vaes_in_fp32_and_uses_bf16_where_the_card_has_it():
    t4 = plan_memory("flux", KAGGLE_T4X2)
    assert t4.part("vae").dtype == "fp32" and t4.part("transformer").dtype == "fp16"
    a100 = plan_memory("flux", A100)
    assert {p.dtype for p in a100.parts} == {"bf16"}
    assert plan_memory("sdxl", KAGGLE_T4X2).part("vae").dtype == "fp16"  # its fp16-fix VAE
    # a T4 says is_bf16_supported() by emulation: the compute capability decides
    assert not KAGGLE_T4X2.bf16 and A100.bf16 and not Machine(cards=0).bf16


def test_the_plan_tiles_the_vae_for_large_pictures_and_counts_their_work():
    small = plan_memory("sd3-medium", KAGGLE_T4X2)
    large = plan_memory("sd3-medium", KAGGLE_T4X2, width=1536, height=1536)
    assert not small.vae_tiling and large.vae_tiling
    # 2.4 megapixels' work no longer fits beside the whole pipeline: a part at a time
    assert (small.mode, large.mode) == ("replicate", "offload")


def test_t5s_fp32_feed_forward_outputs_are_counted_as_transformers_loads_them():
    # transformers keeps T5's "wo" layers (1.0 of 4.76 billion) in fp32 under fp16, and
    # out of bitsandbytes' quantization
    t5 = plan_memory("flux", KAGGLE_T4X2).part("text_encoder_2")
    assert t5.quant == "nf4" and 5.5 < t5.gib < 6.0
    a100 = plan_memory("flux", A100).part("text_encoder_2")  # bf16: all of it in 2 bytes
    assert 8.8 < a100.gib < 9.0


@pytest.mark.parametrize("family, quantize, machine, size, batch, words", [
    ("flux", "none", ONE_T4, 1024, 1, "flux unquantized does not fit 1 x 14.7 GiB card as this "
     "version places it"),
    ("flux", "int8", ONE_T4, 1024, 1, "try --quantize nf4"),
    ("flux", "none", KAGGLE_T4X2, 1024, 1, "its weights take about 33.4 GiB"),
    ("flux", "nf4", KAGGLE_T4X2, 2048, 4, "try a smaller size or batch"),
    ("sd3-large", "none", ONE_T4, 1024, 1, "does not fit 1 x 14.7 GiB card"),
    ("flux", "auto", Machine(cards=0, host_gib=24.0), 1024, 1, "this machine has 24 GiB"),
])
def test_what_cannot_fit_is_refused_in_one_sentence(family, quantize, machine, size, batch, words):
    with pytest.raises(DoesNotFit) as info:
        plan_memory(family, machine, quantize, size, size, batch)
    message = str(info.value)
    assert words in message and "\n" not in message and message.count(". ") == 0


def test_a_split_plan_caps_each_cards_share_so_the_transformer_and_its_work_fit():
    plan = plan_memory("sd3-large", KAGGLE_T4X2, "none")
    assert plan.staged and plan.processes == 1
    shares = [float(v.removesuffix("GiB")) for v in plan.max_memory().values()]
    assert list(plan.max_memory()) == [0, 1] and sum(shares) >= plan.part("transformer").gib
    # the first card keeps room for the VAE and its decoding beside its share
    assert shares[0] < shares[1] < KAGGLE_T4X2.card_gib
    text = [p for p in plan.parts if p.name.startswith("text_encoder")]
    assert all(p.where == "card 0 until the prompts are encoded" for p in text)
    assert plan.part("transformer").where == "cards 0-1" and plan.part("vae").where == "card 0"
    # replicate and offload come first: FLUX on T4s stays NF4 with a process a card
    assert not plan_memory("flux", KAGGLE_T4X2).staged


def test_an_unknown_quantization_is_a_value_error():
    with pytest.raises(ValueError, match="unknown quantization 'fp8'"):
        plan_memory("flux", KAGGLE_T4X2, "fp8")


def test_on_the_cpu_only_the_text_encoders_load_quantized():
    # diffusers' bitsandbytes quantizer asks for a GPU; transformers' does not
    plan = plan_memory("sd3-large", Machine(cards=0, host_gib=128.0), "nf4")
    assert plan.mode == "cpu" and plan.quantized() == {"text_encoder_3": "nf4"}
    assert {p.dtype for p in plan.parts} == {"fp32"}


def test_presets_say_their_defaults_licence_and_gating(cli):
    schnell, dev = resolve_model("flux-schnell"), resolve_model("flux-dev")
    assert (schnell.steps, schnell.guidance, schnell.max_sequence_length) == (4, 0.0, 256)
    assert (dev.steps, dev.guidance, dev.max_sequence_length, dev.gated) == (28, 3.5, 512, True)
    assert not schnell.gated and schnell.licence == "apache-2.0"
    for name in ("sd35-medium", "sd35-large", "sd35-large-turbo"):
        preset = resolve_model(name)
        assert preset.pipeline == "sd3" and preset.gated and preset.memory.startswith("sd3-")
    assert resolve_model("sd35-large-turbo").steps == 4
    code, out, err = cli("models")
    assert code == 0
    block = out[out.index("flux-dev"):out.index("flux-fill")]
    assert "licence flux-1-dev-non-commercial-license" in block and "gated" in block
    assert "--hf-token-env" in block
    assert "on Kaggle's 2 x T4: nf4, offload, 2 processes (memory plan)" in block


@pytest.mark.parametrize("hub_id, like", [
    ("black-forest-labs/FLUX.1-Krea-dev", "flux-dev"),
    ("someone/flux.1-dev-finetune", "flux-dev"),
    ("stabilityai/stable-diffusion-3-medium-diffusers", "sd35-medium"),
    ("stabilityai/stable-diffusion-3.5-large", "sd35-large"),
    ("black-forest-labs/FLUX.1-Fill-dev", "flux-fill"),  # the preset itself
    ("someone/FLUX.1-Fill-dev-finetune", "flux-fill"),
])
def test_other_hub_ids_of_the_families_take_their_familys_pipeline_and_plan(hub_id, like):
    preset, family = resolve_model(hub_id), resolve_model(like)
    assert preset.id == hub_id and preset.pipeline == family.pipeline
    assert preset.memory == family.memory and preset.steps == family.steps
    assert preset.fill == family.fill


def _job(**flags):
    prompts = flags.pop("prompts", ["a lighthouse at dusk"])
    return build_job(parse_settings(seed=1, **flags), prompts_from_flags(prompts))


def test_the_job_carries_the_plan_inputs_only_for_planned_models():
    flux = _job(model="flux-schnell", quantize="int8").document()["model"]
    assert (flux["memory"], flux["quantize"], flux["max_sequence_length"]) == ("flux", "int8", 256)
    assert "quantize" not in _job(model="flux-schnell").document()["model"]
    assert "memory" not in _job(model="sdxl-turbo").document()["model"]  # job ids unchanged


@pytest.mark.parametrize("flags, words", [
    (dict(model="sdxl-turbo", quantize="nf4"), "--quantize applies to FLUX and SD 3.5 models"),
    (dict(model="flux-dev", negative_prompt="blurry"), "takes no negative prompt"),
    (dict(model="sd35-large", embedding=["owner/emb"]), "embeddings apply to SD and SDXL"),
    (dict(model="flux-dev", quantize="fp8"), "Invalid option"),
    (dict(model="sd35-large", precision="fp32"), "takes its dtypes from its memory plan"),
])
def test_flags_that_do_not_apply_are_one_sentence(flags, words):
    with pytest.raises(SpecError) as info:
        _job(**flags)
    assert words in str(info.value)


def test_flux_fill_asks_for_a_picture_and_its_mask():
    fill = resolve_model("flux-fill")
    assert (fill.steps, fill.guidance, fill.memory, fill.gated, fill.fill) == (50, 30.0, "flux",
                                                                               True, True)
    shapes = str(REPO / "docs" / "tiny-shapes.png")
    for flags in ({}, {"init_image": shapes}):
        with pytest.raises(SpecError, match="flux-fill redraws the masked part of a picture; "
                                            "give it --init-image and --mask-image"):
            _job(model="flux-fill", **flags)
    doc = _job(model="flux-fill", init_image=shapes, mask_image=shapes).document()
    assert doc["model"]["fill"] is True and doc["prompts"][0]["strength"] == 1.0
    assert "fill" not in _job(model="flux-dev").document()["model"]
    # planned as FLUX.1: NF4, a process a card on Kaggle's T4s
    assert for_job(doc, doc["model"], KAGGLE_T4X2).mode == "offload"


def test_an_sd3_negative_prompt_is_kept():
    assert _job(model="sd35-large", negative_prompt="blurry").prompts[0].negative_prompt == "blurry"


def test_the_estimate_counts_the_cards_the_plan_uses():
    from imggenhub.backends.kaggle import estimate

    replicated = estimate.estimate(_job(model="sd35-large").document(), [])
    split = estimate.estimate(_job(model="sd35-large", quantize="int8").document(), [])
    assert (replicated.gpus, split.gpus) == (2, 1)
    assert split.hours > replicated.hours
    # FLUX's guidance is an input of the model: no second batch, whatever its value
    dev = estimate.estimate(_job(model="flux-dev", steps=4).document(), [])
    schnell = estimate.estimate(_job(model="flux-schnell").document(), [])
    assert dev.seconds_per_image == pytest.approx(schnell.seconds_per_image)
    assert 20 < schnell.seconds_per_image < 30  # 4 steps of ~6 s and the decode: a first guess


def test_kaggle_refuses_what_cannot_fit_two_t4s_before_anything_is_pushed(emulator, cli, tmp_path):
    from imggenhub.run import runs

    code, out, err = cli("deploy", "--model", "flux-schnell", "-p", "x", "--width", "2048",
                         "--height", "2048", "--batch-size", "4", "--num-images", "4", cwd=tmp_path)
    assert code == 2 and "does not fit 2 x 14.7 GiB cards" in err and "Kaggle's 2 x T4" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = cli("deploy", "--model", "flux-schnell", "-p", "x", "--quantize", "none",
                         cwd=tmp_path)
    assert code == 2 and "flux unquantized does not fit" in err and "--quantize nf4" in err
    assert not [m for m, _ in emulator.calls if m == "SaveKernel"] and runs.all_runs() == []


def test_kaggle_logs_the_plan_it_pushes(emulator, cli, tmp_path):
    code, out, err = cli("deploy", "--model", "flux-schnell", "-p", "x", "--json", cwd=tmp_path)
    assert code == 0, err
    assert "memory plan (flux): offload, 2 processes" in err and "on Kaggle's 2 x T4" in err


def test_for_job_sizes_the_plan_by_the_largest_picture_and_the_batch():
    doc = _job(model="flux-schnell", prompts=["a", "b"]).document()
    doc["prompts"][1] = {**doc["prompts"][1], "width": 1536, "height": 1536}
    assert for_job(doc, doc["model"], KAGGLE_T4X2).vae_tiling
    assert for_job({"prompts": []}, {"id": "x"}, KAGGLE_T4X2) is None


# --- the engine, on this machine's CPU ---

@pytest.mark.slow
def test_tiny_flux_and_sd3_run_through_the_engine_each_loaded_once(tmp_path, capsys):
    from imggenhub import engine

    doc = build_job(parse_settings(model="tiny-flux", seed=2, gpu=False,
                                   sweep=["model=tiny-flux,tiny-sd3"]),
                    prompts_from_flags(["a red circle", "a blue square"])).document()
    engine.run_worker(doc, tmp_path / "o")
    records = engine.merge_manifest(tmp_path / "o", doc)["images"]
    assert [r["model"] for r in records] == ["tiny-random-flux", "tiny-random-sd3"] * 2
    assert all((r["width"], r["height"], r["steps"]) == (64, 64, 4) for r in records)
    assert len({r["sha256"] for r in records}) == 4
    out = capsys.readouterr().out
    assert "memory plan (tiny-flux): cpu" in out and "memory plan (tiny-sd3): cpu" in out


def test_t5_loads_in_nf4_through_diffusers_quantization_config_and_draws(tmp_path):
    """The real path: the tiny SD3 saved as a diffusers folder, loaded by from_pretrained with
    the planned PipelineQuantizationConfig. On a CPU only transformers' T5 can load in 4 bits
    (diffusers' quantizer asks for a GPU): the plan says so, and the T5 does."""
    import torch
    from bitsandbytes.nn import Linear4bit

    from imggenhub.engine.pipelines import load_planned, quantization_config
    from imggenhub.engine.versions import VersionProblem, ensure, lacking

    model = resolve_model("tiny-sd3").engine_dict("nf4")
    if lacking({"quantized"}):  # the oldest diffusers allowed: the engine says what it needs
        with pytest.raises(VersionProblem, match="PipelineQuantizationConfig"):
            ensure({"model": model, "prompts": []}, quantized=True)
        return
    plan = plan_memory("tiny-sd3", Machine(cards=0, host_gib=24.0), "nf4", 64, 64)
    pipe = load_planned(model, plan, "cpu")
    t5 = pipe.text_encoder_3
    assert isinstance(t5.encoder.block[0].layer[0].SelfAttention.q, Linear4bit)
    assert not any(isinstance(m, Linear4bit) for m in pipe.transformer.modules())
    image = pipe(prompt="a red circle", num_inference_steps=2, guidance_scale=5.0, width=64,
                 height=64, generator=torch.Generator().manual_seed(0),
                 max_sequence_length=32).images[0]
    assert image.size == (64, 64)
    # on Kaggle's T4s the same call quantizes the transformer and T5, computing in fp16
    gpu = quantization_config(plan_memory("sd3-large", KAGGLE_T4X2), "fp16")
    assert gpu.quant_backend == "bitsandbytes_4bit"
    assert sorted(gpu.components_to_quantize) == ["text_encoder_3", "transformer"]
    assert gpu.quant_kwargs["bnb_4bit_quant_type"] == "nf4"
    assert gpu.quant_kwargs["bnb_4bit_compute_dtype"] == torch.float16
    int8 = quantization_config(plan_memory("sd3-large", KAGGLE_T4X2, "int8"), "fp16")
    assert int8.quant_backend == "bitsandbytes_8bit"
    assert quantization_config(plan_memory("flux", A100), "bf16") is None


@pytest.mark.skipif("not __import__('torch').cuda.is_available()",
                    reason="diffusers' bitsandbytes quantizer needs a GPU for the transformer")
def test_the_tiny_flux_transformer_loads_in_nf4_on_a_gpu():
    from bitsandbytes.nn import Linear4bit

    from imggenhub.engine.pipelines import load_planned

    model = resolve_model("tiny-flux").engine_dict("nf4")
    plan = plan_memory("tiny-flux", Machine(cards=1, card_gib=15.0), "nf4", 64, 64)
    pipe = load_planned(model, plan, "cuda:0")
    assert any(isinstance(m, Linear4bit) for m in pipe.transformer.modules())
    assert pipe(prompt="x", num_inference_steps=2, width=64, height=64).images[0].size == (64, 64)


def test_a_vae_kept_in_fp32_decodes_a_pipeline_running_in_bf16():
    """The plan keeps FLUX's VAE out of fp16 on a T4; the pipeline hands it latents in its
    own dtype, which the VAE casts on the way in (bf16 stands in for fp16 on this CPU)."""
    import torch

    from imggenhub.engine.pipelines import cast_inputs
    from imggenhub.engine.tiny import build_tiny

    pipe = build_tiny("tiny-random-flux").to(torch.bfloat16)
    pipe.vae.to(torch.float32)
    with pytest.raises(RuntimeError):  # without the cast: a dtype mismatch
        pipe(prompt="x", num_inference_steps=1, width=32, height=32, max_sequence_length=16)
    cast_inputs(pipe.vae, torch.float32, torch.bfloat16)
    image = pipe(prompt="x", num_inference_steps=1, width=32, height=32,
                 max_sequence_length=16).images[0]
    assert image.size == (32, 32)
    # image-to-image: the encoded picture goes back to the transformer in its own dtype
    from imggenhub.engine.pipelines import derived_pipeline
    from imggenhub.engine.versions import lacking

    if lacking({"flux-img2img"}):  # diffusers 0.30 has no FLUX image-to-image
        return

    redrawn = derived_pipeline(pipe, "img2img")(prompt="x", image=image, strength=0.6,
                                                num_inference_steps=4, width=32, height=32,
                                                max_sequence_length=16).images[0]
    assert redrawn.size == (32, 32)


# --- the NaN/black detector ---

def _overflowing(model_id: str, part: str):
    import torch

    from imggenhub.engine.tiny import build_tiny

    pipe = build_tiny(model_id)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        if part == "denoiser":
            denoiser = getattr(pipe, "transformer", None) or pipe.unet
            next(p for n, p in denoiser.named_parameters() if n.endswith("weight")).fill_(float("inf"))
        elif part == "vae":
            pipe.vae.decoder.conv_out.weight.fill_(float("nan"))
        elif part == "text":
            pipe.text_encoder.get_input_embeddings().weight.fill_(float("inf"))
    return pipe


@pytest.mark.parametrize("model_id, part, words", [
    ("tiny-random-flux", "denoiser", "the transformer (non-finite values from step 1 of 2)"),
    ("tiny-random", "denoiser", "the UNet (non-finite values from step 1 of 2)"),
    ("tiny-random", "text", "the text encoder"),
    ("tiny-random-sd3", "vae", "the VAE (every pixel 0)"),
])
def test_a_pipeline_made_to_overflow_is_reported_with_its_part_and_nothing_is_saved(
        model_id, part, words):
    import torch

    from imggenhub.engine.worker import Overflow, checked_call

    pipe = _overflowing(model_id, part)
    kwargs = {"prompt": ["a", "b"], "num_inference_steps": 2, "guidance_scale": 2.0,
              "width": 32, "height": 32,
              "generator": [torch.Generator().manual_seed(s) for s in (7, 8)]}
    batch = [{"index": 4, "prompt_index": 1, "seed": 7}, {"index": 5, "prompt_index": 1, "seed": 8}]
    with pytest.raises(Overflow) as info:
        checked_call(pipe, kwargs, batch)
    message = str(info.value)
    assert words in message and "image 5 (prompt 2, seed 7)" in message
    assert "not saved" in message and "\n" not in message


def test_the_detector_names_the_image_that_overflowed_not_its_batchs_first():
    import torch

    from imggenhub.engine.tiny import build_tiny
    from imggenhub.engine.worker import Overflow, checked_call

    pipe = build_tiny("tiny-random")
    pipe.set_progress_bar_config(disable=True)
    (q,) = pipe.tokenizer("q", add_special_tokens=False).input_ids
    with torch.no_grad():  # one word's embedding overflows: only the prompt with it
        pipe.text_encoder.get_input_embeddings().weight[q].fill_(float("inf"))
    kwargs = {"prompt": ["a", "q"], "num_inference_steps": 2, "guidance_scale": 2.0,
              "width": 32, "height": 32,
              "generator": [torch.Generator().manual_seed(s) for s in (7, 8)]}
    batch = [{"index": 4, "prompt_index": 1, "seed": 7}, {"index": 5, "prompt_index": 2, "seed": 8}]
    with pytest.raises(Overflow, match=r"^image 6 \(prompt 3, seed 8\) came out NaN or black: "
                                       "the text encoder"):
        checked_call(pipe, kwargs, batch)


def test_a_healthy_pipeline_passes_the_detector_unchanged():
    import numpy as np
    import torch

    from imggenhub.engine.tiny import build_tiny
    from imggenhub.engine.worker import checked_call

    pipe = build_tiny("tiny-random-flux")
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"prompt": ["a"], "num_inference_steps": 2, "guidance_scale": 3.5, "width": 32,
              "height": 32, "generator": [torch.Generator().manual_seed(3)]}
    plain = pipe(**{**kwargs, "generator": [torch.Generator().manual_seed(3)]}).images
    checked = checked_call(pipe, dict(kwargs), [{"index": 0, "prompt_index": 0, "seed": 3}])
    # the same picture (this CPU's kernels may round a first call apart by one level)
    difference = np.abs(np.asarray(checked[0], int) - np.asarray(plain[0], int))
    assert difference.max() <= 1


def test_the_detector_is_in_the_notebooks_run(tmp_path):
    """A job whose images come out black fails with the detector's sentence, through the
    engine's own loop (IMGGENHUB_ENGINE_FAIL_AFTER is not involved)."""
    from imggenhub import engine

    doc = build_job(parse_settings(model="tiny-random", seed=2, gpu=False, guidance=0.0),
                    prompts_from_flags(["x"])).document()
    json.dumps(doc)
    session = engine.worker.Session(doc, tmp_path / "o").setup()
    import torch
    with torch.no_grad():
        session.pipe.vae.decoder.conv_out.weight.fill_(float("nan"))
    with pytest.raises(engine.worker.Overflow, match="the VAE"):
        session.make(session.batches()[0])
    session.close()
    assert not list((tmp_path / "o").glob("*.png"))


# --- the versions a job's features need ---

def _have(**versions):
    return lambda package: versions.get(package.replace("-", "_"))


def test_the_versions_each_feature_needs_are_checked_once_a_package_at_its_highest_need():
    from imggenhub.engine.versions import features, lacking, parse

    assert parse("1.0") == (1, 0, 0) and parse("0.35.0.dev0") == (0, 35, 0) < parse("1.0")

    flux = _job(model="flux-schnell").document()
    assert features(flux) == {"flux"} and features(flux, quantized=True) == {"flux", "quantized"}
    redraw = _job(model="flux-schnell", init_image=str(REPO / "docs" / "tiny-shapes.png")).document()
    assert features(redraw) == {"flux", "flux-img2img"}
    assert lacking({"flux"}, _have(diffusers="0.30.0")) == []
    assert lacking({"flux"}, _have(diffusers="0.29.2")) == [
        ("diffusers", "0.29.2", "0.30.0", "FluxPipeline")]
    assert lacking({"sd3", "quantized"}, _have(diffusers="0.32.1", bitsandbytes=None)) == [
        ("bitsandbytes", None, "0.45.0", "4- and 8-bit weights"),
        ("diffusers", "0.32.1", "0.34.0", "PipelineQuantizationConfig")]
    assert lacking({"lora"}, _have(peft="0.21.2")) == []
    assert lacking({"flux"}, _have(diffusers="0.35.0.dev0")) == []
    assert features(_job(model="tiny-random").document()) == set()
    shapes = REPO / "docs" / "tiny-shapes.png"
    fill = _job(model="flux-fill", init_image=str(shapes), mask_image=str(shapes)).document()
    assert features(fill) == {"flux", "flux-img2img", "flux-fill"}
    assert lacking({"flux-fill"}, _have(diffusers="0.31.0")) == [
        ("diffusers", "0.31.0", "0.33.0", "FluxFillPipeline with a strength")]
    assert lacking({"split"}, _have(diffusers="0.30.3")) == [
        ("diffusers", "0.30.3", "0.33.0", "a device map of FLUX's and SD 3's transformers")]


def test_a_machine_without_them_is_one_sentence_or_one_logged_pip_install(capsys):
    from imggenhub.engine.versions import VersionProblem, ensure

    doc = _job(model="flux-dev").document()
    old = _have(diffusers="0.32.1", bitsandbytes="0.42.0")
    with pytest.raises(VersionProblem) as info:
        ensure(doc, quantized=True, have=old)
    message = str(info.value)
    assert "bitsandbytes >= 0.45.0 for 4- and 8-bit weights (here: 0.42.0)" in message
    assert "diffusers >= 0.34.0 for PipelineQuantizationConfig (here: 0.32.1)" in message
    assert "give the kernel internet" in message and "\n" not in message
    ran = []
    pins = ensure({**doc, "install_missing": True}, quantized=True, have=old,
                  install=lambda command: ran.append(command) or 0)
    assert pins == ["bitsandbytes==0.45.0", "diffusers==0.34.0"]
    assert len(ran) == 1 and ran[0][1:] == ["-m", "pip", "install", "-q", *pins]
    assert "installing bitsandbytes==0.45.0 diffusers==0.34.0: this job needs" in capsys.readouterr().out
    with pytest.raises(VersionProblem, match="failed"):
        ensure({**doc, "install_missing": True}, quantized=True, have=old, install=lambda c: 1)
    assert ensure(doc, quantized=True, have=_have(diffusers="0.42.1", bitsandbytes="0.50.2")) == []


def test_the_engine_stops_before_loading_when_a_package_is_too_old(tmp_path, capsys, monkeypatch):
    """Through the engine's own start: the real check against this machine's packages, with
    the table asking for a diffusers that does not exist yet."""
    from imggenhub import engine
    from imggenhub.engine import versions

    monkeypatch.setitem(versions.NEEDS, "flux", (("diffusers", "99.0.0", "a future FLUX"),))
    doc = build_job(parse_settings(model="tiny-flux", seed=1, gpu=False),
                    prompts_from_flags(["x"])).document()
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(doc), encoding="utf-8")
    assert engine.main(["--job", str(job_file), "--out", str(tmp_path / "o")]) == 1
    out = capsys.readouterr().out
    assert "VersionProblem: this job needs diffusers >= 99.0.0 for a future FLUX (here: " in out
    assert "ready on" not in out  # nothing loaded


def test_a_kaggle_kernel_with_internet_may_install_what_is_missing(emulator, cli, tmp_path):
    from imggenhub.job.notebook import read_job_document

    for flag, wanted in (("--internet", True), ("--no-internet", None)):
        code, out, err = cli("deploy", "--model", "tiny-random", "-p", "x", flag, cwd=tmp_path)
        assert code == 0, err
        pushed = [b for m, b in emulator.calls if m == "SaveKernel"][-1]["text"]
        assert read_job_document(pushed).get("install_missing") is wanted


# --- LoRAs, image-to-image, inpainting and sweeps on the families (the tiny ones) ---

def _flow_lora(folder, model_id: str, text_encoder: bool = False):
    """A LoRA on the tiny transformer's attention (and the CLIP text encoder's, when asked),
    made with peft and saved with the family's own writer (FluxPipeline /
    StableDiffusion3Pipeline.save_lora_weights)."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from imggenhub.engine.tiny import build_tiny

    pipe = build_tiny(model_id)
    torch.manual_seed(5)  # non-zero LoRA weights, so that it changes the images
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # large enough to show in the tiny SD3's pictures too
        for name, weight in pipe.transformer.named_parameters():
            if "lora_B" in name:
                weight.mul_(8)
    extra = {}
    if text_encoder:
        pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                                 target_modules=["q_proj"]))
        extra["text_encoder_lora_layers"] = get_peft_model_state_dict(pipe.text_encoder)
    type(pipe).save_lora_weights(folder, weight_name="style.safetensors",
                                 transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                 **extra)
    return folder / "style.safetensors"


def _made(tmp_path, name: str, **flags) -> tuple:
    """One image through the engine's own loop: (its pixels, its record)."""
    import numpy as np
    from PIL import Image

    from imggenhub import engine

    prompts = flags.pop("prompts", ["a red circle"])
    doc = build_job(parse_settings(seed=3, gpu=False, **flags), prompts_from_flags(prompts)).document()
    engine.run_worker(doc, tmp_path / name)
    records = engine.merge_manifest(tmp_path / name, doc)["images"]
    return [np.asarray(Image.open(tmp_path / name / r["file"]), dtype=float) for r in records], records


@pytest.mark.slow
@pytest.mark.parametrize("preset, model_id", [("tiny-flux", "tiny-random-flux"),
                                              ("tiny-sd3", "tiny-random-sd3")])
def test_a_lora_of_the_family_loads_scale_0_is_none_and_scale_1_another_image(
        tmp_path, preset, model_id):
    lora = _flow_lora(tmp_path, model_id)
    (none,), _ = _made(tmp_path, "none", model=preset)
    (zero,), _ = _made(tmp_path, "zero", model=preset, lora=[f"{lora}:0"])
    (one,), (record,) = _made(tmp_path, "one", model=preset, lora=[f"{lora}:1"])
    assert abs(none - zero).max() <= 1  # fused at 0: the base weights (to a rounding level)
    assert abs(none - one).mean() > 0.5
    assert record["loras"] == [{"name": "style", "scale": 1.0, "file": "style.safetensors"}]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-flux", "tiny-sd3"])
def test_image_to_image_and_inpainting_run_on_the_familys_own_pipelines(tmp_path, preset, capsys):
    import numpy as np
    from PIL import Image

    from imggenhub.engine.versions import VersionProblem, ensure, lacking

    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.fromarray(np.full((64, 64, 3), (200, 30, 30), dtype=np.uint8)).save(init)
    if preset == "tiny-flux" and lacking({"flux-img2img"}):  # diffusers 0.30: the engine says so
        doc = _job(model=preset, init_image=str(init)).document()
        with pytest.raises(VersionProblem, match="FLUX's image-to-image and inpainting"):
            ensure(doc)
        return
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :] >= 32, (64, 1)).astype(np.uint8)
                    * 255).save(mask)
    (low, high), records = _made(tmp_path, "i2i", model=preset, steps=10, init_image=str(init),
                                 sweep=["strength=0.3,1.0"])
    assert [(r["strength"], r["denoising_steps"]) for r in records] == [(0.3, 3), (1.0, 10)]
    assert abs(low - high).mean() > 0.5
    (painted,), (record,) = _made(tmp_path, "inpaint", model=preset, steps=4,
                                  init_image=str(init), mask_image=str(mask))
    assert record["mask_image"] == "mask.png" and painted.shape == (64, 64, 3)
    assert np.isfinite(painted).all()


@pytest.mark.slow
def test_a_guidance_sweep_on_flux_feeds_its_guidance_embedding(tmp_path):
    (low, high), records = _made(tmp_path, "sweep", model="tiny-flux", sweep=["guidance=1,6"])
    assert [r["guidance"] for r in records] == [1.0, 6.0]
    assert abs(low - high).mean() > 0.1  # guidance is an input of FLUX's transformer


@pytest.mark.slow
@pytest.mark.parametrize("preset, flags", [
    ("tiny-flux", {"guidance": 3.5}),
    ("tiny-sd3", {"negative_prompt": "blurry", "sweep": ["guidance=1,5"], "batch_size": 2}),
])
def test_the_split_placements_stages_draw_what_the_whole_pipeline_draws(
        tmp_path, monkeypatch, capsys, preset, flags):
    """A split plan encodes every prompt first, frees the text encoders, then loads the
    denoiser (on two cards, spread over both; here, IMGGENHUB_STAGED runs the same stages on
    the CPU): the same seeds draw the same pictures as the whole pipeline, LoRA included."""
    import gc
    import weakref

    from transformers import T5EncoderModel

    lora = _flow_lora(tmp_path, resolve_model(preset).id)
    prompts = ["a red circle", "a blue square", "a red circle"]
    whole, _ = _made(tmp_path, "whole", model=preset, prompts=prompts, lora=[f"{lora}:1"], **flags)
    capsys.readouterr()
    # the text encoders alive before the staged run (another test's, or one a library's kept
    # exception still holds through its traceback's frames) are not the staged run's to free
    gc.collect()
    before = weakref.WeakSet(o for o in gc.get_objects() if isinstance(o, T5EncoderModel))
    monkeypatch.setenv("IMGGENHUB_STAGED", "1")
    staged, records = _made(tmp_path, "staged", model=preset, prompts=prompts,
                            lora=[f"{lora}:1"], **flags)
    out = capsys.readouterr().out
    assert ": split, 1 process" in out and "2 prompts encoded; the text encoders freed" in out
    assert len(staged) == len(whole) == len(records)
    for a, b in zip(whole, staged):  # the prompts encoded two at a time: rounding apart
        assert abs(a - b).max() <= 1
    assert abs(staged[0] - staged[1]).mean() > 0.5  # each picture its own prompt and seed
    gc.collect()  # freed: no text encoder the staged run loaded is left alive
    assert not [o for o in gc.get_objects() if isinstance(o, T5EncoderModel) and o not in before]


@pytest.mark.slow
def test_image_to_image_runs_in_the_split_placements_stages(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from imggenhub.engine.versions import lacking

    if lacking({"flux-img2img"}):
        pytest.skip("diffusers 0.30 has no FLUX image-to-image (its refusal is tested above)")
    init = tmp_path / "init.png"
    Image.fromarray(np.full((64, 64, 3), (200, 30, 30), dtype=np.uint8)).save(init)
    whole, _ = _made(tmp_path, "whole", model="tiny-flux", init_image=str(init), steps=10)
    monkeypatch.setenv("IMGGENHUB_STAGED", "1")
    staged, (record,) = _made(tmp_path, "staged", model="tiny-flux", init_image=str(init),
                              steps=10)
    assert abs(whole[0] - staged[0]).max() <= 1 and record["strength"] == 0.8


def test_the_split_placement_refuses_a_lora_that_changes_the_text_encoders(tmp_path, monkeypatch):
    lora = _flow_lora(tmp_path, "tiny-random-flux", text_encoder=True)
    monkeypatch.setenv("IMGGENHUB_STAGED", "1")
    with pytest.raises(ValueError, match="the LoRA style also changes the text encoders"):
        _made(tmp_path, "staged", model="tiny-flux", lora=[f"{lora}:1"])
    monkeypatch.delenv("IMGGENHUB_STAGED")
    (image,), (record,) = _made(tmp_path, "whole", model="tiny-flux", lora=[f"{lora}:1"])
    assert record["loras"][0]["name"] == "style"  # the whole pipeline takes all of it


@pytest.mark.slow
def test_flux_fill_redraws_with_its_own_pipeline_reading_the_mask(tmp_path, monkeypatch):
    """FLUX.1 Fill's transformer takes the masked picture and the mask as inputs: another
    mask draws another picture; in the split placement's stages the same one."""
    import numpy as np
    from PIL import Image

    from imggenhub.engine.versions import VersionProblem, ensure, lacking

    init, left, right = (tmp_path / f"{n}.png" for n in ("init", "left", "right"))
    Image.fromarray(np.full((64, 64, 3), (200, 30, 30), dtype=np.uint8)).save(init)
    half = np.zeros((64, 64), dtype=np.uint8)
    half[:, 32:] = 255
    Image.fromarray(half).save(right)
    Image.fromarray(half[:, ::-1].copy()).save(left)
    if lacking({"flux-fill"}):  # diffusers before 0.32: the engine says so
        doc = _job(model="tiny-flux-fill", init_image=str(init), mask_image=str(right)).document()
        with pytest.raises(VersionProblem, match="FluxFillPipeline"):
            ensure(doc)
        return
    (a,), (record,) = _made(tmp_path, "a", model="tiny-flux-fill", init_image=str(init),
                            mask_image=str(right))
    (b,), _ = _made(tmp_path, "b", model="tiny-flux-fill", init_image=str(init),
                    mask_image=str(left))
    assert record["mask_image"] == "right.png" and record["model"] == "tiny-random-flux-fill"
    assert abs(a - b).mean() > 0.5
    monkeypatch.setenv("IMGGENHUB_STAGED", "1")
    (staged,), _ = _made(tmp_path, "staged", model="tiny-flux-fill", init_image=str(init),
                         mask_image=str(right))
    assert abs(a - staged).max() <= 1


def _meta_transformer(family: str):
    """The family's full-size transformer on the meta device (no memory): its configs as
    published (FLUX.1-dev; SD 3.5 large and medium)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    with init_empty_weights(include_buffers=True):  # SD3's position table too (0.9 GB)
        if family == "flux":
            return FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
        large = family == "sd3-large"
        return SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=38 if large else 24,
            attention_head_dim=64, num_attention_heads=38 if large else 24,
            joint_attention_dim=4096, caption_projection_dim=2432 if large else 1536,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192 if large else 384,
            qk_norm="rms_norm", **({} if large else {"dual_attention_layers": tuple(range(13))}))


@pytest.mark.slow
def test_every_split_plan_is_a_device_map_that_stays_on_the_cards(monkeypatch):
    """The plan's caps handed to diffusers' own device-map logic (accelerate's balanced map,
    bitsandbytes' margin) for the full-size transformers on the meta device, as two T4s
    would see them: every layer lands on a card, none on the CPU or the disk."""
    import torch

    from imggenhub.engine.versions import lacking

    if lacking({"split"}):  # an older diffusers cannot map these transformers: refused there
        return
    from diffusers import BitsAndBytesConfig
    from diffusers.models.model_loading_utils import _determine_device_map
    from diffusers.quantizers import DiffusersAutoQuantizer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    checked = 0
    for family in ("flux", "sd3-large", "sd3-medium"):
        model = _meta_transformer(family)
        for quantize in ("auto", "none", "int8", "nf4"):
            for size, batch in ((512, 3), (1024, 1), (1024, 2), (1280, 2)):
                try:
                    plan = plan_memory(family, KAGGLE_T4X2, quantize, size, size, batch)
                except DoesNotFit:
                    continue
                if not plan.staged:
                    continue
                kind = plan.part("transformer").quant
                quantizer = None if kind == "none" else DiffusersAutoQuantizer.from_config(
                    BitsAndBytesConfig(**({"load_in_8bit": True} if kind == "int8" else
                                          {"load_in_4bit": True})), pre_quantized=False)
                device_map = _determine_device_map(model, "auto", plan.max_memory(),
                                                   torch.float16, hf_quantizer=quantizer)
                assert {str(d) for d in device_map.values()} <= {"0", "1"}, (family, quantize,
                                                                             size, batch)
                checked += 1
    assert checked >= 10


@pytest.mark.long
def test_tiny_flux_and_sd3_run_through_the_notebook_on_the_local_backend(cli, tmp_path):
    """The notebook a Kaggle push carries, run here in a Jupyter kernel: a model sweep over
    the tiny FLUX and SD3, each image verified against the manifest, the plans in the log."""
    code, out, err = cli("generate", "--backend", "local", "--model", "tiny-flux", "--sweep",
                         "model=tiny-flux,tiny-sd3", "-p", "a red circle", "-p", "a blue square",
                         "--seed", "4", "--no-gpu", "--out", str(tmp_path / "out"), "--json",
                         cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["images_fetched"] == 4
    from imggenhub.outputs import artifacts

    out_dir = tmp_path / "out"
    assert artifacts.verify(out_dir) == []
    records = artifacts.read_manifest(out_dir)["images"]
    assert sorted(r["model"] for r in records) == ["tiny-random-flux"] * 2 + ["tiny-random-sd3"] * 2
    log = (out_dir / "kernel.log").read_text(encoding="utf-8")
    assert "memory plan (tiny-flux): cpu" in log and "memory plan (tiny-sd3): cpu" in log
