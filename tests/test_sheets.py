"""Contact sheets: grid.png beside the images, one labelled tile per image, more sheets
for a large run; `imggenhub grid RUN --cols N` remakes them."""

from __future__ import annotations

import json

from PIL import Image

from imggenhub.outputs import artifacts, sheets
from imggenhub.run import runs

from .test_gallery_browser import run_folder


def test_one_tile_per_image_and_sheets_of_a_hundred(tmp_path):
    run_folder(tmp_path / "small", 7, missing=2)
    made = sheets.write(tmp_path / "small", artifacts.read_manifest(tmp_path / "small"))
    assert [p.name for p in made] == ["grid.png"]
    with Image.open(made[0]) as sheet:  # 7 tiles: 3 a row (about square), 3 rows
        assert sheet.size == (3 * sheets.TILE, 3 * (sheets.TILE + sheets.LABEL))
        # a tile holds its image: the middle of tile 2 (index 1) is that image's grey
        middle = (sheets.TILE + sheets.TILE // 2, sheets.TILE // 2)
        assert sheet.getpixel(middle) == (37, 37, 37)
    run_folder(tmp_path / "big", 250)
    made = sheets.write(tmp_path / "big", artifacts.read_manifest(tmp_path / "big"))
    assert [p.name for p in made] == ["grid.png", "grid-2.png", "grid-3.png"]
    with Image.open(made[0]) as sheet:  # 10 a row, 10 rows
        assert sheet.size == (10 * sheets.TILE, 10 * (sheets.TILE + sheets.LABEL))
    made = sheets.write(tmp_path / "big", artifacts.read_manifest(tmp_path / "big"), cols=20)
    assert [p.name for p in made] == ["grid.png", "grid-2.png", "grid-3.png"]
    with Image.open(made[0]) as sheet:
        assert sheet.size == (20 * sheets.TILE, 5 * (sheets.TILE + sheets.LABEL))


def test_grid_command_remakes_the_sheets_and_the_gallery_links_them(cli, tmp_path):
    run_folder(tmp_path / "out", 12)
    runs.save(runs.Run(run_id="r-grid", backend="local", job_id="j", image_count=12,
                       out_dir=str(tmp_path / "out"), state="downloaded"))
    code, out, err = cli("grid", "r-grid", "--cols", "4", "--json")
    assert code == 0, err
    assert [p.split("/")[-1] for p in json.loads(out)["sheets"]] == ["grid.png"]
    with Image.open(tmp_path / "out" / "grid.png") as sheet:
        assert sheet.size == (4 * sheets.TILE, 3 * (sheets.TILE + sheets.LABEL))
    from imggenhub.outputs.gallery import read_data

    assert read_data((tmp_path / "out" / "gallery.html").read_text())["sheets"] == ["grid.png"]


def test_a_downloaded_run_comes_with_its_sheet(emulator, cli, tmp_path):
    code, out, err = cli("generate", "--model", "tiny-random", "-p", "a", "--num-images", "3",
                         "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "o" / "grid.png").exists()


def test_captions_stay_within_their_tiles(tmp_path):
    """A long prompt is cut to its tile's width: the columns where two tiles meet, and the
    sheet's right edge, stay background in the caption band."""
    folder = tmp_path / "long"
    run_folder(folder, 2)
    manifest = artifacts.read_manifest(folder)
    for record in manifest["images"]:
        record["prompt"] = "a lighthouse at dusk, volumetric light, WWWWWWWWWWWWWWWWWWWWWWWW" * 3
    [made] = sheets.write(folder, manifest, cols=2)
    with Image.open(made) as sheet:
        band = range(sheets.TILE, sheets.TILE + sheets.LABEL)
        for x in (*range(sheets.TILE - 3, sheets.TILE + 3), *range(sheet.width - 3, sheet.width)):
            assert all(sheet.getpixel((x, y)) == sheets.BACKGROUND for y in band), x
        # and the captions are there: the band left of the meeting columns has text
        assert any(sheet.getpixel((x, y)) != sheets.BACKGROUND
                   for x in range(4, sheets.TILE - 8) for y in band)
