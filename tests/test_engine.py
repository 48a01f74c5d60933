"""The engine, in this process and as the script the notebook runs: planning, the tiny
pipeline, PNG metadata, crash safety and the multi-process split."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from imggenhub.outputs import artifacts
from imggenhub import engine
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags
from imggenhub.job.spec import load_prompts

from .conftest import write_json


def job_doc(prompts, **flags):
    return build_job(parse_settings(**{"model": "tiny-random", "seed": 100, "gpu": False, **flags}),
                     prompts_from_flags(prompts)).document()


def test_plan_seeds_files_and_order(tmp_path):
    items = [{"prompt": "a b", "num_images": 2}, {"prompt": "c", "seed": 7, "num_images": 3},
             {"prompt": "🚀", "num_images": 1}]
    doc = build_job(parse_settings(model="tiny-random", seed=100),
                    load_prompts(write_json(tmp_path / "p.json", items))).document()
    tasks = engine.plan_images(doc)
    assert [t["seed"] for t in tasks] == [100, 101, 7, 8, 9, 105]
    assert [t["file"] for t in tasks] == ["0001-a-b.png", "0002-a-b.png", "0003-c.png", "0004-c.png",
                                          "0005-c.png", "0006-image.png"]
    assert [t["prompt_index"] for t in tasks] == [0, 0, 1, 1, 1, 2]


def test_seed_wraps_at_32_bits():
    doc = job_doc(["x"], seed=2**32 - 1, num_images=2)
    assert [t["seed"] for t in engine.plan_images(doc)] == [2**32 - 1, 0]


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (5, 2), (8, 2), (7, 3)])
def test_shard_covers_everything_once(n, world):
    items = list(range(n))
    parts = [engine.split(items, r, world) for r in range(world)]
    assert sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_batches_group_only_compatible_images_across_the_plan_each_model_together():
    tasks = [{"width": 64, "height": 64, "steps": 4, "guidance": 5.0, "i": i} for i in range(5)]
    tasks[3] = {**tasks[3], "steps": 2}
    got = [[t["i"] for t in b] for b in engine.batches(tasks, 2)]
    assert got == [[0, 1], [2, 4], [3]]
    # a sweep's cells interleaved prompt by prompt, over two models: a model's work is one
    # run of batches, each cell's prompts batched together
    sweep = [{"width": 64, "height": 64, "steps": 4, "guidance": g, "model": {"id": m}, "i": i}
             for i, (m, g) in enumerate([("a", 1.0), ("b", 1.0), ("a", 7.0), ("b", 7.0)] * 3)]
    got = [[t["i"] for t in b] for b in engine.batches(sweep, 8)]
    assert got == [[0, 4, 8], [2, 6, 10], [1, 5, 9], [3, 7, 11]]


@pytest.mark.slow
def test_every_scheduler_name_maps_to_a_diffusers_class():
    import diffusers

    pipe = engine.build_tiny_random_pipeline()
    for name, (cls_name, _) in engine.SCHEDULERS.items():
        assert hasattr(diffusers, cls_name), name
    assert engine.set_scheduler(pipe, "euler-a") == "EulerAncestralDiscreteScheduler"
    assert engine.set_scheduler(pipe, None) == "EulerAncestralDiscreteScheduler"


@pytest.mark.slow
def test_tiny_pipeline_is_deterministic_per_seed():
    import torch

    def image(seed):
        pipe = engine.build_tiny_random_pipeline(seed=0)
        pipe.set_progress_bar_config(disable=True)
        out = pipe("a fox", num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(seed))
        return np.asarray(out.images[0])

    first = image(1)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, image(1))
    assert not np.array_equal(first, image(2))


def test_png_carries_parameters_and_full_record(tmp_path):
    record = {"prompt": "fox \"q\" \x00 🚀", "negative_prompt": "blur", "steps": 4, "guidance": 5.0,
              "seed": 3, "width": 8, "height": 8, "model": "m", "scheduler": "DDIM"}
    data = engine.save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", record)
    img = Image.open(tmp_path / "a.png")
    assert json.loads(img.text["imggenhub"]) == record
    assert img.text["parameters"].startswith("fox \"q\" \x00 🚀\nNegative prompt: blur\nSteps: 4")
    assert (tmp_path / "a.png").read_bytes() == data


@pytest.fixture
def run_engine(monkeypatch, capfd):
    """The engine's main, as `python -m imggenhub_engine --job J --out D` runs it, in this
    process (a subprocess would import torch and diffusers again: seconds per test); the
    notebook tests run it as the module."""
    from types import SimpleNamespace

    def run(job, out, env=None):
        path = out.parent / "job.json"
        path.write_text(json.dumps(job))
        with monkeypatch.context() as patch:
            patch.setenv("IMGGENHUB_ENGINE_STARTED", "")
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            capfd.readouterr()
            code = engine.main(["--job", str(path), "--out", str(out)])
            captured = capfd.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    return run


@pytest.mark.slow
def test_crash_keeps_finished_images_in_the_manifest(tmp_path, run_engine):
    job = job_doc(["one", "two", "three"], num_images=2)
    out = tmp_path / "out"
    proc = run_engine(job, out, {"IMGGENHUB_ENGINE_FAIL_AFTER": "3"})
    assert proc.returncode == 1
    assert "[imggenhub] error: RuntimeError: injected failure after 3 images" in proc.stdout
    manifest = artifacts.read_manifest(out)
    assert len(manifest["images"]) == 3 and manifest["complete"] is False
    assert manifest["planned_images"] == 6
    assert artifacts.verify(out) == []
    assert sorted(p.name for p in out.glob("*.png")) == [i["file"] for i in manifest["images"]]


@pytest.mark.slow
def test_two_processes_split_the_images_and_merge_one_manifest(tmp_path, run_engine):
    job = job_doc(["one", "two", "three"], num_images=1)
    out = tmp_path / "out"
    proc = run_engine(job, out, {"IMGGENHUB_PROCESSES": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = artifacts.read_manifest(out)
    assert sorted(p["rank"] for p in manifest["processes"]) == [0, 1]
    assert [i["index"] for i in manifest["images"]] == [0, 1, 2] and manifest["complete"]
    assert "[rank 0] image 2/2" in proc.stdout and "[rank 1] image 1/1" in proc.stdout
    assert artifacts.verify(out) == []
    assert not (out / engine.PARTS_DIR).exists()


@pytest.mark.slow
def test_a_saved_diffusers_folder_loads_through_autopipeline(tmp_path, run_engine):
    """The real Hub loading path (AutoPipeline.from_pretrained), offline, on a local folder."""
    import torch

    folder = tmp_path / "tiny-sd"
    engine.build_tiny_random_pipeline().save_pretrained(folder)
    doc = build_job(parse_settings(model=str(folder), seed=1, width=64, height=64, steps=2),
                    prompts_from_flags(["x"])).document()
    assert doc["model"]["pipeline"] == "auto"
    pipe = engine.load_pipeline(doc["model"], "cpu", torch.float32)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    out = tmp_path / "out"
    assert run_engine(doc, out).returncode == 0
    assert len(artifacts.read_manifest(out)["images"]) == 1


@pytest.mark.slow
def test_a_missing_model_fails_with_the_loaders_message(tmp_path, run_engine):
    doc = job_doc(["x"])
    doc["model"] = {"id": "nobody/does-not-exist", "pipeline": "auto", "variant": "fp16"}
    proc = run_engine(doc, tmp_path / "out", {"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1
    assert "[imggenhub] error: OSError: nobody/does-not-exist is not in this machine's Hugging " \
           "Face cache and the Hub did not give it: check the network" in proc.stdout, proc.stdout


def test_the_engine_imports_only_what_a_kaggle_image_has():
    """stdlib, torch, diffusers, transformers, accelerate, Pillow and what diffusers itself
    needs (huggingface_hub, numpy, safetensors; peft for LoRAs, loading or training them;
    bitsandbytes when a training asks for 8-bit Adam or a plan quantizes; tokenizers, which
    transformers brings); third-party ones lazily."""
    import ast

    from pathlib import Path

    allowed = {"torch", "diffusers", "transformers", "accelerate", "PIL", "huggingface_hub",
               "numpy", "safetensors", "peft",
               # transformers' own tokenizers: the tiny FLUX's and SD3's T5 tokenizer
               "tokenizers",
               # only under --use-8bit-adam, its absence one sentence (test_training)
               "bitsandbytes"}
    top_level, inside = set(), set()
    for module in Path(engine.__file__).parent.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if isinstance(node, ast.ImportFrom) and node.level:
                    continue  # the package's own modules
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                roots = {n.split(".")[0] for n in names if n}
                (top_level if node in tree.body else inside).update(roots)
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}
    assert inside - set(sys.stdlib_module_names) <= allowed
    assert "imggenhub" not in top_level | inside  # it must stand alone in the notebook


def test_a_part_torn_by_a_crash_merges_what_was_finished(tmp_path):
    """The part is JSON lines appended per image: a torn last line is skipped, nothing else."""
    parts = tmp_path / engine.PARTS_DIR
    parts.mkdir()
    part = engine.PartLog(parts / "rank-00.jsonl", {"job_id": "j", "run_id": "r"},
                          {"rank": 0, "device": "cpu"})
    for i in range(3):
        part.image({"index": i, "file": f"{i}.png", "sha256": "0" * 64, "bytes": 1})
    part.update_process(seconds=1.5)
    with open(parts / "rank-00.jsonl", "a") as fh:
        fh.write('{"image": {"index": 3, "fi')  # killed mid-write
    manifest = engine.merge_manifest(tmp_path)
    assert [i["index"] for i in manifest["images"]] == [0, 1, 2]
    assert manifest["run_id"] == "r" and manifest["processes"] == [
        {"rank": 0, "device": "cpu", "seconds": 1.5}]
    assert not parts.exists()


def test_the_writer_thread_surfaces_its_error_and_drains(tmp_path):
    def record(i):
        return {"index": i, "prompt": "p", "steps": 1, "scheduler": "s", "guidance": 0.0,
                "seed": i, "width": 4, "height": 4, "model": "m"}

    part = engine.PartLog(tmp_path / "p.jsonl", {}, {})
    writer = engine.ImageWriter(tmp_path / "missing-dir" / "deeper", part, 2, "", 0.0)
    writer.put("a.png", Image.new("RGB", (4, 4)), record(0), 0.1)
    with pytest.raises(FileNotFoundError):
        writer.close()
    ok = engine.ImageWriter(tmp_path, engine.PartLog(tmp_path / "q.jsonl", {}, {}), 5, "", 0.0)
    for i in range(5):  # more than the queue holds: put blocks, never loses one
        ok.put(f"{i}.png", Image.new("RGB", (4, 4)), record(i), 0.1)
    ok.close()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{i}.png" for i in range(5)]
