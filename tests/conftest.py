"""Shared fixtures: every test runs offline, with its own state dir and no Kaggle credentials."""

from __future__ import annotations

import json
import os
import contextlib
import importlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .kaggle_emulator import Emulator

REPO = Path(__file__).resolve().parents[1]


# One thread per process for torch (and the Jupyter kernels and engines it starts): two
# cores shared by several processes must not be oversubscribed.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a real diffusers notebook end to end")


def pytest_addoption(parser):
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test's seconds into {DURATIONS.name}, which orders "
                          "the next runs (the longest first)")


# Tests that share one worker under `--dist loadgroup` (scripts/test.sh), each group in one
# chain: torch-a and torch-b import torch and diffusers into the test process (two workers
# pay that import's seconds of CPU, not four); quick_run's tests share the module fixture
# that runs a real engine once. tests/test_suite.py checks that each names a real test.
SHARED_WORKER = {
    "torch-a": (
        "test_kaggle_inputs.py::test_kaggle_with_local_inputs_makes_the_same_images_as_the_local_backend",
        "test_img2img.py::test_one_job_mixes_modes_per_prompt_over_one_loaded_model",
        "test_img2img.py::test_at_low_strength_the_picture_stays_at_full_strength_the_prompt_wins",
        "test_img2img.py::test_inpainting_draws_the_prompt_inside_the_mask_and_keeps_the_picture_outside",
        "test_lora.py::test_scale_0_is_no_lora_scale_1_is_another_image_and_both_are_recorded",
        "test_embeddings.py::test_the_embedding_changes_only_prompts_with_its_token",
        "test_engine.py::test_tiny_pipeline_is_deterministic_per_seed",
        "test_engine.py::test_every_scheduler_name_maps_to_a_diffusers_class",
        "test_engine.py::test_crash_keeps_finished_images_in_the_manifest",
        "test_engine.py::test_a_saved_diffusers_folder_loads_through_autopipeline",
        "test_engine.py::test_a_missing_model_fails_with_the_loaders_message",
        "test_training.py::test_a_run_cut_after_a_checkpoint_resumes_to_the_weights_of_an_uncut_run",
        "test_training.py::test_the_weights_load_in_plain_diffusers_and_through_the_engine_alike",
        "test_training.py::test_textual_inversion_refuses_a_missing_or_known_token",
        "test_training.py::test_gradient_checkpointing_trains_the_same_weights",
        "test_training.py::test_a_v_prediction_model_trains_and_an_unknown_objective_is_refused",
        "test_train_runs.py::test_a_run_draws_its_own_pictures_as_generate_draws_with_the_model",
    ),
    "torch-b": (
        "test_benchmarks.py::test_benchmark_runs_quick[engine_overhead_sdxl.py]",
        "test_benchmarks.py::test_benchmark_runs_quick[engine_reuse.py]",
        "test_benchmarks.py::test_benchmark_runs_quick[engine_overhead.py]",
        "test_benchmarks.py::test_benchmark_runs_quick[tiny_shapes.py]",
        "test_benchmarks.py::test_benchmark_runs_quick[train_tiny.py]",
        "test_refiner.py::test_the_refiner_shares_the_base_components_and_takes_the_last_steps",
        "test_refiner.py::test_kandinsky_honours_negative_prompts_and_sizes",
        "test_sweeps.py::test_the_engine_switches_schedulers_between_cells",
        "test_sweeps.py::test_lora_scale_and_refiner_start_sweeps_change_only_their_cells",
        "test_sweeps.py::test_the_engine_loads_each_model_of_a_sweep_once",
        "test_sweeps.py::test_a_guidance_sweep_on_tiny_shapes_reads_better_with_guidance",
        "test_scores.py::test_the_score_is_the_floored_cosine_times_100",
        "test_scores.py::test_score_records_each_image_and_the_mean",
        "test_scores.py::test_score_command_reads_our_pngs_and_a1111s",
        "test_scores.py::test_score_offline_without_the_model_is_one_sentence_and_an_empty_folder_loads_nothing",
        "test_train_runs.py::test_train_resume_generate_with_the_weights_and_publish_them",
    ),
    "quick_run": (
        "test_local_backend.py::test_generate_leaves_verified_pngs_and_manifest",
        "test_local_backend.py::test_the_run_record_is_kept",
        "test_local_backend.py::test_the_gallery_shows_every_image_with_its_prompt_escaped",
        "test_local_backend.py::test_the_quickstarts_pictures_show_what_their_prompts_ask",
    ),
}
_GROUP_OF = {f"tests/{test}": group for group, tests in SHARED_WORKER.items() for test in tests}

