"""Pictures from elsewhere are data: a small file whose header says 20000 x 20000 (a
decompression bomb: 50 MB of zeros, a few hundred kB on disk) is refused from its header,
with one sentence naming it and the exit code for bad input, wherever imggenhub opens a
picture: `score`, an --init-image or --mask-image, the engine's loader, a run's contact
sheet and sweep grid, `show --thumbnails`. Nothing is decoded: the memory stays small."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imggenhub import engine
from imggenhub.outputs import artifacts, sheets, show, sweeps

from .conftest import REPO

BIG = 20000  # 400 megapixels: over Pillow's own error limit (~179 MP), said by Pillow
SAID = {20000: "is 400,000,000 pixels (400 megapixels)", 12000: "is 12000x12000 pixels (144 megapixels)"}
WARNED = 12000  # 144 megapixels: over Pillow's warning limit (~89 MP) but under its error
RSS_CAP_MB = 300  # a decoded bomb is 400 MB and more (1.6 GB as RGB)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int, prompt: str | None = "a fox") -> Path:
    """A real PNG of side x side one-bit pixels, all black, with its prompt as imggenhub
    records it: valid to the last byte, tiny on disk, huge once decoded."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte 0, then the packed row
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    text = _chunk(b"tEXt", b"imggenhub\0" + json.dumps({"prompt": prompt}).encode()) \
        if prompt else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side,
                                                                          1, 0, 0, 0, 0))
                     + text + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {side: bomb_png(folder / f"bomb-{side}.png", side) for side in (BIG, WARNED)}


def test_the_bombs_are_real_pictures(bombs, monkeypatch):
    """The files are what they claim: Pillow reads their header and would decode them."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own check off, to look
    for side, path in bombs.items():
        assert path.stat().st_size < 200_000
        with Image.open(path) as image:
            assert image.size == (side, side) and image.mode == "1"
            assert image.text["imggenhub"] == '{"prompt": "a fox"}'


# The CLI in a child that writes its own peak memory (VmHWM: its address space's high-water
# mark since exec; ru_maxrss would count the forking pytest worker's pages too) at exit.
PROBE = """import atexit, sys
def peak():
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(next(l.split()[1] for l in status if l.startswith("VmHWM:")))
atexit.register(peak)
from imggenhub.cli import main
main(sys.argv[2:])
"""


def cli_measured(*args: str, cwd: Path) -> tuple[int, str, int]:
    """The CLI in a child process: (exit code, stderr, the child's peak memory in MB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peak = cwd / "peak-kb.txt"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(peak), *args], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60)
    return proc.returncode, proc.stderr, int(peak.read_text()) // 1024


@pytest.mark.parametrize("side", [BIG, WARNED])
def test_score_refuses_a_bomb_from_its_header(bombs, tmp_path, side):
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(bombs[side].read_bytes())
    code, err, rss = cli_measured("score", str(folder), "--model", "tiny-random-clip", cwd=tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1 and f"bomb.png {SAID[side]}, more than the" in err, err
    assert "64 megapixels" in err and "Traceback" not in err and "Warning" not in err
    assert rss < RSS_CAP_MB, f"{rss} MB"


@pytest.mark.parametrize("flag", ["--init-image", "--mask-image"])
def test_an_input_picture_that_is_a_bomb_is_bad_input(bombs, tmp_path, flag):
    ok = tmp_path / "ok.png"
    Image.new("RGB", (64, 64), (90, 120, 30)).save(ok)
    pictures = ["--init-image", str(bombs[WARNED])] if flag == "--init-image" else \
        ["--init-image", str(ok), "--mask-image", str(bombs[WARNED])]
    code, err, rss = cli_measured("render", "--out", str(tmp_path / "r"), "--model", "tiny-random",
                                  "-p", "x", *pictures, cwd=tmp_path)
    assert code == 2, err
    what = "init image" if flag == "--init-image" else "mask image"
    assert err.count("\n") == 1 and f"{what} '{bombs[WARNED]}' {SAID[WARNED]}" in err, err
    assert "Traceback" not in err and "Warning" not in err
    assert rss < RSS_CAP_MB, f"{rss} MB"
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())


def test_the_engine_refuses_a_bomb_it_is_handed(bombs):
    """On Kaggle the engine opens the shipped file itself: the same check, one sentence."""
    from imggenhub.engine.pipelines import load_init_image

    for side, path in bombs.items():
        with pytest.raises(ValueError, match=re.escape(f"init image '{path.name}' {SAID[side]}")):
            load_init_image(str(path), 64, 64)


def test_open_picture_checks_before_decoding(bombs, tmp_path):
    with pytest.raises(engine.PictureTooLarge) as caught:
        with engine.open_picture(bombs[BIG]) as image:
            image.load()  # never reached
    assert caught.value.pixels == BIG * BIG and str(caught.value).startswith(bombs[BIG].name)
    side = 8000  # exactly the cap: opened
    assert side * side == engine.MAX_PIXELS
    edge = bomb_png(tmp_path / "edge.png", side, prompt=None)
    with engine.open_picture(edge) as image:
        assert image.size == (side, side)


def test_a_downloaded_bomb_is_a_framed_tile_in_the_sheets_and_grids(bombs, tmp_path):
    """A run's folder holding a bomb among its images (a hostile kernel made it): the
    contact sheet and the sweep grid frame its tile and say why; the rest are drawn."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "0001-a.png").write_bytes(bombs[BIG].read_bytes())
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "0002-a.png")
    records = [{"file": name, "index": i, "seed": 1, "prompt": "a", "cell": {"steps": i + 1},
                "sweep_of": 0, "sha256": artifacts.sha256_of(folder / name),
                "bytes": (folder / name).stat().st_size}
               for i, name in enumerate(["0001-a.png", "0002-a.png"])]
    manifest = {"job_id": "j", "images": records, "sweep": [["steps", [1, 2]]]}
    made = sheets.write(folder, manifest) + sweeps.write(folder, manifest)
    assert [p.name for p in made] == ["grid.png", "sweep-01.png"]
    with Image.open(folder / "grid.png") as sheet:
        rgb = sheet.convert("RGB")
        assert rgb.getpixel((sheets.TILE // 2, sheets.TILE // 2)) == sheets.BACKGROUND  # framed
        assert rgb.getpixel((sheets.TILE + sheets.TILE // 2, sheets.TILE // 2)) == (200, 30, 30)
    assert show.inline_image(folder / "grid.png", "sixel").startswith("\033Pq")
    (folder / "grid.png").write_bytes(bombs[BIG].read_bytes())  # a sheet that is a bomb
    line = show.inline_image(folder / "grid.png", "sixel")
    assert line.startswith("(the contact sheet grid.png cannot be shown") and "64 megapixels" in line


def test_pillows_own_bomb_check_is_said_as_ours(tmp_path, monkeypatch):
    """Pillow's limit set lower than ours (by a library, say): its error, raised inside
    Image.open, comes out as the same one sentence."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (100, 100)).save(tmp_path / "p.png")  # 10,000 pixels: twice 1000 and more
    with pytest.raises(engine.PictureTooLarge, match=r"p.png is 10,000 pixels"):
        with engine.open_picture(tmp_path / "p.png"):
            pass
