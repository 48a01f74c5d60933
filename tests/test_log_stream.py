"""Live progress from the kernel's log stream (GET .../kernels/logs/stream/{owner}/{slug}
?versionLabel=vN): images k/n with the pace and the time left while the run goes, a
dropped stream resumed without repeating a line, and the output listing's log when there
is no stream. The unmodified `kaggle kernels logs [--follow]` reads the same endpoint."""

from __future__ import annotations

import re

from .conftest import kaggle_cli
from .test_emulator import REF, em, job_document, kaggle_env, notebook_text, push, wait_for  # noqa: F401

SIX = ["--model", "tiny-random", "--seed", "3", "-p", "a", "-p", "b", "--num-images", "3"]


def image_lines(err: str) -> list[str]:
    return re.findall(r"image \d/6 \S+ in [\d.]+s[^\n]*", err)


def test_progress_streams_in_while_the_kernel_runs(emulator, cli, tmp_path):
    emulator.image_seconds = 0.25
    code, out, err = cli("generate", *SIX, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    lines = image_lines(err)
    assert [re.match(r"image (\d)/6", l).group(1) for l in lines] == list("123456")  # once each
    assert "6/6 in all" in lines[-1] and re.search(r"\d\.\d\ds an image, about \d+s left", lines[2])
    # they came while it ran: before the run was seen complete
    assert err.index("image 3/6") < err.index("complete after")
    streams = [body for method, body in emulator.calls if method == "LogStream"]
    assert streams and streams[0]["versionLabel"] == "v1" and streams[0]["path"] == "imggenhub/imggenhub-batch"


def test_a_dropped_stream_resumes_without_repeating_a_line(emulator, cli, tmp_path):
    emulator.image_seconds = 0.4  # 2.4 s of run; each drop is followed by a reconnect in 0.5 s
    emulator.faults.set(stream_drop=2)
    code, out, err = cli("generate", *SIX, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    assert emulator.faults.fired["stream_drop"] == 2
    assert [re.match(r"image (\d)/6", l).group(1) for l in image_lines(err)] == list("123456")
    assert sum(1 for method, _ in emulator.calls if method == "LogStream") >= 3


def test_without_a_stream_progress_comes_from_the_output_listing(emulator, cli, tmp_path):
    emulator.image_seconds = 0.2
    emulator.faults.set(no_stream=True)
    code, out, err = cli("generate", *SIX, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    assert sum(1 for method, _ in emulator.calls if method == "LogStream") == 1  # 404: not again
    numbers = [re.match(r"image (\d)/6", l).group(1) for l in image_lines(err)]
    assert numbers and numbers == sorted(set(numbers)) and numbers[-1] == "6"


def test_the_kaggle_cli_reads_the_stream_and_the_stored_log(em, tmp_path):
    em.image_seconds = 1.0  # long enough that --follow attaches while it runs
    number = push(em, notebook_text(job_document(prompts=("a", "b", "c"))))
    env = kaggle_env(em)
    proc = kaggle_cli(["kernels", "logs", REF, "--follow"], env, tmp_path)
    assert em.versions(REF)[0].finished is not None  # it followed to the end
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "image 3/3" in proc.stdout and "done: 3 images" in proc.stdout
    wait_for(em, number)
    proc = kaggle_cli(["kernels", "logs", REF], env, tmp_path)  # the stored log, after
    assert proc.returncode == 0 and "image 3/3" in proc.stdout
