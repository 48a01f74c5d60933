"""A manifest from Kaggle is data. A kernel (hostile, or broken) serves a manifest whose
sweep values and cells are crafted to name files outside the output folder, or whose
fields have the wrong types or no bounds; the names imggenhub writes are made here (from
indices and slugs), every field the host reads is checked, and the download ends with a
clear outcome: no file outside the output folder, no traceback."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from imggenhub.errors import UnsafeOutputError
from imggenhub.outputs import artifacts
from imggenhub.run import runs

SWEEP = ["--model", "tiny-random", "--seed", "2", "-p", "a fox", "--sweep", "guidance=3,7",
         "--sweep", "steps=2,3", "--sweep", "scheduler=ddim,euler"]
LONG = "x" * 10_000


def finished_sweep(cli, emulator, tmp_path):
    """A sweep run done on the emulator (x: guidance, y: steps, z: scheduler), not yet
    downloaded: its record and the kernel's output folder there."""
    code, out, err = cli("deploy", *SWEEP, "--json", cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    assert cli("poll", run_id, cwd=tmp_path)[0] == 0
    run = runs.load(run_id)
    return run, emulator.versions(run.kernel_ref)[-1].workdir / "output"


def swap(manifest: dict, values: list, axis: int = 2) -> None:
    """An axis's values replaced (the third, the scheduler, unless said), in the axis and
    in every cell."""
    name, old = manifest["sweep"][axis]
    manifest["sweep"][axis][1] = values
    for record in manifest["images"]:
        record["cell"][name] = values[old.index(record["cell"][name])]


def swap_z(manifest: dict, values: list) -> None:
    swap(manifest, values)


def escaping(manifest: dict, work: Path) -> None:
    """The old way out: a listed image makes the folder 'sweep-01-', and the z value
    '/../../evil' then names 'sweep-01-/../../evil.png', two floors up."""
    swap_z(manifest, ["/../../evil", "ddim"])
    (work / "sweep-01-").mkdir()
    data = (work / manifest["images"][0]["file"]).read_bytes()
    (work / "sweep-01-" / "x.png").write_bytes(data)
    manifest["images"].append({**manifest["images"][0], "file": "sweep-01-/x.png", "index": 8,
                               "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})


# crafted manifests a download takes (the values are data: the grids get safe names)
TAKEN = {
    "dot-dot and slash values": lambda m, w: swap_z(m, ["../../evil", "/etc/x"]),
    "an escape through a listed folder": escaping,
    "a 10,000-character value": lambda m, w: swap_z(m, [LONG, "ddim"]),
    "numbers where texts go": lambda m, w: swap_z(m, [5, 6.5]),
    "values of one slug": lambda m, w: swap_z(m, ["a/b", "a?b"]),
    "texts where numbers go": lambda m, w: swap(m, ["3", "7"], axis=0),
}
# crafted manifests a download refuses, each in one sentence
REFUSED = {
    "an axis named by a number": (lambda m, w: m["sweep"][2].__setitem__(0, 5), "sweep: each axis"),
    "an axis of lists": (lambda m, w: m["sweep"][2].__setitem__(1, [["a"], ["b"]]),
                         "sweep: the values of the axis 'scheduler' must be"),
    "a sweep of 101 cells": (lambda m, w: m["sweep"][2].__setitem__(1, list(range(26))),
                             "more than 100"),
    "a prompt number that is a text": (lambda m, w: m["images"][0].__setitem__("sweep_of", "0"),
                                       "images.0.sweep_of"),
    "a prompt number far out": (lambda m, w: m["images"][0].__setitem__("sweep_of", 10 ** 300),
                                "images.0.sweep_of"),
    "an index that is a text": (lambda m, w: m["images"][0].__setitem__("index", "1"),
                                "images.0.index"),
    "a score that is a text": (lambda m, w: m["images"][0].__setitem__("score", "high"),
                               "images.0.score"),
    "a prompt that is a number": (lambda m, w: m["images"][0].__setitem__("prompt", 5),
                                  "images.0.prompt"),
    "a parameter that is a list": (lambda m, w: m["images"][0].__setitem__("guidance", [7]),
                                   "images.0.guidance"),
    "a cell that is a list": (lambda m, w: m["images"][0].__setitem__("cell", ["ddim"]),
                              "images.0.cell"),
    "LoRAs that are a text": (lambda m, w: m.__setitem__("loras", "lora"), "loras"),
    "a billion images planned": (lambda m, w: m.__setitem__("planned_images", 10 ** 9),
                                 "planned_images"),
    "a billion images owed": (lambda m, w: m.__setitem__("remaining", [[0, 10 ** 9]]),
                              "remaining"),
    "a session that is a list": (lambda m, w: m["processes"][0].__setitem__("session", [1]),
                                 "processes.0.session"),
    "10,001 images": (lambda m, w: m.__setitem__("images", m["images"] * 1251), "images"),
}


def files_outside(tmp_path: Path, out_dir: Path) -> set:
    return {p for p in tmp_path.rglob("*") if out_dir not in (p, *p.parents)}


def download_crafted(cli, emulator, tmp_path, craft):
    run, work = finished_sweep(cli, emulator, tmp_path)
    manifest = json.loads((work / "manifest.json").read_text())
    craft(manifest, work)
    emulator.faults.set(manifest_body=json.dumps(manifest))
    out_dir = Path(run.out_dir)
    parent_before = sorted(p.name for p in out_dir.parent.iterdir())
    outside = files_outside(tmp_path, out_dir)
    code, out, err = cli("download", run.run_id, cwd=tmp_path)
    assert "Traceback" not in err and "Internal error" not in err, err
    assert sorted(p.name for p in out_dir.parent.iterdir()) == parent_before
    assert files_outside(tmp_path, out_dir) == outside  # nothing written outside the folder
    return code, err, out_dir


@pytest.mark.parametrize("kind", list(TAKEN))
def test_crafted_sweep_values_make_safe_grid_names_inside_the_folder(emulator, cli, tmp_path, kind):
    code, err, out_dir = download_crafted(cli, emulator, tmp_path, TAKEN[kind])
    assert code == 0, err
    grids = sorted(p.name for p in out_dir.iterdir() if p.name.startswith("sweep-") and p.is_file())
    assert len(grids) == 2 and len(set(grids)) == 2, grids  # one grid per z value, apart
    assert all(re.fullmatch(r"sweep-01-[A-Za-z0-9._-]{1,24}(-\d+)?\.png", g) and ".." not in g
               for g in grids), grids
    assert artifacts.verify(out_dir) == []
    assert (out_dir / "gallery.html").exists() and (out_dir / "grid.png").exists()


@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_manifest_with_mistyped_or_unbounded_fields_is_refused_in_one_sentence(
        emulator, cli, tmp_path, kind):
    craft, where = REFUSED[kind]
    code, err, out_dir = download_crafted(cli, emulator, tmp_path, craft)
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    assert "Kaggle's manifest.json is not an imggenhub manifest (" in line and where in line, line
    assert not list(out_dir.glob("*.png"))  # nothing taken on its word


def test_a_folder_manifest_with_a_text_for_a_number_is_one_sentence(tmp_path):
    """A manifest already here, edited by hand or by another tool, is read through the same
    checks: the commands that read it (grid, open, show, score) say one sentence, exit 1."""
    records = [{"file": "1.png", "sha256": "0" * 64, "bytes": 1, "index": 0, "score": "9"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"images": records}))
    with pytest.raises(UnsafeOutputError, match=r"is not an imggenhub manifest \(images.0.score: "
                                                r"Input should be a valid number\)") as caught:
        artifacts.read_manifest(tmp_path)
    assert caught.value.exit_code == 1


def test_slugs_keep_only_safe_letters_and_stay_short():
    from imggenhub.outputs import sweeps

    assert sweeps.slug("../../evil") == "evil" and sweeps.slug("/") == "v"
    assert sweeps.slug(LONG) == "x" * sweeps.SLUG and sweeps.slug("a..b") == "a.b"
    assert sweeps.slug("stabilityai/sdxl-turbo") == "stabilityai-sdxl-turbo"
    assert sweeps.grid_name(0, ("a b", 3.5)) == "sweep-01-a-b-3.5.png"
    from imggenhub.outputs.sheets import own_path

    for name in ("../x.png", "a/b.png", ".x.png", "a..png", "", "n" * 121, "x\0.png"):
        with pytest.raises(UnsafeOutputError, match="not a name imggenhub makes"):
            own_path(Path("/o"), name)
    assert own_path(Path("/o"), "grid-2.png") == Path("/o/grid-2.png")


def test_an_image_the_manifest_lists_and_kaggle_never_lists_is_exit_1_not_5(emulator, cli,
                                                                           tmp_path):
    """Kaggle's output lacks a file its manifest names: fetching again cannot bring it, so
    the download says so (exit 1, 'damaged on Kaggle'), not 'unreachable' (exit 5), which
    tells a cron wrapper to try again forever. The rest is kept, verified."""
    def ghost(manifest, work):
        manifest["images"].append({**manifest["images"][0], "file": "9999-ghost.png",
                                   "index": 8})

    code, err, out_dir = download_crafted(cli, emulator, tmp_path, ghost)
    line = err.strip().splitlines()[-1]
    assert code == 1, err
    assert "9999-ghost.png is missing, and Kaggle's output of run" in line, line
    assert "fetching again cannot bring it" in line
    assert len(list(out_dir.glob("0*.png"))) == 8  # what Kaggle has is here
    run_id = runs.load().run_id
    assert cli("download", run_id, cwd=tmp_path)[0] == 1  # the same answer again
