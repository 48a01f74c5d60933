"""Files on this machine reach the Kaggle kernel as one private, content-addressed dataset:
uploaded through the official client's resumable blob upload, waited for until ready,
attached through dataset_sources, mounted read-only by the emulator where Kaggle mounts
datasets, found and checked by the engine; reused without uploading again."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from imggenhub.outputs import artifacts
from imggenhub.run import runs
from imggenhub.run.lifecycle import Exit, RunState
from imggenhub.job.notebook import read_job_document

from .test_img2img import picture

TINY = ["--model", "tiny-random", "--seed", "7", "--steps", "4"]


def mask(path):
    m = np.zeros((64, 64), dtype=np.uint8)
    m[:, :32] = 255
    Image.fromarray(m).save(path)
    return path


def calls(emulator, method):
    return [body for m, body in emulator.calls if m == method]


def pushed_text(emulator, n=-1):
    return calls(emulator, "SaveKernel")[n]["text"]


def inputs(tmp_path):
    """An init image, a mask and a 'LoRA' file (the stub runner loads no weights)."""
    folder = tmp_path / "in"
    folder.mkdir()
    lora = folder / "style.safetensors"
    lora.write_bytes(b"not really a lora " * 1000)
    return picture(folder / "init.png", 1), mask(folder / "mask.png"), lora


def test_local_inputs_go_as_one_private_dataset_and_are_reused_without_upload(emulator, cli, tmp_path):
    init, m, lora = inputs(tmp_path)
    flags = [*TINY, "--init-image", str(init), "--mask-image", str(m), "--strength", "0.5",
             "--lora", f"{lora}:0.7"]
    code, out, err = cli("generate", *flags, "-p", "a fox", "--out", str(tmp_path / "o1"), cwd=tmp_path)
    assert code == 0, err
    created = calls(emulator, "CreateDataset")
    assert len(created) == 1 and len(calls(emulator, "StartBlobUpload")) == 3
    ref = f"{created[0]['ownerSlug']}/{created[0]['slug']}"
    dataset = emulator.datasets[ref]
    assert dataset["private"] and created[0]["licenseName"] == "copyright-authors"
    # content-addressed: stored under their sha256, never under the user's names
    stored = dataset["versions"][-1]
    assert sorted(stored) == sorted(hashlib.sha256(p.read_bytes()).hexdigest() + p.suffix
                                    for p in (init, m, lora))
    assert all(stored[hashlib.sha256(p.read_bytes()).hexdigest() + p.suffix] == p.read_bytes()
               for p in (init, m, lora))
    push = calls(emulator, "SaveKernel")[-1]
    assert push["datasetDataSources"] == [ref]
    assert str(tmp_path) not in push["text"]  # no path of this machine reaches Kaggle
    doc = read_job_document(push["text"])
    assert doc["prompts"][0]["init_image"].startswith(f"/kaggle/input/{created[0]['slug']}/")
    assert {v["name"] for v in doc["inputs"].values()} == {"init.png", "mask.png", "style.safetensors"}
    assert "uploading init.png" in err and "is ready" in err
    assert len(artifacts.read_manifest(tmp_path / "o1")["images"]) == 1

    # the same inputs, another prompt: found ready, nothing uploaded, nothing created
    code, out, err = cli("generate", *flags, "-p", "a cat", "--out", str(tmp_path / "o2"), cwd=tmp_path)
    assert code == 0, err
    assert len(calls(emulator, "CreateDataset")) == 1 and len(calls(emulator, "StartBlobUpload")) == 3
    assert "nothing to upload" in err
    assert calls(emulator, "SaveKernel")[-1]["datasetDataSources"] == [ref]


def test_a_cut_off_upload_resumes_where_the_server_stopped(emulator, cli, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.RandomState(3).randint(0, 255, (512, 512, 3), dtype=np.uint8)).save(big)
    emulator.faults.set(upload_cut=2)
    code, out, err = cli("deploy", *TINY, "-p", "x", "--init-image", str(big), cwd=tmp_path)
    assert code == 0, err
    assert emulator.faults.fired["upload_cut"] == 2 and "resuming" in err
    puts = len(calls(emulator, "StartBlobUpload"))
    assert puts == 1  # resumed on the same upload, not started again
    (stored,) = next(iter(emulator.datasets.values()))["versions"][-1].values()
    assert stored == big.read_bytes()


def test_an_expired_upload_starts_again(emulator, cli, tmp_path):
    img = picture(tmp_path / "a.png", 2)
    emulator.faults.set(upload_cut=1, upload_expire=1)
    code, out, err = cli("deploy", *TINY, "-p", "x", "--init-image", str(img), cwd=tmp_path)
    assert code == 0, err
    assert len(calls(emulator, "StartBlobUpload")) == 2 and "expired" in err
    (stored,) = next(iter(emulator.datasets.values()))["versions"][-1].values()
    assert stored == img.read_bytes()


def test_an_upload_that_keeps_failing_attaches_nothing_and_resume_finishes_it(emulator, cli, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("IMGGENHUB_RETRY_TOTAL", "1")
    img = picture(tmp_path / "a.png", 3)
    emulator.faults.set(upload_cut=1000)
    code, out, err = cli("deploy", *TINY, "-p", "x", "--init-image", str(img), "--json", cwd=tmp_path)
    assert code == Exit.UNREACHABLE, err
    assert "kept breaking off" in err and "nothing half-uploaded" in err
    assert not calls(emulator, "CreateDataset") and not calls(emulator, "SaveKernel")
    run = runs.load(json.loads(out)["run_id"])
    assert run.state == RunState.RENDERED
    emulator.faults.set(upload_cut=0)
    code, out, err = cli("resume", run.run_id, cwd=tmp_path)
    assert code == 0, err
    assert len(calls(emulator, "CreateDataset")) == 1 and len(calls(emulator, "SaveKernel")) == 1


def test_the_push_waits_for_the_dataset_to_be_ready(emulator, cli, tmp_path, monkeypatch):
    img = picture(tmp_path / "a.png", 4)
    emulator.faults.set(dataset_pending=3)
    code, out, err = cli("deploy", *TINY, "-p", "x", "--init-image", str(img), cwd=tmp_path)
    assert code == 0, err
    statuses = [i for i, (m, _) in enumerate(emulator.calls) if m == "GetDatasetStatus"]
    push = [i for i, (m, _) in enumerate(emulator.calls) if m == "SaveKernel"][0]
    assert len(statuses) >= 5 and statuses[-1] < push  # free, re-checked under the lock, 3 pending, ready

    # not ready in time: nothing pushed, the run waits, and resume pushes it
    monkeypatch.setenv("IMGGENHUB_DATASET_WAIT", "0.5")
    emulator.faults.set(dataset_pending=50)
    other = picture(tmp_path / "b.png", 5)
    code, out, err = cli("deploy", *TINY, "-p", "x", "--init-image", str(other), "--json",
                         cwd=tmp_path)
    assert code == Exit.NOTHING_YET and "still processing" in err
    run_id = json.loads(out)["run_id"]
    assert runs.load(run_id).state == RunState.RENDERED and len(calls(emulator, "SaveKernel")) == 1
    for dataset in emulator.datasets.values():
        dataset["pending"] = 0
    code, out, err = cli("resume", run_id, cwd=tmp_path)
    assert code == 0, err
    assert len(calls(emulator, "SaveKernel")) == 2 and len(calls(emulator, "CreateDataset")) == 2


def test_a_file_changed_before_its_upload_is_refused(emulator, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGGENHUB_RETRY_TOTAL", "0.5")
    img = picture(tmp_path / "a.png", 6)
    emulator.faults.set(server_error=1000, only=["GetDatasetStatus"])
    code, out, err = cli("deploy", *TINY, "-p", "x", "--init-image", str(img), "--json", cwd=tmp_path)
    assert code == Exit.UNREACHABLE, err
    run_id = json.loads(out)["run_id"]
    picture(img, 7)  # edited after the run was made
    emulator.faults.set(server_error=0, only=None)
    code, out, err = cli("resume", run_id, cwd=tmp_path)
    assert code == Exit.BAD_INPUT and "changed after this run was made" in err
    assert not calls(emulator, "StartBlobUpload") and not calls(emulator, "SaveKernel")


def test_hostile_file_names_are_data(emulator, cli, tmp_path):
    """Quotes, spaces, '..', a newline and Unicode in a name: the dataset stores content
    names, the notebook carries the name as JSON data, the kernel finds the file."""
    folder = tmp_path / "we'ird \"dir\" .."
    folder.mkdir()
    img = picture(folder / "..\u2603 it's \"x\"\n{0}.png", 8)
    code, out, err = cli("generate", *TINY, "-p", "x", "--init-image", str(img),
                         "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    (stored,) = next(iter(emulator.datasets.values()))["versions"][-1]
    assert stored == hashlib.sha256(img.read_bytes()).hexdigest() + ".png"
    doc = read_job_document(pushed_text(emulator))
    assert [v["name"] for v in doc["inputs"].values()] == [img.name]
    assert artifacts.read_manifest(tmp_path / "o")["images"]


def test_the_kernel_fails_clearly_when_a_shipped_file_is_not_mounted(emulator, cli, tmp_path):
    img = picture(tmp_path / "a.png", 9)
    code, out, err = cli("deploy", *TINY, "-p", "x", "--init-image", str(img), cwd=tmp_path)
    assert code == 0, err
    (ref,) = emulator.datasets
    emulator.datasets[ref]["versions"].append({"other.png": b"x"})  # someone replaced the files
    code, out, err = cli("generate", *TINY, "-p", "y", "--init-image", str(img), cwd=tmp_path)
    assert code == Exit.RUN_FAILED and "is not mounted" in err


@pytest.mark.slow
@pytest.mark.long  # a real notebook over the emulator, and the same job here
def test_kaggle_with_local_inputs_makes_the_same_images_as_the_local_backend(real_emulator, cli,
                                                                           tmp_path, monkeypatch):
    """Init image, mask and a real LoRA file, through the local backend and the emulator's
    real notebook runner: the same spec makes the same images, byte for byte (seeds, and
    metadata that names the files as the user does); a second run uploads nothing. The
    local run is also the image-to-image test through the local backend (a 96-pixel init
    image is resized to the job's 64, with one note for the file)."""
    from .test_hf_token import CANARY, everywhere_but_the_dataset
    from .test_lora import make_lora

    init = picture(tmp_path / "init.png", 1, size=96)
    m = mask(tmp_path / "mask.png")
    lora = make_lora(tmp_path / "lora")
    flags = [*TINY, "-p", "a fox", "-p", "a hen", "--init-image", str(init), "--mask-image",
             str(m), "--strength", "0.75", "--lora", f"{lora}:0.8"]
    code, out, err = cli("generate", *flags, "--backend", "local", "--out", str(tmp_path / "local"),
                         cwd=tmp_path)
    assert code == 0, err
    # one note for the file, not one for each of its images
    assert (tmp_path / "local" / "kernel.log").read_text().count("resized to 64x64") == 1
    # with a token for gated models, which the engine takes into its own processes only
    monkeypatch.setenv("MY_HF", CANARY)
    code, out, err = cli("generate", *flags, "--hf-token-env", "MY_HF", "--out",
                         str(tmp_path / "kaggle"), cwd=tmp_path)
    assert code == 0, err
    assert code == 0, err  # credentials found: kaggle is the default backend
    assert "pushed imggenhub/imggenhub-batch version 1" in err and "complete after" in err
    log = (tmp_path / "kaggle" / "kernel.log").read_text()
    assert "a Hugging Face token from the private dataset is set" in log
    assert "[imggenhub] done: 2 images" in log and artifacts.verify(tmp_path / "kaggle") == []
    # the push carried what the kaggle CLI would send: private, T4 x2, internet, a notebook
    push = calls(real_emulator, "SaveKernel")[0]
    assert push["slug"] == "imggenhub/imggenhub-batch" and push["kernelType"] == "notebook"
    assert push["isPrivate"] and push["enableGpu"] and push["enableInternet"]
    assert push["machineShape"] == "NvidiaTeslaT4"
    assert all(isinstance(c["source"], str) for c in json.loads(push["text"])["cells"])
    # status and outputs were asked for exactly the pushed version
    asked = [b.get("versionLabel") for m, b in real_emulator.calls
             if m in ("GetKernelSessionStatus", "ListKernelSessionOutput")]
    assert asked and set(asked) == {"v1"}
    assert everywhere_but_the_dataset(real_emulator, tmp_path) == []
    local_images, kaggle_images = (artifacts.read_manifest(tmp_path / d)["images"]
                                   for d in ("local", "kaggle"))
    assert len(local_images) == len(kaggle_images) == 2  # zip below stops at the shorter
    for local, remote in zip(local_images, kaggle_images):
        for key in ("init_image", "mask_image", "loras", "seed", "strength", "denoising_steps"):
            assert local[key] == remote[key], key
        assert remote["init_image"] == "init.png" and remote["loras"][0]["name"] == lora.stem
        assert remote["strength"] == 0.75 and remote["width"] == 64
        a = np.asarray(Image.open(tmp_path / "local" / local["file"]))
        b = np.asarray(Image.open(tmp_path / "kaggle" / remote["file"]))
        assert np.array_equal(a, b)
        assert local["sha256"] == remote["sha256"]  # the PNG's metadata too
    real_emulator.runner = "stub"  # the reuse is the point now, not the images again
    code, out, err = cli("deploy", *flags, cwd=tmp_path)
    assert code == 0, err
    assert len(calls(real_emulator, "StartBlobUpload")) == 4 and "nothing to upload" in err


def test_the_engine_finds_shipped_files_in_either_mount_layout_and_checks_them(tmp_path):
    from imggenhub import engine

    data = b"picture bytes"
    sha = hashlib.sha256(data).hexdigest()
    path = f"/kaggle/input/imggenhub-inputs-abc/{sha}.png"
    job = {"prompts": [{"prompt": "x", "init_image": path, "mask_image": None}],
           "loras": [{"ref": path, "scale": 1.0, "local": True}], "embeddings": [],
           "inputs": {path: {"name": "my cat.png", "sha256": sha}}}
    for layout in ("imggenhub-inputs-abc", "datasets/owner/imggenhub-inputs-abc"):
        root = tmp_path / layout.replace("/", "_")
        (root / layout).mkdir(parents=True)
        (root / layout / f"{sha}.png").write_bytes(data)
        found = engine.resolve_inputs(job, root=str(root))
        where = found["prompts"][0]["init_image"]
        assert where == str(root / layout / f"{sha}.png")
        assert found["input_names"][where] == "my cat.png" and found["loras"][0]["name"] == "my cat"
    (root / layout / f"{sha}.png").write_bytes(b"other bytes")
    with pytest.raises(ValueError, match="arrived changed"):
        engine.resolve_inputs(job, root=str(root))
    with pytest.raises(FileNotFoundError, match="is not mounted"):
        engine.resolve_inputs(job, root=str(tmp_path / "nothing"))
    assert engine.resolve_inputs({"prompts": []}) == {"prompts": []}  # the local backend: in place