# Each test's seconds in a run of the whole suite (`scripts/test.sh --store-durations`):
# the longest start first, so that the four workers end together instead of one long test
# running alone at the end. A test not in it yet counts as 10 s if slow, else 1 s.
DURATIONS = REPO / "tests" / "durations.json"


def group_of(nodeid: str) -> str | None:
    return _GROUP_OF.get(nodeid, _GROUP_OF.get(nodeid.partition("[")[0]))


def pytest_collection_modifyitems(config, items):
    """Longest first, a group as long as its tests together; the scheduler below hands the
    tests out in this order."""
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}

    def seconds(item) -> float:
        default = 10.0 if item.get_closest_marker("slow") else 1.0
        return known.get(item.nodeid, default)

    chain: dict[str, float] = {}
    for item in items:
        unit = group_of(item.nodeid) or item.nodeid
        chain[unit] = chain.get(unit, 0.0) + seconds(item)
    items.sort(key=lambda item: -chain[group_of(item.nodeid) or item.nodeid])


class _Durations:
    """--store-durations: each test's setup, call and teardown seconds, as the workers
    report them, written when the session ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        if session.testsfailed or not self.seconds:
            return  # a failed run's times say little
        DURATIONS.write_text(json.dumps({k: round(v, 1) for k, v in sorted(self.seconds.items())},
                                        indent=0) + "\n")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    config = session.config
    if config.getoption("store_durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Durations(), "imggenhub-durations")


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the groups above: each group one unit of work, every other
    test a unit of its own, handed to whichever worker is free, in collection order.
    (xdist's own loadgroup reads `xdist_group` marks through node ids, which pytest 9.2 no
    longer lets a plugin rename.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

    config.option.loadscopereorder = False  # keep the heaviest-first order
    return SharedWorker(config, log)


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("IMGGENHUB_HOME", str(home / "state"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR",
                "IMGGENHUB_PROCESSES", "IMGGENHUB_ENGINE_FAIL_AFTER", "IMGGENHUB_DEBUG",
                "IMGGENHUB_NOTIFY"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the real CLI in this process: (exit code, stdout, stderr)."""
    from imggenhub.cli import main

    def run(*args: str, cwd: Path | None = None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


def run_cli_subprocess(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300):
    """The installed console script, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    exe = Path(sys.executable).with_name("imggenhub")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "imggenhub", *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def kaggle_cli(args, env, cwd):
    """The unmodified kaggle CLI, pointed at the emulator through HTTP_PROXY (set in env)."""
    env = {**env, "KAGGLE_API_ENVIRONMENT": "LOCALHOST"}
    for var in ("NO_PROXY", "no_proxy", "IMGGENHUB_KAGGLE_API_URL"):
        env.pop(var, None)
    exe = Path(sys.executable).with_name("kaggle")
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def sigint_default() -> None:
    """For a child that must see Ctrl-C, SIGTERM and SIGHUP: a shell that starts a job in the
    background (as CI may) hands its children SIGINT ignored, and Python then never raises
    KeyboardInterrupt; under nohup SIGHUP comes ignored, and imggenhub keeps a signal that
    was ignored at its start ignored (by design: `nohup imggenhub ...` must not stop)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def release_when(em, condition, timeout: float = 60) -> threading.Thread:
    """Set ``em.release`` (ending a stub run's ``hold_image`` wait) as soon as
    ``condition()`` holds, checked every 10 ms on a thread of its own; never, if it does not
    hold within ``timeout`` (the held run then goes on by itself after HOLD_MAX_SECONDS, and
    the test's assertions say what did not happen)."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                em.release.set()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, name="release-when", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def on_stderr(text: str, then):
    """Call ``then()`` the first time this process writes ``text`` to sys.stderr (in the
    writing thread, before the write returns): what the in-process CLI shows, as it shows it.
    Install it inside the test, after the ``cli`` fixture's capture has started."""
    real = sys.stderr

    class Tee:
        fired = False

        def write(self, data):
            written = real.write(data)
            if not Tee.fired and text in data:
                Tee.fired = True
                then()
            return written

        def __getattr__(self, name):
            return getattr(real, name)

    sys.stderr = Tee()
    try:
        yield
    finally:
        sys.stderr = real


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def start_emulator(monkeypatch, **kwargs):
    em = Emulator(queue_seconds=0.1, **kwargs)
    url = em.start()
    monkeypatch.setenv("IMGGENHUB_KAGGLE_API_URL", url)
    monkeypatch.setenv("KAGGLE_USERNAME", em.username)
    monkeypatch.setenv("KAGGLE_KEY", em.key)
    monkeypatch.setenv("IMGGENHUB_POLL_INTERVAL", "0.3")
    monkeypatch.setenv("IMGGENHUB_POLL_MAX_INTERVAL", "0.5")
    monkeypatch.setenv("IMGGENHUB_RETRY_MAX_WAIT", "0.3")
    monkeypatch.setenv("IMGGENHUB_GPU_WAIT", "0.2")
    monkeypatch.setenv("IMGGENHUB_HTTP_TIMEOUT", "10")
    monkeypatch.setenv("IMGGENHUB_PUSH_GRACE", "0.3")
    return em


@pytest.fixture
def emulator(monkeypatch):
    """The emulator with its stub runner: the pushed notebook's job is planned and written
    as tiny PNGs and a manifest in milliseconds (protocol tests)."""
    em = start_emulator(monkeypatch)
    yield em
    em.stop()


@pytest.fixture
def real_emulator(monkeypatch):
    """The emulator running each pushed notebook in a real Jupyter kernel (end to end)."""
    em = start_emulator(monkeypatch, runner="notebook")
    yield em
    em.stop()


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """huggingface_hub online, without Xet, with a fresh HF_HOME and no token of the user's:
    constants read at import are patched too, as another test may have imported it first."""
    home = tmp_path / "hf-home"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT",
                "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(importlib.import_module("huggingface_hub.utils.tqdm"),
                        "HF_HUB_DISABLE_PROGRESS_BARS", True)
    # huggingface_hub < 1.0 keeps one requests session a thread, made offline when the
    # process was: a fresh one now, and again after the test (offline once more)
    reset = getattr(importlib.import_module("huggingface_hub.utils._http"), "reset_sessions", None)
    if reset is not None:
        reset()
    yield huggingface_hub
    if reset is not None:
        monkeypatch.undo()
        reset()


