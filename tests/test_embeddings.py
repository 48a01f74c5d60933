"""Textual-inversion embeddings: --embedding REF[:TOKEN], loaded into the tokenizer and the
text encoder, recorded in the manifest."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imggenhub import engine
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags


def embedding(path, seed):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    save_file({"emb_params": torch.randn(1, 32)}, str(path))  # the tiny text encoder's width
    return path


def test_refs_tokens_and_bad_ones(tmp_path, cli):
    (tmp_path / "my-cat.safetensors").write_bytes(b"x")
    job = build_job(parse_settings(model="tiny-random", seed=1, embedding=[
        str(tmp_path / "my-cat.safetensors"), f"{tmp_path / 'my-cat.safetensors'}:<kitty>",
        "owner/concepts", "owner/concepts/learned_embeds.bin:<thing>"]), prompts_from_flags(["x"]))
    assert [(e.token, e.local) for e in job.embeddings] == [
        ("<my-cat>", True), ("<kitty>", True), (None, False), ("<thing>", False)]
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "-p", "x", "--embedding",
                         "missing.pt", cwd=tmp_path)
    assert code == 2 and "neither an embedding file here" in err


@pytest.mark.slow
def test_the_embedding_changes_only_prompts_with_its_token(tmp_path):
    """With any weights: two different embeddings for one token give different images for a
    prompt that uses the token, and the same image for one that does not."""
    a, b = embedding(tmp_path / "a.safetensors", 1), embedding(tmp_path / "b.safetensors", 2)

    def images(emb):  # one pipeline for both prompts
        job = build_job(parse_settings(model="tiny-random", seed=1, steps=2, gpu=False,
                                       embedding=[f"{emb}:<cat>"]),
                        prompts_from_flags(["a <cat> on a sofa", "a dog"])).document()
        folder = tmp_path / emb.stem
        engine.run_worker(job, folder)
        records = engine.merge_manifest(folder, job)["images"]
        assert [r["embeddings"] for r in records] == [
            [{"name": emb.stem, "token": "<cat>", "file": emb.name}]] * 2
        return [np.asarray(Image.open(folder / r["file"])).astype(float) for r in records]

    (cat_a, dog_a), (cat_b, dog_b) = images(a), images(b)
    assert np.abs(cat_a - cat_b).mean() > 0.1
    assert np.array_equal(dog_a, dog_b)
