"""Big jobs: the engine also packs its PNGs into uncompressed tar bundles as it goes, and
download fetches the bundles instead of thousands of loose files, unpacking and verifying
each image against the manifest. Same result as loose files, fewer requests."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from imggenhub.outputs import artifacts
from imggenhub.job.notebook import read_job_document

JOB = ["--model", "tiny-random", "--seed", "4", "-p", "a", "-p", "b", "--num-images", "15"]


def pushed_doc(emulator) -> dict:
    return read_job_document([b for m, b in emulator.calls if m == "SaveKernel"][-1]["text"])


def images_of(folder: Path) -> dict:
    return {r["file"]: r["sha256"] for r in artifacts.read_manifest(folder)["images"]}


def test_bundles_download_as_few_files_with_the_same_verified_result(emulator, cli, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("IMGGENHUB_BUNDLE_BYTES", "8192")  # several bundles of a few images
    code, out, err = cli("generate", *JOB, "--no-bundle", "--out", str(tmp_path / "loose"),
                         cwd=tmp_path)
    assert code == 0, err
    loose_served = list(emulator.served)
    emulator.served.clear()
    code, out, err = cli("generate", *JOB, "--bundle", "--json", "--out", str(tmp_path / "b"),
                         cwd=tmp_path)
    assert code == 0, err
    assert pushed_doc(emulator)["bundle"] is True
    manifest = artifacts.read_manifest(tmp_path / "b")
    bundles = manifest["bundles"]
    assert len(bundles) >= 3 and sum(b["images"] for b in bundles) == 30
    assert images_of(tmp_path / "b") == images_of(tmp_path / "loose")  # the same images
    assert artifacts.verify(tmp_path / "b") == []
    served = emulator.served
    assert not [n for n in served if n.endswith(".png")]  # no loose image fetched
    assert sorted(n for n in served if n.endswith(".tar")) == sorted(f"output/{b['file']}" for b in bundles)
    assert len(served) < len(loose_served) / 3
    assert not (tmp_path / "b" / ".imggenhub-bundles").exists()
    assert not (tmp_path / "b" / "bundles").exists()  # unpacked, not kept

    # a folder that already holds every image but the first: only the first bundle comes
    code, out, err = cli("deploy", *JOB, "--bundle", "--json", "--out", str(tmp_path / "c"),
                         cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    assert cli("poll", run_id, cwd=tmp_path)[0] == 0
    first = manifest["images"][0]
    for record in manifest["images"][1:]:
        shutil.copyfile(tmp_path / "loose" / record["file"], tmp_path / "c" / record["file"])
    emulator.served.clear()
    code, out, err = cli("download", run_id, cwd=tmp_path)
    assert code == 0, err
    first_here = artifacts.read_manifest(tmp_path / "c")["images"][0]
    assert first_here["file"] == first["file"]
    assert [n for n in emulator.served if n.endswith(".tar")] == [f"output/{first_here['bundle']}"]
    assert artifacts.verify(tmp_path / "c") == [] and images_of(tmp_path / "c") == images_of(tmp_path / "b")


def test_a_corrupted_bundle_is_fetched_again(emulator, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGGENHUB_BUNDLE_BYTES", "8192")
    emulator.faults.set(corrupt=1)
    code, out, err = cli("generate", *JOB, "--bundle", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert code == 0, err
    assert emulator.faults.fired["corrupt"] == 1 and artifacts.verify(tmp_path / "b") == []


def test_bundles_come_by_themselves_from_200_images(emulator, cli, tmp_path):
    code, out, err = cli("deploy", "--model", "tiny-random", "-p", "x", "--num-images", "199",
                         cwd=tmp_path)
    assert code == 0, err
    assert "bundle" not in pushed_doc(emulator)
    code, out, err = cli("deploy", "--model", "tiny-random", "-p", "x", "--num-images", "200",
                         cwd=tmp_path)
    assert code == 0, err
    assert pushed_doc(emulator)["bundle"] is True


def test_two_bundles_of_one_name_in_different_folders_are_both_used(emulator, cli, tmp_path,
                                                                   monkeypatch):
    """A kernel's bundles named alike in different folders (bundles/0/same.tar,
    bundles/1/same.tar, ...) land and unpack apart, all at once: each is downloaded,
    unpacked and verified, no image fetched loose (sharing one landing name, one bundle's
    unpacking read another's, or found it gone)."""
    monkeypatch.setenv("IMGGENHUB_BUNDLE_BYTES", "8192")
    code, out, err = cli("deploy", *JOB, "--bundle", "--json", cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    assert cli("poll", run_id, cwd=tmp_path)[0] == 0
    ref = [b for m, b in emulator.calls if m == "SaveKernel"][-1]["slug"]
    work = emulator.versions(ref)[-1].workdir / "output"
    manifest = json.loads((work / "manifest.json").read_text())
    renamed = {}
    for folder, bundle in enumerate(manifest["bundles"]):
        renamed[bundle["file"]] = f"bundles/{folder}/same.tar"
        (work / renamed[bundle["file"]]).parent.mkdir(parents=True)
        (work / bundle["file"]).rename(work / renamed[bundle["file"]])
        bundle["file"] = renamed[bundle["file"]]
    for record in manifest["images"]:
        record["bundle"] = renamed.get(record.get("bundle"), record.get("bundle"))
    (work / "manifest.json").write_text(json.dumps(manifest))
    emulator.served.clear()
    emulator.faults.set(slow_files=0.3)  # every bundle in flight at once ...
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # ... and the download threads taking turns often
    try:
        code, out, err = cli("download", run_id, "--json", cwd=tmp_path)
    finally:
        sys.setswitchinterval(switch)
    assert code == 0, err
    out_dir = Path(json.loads(out)["out_dir"])
    assert len(renamed) >= 3
    assert sorted(emulator.served) == sorted(["output/manifest.json", *(f"output/{n}" for n in
                                                                        renamed.values())])
    assert not [n for n in emulator.served if n.endswith(".png")]  # none fetched loose
    assert artifacts.verify(out_dir) == [] and len(images_of(out_dir)) == 30
    assert not (out_dir / ".imggenhub-bundles").exists() and not list(out_dir.rglob("*.part"))


def test_temporary_names_come_from_the_whole_path():
    from imggenhub.backends.kaggle import download

    a, b = Path("/o/x/same.png"), Path("/o/y/same.png")
    assert download.part_name(a).parent == a.parent and download.part_name(a).name.endswith(".part")
    assert download.part_name(a).name != download.part_name(b).name
    assert download.bundle_landing(Path("/o"), "bundles/x/b.tar") != \
        download.bundle_landing(Path("/o"), "bundles/y/b.tar")
    assert len(download.part_name(Path("/o/" + "n" * 250)).name) < 180
