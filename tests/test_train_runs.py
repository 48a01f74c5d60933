"""`imggenhub train`, the second kind of run, through the CLI on the local backend (a real
Jupyter kernel running the rendered notebook): the weights come home verified and registered
under their name, `generate --lora NAME` uses them as plain diffusers does, a session that
crashes after a checkpoint is continued by `resume` to the very weights of an uncut run, and
bad data or flags are one sentence and exit 2 before anything runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imggenhub import engine, shapes
from imggenhub.errors import SpecError
from imggenhub.run import trained

from .test_training import tiny_shapes

TRAIN = ["train", "--backend", "local", "--model", "tiny-shapes", "--no-gpu", "--steps", "6",
         "--rank", "4", "--learning-rate", "2e-2", "--batch-size", "2", "--checkpoint-every", "3",
         "--seed", "5"]


def cyan_set(folder: Path, n: int = 4) -> Path:
    shapes.write_training_set(folder, "cyan", "zq", n)
    return folder


def _weights(out: Path) -> tuple[dict, Path]:
    manifest = json.loads((out / engine.MANIFEST).read_text(encoding="utf-8"))
    [record] = manifest["images"]
    return manifest, out / record["file"]


@pytest.mark.slow
@pytest.mark.long
def test_train_resume_generate_with_the_weights_and_publish_them(cli, tmp_path, hub, monkeypatch):
    """Train (6 steps, checkpoints at 3): the weights come home verified and registered.
    The same training crashing at step 4 (its checkpoint at 3 brought home), then `resume`:
    the next session continues from step 3 to the uncut run's weights, bit for bit, and its
    loss curve. `generate --lora zq`: the picture diffusers' own load_lora_weights makes with
    the same seed, not the base model's. `publish zq` to the Hub emulator: the weights,
    card, loss curve and validation pictures arrive byte for byte; publishing again makes no
    commit; a refused token is one sentence; the token is in no file, output or record."""
    import torch

    data = cyan_set(tmp_path / "data")
    code, out, err = cli(*TRAIN, "--images", str(data), "--name", "zq", "--out", str(tmp_path / "t"),
                         "--validation-prompt", "a zq circle on a white background", "--json")
    assert code == 0, err
    said = json.loads(out)
    assert said["state"] == "downloaded" and said["images_fetched"] == 1
    manifest, weights = _weights(tmp_path / "t")
    assert manifest["kind"] == "weights" and manifest["complete"] and manifest["name"] == "zq"
    assert weights.name == "zq.safetensors"
    assert engine.sha256_of(weights) == manifest["images"][0]["sha256"]
    assert manifest["images"][0]["steps"] == 6
    rows = (tmp_path / "t" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and len(rows) == 7
    assert sorted(p.name for p in (tmp_path / "t" / "validation").iterdir()) == [
        "step-000003.png", "step-000006.png"]
    assert (tmp_path / "t" / "checkpoints" / "step-000003" / "state.pt").is_file()
    assert "a lora trained on 4 pictures with tiny-shapes" in err
    entry = trained.find("zq")
    assert entry["file"] == str(weights.resolve()) and entry["method"] == "lora"
    assert entry["model"] == "tiny-shapes" and entry["run_id"] == said["run_id"]
    code, out, err = cli("show", "zq")
    assert code == 0 and "zq.safetensors (lora, 6 steps, loss " in out and "images" not in out
    code, out, _ = cli("runs")
    assert code == 0 and "1/1 weights" in out  # what a training run made, in its own word

    monkeypatch.setenv("IMGGENHUB_ENGINE_FAIL_AFTER", "4")
    code, out, err = cli(*TRAIN, "--images", str(data), "--name", "cut", "--out", str(tmp_path / "cut"),
                         "--validation-prompt", "a zq circle on a white background", "--json")
    assert code == 1, err
    run_id = json.loads(out)["run_id"]
    assert "injected failure at step 4" in err
    assert (tmp_path / "cut" / "checkpoints" / "step-000003" / "state.pt").is_file()
    assert not (tmp_path / "cut" / "cut.safetensors").exists() and trained.find("cut") is None
    monkeypatch.delenv("IMGGENHUB_ENGINE_FAIL_AFTER")
    code, out, err = cli("resume", run_id, "--json")
    assert code == 0, err
    assert "resumed from step-000003 at step 3" in err
    cut = _weights(tmp_path / "cut")[1]
    assert engine.sha256_of(cut) == engine.sha256_of(weights)
    assert (tmp_path / "t" / "loss.csv").read_text() == (tmp_path / "cut" / "loss.csv").read_text()
    assert trained.find("cut")["file"] == str(cut.resolve())

    prompt = "a zq circle on a white background"
    code, out, err = cli("generate", "--backend", "local", "--model", "tiny-shapes", "--no-gpu",
                         "--prompt", prompt, "--lora", "zq", "--seed", "11", "--steps", "8",
                         "--out", str(tmp_path / "g"), "--json")
    assert code == 0, err
    record = json.loads((tmp_path / "g" / engine.MANIFEST).read_text())["images"][0]
    ours = np.asarray(Image.open(tmp_path / "g" / record["file"])).astype(float)

    def plain(lora: bool):
        pipe = tiny_shapes()
        if lora:
            pipe.load_lora_weights(str(weights.parent), weight_name=weights.name)
        return np.asarray(pipe(prompt, num_inference_steps=8, guidance_scale=shapes.GUIDANCE,
                               height=64, width=64,
                               generator=torch.Generator().manual_seed(11)).images[0]).astype(float)

    assert np.abs(ours - plain(True)).mean() < 1.0  # at the preset's guidance, as generate
    assert np.abs(ours - plain(False)).mean() > 4.0

    from .hub_emulator import DEFAULT_READ_TOKEN, DEFAULT_TOKEN

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    code, out, err = cli("publish", "zq", "--repo", "imggenhub/zq-lora", "--private", "--json")
    assert code == 0, err
    done = json.loads(out)
    assert done["changed"] and done["files"] == [
        "README.md", "loss.csv", "loss.png", "validation/step-000003.png",
        "validation/step-000006.png", "zq.safetensors", "zq_kohya.safetensors"]
    repo = hub.repos["imggenhub/zq-lora"]
    assert repo.private
    for name in done["files"][1:]:
        assert repo.files[name] == (tmp_path / "t" / name).read_bytes(), name
    assert "zq.safetensors" in repo.lfs and "zq_kohya.safetensors" in repo.lfs
    assert "`zq_kohya.safetensors` is the same LoRA in kohya's keys" in repo.files["README.md"].decode()
    card = repo.files["README.md"].decode()
    assert card.startswith("---\n") and "library_name: diffusers" in card and "- lora" in card
    assert 'pipe.load_lora_weights("imggenhub/zq-lora", weight_name="zq.safetensors")' in card
    assert "imggenhub train --images DIR --model tiny-shapes --method lora --steps 6 --rank 4" in card
    assert "![the loss, step by step](loss.png)" in card and "validation/step-000006.png" in card
    assert str(tmp_path) not in card and "00.png" not in card  # no path, no picture's name
    commits = len(repo.commits)
    code, out, err = cli("publish", "zq", "--repo", "imggenhub/zq-lora", "--json")
    assert code == 0 and not json.loads(out)["changed"] and len(repo.commits) == commits
    monkeypatch.setenv("HF_TOKEN", DEFAULT_READ_TOKEN)
    code, out, err = cli("publish", "zq", "--repo", "imggenhub/other")
    assert code == 4 and "may not write to imggenhub/other (403)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token_anyone_knows")
    code, out, err = cli("publish", "zq", "--repo", "imggenhub/other")
    assert code == 4 and "did not accept the Hugging Face token (401)" in err
    # the canary: neither token anywhere imggenhub wrote or said
    written = [p for root in (tmp_path, Path(os.environ["IMGGENHUB_HOME"])) for p in root.rglob("*")
               if p.is_file()]
    for token in (DEFAULT_TOKEN, DEFAULT_READ_TOKEN):
        assert token not in out + err
        assert not [p for p in written if token.encode() in p.read_bytes()]
        assert not [n for n, data in repo.files.items() if token.encode() in data]


@pytest.mark.parametrize("flags,n,words", [
    ([], 2, "2 pictures to train on; give at least 3."),
    (["--method", "textual-inversion"], 4, "--method textual-inversion needs --token"),
    (["--token", "<zq>"], 4, "--token and --initializer are for --method textual-inversion"),
    (["--steps", "0"], 4, "--steps: input should be greater than or equal to 1"),
    (["--model", "tiny-kandinsky"], 4, "fine-tuning takes Stable Diffusion 1.x, 2.x and SDXL models"),
    (["--method", "textual-inversion", "--token", "<zq>", "--initializer", "red", "--use-8bit-adam"], 4,
     "--use-8bit-adam is for a LoRA"),
    (["--method", "textual-inversion", "--token", "<zq>", "--initializer", "red", "--train-text-encoder"],
     4, "--train-text-encoder is for a LoRA"),
    (["--name", "a b"], 4, "--name 'a b' must be 1 to 64 letters"),
    (["--resolution", "256"], 4, "far below the training resolution 256"),
    (["--class-prompt", "a circle"], 4, "--class-prompt and --num-class-images are for --method dreambooth-lora"),
    (["--method", "dreambooth-lora"], 4, "--method dreambooth-lora needs --instance-prompt"),
    (["--method", "dreambooth-lora", "--instance-prompt", "a zq", "--num-class-images", "5"], 4,
     "--num-class-images needs --class-prompt"),
    (["--lr-scheduler", "sometimes"], 4, "--lr-scheduler: input should be 'constant'"),
])
def test_bad_training_input_is_one_sentence_and_exit_2_before_anything_runs(cli, tmp_path, flags, n, words):
    data = cyan_set(tmp_path / "data", n)
    code, _, err = cli("train", "--backend", "local", "--model", "tiny-shapes", "--images", str(data),
                       *flags)
    assert code == 2
    assert words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.long
def test_sdxl_trains_an_embedding_and_an_8bit_lora_that_generate_uses_by_name(cli, tmp_path):
    """On the tiny SDXL through the CLI and a real notebook: an embedding (a vector for each
    of its two text encoders) and a LoRA trained with 8-bit Adam on the UNet and both text
    encoders (--train-text-encoder) come home registered, and
    generate --embedding NAME / --lora NAME on the same model draws something else than
    without them, the same seed."""
    data = tmp_path / "data"
    shapes.write_training_set(data, "cyan", "<zq>", 4)
    base = ["train", "--backend", "local", "--model", "tiny-sdxl", "--no-gpu", "--steps", "4",
            "--batch-size", "2", "--seed", "5", "--images", str(data)]
    code, _, err = cli(*base, "--method", "textual-inversion", "--token", "<zq>", "--initializer", "a",
                       "--learning-rate", "1.0", "--name", "zq-xl", "--out", str(tmp_path / "ti"))
    assert code == 0, err
    code, _, err = cli(*base, "--rank", "4", "--learning-rate", "0.5", "--use-8bit-adam",
                       "--train-text-encoder", "--name", "lora-xl", "--out", str(tmp_path / "lora"))
    assert code == 0, err
    made = json.loads((tmp_path / "lora" / "training.json").read_text())
    assert made["settings"]["use_8bit_adam"] is True and made["text_encoders"] == 2
    assert made["settings"]["train_text_encoder"] is True
    from safetensors import safe_open

    with safe_open(str(tmp_path / "lora" / "lora-xl.safetensors"), "pt") as weights:
        assert {k.split(".")[0] for k in weights.keys()} == {"unet", "text_encoder", "text_encoder_2"}
    pictures = {}
    for flags in ([], ["--embedding", "zq-xl"], ["--lora", "lora-xl"]):
        out = tmp_path / ("g" + "".join(flags[:1]))
        code, _, err = cli("generate", "--backend", "local", "--no-gpu", "--model", "tiny-sdxl",
                           "--prompt", "a <zq> circle on a white background", "--seed", "3",
                           "--steps", "4", "--out", str(out), *flags)
        assert code == 0, err
        [record] = json.loads((out / engine.MANIFEST).read_text())["images"]
        pictures[tuple(flags)] = np.asarray(Image.open(out / record["file"])).astype(float)
    plain = pictures[()]
    for flags in (("--embedding", "zq-xl"), ("--lora", "lora-xl")):
        assert np.abs(pictures[flags] - plain).mean() > 1.0, flags


def test_generate_refuses_a_trained_name_of_the_other_method(cli, tmp_path):
    """A registered embedding is not a LoRA (and an unknown name says what --lora takes)."""
    weights = tmp_path / "emb.safetensors"
    weights.write_bytes(b"x")
    trained.register("emb", weights, {"method": "textual-inversion", "token": "<e>"})
    code, _, err = cli("generate", "--backend", "local", "--model", "tiny-shapes", "--prompt", "p",
                       "--lora", "emb")
    assert code == 2 and "'emb' names a textual-inversion trained here, not a lora" in err
    code, _, err = cli("generate", "--backend", "local", "--model", "tiny-shapes", "--prompt", "p",
                       "--lora", "nothing-of-that-name")
    assert code == 2 and "nor a name 'imggenhub train' gave a LoRA" in err


def test_a_name_from_a_server_manifest_is_checked_before_it_is_registered(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    for bad in ("../x", "a/b", "", None, 3, "x" * 65, "\x1b[2Jx"):
        assert trained.register(bad, weights, {"method": "lora"}) is None
    assert trained.all_entries() == []


@pytest.mark.slow
@pytest.mark.long
def test_on_kaggle_the_pictures_ship_and_a_short_session_continues_from_its_checkpoint(
        cli, tmp_path, real_emulator):
    """Through the emulator, a real notebook training tiny-random: the pictures go as a
    private dataset (content-addressed), each session ends after 4 steps as if its time were
    up (a complete version holding a checkpoint), the next version is pushed with the
    kernel's own output as a kernel source, and it continues from that checkpoint (that a
    continued run ends with an uncut run's weights: the local test above). Then `generate
    --lora NAME` on Kaggle (the weights shipped as an input) and here: the same picture."""
    data = cyan_set(tmp_path / "data")
    flags = ["--model", "tiny-random", "--steps", "6", "--rank", "4", "--learning-rate", "2e-2",
             "--batch-size", "2", "--checkpoint-every", "3", "--seed", "5", "--images", str(data)]
    real_emulator.faults.set(session_steps=4)
    code, out, err = cli("train", "--backend", "kaggle", "--no-gpu", *flags, "--name", "there",
                         "--out", str(tmp_path / "there"), "--kernel-id", "imggenhub/train-there",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["state"] == "downloaded"
    assert "inputs: 4 files on this machine go to Kaggle as the private dataset" in err
    assert "session 2 of run" in err
    first, second = real_emulator.versions("imggenhub/train-there")
    assert not first.meta.get("kernelDataSources")
    assert "stopping at step 4 of 6" in "".join(e["data"] for e in first.log)
    assert second.meta["kernelDataSources"] == ["imggenhub/train-there"]
    assert "resumed from step-000004 at step 4" in "".join(e["data"] for e in second.log)
    assert first.job is None and second.runner == "notebook"
    manifest, there = _weights(tmp_path / "there")
    assert manifest["complete"] and engine.sha256_of(there) == manifest["images"][0]["sha256"]
    assert len((tmp_path / "there" / "loss.csv").read_text().splitlines()) == 7
    assert (tmp_path / "there" / "checkpoints" / "step-000004" / "state.pt").is_file()
    assert trained.find("there")["file"] == str(there.resolve())

    # the weights by name, on Kaggle (shipped as an input) and here: the same picture
    pictures, said = {}, {}
    for backend in ("kaggle", "local"):
        code, out, err = cli("generate", "--backend", backend, "--no-gpu", "--model", "tiny-random",
                             "--prompt", "a zq circle on a white background", "--lora", "there",
                             "--seed", "3", "--out", str(tmp_path / f"g-{backend}"),
                             "--kernel-id", "imggenhub/gen-there", "--json")
        assert code == 0, err
        [record] = json.loads((tmp_path / f"g-{backend}" / engine.MANIFEST).read_text())["images"]
        assert record["loras"][0]["name"] == "there"
        pictures[backend], said[backend] = record["sha256"], err
    assert "inputs: 1 file on this machine goes to Kaggle as the private dataset" in said["kaggle"]
    assert pictures["kaggle"] == pictures["local"]


def test_a_training_job_over_the_quota_left_is_refused_before_anything_is_uploaded(emulator, cli, tmp_path):
    """The estimate counts training steps (a batch of 1 on one T4); over the quota left:
    exit 7, no picture uploaded, nothing pushed."""
    emulator.gpu_used_seconds = 30 * 3600 - 30  # 30 s left this week
    data = cyan_set(tmp_path / "data")
    code, out, err = cli("train", "--backend", "kaggle", "--model", "sd15", "--resolution", "64",
                         "--images", str(data), "--json", cwd=tmp_path)
    assert code == 7, err
    assert "estimate: about 0.04 GPU h (500 training steps at ~0.0s each over 1 T4" in err
    assert "more than the 0.01 h left" in err
    assert not [m for m, _ in emulator.calls if m in ("SaveKernel", "StartBlobUpload")]


def test_the_model_card_writes_what_a_run_says_as_text_never_as_code():
    """A training run's manifest and training.json are the kernel's data: a model name or
    file that is no plain id, a token with quotes, a figure that is text: none reaches the
    card's code or its table as given."""
    from imggenhub.outputs.publish import model_card

    hostile = 'x"); import os; os.system("rm -rf ~") #'
    card = model_card("you/thing", {"file": 'w"; x.safetensors'},
                      {"settings": {"method": "textual-inversion", "token": "<a`b>",
                                    "initializer": hostile, "rank": "`7`", "seed": hostile,
                                    "validation_prompts": ["a *bold* [link](http://x) <b>"]},
                       "steps": "many", "examples": [{"text": "<a`b> photo"}] * 2},
                      {"model": hostile}, ["validation/step-000001.png"])
    assert hostile not in card and "rm -rf" not in card
    assert 'from_pretrained("MODEL"' in card and 'weight_name="weights.safetensors"' in card
    assert 'token="<a`b>"' in card  # a JSON string in the snippet, quotes escaped
    assert "--token 'TOKEN' --initializer WORD" in card and "`7`" not in card
    assert r"a \*bold\* \[link\]\(http://x\) \<b\>" in card


