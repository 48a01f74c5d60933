"""One fetch reads each manifest once and hashes each image once: on arrival, and never
again in the checks after it (nor the images other shards brought)."""

from __future__ import annotations

import collections
from pathlib import Path

from imggenhub.outputs import artifacts
from imggenhub.backends.kaggle import download as kaggle_download

JOB = ["--model", "tiny-random", "--seed", "3", "-p", "a", "-p", "b", "--num-images", "3"]


def _spy(monkeypatch):
    parsed, hashed = [], collections.Counter()
    real_parse, real_hash = artifacts.parse_manifest, artifacts.sha256_of

    def parse(data, where):
        parsed.append(where)
        return real_parse(data, where)

    def sha(path):
        hashed[Path(path).name.split(".part")[0].lstrip(".").rsplit(".", 1)[0]
               if str(path).endswith(".part") else Path(path).name] += 1
        return real_hash(path)

    monkeypatch.setattr(artifacts, "parse_manifest", parse)
    monkeypatch.setattr(artifacts, "sha256_of", sha)
    monkeypatch.setattr(kaggle_download, "sha256_of", sha)
    return parsed, hashed


def _download_watched(cli, tmp_path, monkeypatch, *flags):
    """Deploy and poll the job, then download it with the spies on: (what was parsed, how
    often each image was hashed, the images)."""
    code, out, err = cli("deploy", *JOB, *flags, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    code, out, err = cli("poll", "--timeout", "60")
    assert code == 0, err
    parsed, hashed = _spy(monkeypatch)
    code, out, err = cli("download")
    assert code == 0, err
    parsed = list(parsed)  # what the download read (not the reading below)
    images = [r["file"] for r in artifacts.read_manifest(tmp_path / "o")["images"]]
    assert len(images) == 6
    return parsed, {name: hashed[name] for name in images}


def test_a_kaggle_fetch_parses_the_manifest_once_and_hashes_each_image_once(
        emulator, cli, tmp_path, monkeypatch):
    parsed, hashed = _download_watched(cli, tmp_path, monkeypatch)
    assert parsed == ["Kaggle's manifest.json"]  # the kernel's, and nothing read it again
    assert set(hashed.values()) == {1}


def test_a_sharded_fetch_does_not_hash_the_other_shards_images(emulator, cli, tmp_path,
                                                               monkeypatch):
    parsed, hashed = _download_watched(cli, tmp_path, monkeypatch, "--shards", "2")
    assert set(hashed.values()) == {1}
    # each shard's manifest once, and the folder's (the first shard's, joined) once
    assert parsed.count("Kaggle's manifest.json") == 2 and len(parsed) == 3
