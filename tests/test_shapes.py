"""tiny-shapes' world and its checker: drawn scenes are read back right (the checker's own
accuracy bounds what it can say of a model's pictures), captions keep their grammar, the
held-out pairs never reach training, and the tokenizer makes every word one token."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imggenhub import shapes


def test_the_checker_reads_every_drawn_scene_right():
    rng = random.Random(3)
    seen = shapes.scenes(rng, 150) + shapes.scenes(rng, 50, held_out=True)
    wrong = []
    for scene in seen:
        got = shapes.read(shapes.draw(scene, rng))
        if (got.colour, got.shape, got.background) != (scene.colour, scene.shape, scene.background):
            wrong.append((scene.caption, got))
    assert wrong == []


def test_the_checker_says_nothing_of_an_empty_or_noisy_picture():
    blank = Image.new("RGB", (64, 64), "white")
    assert shapes.read(blank).shape is None and shapes.read(blank).colour is None
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    got = shapes.read(noise)  # noise is read as something, but rarely as a clean shape
    assert got.pixels > 64 * 64 // 4


def test_captions_keep_one_grammar_and_the_held_out_pairs_stay_out():
    rng = random.Random(0)
    train = shapes.scenes(rng, 2000)
    assert not {(s.colour, s.shape) for s in train} & shapes.HELD_OUT
    assert {(s.colour, s.shape) for s in train} == {
        (c, s) for c in shapes.COLOURS for s in shapes.SHAPES} - shapes.HELD_OUT
    held = shapes.scenes(rng, 200, held_out=True)
    assert {(s.colour, s.shape) for s in held} == shapes.HELD_OUT
    words = set(shapes.vocabulary())
    for scene in train[:200]:
        assert set(scene.caption.split()) <= words
        assert scene.caption.startswith("a ") and scene.caption.endswith(" background")
    assert shapes.Scene("red", "circle").caption == "a red circle on a white background"
    assert shapes.Scene("blue", "square", "small", "top left", "black").caption == \
        "a small blue square at the top left on a black background"
    # the same seed, the same pictures
    a = [np.asarray(shapes.draw(s, random.Random(1))) for s in shapes.scenes(random.Random(5), 3)]
    b = [np.asarray(shapes.draw(s, random.Random(1))) for s in shapes.scenes(random.Random(5), 3)]
    assert all((x == y).all() for x, y in zip(a, b))


def test_the_tokenizer_makes_each_word_one_token_and_spells_unknown_ones():
    tok = shapes.word_tokenizer()
    caption = "a small blue square at the top left on a black background"
    ids = tok(caption).input_ids
    assert len(ids) == len(caption.split()) + 2  # start, the words, end
    assert tok.convert_ids_to_tokens(ids[1:-1]) == [w + "</w>" for w in caption.split()]
    assert len(tok.tokenize("zq")) == 2  # an unknown word: its letters
    assert tok.model_max_length == shapes.MAX_TOKENS


@pytest.mark.parametrize("words", [["ab", "abc", "bc", "cab"], ["red", "green", "grey"]])
def test_bpe_merges_make_every_training_word_whole(words):
    merges = shapes.bpe_merges(words)
    ranks = {pair: i for i, pair in enumerate(merges)}
    for word in words:  # CLIP's BPE: the lowest-ranked adjacent pair first
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(ranks.get(p, 1e9), i) for i, p in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1e9:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        assert parts == [word + "</w>"], (word, parts)



def test_a_speck_away_from_the_shape_does_not_change_what_is_read():
    """Models leave stray blots; the checker reads the largest foreground part."""
    for scene in (shapes.Scene("blue", "square", "", "bottom right"),
                  shapes.Scene("orange", "circle", "large", "", "black")):
        pic = np.asarray(shapes.draw(scene)).copy()
        pic[2:5, 2:5] = (200, 60, 200) if scene.background == "white" else (250, 250, 250)
        got = shapes.read(Image.fromarray(pic))
        assert (got.colour, got.shape, got.background) == (scene.colour, scene.shape,
                                                           scene.background), got


def test_the_shipped_model_is_whole_and_installed_with_the_package():
    """tiny-shapes' folder loads as a diffusers folder, and every file of it is package data
    (a plain `pip install .` carries it); training.json says how it was made."""
    import fnmatch
    import json
    import tomllib

    from imggenhub.engine.tiny import shipped_folder

    repo = Path(__file__).resolve().parents[1]
    folder = Path(shipped_folder("tiny-shapes"))
    assert folder == repo / "imggenhub" / "models" / "tiny-shapes"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder"):
        assert list((folder / part).glob("*.safetensors")), part
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["imggenhub"]
    files = [p.relative_to(repo / "imggenhub").as_posix() for p in folder.rglob("*") if p.is_file()]
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)] == []
    made = json.loads((folder / "training.json").read_text())
    assert made["held_out"] == sorted(map(list, shapes.HELD_OUT))
    assert shipped_folder("owner/model") == "owner/model"


def test_a_missing_shipped_model_is_one_sentence(monkeypatch, tmp_path):
    from imggenhub.engine.tiny import shipped_folder

    monkeypatch.setenv("IMGGENHUB_MODELS", str(tmp_path))
    with pytest.raises(OSError, match=r"tiny-shapes: no model in .*; make it with "
                                      r"scripts/train_tiny_shapes.py"):
        shipped_folder("tiny-shapes")