def test_the_model_card_says_what_a_lora_was_trained_on_and_the_flags_that_remake_it():
    """A LoRA on the UNet and the text encoders says so in its table, and its remake command
    has --train-text-encoder (and --use-8bit-adam); a setting that is not exactly true (the
    kernel's data) adds neither."""
    from imggenhub.outputs.publish import model_card

    def card(**settings):
        return model_card("you/thing", {"file": "thing.safetensors"},
                          {"settings": {"method": "lora", "rank": 4, **settings}, "steps": 10,
                           "examples": [{"text": "a zq"}] * 3}, {"model": "tiny-sdxl"}, [])

    both = card(train_text_encoder=True, use_8bit_adam=True)
    assert "| LoRA on | the UNet and the text encoders |" in both
    assert "--rank 4 --use-8bit-adam --train-text-encoder" in both
    for settings in ({}, {"train_text_encoder": "yes", "use_8bit_adam": 1}):
        unet = card(**settings)
        assert "| LoRA on | the UNet |" in unet
        assert "--train-text-encoder" not in unet and "--use-8bit-adam" not in unet


def test_a_run_draws_its_own_pictures_as_generate_draws_with_the_model(tmp_path):
    """The pictures a training run draws itself (validation strips, DreamBooth's class
    pictures) take the model preset's steps and guidance unless given: sdxl-turbo's one step
    and no guidance (20 steps at guidance 7, the fixed default before, burn a turbo model's
    pictures), tiny-shapes' 20 steps at 2. A tiny-shapes run's validation picture after one
    step is, near enough, the base model's picture at 20 steps and guidance 2, not at 7."""
    import torch

    from imggenhub.engine import training
    from imggenhub.job.training import build_train_spec

    data = cyan_set(tmp_path / "data")
    turbo = build_train_spec(data, "sdxl-turbo", resolution=64).training
    assert (turbo.validation_steps, turbo.class_steps, turbo.validation_guidance) == (1, 1, 0.0)
    given = build_train_spec(data, "sdxl-turbo", resolution=64, validation_steps=4,
                             validation_guidance=1.5).training
    assert (given.validation_steps, given.class_steps, given.validation_guidance) == (4, 1, 1.5)
    with pytest.raises(SpecError, match=r"^the validation pictures' steps: input should be less "
                                        r"than or equal to 500 \(got 501\)\.$"):
        build_train_spec(data, "sdxl-turbo", resolution=64, validation_steps=501)

    prompt = "a red square on a white background"
    doc = build_train_spec(data, "tiny-shapes", steps=1, seed=1, gpu=False,
                           validation_prompts=(prompt,)).document()
    assert (doc["training"]["validation_steps"], doc["training"]["validation_guidance"]) == (
        20, shapes.GUIDANCE)
    training.run_job(doc, tmp_path / "run", "cpu", torch.float32)
    [strip] = (tmp_path / "run" / training.VALIDATION_DIR).iterdir()
    drawn = np.asarray(Image.open(strip).convert("RGB")).astype(float)
    pipe = tiny_shapes()

    def base(guidance):
        return np.asarray(pipe(prompt, num_inference_steps=20, guidance_scale=guidance, height=64,
                               width=64, generator=torch.Generator().manual_seed(0)).images[0])

    at_2, at_7 = (np.abs(drawn - base(g)).mean() for g in (shapes.GUIDANCE, 7.0))
    assert at_2 < 1.0 and at_7 > 3.0, (at_2, at_7)  # measured 0.006 and 4.2 on 0-255


