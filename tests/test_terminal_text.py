"""Nothing from outside reaches the terminal unchecked: a server's failure message, a
notebook's log line, a manifest's field, a path or name the user typed are shown with their
control characters made visible (``\\x1b``), never acted on, on a terminal and in piped
lines alike, while ``--json`` keeps the exact text. And the live log stream holds a line
only up to 1 MiB, reading it in linear time. Written as an attacker would: against the
Kaggle emulator, the real CLI in this process, and the console script on a pseudo-terminal."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from imggenhub.backends.kaggle.logs import MAX_LINE, Dropped, Lines
from imggenhub.text import json_text, printable

from .conftest import on_stderr, release_when
from .test_kaggle import SPEC
from .test_log_stream import SIX, image_lines

# what a hostile server or notebook writes: the clipboard (OSC 52), the window title, a
# cleared screen, an 8-bit CSI (C1), a carriage return and a backspace that overwrite
HOSTILE = ("osc52 \x1b]52;c;SGVsbG8=\x07 title \x1b]0;pwned\x07 clear \x1b[2J "
           "c1 \x9b31m over\rwritten back\bspace")
SHOWN = (r"osc52 \x1b]52;c;SGVsbG8=\x07 title \x1b]0;pwned\x07 clear \x1b[2J "
         r"c1 \x9b31m over\x0dwritten back\x08space")
# every character a terminal could act on: C0 but newline and tab, DEL, C1
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def inert(text: str) -> str:
    found = sorted(set(CONTROL.findall(text)))
    assert not found, f"control characters reached the terminal: {found!r}"
    return text


# --- the function -------------------------------------------------------------------

def test_printable_shows_each_control_character_and_leaves_the_rest_alone():
    for code in range(0xA0):
        ch = chr(code)
        shown = printable(f"a{ch}b")
        if ch in "\n\t" or 0x20 <= code < 0x7F:
            assert shown == f"a{ch}b", code
        else:
            assert shown == f"a\\x{code:02x}b", code
    everything = "".join(map(chr, range(0xA0)))
    assert "\\x1b" in inert(printable(everything))
    # whole sequences become inert text, each byte of them still there to read
    assert printable(HOSTILE) == SHOWN
    assert printable("\x1bP1;2q#0\x1b\\") == r"\x1bP1;2q#0\x1b" + "\\"  # DCS (sixel) ... ST
    assert printable("\x9d8;;http://x\x9c") == r"\x9d8;;http://x\x9c"  # 8-bit OSC ... ST
    # a lone surrogate (from a JSON "\ud800") is shown, not a UnicodeEncodeError
    assert printable("a\ud800b") == r"a\ud800b"
    printable(everything + "\udfff").encode("utf-8")
    # text that reorders or hides itself on a screen is shown (bidi overrides, invisibles)
    assert printable("run \u202egnp.exe\u202c ok") == r"run \u202egnp.exe\u202c ok"
    assert printable("a\u2066b\u2069\u200bc\ufeffd\u2028e") == r"a\u2066b\u2069\u200bc\ufeffd\u2028e"
    # our own messages, and letters of any script, come back as they are (joiners too)
    own = "Kaggle reports error for a/b v1: café, 東京 ✓, می‌خواهم, 👨\u200d👩\n\tnext line (exit 1)."
    assert printable(own) == own


def test_json_text_keeps_the_exact_text_with_nothing_raw():
    everything = "".join(map(chr, range(0xA0))) + "\u2028\u2029\ud800 é 東京"
    for data in (HOSTILE, everything, {"error": HOSTILE, "list": [everything, 1, None]}):
        doc = json_text(data)
        assert json.loads(doc) == data
        inert(doc)
        assert "\u2028" not in doc and "\n" not in doc
        doc.encode("utf-8")  # no lone surrogate left to fail the write
    assert json_text({"prompt": "café 東京"}) == '{"prompt": "café 東京"}'  # letters stay letters


def test_only_the_output_module_and_the_reporter_write_to_the_terminal():
    # a command that printed with typer.echo or print would pass outside text on raw
    package = Path(__file__).resolve().parents[1] / "imggenhub"
    allowed = {"cli/output.py", "cli/__init__.py", "report.py"}
    found = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        # the engine writes the kernel's log, and the bootstrap a Hugging Face job's
        if rel.startswith("engine/") or rel in allowed or rel == "backends/hfjobs/bootstrap.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("print", "typer.echo", "typer.secho", "click.echo") or \
                    re.fullmatch(r"sys\.(stdout|stderr)\.write", name):
                found.append(f"{rel}:{node.lineno} {name}")
    assert found == []
    # and there, the only unchecked writes are our own: the version and the JSON document
    text = (package / "cli" / "__init__.py").read_text(encoding="utf-8")
    assert re.findall(r"typer\.echo\(([^)(]*)", text) == ["__version__", "json_text"]


# --- the CLI against a hostile Kaggle and notebook ------------------------------------

def _hostile_failing_run(emulator):
    """A notebook that logs HOSTILE as a progress line and fails; Kaggle's failure message
    is HOSTILE too. The run is held in its first image (RUNNING, the line logged) until the
    test releases it: the line then comes through the live stream, not the output listing."""
    emulator.faults.set(fail_notebook=True, failure_message=HOSTILE,
                        log_text=f"[imggenhub] {HOSTILE}\n")
    emulator.hold_image = 1


def test_hostile_log_lines_and_failure_messages_are_shown_inert(emulator, cli, tmp_path):
    _hostile_failing_run(emulator)
    with on_stderr("osc52", emulator.release.set):
        code, out, err = cli("generate", *SPEC, "--name", "hostile", cwd=tmp_path)
    assert code == 1 and emulator.release.is_set() and emulator.live_streams == 1
    inert(out), inert(err)
    progress = [l for l in err.splitlines() if "osc52" in l and "Error:" not in l]
    assert any(l.endswith("imggenhub: " + SHOWN) for l in progress), err  # the streamed line
    assert "The kernel log ends with:" in err  # the tail, which carries it too
    error = err[err.index("\nError: ") + 1:]
    assert error.startswith(f"Error: Kaggle reports error for imggenhub/imggenhub-batch v1: {SHOWN}")
    for letters in ("SGVsbG8=", "pwned", "[2J", "31m", "over", "written", "back", "space"):
        assert letters in error
    # what is shown of the run later comes from its record, as hostile: inert too
    for args in (("show", "hostile"), ("status", "hostile"), ("runs",)):
        code, out, err = cli(*args)
        inert(out), inert(err)
    assert SHOWN in cli("show", "hostile")[1]


def test_json_keeps_the_servers_exact_text_and_stderr_stays_inert(emulator, cli, tmp_path):
    _hostile_failing_run(emulator)
    with on_stderr("osc52", emulator.release.set):
        code, out, err = cli("generate", *SPEC, "--name", "hostile", "--json", cwd=tmp_path)
    assert code == 1
    inert(out), inert(err)
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 1
    assert f"imggenhub/imggenhub-batch v1: {HOSTILE}" in doc["error"]  # exact
    assert SHOWN in err
    shown = json.loads(inert(cli("show", "hostile", "--json")[1]))
    assert HOSTILE in shown["failure"]
    status = json.loads(inert(cli("status", "hostile", "--json")[1]))
    assert HOSTILE in status["failure"]["evalue"]
    assert "\x1b]52;c;SGVsbG8=\x07 title \x1b]0;pwned\x07" in status["failure"]["log_tail"]


def _on_a_terminal(args, cwd: Path, timeout: float = 120) -> tuple[int, str, str]:
    """The console script with its stderr on a pseudo-terminal 300 columns wide (the live
    reporter's terminal): (exit code, stdout, what the terminal received)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 300, 0, 0))
    exe = Path(sys.executable).with_name("imggenhub")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "imggenhub", *args]
    env = {**os.environ, "COLUMNS": "300", "TERM": "xterm-256color"}
    for var in ("NO_COLOR", "TERM_PROGRAM"):
        env.pop(var, None)
    received = bytearray()

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed (EIO)
                return
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = None
        reader.start()
        out, _ = proc.communicate(timeout=timeout)
        reader.join(10)
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    return proc.returncode, out.decode("utf-8"), bytes(received).decode("utf-8", "replace")


