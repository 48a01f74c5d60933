"""The command line as a user meets it: start-up, help, and bad input."""

from __future__ import annotations

import json

import pytest

from .conftest import run_cli_subprocess


def test_help_starts_without_torch(tmp_path):
    proc = run_cli_subprocess("--help", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0
    assert "generate" in proc.stdout and "render" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "typer" in imported  # the import log is real
    assert not imported & {"torch", "diffusers", "transformers", "accelerate", "nbclient", "kagglesdk",
                            "kaggle"}


def test_python_dash_m_works(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "imggenhub", "version"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip()


def test_models_lists_every_preset(cli):
    from imggenhub.job.models import PRESETS

    code, out, _ = cli("models")
    assert code == 0
    for preset in PRESETS.values():
        assert preset.name in out and preset.id in out
    assert "noise" in out


@pytest.mark.parametrize("args,fragment", [
    (["--steps", "abc"], "--steps"),
    (["--steps", "-1"], "--steps"),
    (["--width", "100"], "not a multiple of 8"),
    (["--width", "100000"], "outside"),
    (["--scheduler", "nope"], "unknown scheduler"),
    (["--precision", "fp8"], "--precision"),
    (["--model", "not a model"], "neither a preset"),
    (["--bogus"], "No such option"),
    (["-p", "   "], "the prompt is empty"),
])
def test_bad_flags_one_sentence_exit_2(tmp_path, cli, args, fragment):
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "--model", "tiny-random", "-p", "x",
                         *args, cwd=tmp_path)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content,fragment", [
    (None, "not found"),
    ("[1, 2", "not valid JSON"),
    ("[]", "non-empty JSON list"),
    ('[{"prompt": "x", "stpes": 3}]', "unknown field 'stpes'"),
    ('[{"prompt": 5}]', "prompt"),
])
def test_bad_prompt_files_one_sentence_exit_2(tmp_path, cli, content, fragment):
    if content is not None:
        (tmp_path / "prompts.json").write_text(content)
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "--model", "tiny-random", cwd=tmp_path)
    assert code == 2 and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_render_without_a_username_says_whose_name_to_put_in(tmp_path, cli, monkeypatch):
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "--model", "tiny-random",
                         "-p", "x", cwd=tmp_path)
    assert code == 0 and "(job " in out and "1 image)" in out
    assert "names the owner 'your-kaggle-username'" in err
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k" * 32)
    code, out, err = cli("render", "--out", str(tmp_path / "r2"), "--model", "tiny-random",
                         "-p", "x", cwd=tmp_path)
    assert code == 0 and err == ""
    assert json.loads((tmp_path / "r2" / "kernel-metadata.json").read_text())["id"].startswith(
        "someone/")


def test_render_answers_in_json_caps_the_session_and_takes_no_shards(tmp_path, cli, monkeypatch):
    from imggenhub.job.notebook import read_job_document

    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k" * 32)
    out_dir = tmp_path / "r"
    code, out, err = cli("render", "--out", str(out_dir), "--model", "tiny-random", "-p", "x",
                         "--timeout-hours", "2", "--json", cwd=tmp_path)
    assert code == 0, err
    data = json.loads(out)
    assert data["kernel_id"].startswith("someone/") and data["images"] == 1
    assert data["session_seconds"] == 7200 and data["push"].endswith(" -t 7200")
    assert f"kaggle kernels push -p {out_dir} -t 7200" in err
    doc = read_job_document(open(data["notebook"], encoding="utf-8").read())
    assert doc["session_seconds"] == 7200  # the engine stops cleanly before the cap
    code, out, err = cli("render", "--out", str(tmp_path / "r2"), "--model", "tiny-random",
                         "-p", "x", "--shards", "3", cwd=tmp_path)
    assert code == 2 and "No such option: --shards" in err and not (tmp_path / "r2").exists()
    code, out, err = cli("version", "--json")
    from imggenhub import __version__

    assert code == 0 and json.loads(out) == {"version": __version__}
