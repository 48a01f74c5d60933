"""Fine-tuning in the engine (engine/training.py): the training set read with its captions or
refused in one sentence, a LoRA and a textual-inversion embedding trained on tiny-shapes,
checkpoints that resume to the very weights of an uncut run, weights that diffusers' own
loaders read and that the engine's --lora and --embedding use alike, and (marked
`training`, minutes) a LoRA that teaches tiny-shapes a colour it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from imggenhub import engine, shapes
from imggenhub.engine import training
from imggenhub.job.resolve import build_job
from imggenhub.job.models import resolve_model
from imggenhub.job.spec import parse_settings, prompts_from_flags
from imggenhub.job.training import drawing_defaults

CYAN_WORD = "zq"  # a word tiny-shapes never saw; its pictures are cyan, a colour it never drew


def cyan_set(folder, n: int = 9, word: str = CYAN_WORD, colour: str = "cyan") -> list[shapes.Scene]:
    return shapes.write_training_set(folder, colour, word, n)


def tiny_shapes():
    from diffusers import StableDiffusionPipeline

    from imggenhub.engine.tiny import shipped_folder

    pipe = StableDiffusionPipeline.from_pretrained(str(shipped_folder("tiny-shapes")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_captions_come_from_metadata_then_txt_then_the_instance_prompt(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("a.png", "b.png", "c.jpg", "d.PNG", "sub/e.png", ".hidden/f.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.md").write_text("not a picture")
    rows = [{"file_name": "a.png", "text": " from meta "}, {"file_name": "./sub/e.png", "text": "in sub"},
            {"file_name": "d.PNG", "text": "   "}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n",
                                             encoding="utf-8")
    (tmp_path / "b.txt").write_text("  from txt\n", encoding="utf-8")
    (tmp_path / "d.txt").write_text("blank in meta, so the txt", encoding="utf-8")
    got = training.read_examples(tmp_path, instance_prompt="a photo of sks dog")
    assert [(e["name"], e["text"]) for e in got] == [
        ("a.png", "from meta"), ("b.png", "from txt"), ("c.jpg", "a photo of sks dog"),
        ("d.PNG", "blank in meta, so the txt"), ("sub/e.png", "in sub")]


@pytest.mark.parametrize("make,words", [
    (lambda d: None, "holds no pictures"),
    (lambda d: Image.new("RGB", (8, 8)).save(d / "x.png"), "x.png has no caption"),
    (lambda d: ((d / "metadata.jsonl").write_text("[1]\n"), Image.new("RGB", (8, 8)).save(d / "x.png")),
     "Line 1 of metadata.jsonl is not"),
    (lambda d: ((d / "metadata.jsonl").write_text('{"file_name": "../y.png", "text": "t"}\n'),
                Image.new("RGB", (8, 8)).save(d / "x.png")),
     "Line 1 of metadata.jsonl names '../y.png', which is not a picture in the training folder"),
])
def test_bad_training_sets_are_one_sentence(tmp_path, make, words):
    make(tmp_path)
    with pytest.raises(training.TrainingDataError, match=words):
        training.read_examples(tmp_path)


@pytest.mark.parametrize("sizes,words", [
    ([(64, 64)] * 2, "2 pictures to train on; give at least 3"),
    ([(64, 64), (64, 64), (20, 200)], "c.png is 20x200, far below the training resolution 64"),
    ([(64, 64), (64, 64), None], "c.png cannot be read as a picture"),
])
def test_a_training_set_is_checked_before_anything_is_uploaded(tmp_path, sizes, words):
    for name, size in zip("abc", sizes):
        if size:
            Image.new("RGB", size).save(tmp_path / f"{name}.png")
        else:
            (tmp_path / f"{name}.png").write_bytes(b"not a png")
    examples = training.read_examples(tmp_path, instance_prompt="x")
    with pytest.raises(training.TrainingDataError, match=words):
        training.check_examples(examples, 64)
    if size is None:  # and the engine, handed it anyway, says the same
        with pytest.raises(training.TrainingDataError, match="c.png cannot be read"):
            training.load_pictures(examples, 64)


@pytest.mark.slow
@pytest.mark.parametrize("token,initializer,words", [
    (None, "blue", "needs the new token it learns"),
    ("red", "blue", "'red' is already a word of this model's tokenizer"),
    ("<zq>", "light blue", "must be one token"),
    ("<qq>", "blue", "No caption uses the token '<qq>'"),
])
def test_textual_inversion_refuses_a_missing_or_known_token(tmp_path, token, initializer, words):
    """Refused before the tokenizer or the model is touched: the pipeline still works."""
    cyan_set(tmp_path / "data", n=3, word="<zq>")
    pipe = tiny_shapes()
    with pytest.raises(training.TrainingDataError, match=words):
        training.Trainer(pipe, training.read_examples(tmp_path / "data"),
                         {"method": "textual-inversion", "token": token, "initializer": initializer,
                          "resolution": 64}, tmp_path / "run")
    assert len(pipe.tokenizer) == pipe.text_encoder.get_input_embeddings().weight.shape[0]
    pipe("a <zq> circle", num_inference_steps=1, height=64, width=64)


@pytest.mark.slow
def test_a_v_prediction_model_trains_and_an_unknown_objective_is_refused(tmp_path):
    from diffusers import DPMSolverMultistepScheduler

    cyan_set(tmp_path / "data", n=3)
    examples = training.read_examples(tmp_path / "data")
    pipe = tiny_shapes()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config,
                                                             prediction_type="v_prediction")
    trainer = training.Trainer(pipe, examples, {**SETTINGS["lora"], "steps": 2, "batch_size": 2,
                                                "resolution": 64}, tmp_path / "v")
    assert trainer.noise.config.prediction_type == "v_prediction"
    assert trainer.run()["steps"] == 2
    pipe = tiny_shapes()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config,
                                                             prediction_type="sample")
    with pytest.raises(training.TrainingDataError, match="predicts 'sample'"):
        training.Trainer(pipe, examples, {**SETTINGS["lora"], "resolution": 64}, tmp_path / "s")


SETTINGS = {"lora": {"method": "lora", "rank": 4, "learning_rate": 1e-3},
            # prior preservation: four class pictures drawn first (two steps each, at 64 px)
            "dreambooth-lora": {"method": "dreambooth-lora", "rank": 4, "learning_rate": 1e-3,
                                "class_prompt": "a circle on a white background",
                                "class_images": 4, "class_steps": 2},
            "textual-inversion": {"method": "textual-inversion", "learning_rate": 5e-2,
                                  "token": "<zq>", "initializer": "blue"}}
# bitsandbytes' 8-bit AdamW (it runs on a CPU too); SDXL's two text encoders (tiny-sdxl, whose
# tokenizer's tokens are characters: the initializer is one)
# (rank 64: bitsandbytes keeps a tensor under 4,096 numbers in 32-bit state, its default as
# diffusers uses it; a rank-64 LoRA on tiny-shapes' 64-wide attention has tensors of 4,096)
SETTINGS["lora-8bit"] = {**SETTINGS["lora"], "use_8bit_adam": True, "rank": 64}
SETTINGS["sdxl-lora"] = SETTINGS["lora"]
SETTINGS["sdxl-dreambooth-lora"] = SETTINGS["dreambooth-lora"]
SETTINGS["sdxl-textual-inversion"] = {**SETTINGS["textual-inversion"], "initializer": "a"}
# a LoRA on the text encoders too (tiny-shapes' encoder has no attention layers: tiny-random's
# two-layer one; the tiny SDXL's two)
SETTINGS["text-lora"] = {**SETTINGS["lora"], "train_text_encoder": True}
SETTINGS["sdxl-text-lora"] = SETTINGS["text-lora"]


def pipe_for(method: str):
    """tiny-shapes, or for an sdxl-… method the tiny SDXL (two text encoders, time ids), or
    for text-lora tiny-random (a text encoder with attention layers)."""
    from imggenhub.engine.tiny import build_tiny_random_pipeline, build_tiny_sdxl_pipeline

    if method == "text-lora":
        pipe = build_tiny_random_pipeline()
    elif not method.startswith("sdxl-"):
        return tiny_shapes()
    else:
        pipe = build_tiny_sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    "lora", "textual-inversion",
    # the second tier (CI's second step): the suite keeps to its two minutes (these take 10
    # to 20 s each; the resume logic they share is the one the two above check)
    *(pytest.param(m, marks=pytest.mark.long) for m in (
        "dreambooth-lora", "lora-8bit", "sdxl-lora", "text-lora", "sdxl-text-lora",
        "sdxl-dreambooth-lora", "sdxl-textual-inversion"))])
def test_a_run_cut_after_a_checkpoint_resumes_to_the_weights_of_an_uncut_run(tmp_path, method, capsys):
    """12 steps (of two batches each, the rate on a cosine after a warm-up) with a checkpoint
    every 5, against a run stopped after 11 steps (a cut after its checkpoint at 10) and a new
    process's worth of state resumed from the checkpoint at 5:
    the same final weights, bit for bit on a CPU, and a loss.csv of 12 rows either way."""
    import torch

    word = "<zq>" if method.endswith("textual-inversion") else CYAN_WORD
    cyan_set(tmp_path / "data", n=3, word=word)
    examples = training.read_examples(tmp_path / "data")
    # two batches a step and a cosine schedule after a warm-up: the schedule's place is kept
    # with the checkpoint too (restarted, the resumed run's rates would differ)
    settings = {**SETTINGS[method], "steps": 12, "batch_size": 2, "resolution": 64,
                "checkpoint_every": 5, "seed": 3, "name": "zq", "validation_steps": 2,
                "gradient_accumulation": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 3,
                "validation_prompts": [f"a {word} circle on a white background", "a red square"]}
    whole = training.Trainer(pipe_for(method), examples, settings, tmp_path / "whole")
    start = whole.weights()
    record = whole.run()
    assert record["steps"] == 12 and record["weights"] == "zq.safetensors"
    if method == "lora-8bit":  # the moments in a byte each
        assert torch.uint8 in {v.dtype for st in whole.opt.state.values() for v in st.values()
                               if isinstance(v, torch.Tensor)}
    if method == "sdxl-textual-inversion":  # a vector for each text encoder, as the UIs write it
        assert sorted(whole.weights()) == ["clip_g", "clip_l"]
    parts = {k.split(".")[0] for k in start} if "lora" in method else set()
    assert parts == {"text-lora": {"unet", "text_encoder"},
                     "sdxl-text-lora": {"unet", "text_encoder", "text_encoder_2"}}.get(
        method, {"unet"} if parts else set())
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == [
        "step-000005", "step-000010"]

    # cut after its checkpoint at 10, resumed from the one at 5: it reaches 10 again and
    # replaces that folder
    cut = training.Trainer(pipe_for(method), examples, settings, tmp_path / "cut")
    assert cut.run(stop_after=11) == {"step": 11, "steps": 12, "complete": False}
    again = training.Trainer(pipe_for(method), examples, settings, tmp_path / "cut")
    again.run(resume_from=tmp_path / "cut" / "checkpoints" / "step-000005")
    a, b = whole.weights(), again.weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], start[k]) for k in a)  # and training moved them
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        "step-000005", "step-000010"]
    for folder in ("whole", "cut"):
        rows = (tmp_path / folder / "loss.csv").read_text().splitlines()
        assert rows[0] == "step,loss" and len(rows) == 13
    assert (tmp_path / "whole" / "loss.csv").read_text() == (tmp_path / "cut" / "loss.csv").read_text()
    # validation pictures at each checkpoint and at the end, one per prompt, side by side
    shown = sorted(p.name for p in (tmp_path / "whole" / "validation").iterdir())
    assert shown == ["step-000005.png", "step-000010.png", "step-000012.png"]
    assert Image.open(tmp_path / "whole" / "validation" / shown[-1]).size == (128, 64)
    assert Image.open(tmp_path / "whole" / "loss.png").size == (480, 240)
    made = json.loads((tmp_path / "whole" / "training.json").read_text())
    assert [e["file"] for e in made["examples"]] == ["00.png", "01.png", "02.png"]
    assert made["sha256"] == engine.sha256_of(tmp_path / "whole" / "zq.safetensors")
    if method.endswith("dreambooth-lora"):  # the class pictures, drawn once, found by the next session
        drawn = sorted((tmp_path / "whole" / "class_images").iterdir())
        assert [p.name for p in drawn] == ["0000.png", "0001.png", "0002.png", "0003.png"]
        assert Image.open(drawn[0]).size == (64, 64)
        capsys.readouterr()
        training.Trainer(pipe_for(method), examples, settings, tmp_path / "next",
                         previous=tmp_path / "whole")
        assert "4 class pictures from the previous session" in capsys.readouterr().out
        assert [(tmp_path / "next" / "class_images" / p.name).read_bytes() for p in drawn] == [
            p.read_bytes() for p in drawn]


@pytest.mark.slow
def test_gradient_checkpointing_trains_the_same_weights(tmp_path):
    """Activations recomputed in the backward pass (memory for time, for large models on a
    T4) give the weights of a run that keeps them."""
    import torch

    cyan_set(tmp_path / "data", n=3)
    got = []
    for checkpointing in (False, True):
        trainer = training.Trainer(tiny_shapes(), training.read_examples(tmp_path / "data"),
                                   {**SETTINGS["lora"], "steps": 3, "batch_size": 2, "resolution": 64,
                                    "gradient_checkpointing": checkpointing}, tmp_path / str(checkpointing))
        trainer.run()
        assert trainer.pipe.unet.is_gradient_checkpointing == checkpointing
        got.append(trainer.weights())
    assert all(torch.allclose(got[0][k], got[1][k], atol=1e-6) for k in got[0])
    assert any(not torch.equal(got[0][k], torch.zeros_like(got[0][k])) for k in got[0])


@pytest.mark.slow
def test_the_weights_load_in_plain_diffusers_and_through_the_engine_alike(tmp_path):
    """A LoRA and an embedding, each trained a few steps: diffusers' load_lora_weights and
    load_textual_inversion read the files, and a picture made so is the picture the engine
    makes with --lora / --embedding and the same seed."""
    import torch

    cyan_set(tmp_path / "data", n=3, word="<zq>")
    made = {}
    for method in ("lora", "textual-inversion"):
        settings = {**SETTINGS[method], "steps": 4, "batch_size": 2, "resolution": 64, "name": method,
                    "learning_rate": 2e-2}  # a few big steps: pictures that differ from the base's
        training.Trainer(tiny_shapes(), training.read_examples(tmp_path / "data"), settings,
                         tmp_path / method).run()
        made[method] = tmp_path / method / f"{method}.safetensors"
    prompt = "a <zq> circle on a white background"

    def plain(method):
        pipe = tiny_shapes()
        if method is None:
            pass
        elif method == "lora":
            pipe.load_lora_weights(str(made[method].parent), weight_name=made[method].name)
        else:
            pipe.load_textual_inversion(str(made[method]), token="<zq>")
        return np.asarray(pipe(prompt, num_inference_steps=8, guidance_scale=shapes.GUIDANCE,
                               height=64, width=64,
                               generator=torch.Generator().manual_seed(11)).images[0]).astype(float)

    base = plain(None)  # the engine's default guidance is the preset's, shapes.GUIDANCE
    for method, flag in (("lora", "lora"), ("textual-inversion", "embedding")):
        job = build_job(parse_settings(model="tiny-shapes", seed=11, gpu=False, steps=8,
                                       **{flag: [f"{made[method]}" + (":<zq>" if flag == "embedding" else "")]}),
                        prompts_from_flags([prompt])).document()
        engine.run_worker(job, tmp_path / f"out-{method}")
        record = engine.merge_manifest(tmp_path / f"out-{method}", job)["images"][0]
        ours = np.asarray(Image.open(tmp_path / f"out-{method}" / record["file"])).astype(float)
        theirs = plain(method)
        assert np.abs(ours - theirs).mean() < 1.0, (method, np.abs(ours - theirs).mean())
        assert np.abs(ours - base).mean() > 4.0, (method, np.abs(ours - base).mean())


@pytest.mark.slow
@pytest.mark.training  # trains the tiny SDXL a few steps, both ways
def test_sdxl_weights_load_in_plain_diffusers_and_through_the_engine_alike(tmp_path):
    """On the tiny SDXL (two text encoders, time ids): a LoRA and an embedding trained a few
    steps load in plain diffusers (load_lora_weights; the embedding's clip_l and clip_g
    vectors into each encoder, diffusers' documented way), and the picture made so is the
    engine's with --lora / --embedding on the preset tiny-sdxl and the same seed."""
    import torch
    from safetensors.torch import load_file

    cyan_set(tmp_path / "data", n=3, word="<zq>")
    made = {}
    for method in ("lora", "textual-inversion"):
        settings = {**SETTINGS["sdxl-" + method], "steps": 4, "batch_size": 2, "resolution": 64,
                    "name": method, "learning_rate": 5e-2 if method == "lora" else 1.0}
        training.Trainer(pipe_for("sdxl-" + method), training.read_examples(tmp_path / "data"),
                         settings, tmp_path / method).run()
        made[method] = tmp_path / method / f"{method}.safetensors"
    assert sorted(load_file(str(made["textual-inversion"]))) == ["clip_g", "clip_l"]
    prompt = "a <zq> circle on a white background"

    def plain(method):
        pipe = pipe_for("sdxl-")
        if method == "lora":
            pipe.load_lora_weights(str(made[method].parent), weight_name=made[method].name)
        elif method:
            state = load_file(str(made[method]))
            pipe.load_textual_inversion(state["clip_l"], token="<zq>", text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(state["clip_g"], token="<zq>",
                                        text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
        return np.asarray(pipe(prompt, num_inference_steps=4, guidance_scale=5.0, height=64, width=64,
                               generator=torch.Generator().manual_seed(11)).images[0]).astype(float)

    base = plain(None)
    for method, flag in (("lora", "lora"), ("textual-inversion", "embedding")):
        job = build_job(parse_settings(model="tiny-sdxl", seed=11, gpu=False, steps=4, guidance=5.0,
                                       **{flag: [f"{made[method]}" + (":<zq>" if flag == "embedding" else "")]}),
                        prompts_from_flags([prompt])).document()
        engine.run_worker(job, tmp_path / f"out-{method}")
        record = engine.merge_manifest(tmp_path / f"out-{method}", job)["images"][0]
        ours = np.asarray(Image.open(tmp_path / f"out-{method}" / record["file"])).astype(float)
        theirs = plain(method)
        print(method, np.abs(ours - theirs).mean(), np.abs(ours - base).mean())
        assert np.abs(ours - theirs).mean() < 1.0, (method, np.abs(ours - theirs).mean())
        assert np.abs(ours - base).mean() > 1.0, (method, np.abs(ours - base).mean())


@pytest.mark.slow
@pytest.mark.parametrize("method,model", [
    ("text-lora", "tiny-random"),
    pytest.param("sdxl-text-lora", "tiny-sdxl", marks=pytest.mark.long)])  # 19 s: the second tier
def test_a_lora_on_the_text_encoders_loads_in_plain_diffusers_and_through_the_engine_alike(
        tmp_path, method, model):
    """--train-text-encoder: the file holds each text encoder's LoRA beside the UNet's, plain
    diffusers' load_lora_weights reads them all, and the engine's --lora draws that picture
    (the same seed); without the text encoders' part the picture is another one, so the
    encoders' LoRA is trained and used, not dropped on the way."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    cyan_set(tmp_path / "data", n=3)
    settings = {**SETTINGS[method], "steps": 4, "batch_size": 2, "resolution": 64, "name": "te",
                "learning_rate": 5e-2}
    training.Trainer(pipe_for(method), training.read_examples(tmp_path / "data"), settings,
                     tmp_path / "run").run()
    made = tmp_path / "run" / "te.safetensors"
    state = load_file(str(made))
    parts = {k.split(".")[0] for k in state}
    assert parts == ({"unet", "text_encoder", "text_encoder_2"} if model == "tiny-sdxl"
                     else {"unet", "text_encoder"})
    # the UNet's part alone, written by diffusers' own writer
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "unet-only", weight_name="u.safetensors",
        unet_lora_layers={k[5:]: v for k, v in state.items() if k.startswith("unet.")})
    prompt, steps, guidance = f"a {CYAN_WORD} circle on a white background", 4, 5.0

    def plain(folder, name):
        pipe = pipe_for(method)
        pipe.load_lora_weights(str(folder), weight_name=name)
        return np.asarray(pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                               height=64, width=64,
                               generator=torch.Generator().manual_seed(11)).images[0]).astype(float)

    job = build_job(parse_settings(model=model, seed=11, gpu=False, steps=steps, guidance=guidance,
                                   lora=[str(made)]), prompts_from_flags([prompt])).document()
    engine.run_worker(job, tmp_path / "out")
    record = engine.merge_manifest(tmp_path / "out", job)["images"][0]
    ours = np.asarray(Image.open(tmp_path / "out" / record["file"])).astype(float)
    theirs, unet_only = plain(made.parent, made.name), plain(tmp_path / "unet-only", "u.safetensors")
    assert np.abs(ours - theirs).mean() < 1.0, np.abs(ours - theirs).mean()
    assert np.abs(ours - unet_only).mean() > 1.0, np.abs(ours - unet_only).mean()
    # the copy in kohya's keys: each names a layer of the model as the UIs map them
    # ("lora_unet_" or the encoder's prefix, then the layer's diffusers path with "_" for
    # "."), the rank as alpha; and diffusers reads it to the same picture
    kohya = load_file(str(tmp_path / "run" / "te_kohya.safetensors"))
    pipe = pipe_for(method)
    prefixes = {"lora_unet_": pipe.unet}
    if model == "tiny-sdxl":
        prefixes.update({"lora_te1_": pipe.text_encoder, "lora_te2_": pipe.text_encoder_2})
    else:
        prefixes["lora_te_"] = pipe.text_encoder
    def path(prefix, name):  # the UIs name an encoder's layers from its text_model
        text = prefix != "lora_unet_" and not name.startswith("text_model.")
        return prefix + ("text_model." if text else "") + name

    layers = {path(prefix, name).replace(".", "_") for prefix, part in prefixes.items()
              for name, module in part.named_modules() if isinstance(module, torch.nn.Linear)}
    named = {k.split(".")[0] for k in kohya}
    assert named <= layers and {k.split("_", 2)[1] for k in named} == {
        "unet", *(["te1", "te2"] if model == "tiny-sdxl" else ["te"])}
    assert {k.split(".", 1)[1] for k in kohya} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert len(kohya) == len(state) // 2 * 3 and all(
        float(kohya[k]) == 4 for k in kohya if k.endswith("alpha"))
    assert np.abs(ours - plain(tmp_path / "run", "te_kohya.safetensors")).mean() < 1.0


@pytest.mark.slow
def test_a_lora_on_the_text_encoders_is_refused_in_one_sentence_where_it_cannot_be(tmp_path, monkeypatch):
    """Textual inversion (it trains the encoders' table already), a text encoder with no
    attention layers (tiny-shapes'), and a transformers that needs a newer peft than the
    installed one to add the adapter: each one sentence."""
    import transformers.integrations.peft as hf_peft

    cyan_set(tmp_path / "data", n=3, word="<zq>")
    examples = training.read_examples(tmp_path / "data")
    for method, pipe, words in (
            ("textual-inversion", tiny_shapes(), "textual inversion trains their embedding table"),
            ("lora", tiny_shapes(), "text encoder has no attention layers to put a LoRA on")):
        with pytest.raises(training.TrainingDataError, match=words):
            training.Trainer(pipe, examples, {**SETTINGS[method], "train_text_encoder": True,
                                              "resolution": 64}, tmp_path / "out")
    monkeypatch.setattr(hf_peft, "MIN_PEFT_VERSION", "99.0")  # what transformers 5.24 asks of peft 0.21
    with pytest.raises(training.TrainingDataError,
                       match=r"adds a text encoder's LoRA only with a newer peft than .*pip install -U peft"):
        training.Trainer(pipe_for("text-lora"), examples, {**SETTINGS["text-lora"], "resolution": 64},
                         tmp_path / "out")


def test_eight_bit_adam_without_bitsandbytes_is_one_sentence(tmp_path, monkeypatch):
    """Where bitsandbytes cannot be imported, --use-8bit-adam stops before an adapter is
    added, in one sentence that says what to install."""
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what a Python without it raises
    cyan_set(tmp_path / "data", n=3)
    with pytest.raises(training.TrainingDataError, match="needs bitsandbytes"):
        training.Trainer(tiny_shapes(), training.read_examples(tmp_path / "data"),
                         {**SETTINGS["lora-8bit"], "steps": 1, "resolution": 64}, tmp_path / "out")


@pytest.mark.training
@pytest.mark.timeout(900)
def test_a_lora_teaches_tiny_shapes_a_colour_it_never_saw(tmp_path):
    """Nine cyan pictures captioned with a new word ("a zq circle ..."), a rank-8 LoRA of 800
    steps: asked for a zq circle, square and triangle, tiny-shapes draws them cyan (read by
    the checker with cyan added to its palette), in shapes it learned before; without the
    LoRA, the same prompts and seeds give cyan almost never. (Measured at the preset's
    guidance, 2, and at 7 alike: cyan in 24 of 24, the asked shape in 24 of 24, against cyan
    in 0 of 24 before; 80 s on 1 core. 400 steps, enough for the first tiny-shapes, taught
    the longer-trained one nothing: 0 of 24.)"""
    import torch

    cyan_set(tmp_path / "data")
    palette = {**shapes.COLOURS, **shapes.NEW_COLOURS}
    pipe = tiny_shapes()

    def reads():
        got = []
        for shape in shapes.SHAPES:
            prompt = f"a {CYAN_WORD} {shape} on a white background"
            images = pipe([prompt] * 8, num_inference_steps=20, guidance_scale=shapes.GUIDANCE, height=64, width=64,
                          generator=[torch.Generator().manual_seed(i) for i in range(8)]).images
            got += [(shapes.read(img, palette), shape) for img in images]
        return got

    before = reads()
    trainer = training.Trainer(pipe, training.read_examples(tmp_path / "data"),
                               {"method": "lora", "rank": 8, "learning_rate": 1e-3, "steps": 800,
                                "batch_size": 4, "resolution": 64, "name": "zq"}, tmp_path / "run")
    record = trainer.run()
    after = reads()
    assert record["loss_last"] < 0.8 * record["loss_first"], record
    cyan_before = sum(r.colour == "cyan" for r, _ in before)
    cyan_after = sum(r.colour == "cyan" for r, _ in after)
    shape_after = sum(r.shape == shape for r, shape in after)
    assert cyan_before <= 4 and cyan_after >= 18 and shape_after >= 18, (cyan_before, cyan_after,
                                                                          shape_after)


@pytest.mark.training
@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["lora", "textual-inversion", "text-lora"])
def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(tmp_path, method):
    """`python -m imggenhub.engine.training` alone, and as two processes under
    torch.distributed.run (gloo on a CPU), on the same pictures, seed and global batch of 4:
    the weight files agree to 1e-5 (the shares' gradients are averaged in another order of
    float sums), and they moved from where they started."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from .test_benchmarks import REPO

    cyan_set(tmp_path / "data", n=6, word="<zq>" if method == "textual-inversion" else CYAN_WORD)
    model = "tiny-random" if method == "text-lora" else "tiny-shapes"  # its encoder has layers
    settings = json.dumps({**SETTINGS[method], "steps": 10, "batch_size": 4, "resolution": 64,
                           "name": "zq"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    records = {}
    for n in (1, 2):
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if n == 2 else []
        done = subprocess.run([sys.executable, *launcher, "-m", "imggenhub.engine.training",
                               "--data", str(tmp_path / "data"), "--out", str(tmp_path / f"p{n}"),
                               "--model", model, "--settings", settings],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, done.stderr[-3000:]
        records[n] = json.loads(done.stdout.strip().splitlines()[-1])
        assert records[n]["processes"] == n and records[n]["steps"] == 10
        assert records[n]["share"] == 4 // n  # each process trains on its half of the batch
        # no caption in the log (the weights' names are the run's name, zq)
        assert "zq" not in done.stdout.replace("zq.safetensors", "").replace("zq_kohya.safetensors", "")
    one, two = (load_file(str(tmp_path / f"p{n}" / "zq.safetensors")) for n in (1, 2))
    assert one.keys() == two.keys() and len(one) > 0
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    if method != "textual-inversion":
        ups = [k for k in one if "lora_B" in k or ".up." in k]  # (the encoders': lora_linear_layer.up)
        assert ups and all(float(one[k].abs().max()) > 0 for k in ups)  # B starts at zero
        assert {k.split(".")[0] for k in ups} == (
            {"unet", "text_encoder"} if method == "text-lora" else {"unet"})
    else:  # the row left the initializer's ("blue") embedding
        pipe = tiny_shapes()
        blue = pipe.text_encoder.get_input_embeddings().weight.detach()[
            pipe.tokenizer.convert_tokens_to_ids("blue</w>")]
        assert float((one["<zq>"][0] - blue).abs().max()) > 1e-3
    assert abs(records[1]["loss_last"] - records[2]["loss_last"]) < 1e-5


@pytest.mark.training
@pytest.mark.timeout(900)
def test_an_embedding_teaches_tiny_shapes_a_new_word_for_a_colour_it_draws(tmp_path):
    """Nine purple pictures captioned with a new token ("a <zq> circle ..."), an embedding
    started from the word "green", 200 steps: asked for a <zq> circle, square and triangle,
    tiny-shapes draws them green before and purple after (measured: purple in 0 -> 24 of
    24, at guidance 2 and at 7 alike). An embedding only steers the text side: it cannot teach a colour the UNet never
    drew (the same with cyan: blue in 24 of 24, before and after)."""
    import torch

    cyan_set(tmp_path / "data", word="<zq>", colour="purple")
    pipe = tiny_shapes()
    trainer = training.Trainer(pipe, training.read_examples(tmp_path / "data"),
                               {**SETTINGS["textual-inversion"], "initializer": "green",
                                "steps": 200, "batch_size": 4, "resolution": 64, "name": "zq"},
                               tmp_path / "run")

    def colours():
        got = []
        for shape in shapes.SHAPES:
            images = pipe([f"a <zq> {shape} on a white background"] * 8, num_inference_steps=20,
                          guidance_scale=shapes.GUIDANCE, height=64, width=64,
                          generator=[torch.Generator().manual_seed(i) for i in range(8)]).images
            got += [shapes.read(img).colour for img in images]
        return got

    before = colours()
    trainer.run()
    after = colours()
    assert before.count("purple") <= 4 and after.count("purple") >= 18, (before, after)


@pytest.mark.training
@pytest.mark.timeout(900)
def test_prior_preservation_keeps_the_class_as_the_model_drew_it(tmp_path):
    """DreamBooth on nine cyan circles under "a zq circle on a white background" (rank 8, 400
    steps): without prior preservation the class prompt "a circle on a white background"
    drifts to the instance (cyan or green, the named colour nearest, in every seed); with it
    (16 class pictures drawn first from that prompt, at the preset's guidance as `imggenhub
    train` draws them) the class keeps the model's own colours, yellow and orange, seed by
    seed the same colour in 5 of 12 (none without). The instance is learned either way: the
    zq circle cyan in 11 of 12 without, 12 of 12 with. (Measured at guidance 2; read and
    drawn at 7, where the model draws that class red, the zq circle with prior preservation
    stopped at green and blue, and 9 of 12 kept their colour.)"""
    import random

    import torch

    rng = random.Random(7)
    (tmp_path / "data").mkdir()
    for i in range(9):
        scene = shapes.Scene("cyan", "circle", rng.choice(list(shapes.SIZES)), rng.choice(list(shapes.PLACES)))
        shapes.draw(scene, rng).save(tmp_path / "data" / f"{i:02d}.png")
    palette = {**shapes.COLOURS, **shapes.NEW_COLOURS}
    seeds = range(12)

    def colours(pipe, prompt):
        images = pipe([prompt] * len(seeds), num_inference_steps=20, guidance_scale=shapes.GUIDANCE, height=64,
                      width=64, generator=[torch.Generator().manual_seed(i) for i in seeds]).images
        return [shapes.read(image, palette).colour for image in images]

    instance, cls = "a zq circle on a white background", "a circle on a white background"
    before = colours(tiny_shapes(), cls)
    got = {}
    for prior in (False, True):
        pipe = tiny_shapes()
        settings = {"method": "dreambooth-lora", "rank": 8, "learning_rate": 1e-3, "steps": 400,
                    "batch_size": 4, "resolution": 64, "name": "zq"}
        if prior:
            # drawn as `imggenhub train` draws them: at the preset's steps and guidance
            settings.update(class_prompt=cls, class_images=16,
                            **drawing_defaults(resolve_model("tiny-shapes")))
        examples = training.read_examples(tmp_path / "data", instance_prompt=instance)
        training.Trainer(pipe, examples, settings, tmp_path / f"prior-{prior}").run()
        got[prior] = (colours(pipe, instance), colours(pipe, cls))
    bluish = ("cyan", "green", "blue")  # the instance's colour and its neighbours
    kept = {p: sum(a == b for a, b in zip(before, got[p][1])) for p in got}
    drifted = {p: sum(c in bluish for c in got[p][1]) for p in got}
    said = (before, got, kept, drifted)
    assert sum(c in bluish for c in before) <= 3, said  # measured 0
    assert drifted[False] >= 9 and drifted[True] <= 3, said  # measured 12 and 0
    assert kept[True] >= kept[False] + 3, said  # measured 5 and 0
    assert all(sum(c == "cyan" for c in got[p][0]) >= 9 for p in got), said  # 11 and 12


@pytest.mark.training
@pytest.mark.timeout(900)
def test_on_an_sdxl_shaped_model_a_lora_moves_its_pictures_towards_the_training_set(tmp_path):
    """The tiny SDXL's weights are random, so its pictures mean nothing: the learning signal is
    in latent space. A rank-8 LoRA of 300 steps on 8 pictures of one flat colour under a new
    word: the loss falls, and the latents it generates for that word (4 seeds, the same
    before and after; no guidance) come nearer the training pictures' latent, channel by
    channel (a flat colour's latent is flat). Measured: 15.7 -> 10.0 (on tiny-random's SD
    UNet the same measure goes 9.0 -> 5.5)."""
    import torch

    from imggenhub.engine.tiny import _sdxl_unet

    cyan_set(tmp_path / "data", n=8)
    settings = {**SETTINGS["sdxl-lora"], "steps": 300, "batch_size": 4, "resolution": 64,
                "seed": 1, "rank": 8, "learning_rate": 1e-2}
    pipe = pipe_for("sdxl-lora")
    # the tiny SDXL's UNet has 2 and 4 channels, too few to learn anything (its loss stays
    # flat): the same shape at 32 and 64 channels (the tiny refiner's widths)
    pipe.unet = _sdxl_unet(7, (32, 64), 6, 64)
    trainer = training.Trainer(pipe, training.read_examples(tmp_path / "data"), settings,
                               tmp_path / "out")
    target = trainer.latents.mean(dim=(0, 2, 3))

    def distance() -> float:
        with torch.no_grad():
            got = pipe([f"a {CYAN_WORD} circle on a white background"] * 4, num_inference_steps=10,
                       guidance_scale=1.0, height=64, width=64, output_type="latent",
                       generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
        return float((got.mean(dim=(0, 2, 3)) - target).norm() / target.norm())

    before = distance()
    record = trainer.run()
    after = distance()
    assert record["loss_last"] < 0.95 * record["loss_first"], record
    assert after < 0.75 * before, (before, after)