def test_on_a_terminal_the_live_reporter_shows_them_inert_too(emulator, tmp_path):
    _hostile_failing_run(emulator)
    release_when(emulator, lambda: emulator.live_streams >= 1)
    code, out, shown = _on_a_terminal(["generate", *SPEC], tmp_path)
    assert code == 1, shown
    # the live line's own cursor codes are there, so look for the hostile ones
    for raw in ("\x1b]52", "\x1b]0;", "\x1b[2J", "\x9b", "\x07", "\x08", "over\rwritten"):
        assert raw not in shown, raw
    assert "\x1b[" in shown  # it was the live reporter (rich) that wrote
    assert f"  {SHOWN}" in shown and f"v1: {SHOWN}" in shown


# --- the live stream: a line that does not end -----------------------------------------

def test_a_5_mib_stream_line_is_dropped_with_a_note_and_the_stream_goes_on(emulator, cli,
                                                                          tmp_path):
    # every live stream starts with a 5 MiB data: line; the run is held in image 2 until
    # the CLI has shown the note, so the note can only come from the live stream
    size = 5 << 20
    emulator.faults.set(long_stream_line=size)
    emulator.image_seconds = 0.02
    emulator.hold_image = 2
    note = f"note: the log stream sent a line of {size} bytes; lines over 1 MiB are dropped"
    with on_stderr(note, emulator.release.set):
        code, out, err = cli("generate", *SIX, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert emulator.release.is_set() and err.count(note) == 1
    assert emulator.live_streams == 1 and emulator.faults.fired["long_stream_line"] == 1
    # the lines after it arrived, each once, in order
    numbers = [re.match(r"image (\d)/6", l).group(1) for l in image_lines(err)]
    assert numbers == list("123456") and err.index(note) < err.index("image 1/6")
    assert "xxxxxxxx" not in err


def test_a_line_that_never_ends_is_held_only_up_to_the_cap():
    block = b"x" * (64 << 10)
    lines = Lines()
    tracemalloc.start()
    try:
        for _ in range(1024):  # 64 MiB of one line, and no newline
            assert lines.feed(block) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_LINE + (2 << 20), peak  # the cap and a block or so, not 64 MiB
    ended = lines.feed(b"\r\ndata: next\n\ndata: {\"a\"")
    assert ended == [64 << 20 | 1, b"data: next", b""] and isinstance(ended[0], Dropped)
    assert lines.rest() == b'data: {"a"'
    # a line of exactly the cap is kept; one byte more is not
    exact = Lines(limit=8)
    assert exact.feed(b"12345678\n123456789\n") == [b"12345678", Dropped(9)]
    assert Lines(limit=8).feed("ab\ncd") == ["ab"]  # text too (a kernel's output)


def test_a_long_line_is_read_in_linear_time():
    # 32 MiB in 512-byte reads (the follower's read size), with a cap above it: held whole.
    # A reader that joined or searched all it held on every read would copy terabytes.
    lines = Lines(limit=64 << 20)
    piece = b"y" * 512
    t0 = time.thread_time()
    for _ in range(64 << 10):
        lines.feed(piece)
    got = lines.feed(b"\n")
    spent = time.thread_time() - t0
    assert len(got) == 1 and len(got[0]) == 32 << 20
    assert spent < 3.0, spent  # linear: a few hundredths of a second of CPU


def test_the_local_kernels_output_is_split_in_linear_time_and_an_endless_line_is_not_held(
        tmp_path):
    """The local backend's log sink reads a kernel's output with the same Lines: progress
    lines still arrive, and a 4 MiB line without an end is neither kept nor re-scanned."""
    from imggenhub.backends.local import _LogSink

    events = []
    sink = _LogSink(tmp_path / "kernel.log", events.append)
    sink("stdout", "[imggenhub] image 1/2 0001-a.png in 0.1s (elapsed 1.0s)\n[imggenhub] im")
    for _ in range(4 * 1024):
        sink("stdout", "x" * 1024)  # joined to the line begun above: dropped whole
    sink("stdout", "\n[imggenhub] image 2/2 0002-a.png in 0.1s (elapsed 1.2s)\n")
    assert [e.split()[1] for e in events] == ["1/2", "2/2"], events
    assert sink.lines.size == 0 and not sink.lines.pieces
