"""The package shows the pipeline: imports point only down it, and nothing imports in a circle.

Read from the code's own syntax trees (no import is executed). The stages, lowest first;
a module may import from its own package or from a lower stage, never from its own stage's
sibling or from a higher one:

    core < model < behavior < diffs < config < captures < bases, stats < v7 < v8, cross_adapter
        < bench, analysis, steering, monitor < grid

Imports inside functions hide a dependency: every ``ws`` import, and every import of a
required package, sits at the top of its module (:data:`LATE_IMPORTS` lists the few
optional or late-bound ones that may not).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WS = ROOT / "ws"

#: stage of each top-level part of ``ws`` (a package or a module), lowest first
STAGES: dict[str, int] = {
    "core": 0,
    "model": 1,
    "behavior": 2,
    "diffs": 3,
    "config": 4,
    "captures": 5,
    "bases": 6,
    "stats": 6,
    "v7": 7,
    "v8": 8,
    "cross_adapter": 8,
    "bench": 9,
    "analysis": 9,
    "steering": 9,
    "monitor": 9,
    "grid": 10,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def ws_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(WS.rglob("*.py"))}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted import name lands in (``ws.stats.ranked`` → ``ws.stats``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported ws module, line, inside a function)`` for every ``ws`` import of a file."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_fn: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{a.name}" for a in child.names]
            for n in names:
                if n == "ws" or n.startswith("ws."):
                    target = _resolve(n, modules)
                    if target and target != "ws":
                        found.append((target, child.lineno, in_fn))
            visit(child, fn)

    visit(ast.parse(path.read_text()), False)
    return found


def stage_of(module: str) -> tuple[str, int]:
    part = module.split(".")[1]
    if part not in STAGES:
        raise AssertionError(f"{module}: ws.{part} is in no stage; add it to STAGES in {Path(__file__).name}")
    return part, STAGES[part]


def import_graph() -> dict[str, set[str]]:
    modules = ws_modules()
    return {m: {t for t, _, _ in imports_of(p, modules) if t != m} for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_imports_point_down_the_pipeline():
    modules = ws_modules()
    bad = []
    for m, p in modules.items():
        if m == "ws":
            continue
        part, rank = stage_of(m)
        for t, line, _ in imports_of(p, modules):
            t_part, t_rank = stage_of(t)
            if t_part != part and t_rank >= rank:
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {t} (stage {t_part} is not below {part})")
    assert not bad, "\n".join(bad)


def test_no_ws_imports_inside_functions():
    modules = ws_modules()
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {t} inside a function"
        for m, p in modules.items()
        for t, line, in_fn in imports_of(p, modules)
        if in_fn
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("pkg", sorted(k for k in STAGES if (WS / k).is_dir()))
def test_every_package_says_what_it_holds(pkg):
    doc = ast.get_docstring(ast.parse((WS / pkg / "__init__.py").read_text())) or ""
    assert len(doc.split()) >= 12, f"ws/{pkg}/__init__.py needs a docstring: what it holds and what it may import"
    assert "import" in doc, f"ws/{pkg}/__init__.py should say what it may import"


def test_every_top_level_part_has_a_stage():
    parts = {p.name.removesuffix(".py") for p in WS.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts - {"__init__"} <= set(STAGES), parts - set(STAGES)


#: What may still be imported inside a function, and why: IPython and PyYAML are optional
#: (a notebook kernel; YAML behaviour files), ``fcntl`` exists on POSIX only, and matplotlib's
#: pyplot picks its backend when first imported (the notebook's kernel must have chosen first).
LATE_IMPORTS = {"IPython", "yaml", "fcntl", "matplotlib"}


def _late_imports(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` of every import inside a function of ``path``."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, in_fn: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if in_fn and isinstance(child, ast.Import | ast.ImportFrom):
                mod = child.module if isinstance(child, ast.ImportFrom) else child.names[0].name
                out.append((mod or "", child.lineno))
            visit(child, fn)

    visit(ast.parse(path.read_text()), False)
    return out


def test_only_optional_dependencies_are_imported_inside_functions():
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {mod} inside a function"
        for p in sorted(WS.rglob("*.py"))
        for mod, line in _late_imports(p)
        if mod.split(".")[0] not in LATE_IMPORTS
    ]
    assert not bad, "\n".join(bad)
