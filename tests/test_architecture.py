"""Imports point one way: ``ranking <- compression``, ``ranking <- server <- {compression.verify,
loadtest}``; and no two modules import each other, directly or around a loop.

Read from the source with ``ast`` (nothing is imported), so a violation is found even in a
function-level import that no other test happens to run.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ranking", "compression", "server", "loadtest")

# package -> packages it may import (besides itself); modules listed in EXCEPTIONS may also
# import the packages given there.
ALLOWED = {
    "ranking": set(),
    "server": {"ranking"},
    "compression": {"ranking"},
    "loadtest": {"ranking", "server"},
}
EXCEPTIONS = {"compression.verify": {"server"}}  # the serving check starts the real server


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def resolve(target: str, known: set[str]) -> str | None:
    """The project module an import names: the longest known prefix (``from a.b import c``
    names ``a.b.c`` if that is a module, else ``a.b``)."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in known:
            return name
    return None


def imports(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """Project modules imported anywhere in the file (top level, functions, TYPE_CHECKING
    blocks), each with the first line that imports it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            mod = resolve(t, known)
            if mod is not None and mod != name:
                found.setdefault(mod, node.lineno)
    return found


def graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    mods = modules()
    known = set(mods)
    return {m: imports(m, p, known) for m, p in mods.items()}, mods


def test_the_scan_finds_every_kind_of_import(tmp_path):
    src = tmp_path / "pkg" / "sub" / "mod.py"
    src.parent.mkdir(parents=True)
    src.write_text(
        "import pkg.a\n"
        "from pkg import b\n"
        "from . import c\n"
        "from ..d import name\n"
        "def f():\n"
        "    from pkg.e import thing\n"
        "import os\n"
    )
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.d", "pkg.e", "pkg.sub.mod"}
    found = imports("pkg.sub.mod", src, known)
    assert found == {"pkg.a": 1, "pkg.b": 2, "pkg.sub.c": 3, "pkg.d": 4, "pkg.e": 6}
    assert {m.split(".")[0] for m in modules()} == set(PACKAGES)


def test_packages_import_only_in_the_allowed_direction():
    edges, mods = graph()
    bad = []
    for src, targets in edges.items():
        pkg = src.split(".")[0]
        allowed = {pkg} | ALLOWED[pkg] | EXCEPTIONS.get(src, set())
        for dst, line in sorted(targets.items()):
            if dst.split(".")[0] not in allowed:
                where = mods[src].relative_to(REPO)
                bad.append(f"{where}:{line}: {src} imports {dst}")
    assert not bad, "imports against ranking <- compression, ranking <- server <- " + (
        "{compression.verify, loadtest}:\n" + "\n".join(bad)
    )


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the module graph as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def find_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every cycle that remains after breaking the ones already found (one edge each), so a
    single run lists them all."""
    edges = {src: dict(targets) for src, targets in edges.items()}
    cycles = []
    while cycle := find_cycle(edges):
        cycles.append(cycle)
        del edges[cycle[-2]][cycle[-1]]
    return cycles


def test_find_cycles_reports_each_path():
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) == []
    loops = {"a": {"b": 1}, "b": {"c": 1}, "c": {"b": 1}, "x": {"y": 1}, "y": {"x": 1}}
    assert find_cycles(loops) == [["b", "c", "b"], ["x", "y", "x"]]


def test_no_import_cycle_between_modules():
    edges, mods = graph()
    # a package's __init__ importing its own submodules is how a package exports them: those
    # edges are left out (a submodule importing its package's __init__ back still counts)
    edges = {
        src: {dst: line for dst, line in targets.items() if not dst.startswith(src + ".")}
        for src, targets in edges.items()
    }
    report = []
    for cycle in find_cycles(edges):
        report.append("import cycle " + " -> ".join(cycle) + ":")
        report += [
            f"  {mods[a].relative_to(REPO)}:{edges[a][b]}: {a} imports {b}"
            for a, b in zip(cycle, cycle[1:], strict=False)
        ]
    assert not report, "\n".join(report)
