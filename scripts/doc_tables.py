"""Rewrite the generated tables in docs/ from the code: the lifecycle and exit-code tables
in docs/lifecycle.md, the tunables table in docs/tunables.md. A test checks that those
files hold exactly these tables.

    .venv/bin/python scripts/doc_tables.py
"""

from __future__ import annotations

from pathlib import Path

from imggenhub import config
from imggenhub.run import lifecycle

DOCS = Path(__file__).resolve().parents[1] / "docs"
# file -> {the table's first characters: the function that makes the whole table}
TABLES = {DOCS / "lifecycle.md": {"| state | deploy |": lifecycle.table_markdown,
                                  "| code | meaning |": lifecycle.exit_table_markdown},
          DOCS / "tunables.md": {"| variable | default | meaning |": config.tunables_markdown}}


def main() -> None:
    for path, tables in TABLES.items():
        text = path.read_text(encoding="utf-8")
        for head, make in tables.items():
            start = text.index(head)
            end = text.find("\n\n", start)
            text = text[:start] + make() + (text[end:] if end != -1 else "\n")
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