@pytest.fixture
def hub(hf, monkeypatch):
    from .hub_emulator import Emulator as HubEmulator

    em = HubEmulator()
    em.start()
    # huggingface_hub < 1.0 reads the repo of a commit's URL against its own ENDPOINT (and
    # builds download URLs from a template made of it)
    monkeypatch.setattr(hf.constants, "ENDPOINT", em.url)
    template = em.url + "/{repo_id}/resolve/{revision}/{filename}"
    for module in (hf.constants, importlib.import_module("huggingface_hub.file_download")):
        if hasattr(module, "HUGGINGFACE_CO_URL_TEMPLATE"):
            monkeypatch.setattr(module, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    yield em
    em.stop()


@pytest.fixture
def hf_jobs(hub, monkeypatch):
    """The Hub emulator with its jobs (stub engine), a token, and quick polls: the
    hf-jobs backend's protocol tests. An older huggingface_hub (the oldest-versions run) has
    no job labels: the backend refuses it in one sentence (tests/test_hf_jobs.py checks
    that), and there is nothing more to test with it."""
    import inspect

    from huggingface_hub import HfApi

    from .hub_emulator import DEFAULT_TOKEN

    if "labels" not in inspect.signature(HfApi.run_job).parameters:
        pytest.skip("this huggingface_hub has no job labels (the hf-jobs backend refuses it)")

    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for name, value in (("IMGGENHUB_POLL_INTERVAL", "0.1"), ("IMGGENHUB_POLL_MAX_INTERVAL", "0.3"),
                        ("IMGGENHUB_RETRY_MAX_WAIT", "0.2"), ("IMGGENHUB_HTTP_TIMEOUT", "10")):
        monkeypatch.setenv(name, value)
    yield hub
    for job in list(hub.jobs.jobs.values()):
        hub.jobs.cancel(job)
