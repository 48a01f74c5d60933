"""Text from outside (Kaggle's answers, a notebook's log, a manifest, the user's files) made
safe to show on a terminal: every control character is shown, never acted on.

A terminal acts on control characters: ESC starts sequences that set the window title,
clear the screen or write the clipboard (OSC 52), CR and backspace overwrite what was
written, and the C1 controls U+0080-U+009F (CSI is U+009B) do what ESC sequences do. So
``printable`` writes each of them as a Python-style escape: ``\\x1b``, ``\\x07``, ``\\x0d``,
``\\x7f``, ``\\x9b`` (two hex digits, lower case); a whole sequence such as
``ESC ] 52 ; c ; SGVsbG8= BEL`` becomes the inert text ``\\x1b]52;c;SGVsbG8=\\x07``. Newline
and tab stay as they are. A lone surrogate (from a JSON ``\\ud800``, which no terminal
encoding can write) shows as ``\\ud800``. Text without any of these comes back unchanged,
so our own messages print as written.

``json_text`` is the same for ``--json``: the document keeps the exact text (a client
that parses it gets every character back), and none of these characters is written raw.
"""

from __future__ import annotations

import json
import re

# C0 but newline and tab, DEL, C1, lone surrogates; and what reorders or hides text on a
# screen: the bidirectional controls ("Trojan Source"), the line and paragraph separators,
# zero-width spaces and the BOM (the joiners U+200C/U+200D stay: scripts and emoji use them)
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200b\u200e\u200f"
                     "\u2028-\u202e\u2060\u2066-\u2069\ufeff]")
# what json.dumps(..., ensure_ascii=False) leaves raw: DEL, C1, lone surrogates, and the
# line and paragraph separators (some JSON readers take them for line ends)
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab (C0, DEL, C1), every lone
    surrogate, bidirectional control and invisible space written as a visible escape
    (``\\x1b``, ``\\ud800``, ``\\u202e``)."""
    text = str(text)
    return _UNSAFE.sub(_visible, text) if _UNSAFE.search(text) else text


def json_text(data) -> str:
    """One JSON document of ``data`` for a terminal: non-ASCII letters as they are, every
    control character (JSON escapes C0 itself; DEL and C1 here) and lone surrogate as a
    ``\\uXXXX`` escape, so parsing it gives back exactly ``data``."""
    text = json.dumps(data, ensure_ascii=False)
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# --- lines of text that come in pieces (a log stream, a kernel's output) ------------------

MAX_LINE = 1 << 20  # the longest line held, in bytes of the stream (characters of a log)


class Dropped(int):
    """In place of a line longer than the limit: its length."""


class Lines:
    """Text that comes in pieces (bytes or str), split into lines at newlines in time linear
    in its length: each piece is searched once, and a line is joined once, when it ends. A
    line longer than ``limit`` is not kept: ``Dropped(its length)`` stands in its place."""

    def __init__(self, limit: int = MAX_LINE):
        self.limit = limit
        self.pieces: list = []  # of the line not yet ended
        self.size = 0
        self.dropping = 0  # the length so far of a line too long to keep (0: none)

    def feed(self, data) -> list:
        """The lines that ``data`` ends (without their newline), in order."""
        newline = b"\n" if isinstance(data, bytes) else "\n"
        out, start = [], 0
        while (end := data.find(newline, start)) >= 0:
            self._add(data[start:end])
            out.append(self._end(data[:0]))
            start = end + 1
        self._add(data[start:])
        return out

    def rest(self):
        """What is left after the last newline (None if nothing, or a line being dropped)."""
        if self.dropping or not self.pieces:
            return None
        return self._end(self.pieces[0][:0])

    def _add(self, piece) -> None:
        if self.dropping:
            self.dropping += len(piece)
        elif self.size + len(piece) > self.limit:
            self.dropping = self.size + len(piece)
            self.pieces, self.size = [], 0
        elif piece:
            self.pieces.append(piece)
            self.size += len(piece)

    def _end(self, empty):
        if self.dropping:
            line, self.dropping = Dropped(self.dropping), 0
            return line
        line = empty.join(self.pieces)
        self.pieces, self.size = [], 0
        return line
