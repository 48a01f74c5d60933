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

# C0 but newline and tab, DEL, C1, and lone surrogates
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# what json.dumps(..., ensure_ascii=False) leaves raw: DEL, C1, lone surrogates, and the
# line and paragraph separators (some JSON readers take them for line ends)
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab (C0, DEL, C1) and every
    lone surrogate written as a visible escape (``\\x1b``, ``\\ud800``)."""
    text = str(text)
    return _UNSAFE.sub(_visible, text) if _UNSAFE.search(text) else text


def json_text(data) -> str:
    """One JSON document of ``data`` for a terminal: non-ASCII letters as they are, every
    control character (JSON escapes C0 itself; DEL and C1 here) and lone surrogate as a
    ``\\uXXXX`` escape, so parsing it gives back exactly ``data``."""
    text = json.dumps(data, ensure_ascii=False)
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
