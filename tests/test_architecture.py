"""The import graph of `instructmt/` goes one way (docs/architecture.md): no cycle, no upward import.

Read from the source with `ast` (nothing is imported), so the check is fast and sees imports inside
functions too: an import moved into a function to dodge a cycle is still an edge here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "instructmt"

# Lowest layer first; a module may import its own layer's modules and any lower layer's, never a higher one.
LAYERS: list[set[str]] = [
    {"errors", "registry", "catalog", "config", "cache_paths", "rundir", "templates", "io_safety", "safe_yaml", "validation",
     "__init__"},
    {"tasks"},
    {"prompts"},
    {"data"},
    {"models", "adapters", "retrieval"},
    {"training"},
    {"evaluation", "hub"},
    {"workflows"},
    {"commands", "cli", "__main__"},
]

# Known edges that break the rule, each to be removed; the test fails when one is fixed but still listed.
ALLOWED_UPWARD: set[tuple[str, str]] = set()
ALLOWED_CYCLES: list[set[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the instructmt modules it imports (anywhere in the file)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def resolve(name: str) -> str | None:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in mods else None

    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                # `from pkg import submodule` is an edge to the submodule, not to pkg/__init__.
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
            for t in targets:
                if t.startswith("instructmt"):
                    r = resolve(t)
                    if r and r != mod:
                        graph[mod].add(r)
    return graph


def layer_of(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{mod}: its folder {top!r} is in no layer; add it to LAYERS and docs/architecture.md")


def upward_imports(graph) -> set[tuple[str, str]]:
    return {(a, b) for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a)}


def cycles(graph) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_folder_has_a_layer():
    for mod in _modules():
        layer_of(mod)


def test_no_upward_import():
    found = upward_imports(import_graph())
    new = sorted(found - ALLOWED_UPWARD)
    assert not new, "upward imports (see docs/architecture.md):\n" + "\n".join(f"  {a} -> {b}" for a, b in new)
    fixed = sorted(ALLOWED_UPWARD - found)
    assert not fixed, "fixed; remove from ALLOWED_UPWARD:\n" + "\n".join(f"  {a} -> {b}" for a, b in fixed)


def test_no_import_cycle():
    found = cycles(import_graph())
    new = [c for c in found if c not in ALLOWED_CYCLES]
    assert not new, "import cycles:\n" + "\n".join("  " + " <-> ".join(sorted(c)) for c in new)
    fixed = [c for c in ALLOWED_CYCLES if c not in found]
    assert not fixed, f"fixed; remove from ALLOWED_CYCLES: {fixed}"


def test_the_checker_sees_a_violation(tmp_path):
    """The graph reader itself: an upward edge and a cycle in a toy graph are both reported."""
    toy = {"instructmt.tasks.a": {"instructmt.training.t"}, "instructmt.training.t": {"instructmt.tasks.a"}}
    assert upward_imports(toy) == {("instructmt.tasks.a", "instructmt.training.t")}
    assert cycles(toy) == [set(toy)]