def test_finished_training_runs_correct_the_next_training_estimate(tmp_path):
    """A training run's sessions on T4s measured 2 s a step where the table says 1: the
    next training estimate of that model doubles its steps' time and says it learned from
    that run; a generation run's history does not touch a training estimate, nor the
    other way round; a CPU's seconds teach nothing."""
    from imggenhub.backends.kaggle import estimate
    from imggenhub.job.training import build_train_spec

    data = cyan_set(tmp_path / "data")
    doc = build_train_spec(data, "sd15", resolution=64, steps=100).document()
    table = estimate.estimate(doc, [])
    assert table.basis == "the T4 table" and table.images == 100 and table.gpus == 1
    session = {"rank": 0, "device_name": "Tesla T4", "training_seconds": 100.0,
               "session_steps": 50, "model_load_seconds": 40.0}
    manifest = {"processes": [session, {**session, "session_steps": 50}],
                "images": [{"index": 0, "file": "w.safetensors"}]}
    per_step = estimate.predicted_seconds(doc)[0] / 100
    entry = estimate.learn(tmp_path, doc, manifest, "http://emulator")
    assert entry["kind"] == "weights" and entry["ratio"] == pytest.approx(2.0 / per_step, rel=1e-3)
    history = estimate.read_history(tmp_path, "http://emulator")
    learned = estimate.estimate(doc, history)
    assert learned.basis.startswith("1 of your runs of") and learned.seconds_per_image == pytest.approx(2.0)
    generation = {"job_id": "x", "model": doc["model"], "seed": 0,
                  "prompts": [{"prompt": "p", "num_images": 1, "steps": 30, "guidance": 7.0,
                               "width": 512, "height": 512}]}
    assert estimate.estimate(generation, history).basis == "the T4 table"
    on_cpu = {"processes": [{**session, "device_name": "cpu"}], "images": []}
    assert estimate.learn(tmp_path / "other", doc, on_cpu, "http://emulator") is None
