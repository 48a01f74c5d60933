"""Every benchmark runs in its quick mode (tiny sizes, figures meaningless) from its own
file, as `python benchmarks/SCRIPT --quick` runs it, so that none can rot unnoticed: exit 0
and its ratio line printed. Only local_e2e runs a real notebook (one image)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# script -> what it must print (each in a line of its own)
BENCHMARKS = {
    "cli_startup.py": ["imggenhub --help", "ratio --help / bare python: "],
    "local_e2e.py": ["kernel start", "collection + verification", "; generation share "],
    "engine_reuse.py": ["naive (load per prompt):", "engine (load once):", "ratio naive/engine: "],
    "kaggle_overhead.py": ["imggenhub generate:", "original pattern:",
                           "overhead ratio original/imggenhub: "],
    "engine_overhead.py": ["bare loop", "engine/reload-per-prompt: "],
    "engine_overhead_sdxl.py": ["SDXL-shaped, tiny size", "process start to first image written: ",
                                "; by total time: "],
    "kaggle_download.py": ["per-file latency  50 ms:", "  ratio kaggle/imggenhub: ",
                           "ratio loose/bundled "],
    "shards.py": ["1 kernel:", "2 shards:", "ratio 1 kernel / 2 shards: "],
    "hf_jobs.py": ["1 job :", "2 jobs:", "ratio 1 job / 2 jobs: "],
    "tiny_shapes.py": ["held-out prompts, guidance 2 (", "training prompts, guidance 2 ("],
    "flux_t4.py": ["plan for this CPU: memory plan (tiny-flux): cpu", "4 steps at 64 px: ",
                   "ratio measured/planned weights: "],
    "train_tiny.py": ["1 process: ", "; share outside forward, backward and gradient averaging: "],
}


def bench_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "IMGGENHUB_")) and k not in ("NO_PROXY", "no_proxy")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HOME=str(tmp_path),
               IMGGENHUB_HOME=str(tmp_path / "state"), TMPDIR=str(tmp_path),
               TOKENIZERS_PARALLELISM="false")
    return env


# these build a tiny diffusers pipeline
SLOW = {"local_e2e.py", "engine_reuse.py", "engine_overhead.py", "engine_overhead_sdxl.py",
        "tiny_shapes.py", "train_tiny.py", "flux_t4.py"}
# these take tens of seconds even in their quick mode (many processes, pipelines saved and
# loaded again): CI runs them after the suite (`-m "training or long"`)
LONG = {"local_e2e.py", "engine_reuse.py", "engine_overhead.py", "engine_overhead_sdxl.py",
        "kaggle_download.py",
        "flux_t4.py", "hf_jobs.py"}


def _marks(script: str) -> list:
    return [m for m, among in ((pytest.mark.slow, SLOW), (pytest.mark.long, LONG)) if script in among]


@pytest.mark.parametrize("script", [pytest.param(s, marks=_marks(s)) for s in BENCHMARKS])
def test_benchmark_runs_quick(script, tmp_path, monkeypatch, capsys):
    """Run from its own file as ``python benchmarks/SCRIPT --quick`` runs it, but in this
    test process: torch and diffusers, which this process has imported already, are not
    imported afresh for each benchmark (seconds of CPU each on a 2-core machine)."""
    import runpy
    import tempfile

    env = bench_env(tmp_path)
    for key in [k for k in os.environ if k not in env]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / script), "--quick"])
    monkeypatch.setattr(sys, "path", [str(REPO / "benchmarks"), *sys.path])
    monkeypatch.chdir(REPO)
    try:
        runpy.run_path(str(REPO / "benchmarks" / script), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr().out
    assert code == 0, f"{script} exited {code}:\n{out}"
    lines = out.splitlines()
    for text in BENCHMARKS[script]:
        assert any(text in line for line in lines), f"{script} printed no line with {text!r}:\n{out}"
    ratio = next(line for line in lines if BENCHMARKS[script][-1] in line)  # a figure follows
    assert ratio.rstrip().endswith(("x", "%")), ratio
