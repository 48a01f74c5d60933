"""tiny-shapes' world: simple shapes in named colours on plain backgrounds, drawn by code
(seeded, nothing downloaded), each with its caption in one fixed grammar; and the checker
that reads a picture back (its foreground's colour against the palette, its shape from the
foreground mask), so that tests and benchmarks check what a picture shows, not only that
one was made.

``word_tokenizer`` is the CLIP tokenizer tiny-shapes reads captions with (each word one
token), and ``evaluate`` what the checker reads in a pipeline's pictures.

The grammar: ``a [small|large] COLOUR SHAPE [at the top left|...] on a BACKGROUND
background``. Some colour-shape pairs are held out of training (``HELD_OUT``): a model that
draws them has composed what it learned. Pillow and numpy; transformers and torch only
inside the functions that need them."""

from __future__ import annotations

import colorsys
import json
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SIZE = 64  # pixels a side
MAX_TOKENS = 20  # the longest caption is 14 words, with its start and end tokens
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 205, 40), "purple": (140, 60, 190), "orange": (245, 135, 30)}
# colours no training caption names: what a fine-tuning test teaches the model under a new word
NEW_COLOURS = {"cyan": (30, 200, 210)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.55, "": 1.0, "large": 1.4}  # the word (none: medium) -> scale
RADIUS = 11  # a medium shape's half width, in pixels
PLACES = {"": (0.5, 0.5), "top left": (0.28, 0.28), "top right": (0.72, 0.28),
          "bottom left": (0.28, 0.72), "bottom right": (0.72, 0.72)}
# one per colour, each shape twice, with colours far apart on the hue circle (red and green
# circles, orange and blue squares, yellow and purple triangles): every colour and shape is
# still seen with the others, and each held-out colour's neighbours are seen in its shape.
# (Holding a shape out with two neighbouring colours, blue and purple circles, teaches that
# "bluish things are never round", a pattern of the data, not a failure to compose.)
HELD_OUT = frozenset({("red", "circle"), ("green", "circle"), ("orange", "square"),
                      ("blue", "square"), ("yellow", "triangle"), ("purple", "triangle")})
# the guidance tiny-shapes draws best at, its preset's default: over 1,000 held-out pictures
# (benchmarks/tiny_shapes.py --draws 10 --guidance 1,2,3,7; 20 steps) the checker read the
# shape in 93 % without classifier-free guidance (1), 96 % at 2 and at 3, 91 % at 7 (colour
# 100 %, at 7 99 %). As with large models, guidance past a point over-sharpens: tiny-shapes'
# point is low.
GUIDANCE = 2.0


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str = ""
    place: str = ""
    background: str = "white"

    @property
    def caption(self) -> str:
        size = f"{self.size} " if self.size else ""
        place = f" at the {self.place}" if self.place else ""
        return f"a {size}{self.colour} {self.shape}{place} on a {self.background} background"


def vocabulary() -> list[str]:
    """Every word a caption uses, in a fixed order (the tokenizer's words)."""
    words = ["a", "at", "the", "on", "background", *SIZES, *COLOURS, *SHAPES, *BACKGROUNDS]
    words += [w for place in PLACES for w in place.split()]
    return list(dict.fromkeys(w for w in words if w))


def scenes(rng: random.Random, n: int, held_out: bool = False) -> list[Scene]:
    """``n`` scenes at random: of the training pairs, or (``held_out``) of the held-out ones."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT) == held_out]
    out = []
    for _ in range(n):
        colour, shape = rng.choice(pairs)
        out.append(Scene(colour, shape, rng.choice(list(SIZES)), rng.choice(list(PLACES)),
                         rng.choice(list(BACKGROUNDS))))
    return out


def draw(scene: Scene, rng: random.Random | None = None, size: int = SIZE, fill=None):
    """The scene as a ``size`` x ``size`` RGB picture (drawn at 4x, then scaled down: smooth
    edges); ``rng`` jitters its place and size a little; ``fill`` (an RGB triple) paints the
    shape in another colour than its caption's."""
    from PIL import Image, ImageDraw

    k = 4
    big = size * k
    jitter = (lambda a: rng.uniform(-a, a)) if rng else (lambda a: 0.0)
    cx, cy = PLACES[scene.place]
    cx, cy = (cx + jitter(0.04)) * big, (cy + jitter(0.04)) * big
    r = RADIUS * SIZES[scene.size] * (1 + jitter(0.1)) * k * size / SIZE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(img)
    fill = fill or (COLOURS[scene.colour] if scene.colour in COLOURS else NEW_COLOURS[scene.colour])
    if scene.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        s = r * 0.9  # the same area as the circle, near enough to look the same size
        pen.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:  # an upright triangle, its centroid at the centre
        h = r * 2.1
        pen.polygon([(cx, cy - h * 2 / 3), (cx - h / 3 ** 0.5, cy + h / 3),
                     (cx + h / 3 ** 0.5, cy + h / 3)], fill=fill)
    return img.resize((size, size), Image.LANCZOS)


