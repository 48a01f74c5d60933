"""The house's floors: imggenhub's modules import one another one way only, with no circle,
counting imports made inside functions (a lazy import hides a circle, it does not remove it),
and the engine imports only the standard library at module level."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imggenhub"


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str], top_only: bool = False) -> set[str]:
    """The imggenhub modules ``name`` imports (anywhere in it, or at module level only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                base = ".".join(up[:len(up) - node.level + 1] + ([base] if base else []))
            # a submodule by name, else a name the package itself defines
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_imports_in_a_circle_lazy_imports_included():
    graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_imports_only_the_standard_library_at_module_level():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in (PACKAGE / "engine").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            outside = [n for n in names if n.split(".")[0] not in stdlib]
            assert not outside, f"{path.name} imports {outside} at module level"


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists the packages a non-editable install ships: a folder of modules
    missing there is missing from `pip install .` (the editable install would hide it)."""
    import re

    repo = Path(__file__).resolve().parents[1]
    block = re.search(r"^packages = \[(.*?)\]", (repo / "pyproject.toml").read_text(),
                      re.MULTILINE | re.DOTALL).group(1)
    listed = set(re.findall(r'"([\w.]+)"', block))
    found = {".".join(p.parent.relative_to(repo).parts)
             for p in (repo / "imggenhub").rglob("__init__.py") if "__pycache__" not in p.parts}
    assert found - {"imggenhub.notebooks"} <= listed, sorted(found - listed)
