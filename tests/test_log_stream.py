"""Live progress from the kernel's log stream (GET .../kernels/logs/stream/{owner}/{slug}
?versionLabel=vN): images k/n with the pace and the time left while the run goes, a
dropped stream resumed without repeating a line, and the output listing's log when there
is no stream. The unmodified `kaggle kernels logs [--follow]` reads the same endpoint."""

from __future__ import annotations

import re

from .conftest import kaggle_cli, on_stderr, release_when
from .test_emulator import REF, em, job_document, kaggle_env, notebook_text, push, wait_for  # noqa: F401

SIX = ["--model", "tiny-random", "--seed", "3", "-p", "a", "-p", "b", "--num-images", "3"]
BATCH = "imggenhub/imggenhub-batch"


def image_lines(err: str) -> list[str]:
    return re.findall(r"image \d/6 \S+ in [\d.]+s[^\n]*", err)


def _held_until_line_3(emulator, cli, tmp_path):
    """Generate six images with the kernel held in image 4 until the CLI shows "image 3/6";
    the kernel's status at that moment, and what the CLI printed."""
    emulator.hold_image = 4
    at_line_3 = []

    def shown():
        at_line_3.append(emulator.versions(BATCH)[0].status)
        emulator.release.set()

    with on_stderr("image 3/6", shown):
        code, out, err = cli("generate", *SIX, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    return at_line_3, err


def test_progress_streams_in_while_the_kernel_runs(emulator, cli, tmp_path):
    # The kernel is held in image 4 (RUNNING) until the CLI has shown image 3/6: the line can
    # only come while the kernel runs. Were it shown only after the end, the hold would run
    # out by itself (HOLD_MAX_SECONDS) and the kernel's status at the line be COMPLETE.
    emulator.image_seconds = 0.1
    at_line_3, err = _held_until_line_3(emulator, cli, tmp_path)
    assert emulator.held.is_set() and at_line_3 == ["RUNNING"]
    lines = image_lines(err)
    assert [re.match(r"image (\d)/6", l).group(1) for l in lines] == list("123456")  # once each
    assert "6/6 in all" in lines[-1] and re.search(r"\d\.\d\ds an image, about \d+s left", lines[2])
    # they came while it ran: before the run was seen complete
    assert err.index("image 3/6") < err.index("complete after")
    streams = [body for method, body in emulator.calls if method == "LogStream"]
    assert streams and streams[0]["versionLabel"] == "v1" and streams[0]["path"] == BATCH
    assert emulator.live_streams >= 1


def test_a_dropped_stream_resumes_without_repeating_a_line(emulator, cli, tmp_path):
    # held in image 4 until both drops happened and a third stream is live: the follower
    # resumes on a live stream, whatever the machine's load (each reconnect is 0.5 s later)
    emulator.image_seconds = 0.05
    emulator.hold_image = 4
    emulator.faults.set(stream_drop=2)
    release_when(emulator, lambda: emulator.faults.fired.get("stream_drop") == 2
                 and emulator.live_streams >= 3)
    code, out, err = cli("generate", *SIX, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    assert emulator.faults.fired["stream_drop"] == 2 and emulator.live_streams >= 3
    assert emulator.release.is_set()  # by the condition, not by the hold running out
    assert [re.match(r"image (\d)/6", l).group(1) for l in image_lines(err)] == list("123456")
    assert sum(1 for method, _ in emulator.calls if method == "LogStream") >= 3


def test_without_a_stream_progress_comes_from_the_output_listing(emulator, cli, tmp_path):
    # held in image 4 until the CLI shows image 3/6, which only the listing's log can give it
    # while the kernel runs (the stream answers 404)
    emulator.image_seconds = 0.05
    emulator.faults.set(no_stream=True)
    at_line_3, err = _held_until_line_3(emulator, cli, tmp_path)
    assert at_line_3 == ["RUNNING"] and emulator.live_streams == 0
    assert sum(1 for method, _ in emulator.calls if method == "LogStream") == 1  # 404: not again
    numbers = [re.match(r"image (\d)/6", l).group(1) for l in image_lines(err)]
    assert numbers == list("123456")  # each once, in order, the last ones after the end
    assert err.index("image 3/6") < err.index("complete after")


def test_the_kaggle_cli_reads_the_stream_and_the_stored_log(em, tmp_path):
    # held in image 2 until a live stream is served: --follow attaches while it runs
    em.image_seconds = 0.05
    em.hold_image = 2
    release_when(em, lambda: em.live_streams >= 1, timeout=120)
    number = push(em, notebook_text(job_document(prompts=("a", "b", "c"))))
    env = kaggle_env(em)
    proc = kaggle_cli(["kernels", "logs", REF, "--follow"], env, tmp_path)
    assert em.versions(REF)[0].finished is not None  # it followed to the end
    assert em.live_streams == 1 and em.release.is_set()  # live, not the stored log
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "image 3/3" in proc.stdout and "done: 3 images" in proc.stdout
    wait_for(em, number)
    proc = kaggle_cli(["kernels", "logs", REF], env, tmp_path)  # the stored log, after
    assert proc.returncode == 0 and "image 3/3" in proc.stdout
    assert em.live_streams == 1  # the stored log is no live stream
