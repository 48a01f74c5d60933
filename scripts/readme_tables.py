"""Rewrite the README's generated tables (lifecycle, exit codes, tunables) from the code.
A test checks that the README holds exactly these tables.

    .venv/bin/python scripts/readme_tables.py
"""

from __future__ import annotations

from pathlib import Path

from imggenhub import config, lifecycle

README = Path(__file__).resolve().parents[1] / "README.md"
TABLES = {"| state | deploy |": lifecycle.table_markdown,
          "| code | meaning |": lifecycle.exit_table_markdown,
          "| variable | default | meaning |": config.tunables_markdown}


def main() -> None:
    text = README.read_text(encoding="utf-8")
    for head, make in TABLES.items():
        start = text.index(head)
        end = text.find("\n\n", start)
        text = text[:start] + make() + (text[end:] if end != -1 else "\n")
    README.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
