"""The README stays a front door, and every relative link in it and in docs/ leads to a
file (and, with a #fragment, to a heading there)."""

from __future__ import annotations

import re
from pathlib import Path

from imggenhub.run.lifecycle import Exit

from .conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside code: fenced blocks and inline code hold paths, not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    heads = re.findall(r"^#+ +(.+?) *$", prose(page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: ...


def test_the_docs_folder_is_there():
    assert len(PAGES) > 5


def test_every_relative_link_leads_to_a_file_and_heading():
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.is_file():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []


def test_the_readme_links_every_doc():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(REPO / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) < 250


def test_the_readme_says_every_exit_code_and_links_the_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit codes\n", 1)[1].split("\n#", 1)[0]
    assert {int(c) for c in re.findall(r"`(\d+)`", section)} == {int(c) for c in Exit}
    assert "(docs/lifecycle.md#exit-codes)" in section


def test_the_architecture_page_names_every_module_and_nothing_that_is_gone():
    """docs/architecture.md's table: each path it names exists, and each package and
    top-level module of imggenhub is named (the picture stays true as the tree changes)."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(imggenhub/[\w/]+(?:\.py)?/?)`", text))
    assert named and all((REPO / n).exists() for n in named), \
        [n for n in named if not (REPO / n).exists()]
    package = REPO / "imggenhub"
    parts = [p for p in package.iterdir() if (p.is_dir() and (p / "__init__.py").exists())
             or (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))]
    mentioned = " ".join(named) + text
    missing = [p.name for p in parts if f"imggenhub/{p.name}" not in mentioned
               and f"`{p.name}`" not in text and f"{p.name}`" not in text]
    assert missing == []


# --- the flags: the commands' own options are the one table; help and docs are checked ---

def _commands() -> dict[str, set[str]]:
    """Each command's flags, as click parses them (both halves of --x/--no-x)."""
    import typer.main

    from imggenhub.cli import app

    group = typer.main.get_command(app)
    return {name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)
                   if o.startswith("--")} | {"--help"}
            for name, cmd in group.commands.items()}


def _command_lines(text: str) -> list[str]:
    """Every 'imggenhub CMD ...' the page shows: in code blocks, a line each; in prose, an
    inline code span each."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line for block in blocks for line in block.splitlines()]
    lines += re.findall(r"`([^`\n]*)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    return [m for line in lines for m in re.findall(r"imggenhub ([a-z]+[^#|;&]*)", line)]


def test_every_flag_the_docs_give_a_command_is_one_it_takes():
    commands = _commands()
    wrong = []
    for page in PAGES:
        for shown in _command_lines(page.read_text(encoding="utf-8")):
            name, *words = shown.split()
            if name not in commands:
                continue  # 'imggenhub' as a word, or the package's folder
            for word in words:
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", word):
                    if flag not in commands[name]:
                        wrong.append(f"{page.name}: imggenhub {name} {flag}")
    assert wrong == []


def test_the_kernel_flags_named_for_commands_are_theirs():
    text = (REPO / "docs" / "kaggle.md").read_text(encoding="utf-8")
    said = re.search(r"Kernel flags \(on (.*?)\): (.*?)\. ", text, flags=re.S)
    names = re.findall(r"`([a-z]+)`", said.group(1))
    flags = [f for span in re.findall(r"`([^`]*)`", said.group(2)) for f in re.findall(r"--[a-z-]+", span)]
    commands = _commands()
    assert len(names) >= 3 and "--timeout-hours" in flags
    assert [(n, f) for n in names for f in flags if f not in commands[n]] == []


def test_every_command_answers_in_json():
    assert [name for name, flags in _commands().items() if "--json" not in flags] == []


def test_the_sweepable_parameters_are_one_list_in_the_help_and_the_docs():
    import typer.main

    from imggenhub.cli import app
    from imggenhub.job.axes import SHOWN, SWEEPABLE

    sweep = next(p for p in typer.main.get_command(app).commands["generate"].params
                 if p.name == "sweep")
    help_names = sweep.help.split("(")[-1].rstrip(").").split(", ")
    assert help_names == [SHOWN.get(n, n) for n in SWEEPABLE]
    usage = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")
    listed = re.search(r"repeatable, over (.*?), makes every prompt", usage, flags=re.S).group(1)
    assert set(re.findall(r"`([a-z][a-z-]*)`", listed)) == set(SWEEPABLE)