def write_training_set(folder, colour: str, word: str, n: int = 9, seed: int = 7) -> list[Scene]:
    """A fine-tuning set: ``n`` pictures of ``colour`` shapes (each shape in turn, sizes and
    places at random) on white, each with its caption in a .txt beside it, the colour named
    ``word`` (a word the model never saw, to be taught it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    made = []
    for i in range(n):
        scene = Scene(colour, SHAPES[i % len(SHAPES)], rng.choice(list(SIZES)), rng.choice(list(PLACES)))
        draw(scene, rng).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(scene.caption.replace(colour, word), encoding="utf-8")
        made.append(scene)
    return made


# --- reading a picture back -----------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    colour: str | None  # the palette colour nearest the foreground's (None: no foreground)
    shape: str | None
    background: str | None
    pixels: int  # foreground pixels found


def _hue(rgb) -> float:
    r, g, b = (c / 255 for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0]


def _features(mask):
    """(fill of the bounding box, width near the top, width near the bottom) of a mask, the
    widths as shares of the box's width: a square fills its box, a circle ~0.79, an upright
    triangle half, narrow at the top."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = bottom - top + 1, right - left + 1
    box = mask[top:bottom + 1, left:right + 1]
    band = max(1, h // 5)
    return np.array([box.sum() / (h * w), box[:band].any(axis=0).mean(),
                     box[-band:].any(axis=0).mean()])


def _largest_part(mask):
    """The mask's largest 8-connected part: the shape, without specks elsewhere (a model's
    stray blot in a corner would stretch the shape's box)."""
    import numpy as np

    seen = np.zeros_like(mask, dtype=bool)
    best: list = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        part, todo = [], [(y0, x0)]
        seen[y0, x0] = True
        while todo:
            y, x = todo.pop()
            part.append((y, x))
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        todo.append((ny, nx))
        if len(part) > len(best):
            best = part
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


_PROTOTYPES: dict | None = None


def _prototypes() -> dict:
    """Each shape's features at each size, measured on drawn shapes (the checker calibrates
    itself on the data's own drawing; one mean over the sizes read a small circle, a few
    pixels across, as a square about once in 60)."""
    global _PROTOTYPES
    if _PROTOTYPES is None:
        import numpy as np

        _PROTOTYPES = {
            (shape, size): _features(np.abs(np.asarray(draw(Scene("red", shape, size)),
                                                       dtype=float) - 255).sum(axis=2) > 120)
            for shape in SHAPES for size in SIZES}
    return _PROTOTYPES


def read(picture, palette: dict | None = None) -> Reading:
    """What a picture shows: its background (the corners' colour, nearest of the
    backgrounds), the foreground (the largest part that differs from it) and its colour (the
    hue of its median pixel, nearest of the palette's hues: ``palette``, else the trained
    colours) and shape (the mask's features, nearest of the drawn shapes')."""
    palette = palette or COLOURS
    import numpy as np

    pic = np.asarray(picture.convert("RGB"), dtype=float)
    n = pic.shape[0]
    c = max(2, n // 16)
    corners = np.concatenate([pic[:c, :c], pic[:c, -c:], pic[-c:, :c], pic[-c:, -c:]]).reshape(-1, 3)
    bg = np.median(corners, axis=0)
    background = min(BACKGROUNDS, key=lambda b: np.abs(np.array(BACKGROUNDS[b]) - bg).sum())
    mask = _largest_part(np.abs(pic - bg).sum(axis=2) > 120)
    pixels = int(mask.sum())
    if pixels < max(6, n * n // 400):
        return Reading(None, None, background, pixels)
    rgb = np.median(pic[mask], axis=0)
    hue = _hue(rgb)
    colour = min(palette, key=lambda k: min(abs(_hue(palette[k]) - hue),
                                            1 - abs(_hue(palette[k]) - hue)))
    feats = _features(mask)
    shape = min(_prototypes().items(), key=lambda kv: float(np.abs(kv[1] - feats).sum()))[0][0]
    return Reading(colour, shape, background, pixels)


# --- the tokenizer, and reading a pipeline's pictures ------------------------------


def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges learned on the vocabulary itself, until every word is one token: applied
    in this order, CLIP's tokenizer makes each word whole (unknown words fall back to
    characters, so textual inversion can still add its own)."""
    segs = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges = []
    while True:
        counts = Counter(p for s in segs.values() for p in zip(s, s[1:]))
        if not counts:
            return merges
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == pair:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out


def word_tokenizer():
    from transformers import CLIPTokenizer

    from .engine.tiny import _byte_level_chars

    chars = _byte_level_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    merges = bpe_merges(vocabulary())
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="imggenhub-tok-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        tok = CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)
    for word in vocabulary():  # each word is one token
        assert len(tok.tokenize(word)) == 1, (word, tok.tokenize(word))
    return tok


def write_for_transformers_4(folder) -> None:
    """A saved pipeline that transformers 4 loads as transformers 5 does: the tokenizer's
    vocab.json and merges.txt beside tokenizer.json (transformers 5 writes only the latter;
    4's CLIPTokenizer reads these), and the text encoder's weights under the "text_model."
    names that 4 expects (5 writes them without and reads both)."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    tokenizer = folder / "tokenizer"
    model = json.loads((tokenizer / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tokenizer / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False),
                                          encoding="utf-8")
    (tokenizer / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges),
                                          encoding="utf-8")
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    if not all(k.startswith("text_model.") for k in state):
        save_file({k if k.startswith("text_model.") else f"text_model.{k}": v
                   for k, v in state.items()}, str(weights), metadata={"format": "pt"})


def evaluate(pipe, n: int, seed: int, steps: int = 20, guidance: float = GUIDANCE,
             held_out: bool = True, batch: int = 25) -> dict:
    """What the checker reads in ``n`` pictures made from held-out (or training) prompts."""
    import torch

    asked = scenes(random.Random(seed), n, held_out=held_out)
    colour = shape = 0
    for i in range(0, n, batch):
        part = asked[i:i + batch]
        gen = torch.Generator().manual_seed(seed + i)
        out = pipe([s.caption for s in part], num_inference_steps=steps, guidance_scale=guidance,
                   height=SIZE, width=SIZE, generator=gen).images
        for s, img in zip(part, out):
            r = read(img)
            colour += r.colour == s.colour
            shape += r.shape == s.shape
    return {"colour": colour / n, "shape": shape / n, "n": n, "guidance": guidance}
