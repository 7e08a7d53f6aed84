"""Each domain fact has one home (ws.model.anatomy, ws.core.columns, ws.core.caveats): a second
definition anywhere else in ``ws/`` fails here, naming the file and line.

Checked: the projections of a block (every literal tuple / list / set of their names), the
residual writers (their weight names, their column tags mapped to anything), and the
thresholds of ``ws.core.caveats`` written as a function's default value.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ws.core import caveats
from ws.core.columns import WRITER_TAGS
from ws.model.anatomy import ATTN_PROJ, MLP_PROJ, PROJECTIONS, READERS, WRITERS, param_in_block

WS = Path(__file__).resolve().parents[1] / "ws"
HOMES = {"model/anatomy.py", "core/columns.py", "core/caveats.py"}
#: name groups that are one fact each (an adapter's own target list is another fact: IA3's)
GROUPS = [frozenset(g) for g in (ATTN_PROJ, MLP_PROJ, PROJECTIONS, READERS, WRITERS.values(), WRITER_TAGS)]
WRITER_PARAMS = {param_in_block(p) for p in WRITERS.values()}
#: parameter names whose default is a threshold of ws.core.caveats
THRESHOLD_PARAMS = {
    "z_max",
    "planted_min_pct",
    "min_inside",
    "level",
    "orth_tol",
    "tol",
    "fdr",
    "alpha",
    "inside_min",
    "outside_max",
}
THRESHOLD_VALUES = {v for k, v in vars(caveats).items() if k.isupper() and isinstance(v, float)}


def _modules():
    for p in sorted(WS.rglob("*.py")):
        rel = p.relative_to(WS).as_posix()
        if rel not in HOMES:
            yield rel, ast.parse(p.read_text(), filename=str(p))


def _strings(node) -> list[str] | None:
    elts = getattr(node, "elts", None)
    if elts and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elts):
        return [e.value for e in elts]
    return None


def _defaults(fn) -> list[tuple[str, ast.expr]]:
    a = fn.args
    pos = [*a.posonlyargs, *a.args]
    out = list(zip([x.arg for x in pos[len(pos) - len(a.defaults) :]], a.defaults, strict=True))
    return out + [(x.arg, d) for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None]


def second_definitions() -> list[str]:
    found = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            where = f"ws/{rel}:{getattr(node, 'lineno', '?')}"
            names = _strings(node) if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else None
            if names and len(names) >= 2 and frozenset(names) in GROUPS:
                found.append(f"{where}: {names} (ws.model.anatomy / ws.core.columns)")
            if isinstance(node, ast.Dict) and {k.value for k in node.keys if isinstance(k, ast.Constant)} >= set(WRITER_TAGS):
                found.append(f"{where}: a dict keyed by the writer tags (ws.model.anatomy.WRITERS)")
            if isinstance(node, ast.Constant) and node.value in WRITER_PARAMS:
                found.append(f"{where}: {node.value!r} (ws.model.anatomy.param_in_block)")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg, d in _defaults(node):
                    if arg in THRESHOLD_PARAMS and isinstance(d, ast.Constant) and d.value in THRESHOLD_VALUES:
                        found.append(f"{where}: {arg}={d.value!r} (a threshold of ws.core.caveats)")
    return found


def test_each_domain_fact_is_defined_once():
    assert second_definitions() == []


@pytest.mark.parametrize(
    "src",
    [
        'TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")',
        'W = ["o_proj", "down_proj"]',
        'NAMES = {"oproj": "o", "downproj": "down"}',
        'KEY = "self_attn.o_proj.weight"',
        "def f(x, z_max=4.0): ...",
        "def g(x, level=0.95): ...",
    ],
)
def test_the_check_catches_a_second_definition(tmp_path, monkeypatch, src):
    """A module holding one second definition is caught (the check itself has a known answer)."""
    fake = tmp_path / "ws"
    fake.mkdir()
    (fake / "extra.py").write_text(src + "\n")
    monkeypatch.setattr(__import__(__name__), "WS", fake)
    assert len(second_definitions()) == 1


def test_the_table_order_and_numbers_are_registry_data():
    """Every built-in candidate is in the table order, once, in it; the contract's numbers are
    positions in SPEC_ORDER (1–42), and the registry follows the order whatever the import order."""
    from ws.bases import ADAPTER_FAMILY, CEILINGS, REGISTRY, SELF_TESTS, SPEC_CANDIDATES, registry
    from ws.bases.order import AFTER_SPEC, SPEC_ORDER, TABLE_ORDER, spec_number

    assert len(SPEC_ORDER) == 42 and len(set(TABLE_ORDER)) == len(TABLE_ORDER)
    assert list(REGISTRY)[: len(TABLE_ORDER)] == list(TABLE_ORDER)
    assert SPEC_CANDIDATES == list(SPEC_ORDER) and [*CEILINGS, *ADAPTER_FAMILY, *SELF_TESTS] == list(AFTER_SPEC)
    assert spec_number("lm_head_read") == 1 and spec_number("WNR_union_TaskDiff") == 42 and spec_number("churn") == 39
    assert spec_number("random_orthonormal") is None
    saved = dict(REGISTRY)
    try:
        shuffled = list(reversed(TABLE_ORDER))
        registry.put_in_order(shuffled)
        assert list(REGISTRY)[: len(shuffled)] == shuffled
        registry.put_in_order(TABLE_ORDER)
        assert list(REGISTRY) == list(saved)
        with pytest.raises(ValueError, match="not registered: \\['no_such'\\]"):
            registry.put_in_order([*TABLE_ORDER, "no_such"])
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)


#: what a researcher calls from a notebook: each documents its arguments and what it returns in
#: one style (``Args:`` naming every argument is the linter's D417; the sections are checked here)
PUBLIC_API = [
    ("ws.analysis", "analyse"),
    ("ws.model.load", "load_model"),
    ("ws.diffs.store", "load_diff"),
    ("ws.model.vectors", "read_vectors"),
    ("ws.behavior.files", "get_behavior"),
    ("ws.diffs.imports", "adapter_delta"),
    ("ws.diffs.imports", "pair_diff"),
    ("ws.diffs.imports", "checkpoint_diff"),
    ("ws.diffs.export", "export_diff"),
    ("ws.monitor", "monitor"),
    ("ws.monitor", "read_subspace"),
    ("ws.grid.runner", "run_grid"),
]


@pytest.mark.parametrize(("module", "name"), PUBLIC_API)
def test_the_public_api_documents_its_arguments_and_returns(module, name):
    import importlib
    import inspect

    fn = getattr(importlib.import_module(module), name)
    doc = inspect.getdoc(fn) or ""
    assert "\nArgs:\n" in doc and "\nReturns:\n" in doc, f"{module}.{name}: give it Args: and Returns: sections"
    args = doc.split("\nArgs:\n", 1)[1].split("\n\n", 1)[0]
    for p in inspect.signature(fn).parameters.values():
        key = f"**{p.name}" if p.kind is p.VAR_KEYWORD else p.name
        assert f"    {key}:" in args, f"{module}.{name}: argument {p.name!r} is not under Args:"


def test_the_v7_contract_page_is_current_and_in_the_repository():
    """docs/v7-contract.md holds the contract in the project's own words; its tables are the
    code's (regenerate with `python -m ws.v7.contract`), and no doc leans on a file outside."""
    from ws.v7 import contract

    root = WS.parent
    page = (root / contract.PAGE).read_text()
    assert contract.render(page) == page, "docs/v7-contract.md is stale: run `python -m ws.v7.contract`"
    assert "`WNR_union_TaskDiff`" in page and "| 42 |" in page and "`v7_summary_pct.tsv`" in page
    for p in [root / "README.md", *root.glob("docs/*.md"), *root.glob("nbs/*.py")]:
        assert "SPEC-v7" not in p.read_text(), f"{p.name} cites a file a clone does not have"
