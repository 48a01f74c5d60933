"""Prompts that try to become code. The string MARK is replaced by a path that must never
be created: executing the rendered notebook must run none of them."""

MARK = "@@MARK@@"

CORPUS = [
    "single ' quote",
    'double " quote',
    "triple ''' single quotes '''",
    'triple """ double quotes """',
    "back\\slash \\n \\x00 \\u0041 trailing backslash \\",
    "{} {0} {JOB_JSON} %s %(x)s %d {{braces}}",
    f"a newline\nimport os; os.system('touch {MARK}')",
    f"\"\"\"\nimport os\nos.system('touch {MARK}')\n\"\"\"",
    f"'); __import__('os').system('touch {MARK}'); ('",
    f"!touch {MARK}",
    f"%system touch {MARK}",
    f"%%bash\ntouch {MARK}",
    "NUL \x00 inside",
    "emoji 🚀🔥 👩‍👩‍👧 and a flag 🇫🇷",
    "right-to-left \u202e txt.exe \u200f עברית العربية",
    "CRLF\r\nand tab\tand form feed\x0c",
    "ünïcödé ñ 中文 日本語 한국어",
    "long " + "very " * 1500 + "long prompt",
]


def corpus(mark_path: str) -> list[str]:
    return [p.replace(MARK, mark_path) for p in CORPUS]
