"""How ``make test`` (``pytest -n``) cuts the tests into units of work (tests/conftest.py).

A unit runs whole on one worker. Read from a test module's source, without importing it:

- every test that needs a shared run (:data:`SHARED_RUNS`), directly or through fixtures of its
  module, is in the one unit ``"shared-runs"``, so each shared run is made once, not once per
  worker;
- tests that share a module-scoped fixture of their module are one unit (the fixture is built
  once), named by the module and the first such test;
- every other test is a unit of its own, sent to whichever worker is free.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

SHARED_UNIT = "shared-runs"
#: the session fixtures that each cost notebook runs (tests/conftest.py)
SHARED_RUNS = ("smoke_sweeps", "smoke_steering", "smoke_cross_refusal", "smoke_grid")


def _fixture_scope(fn: ast.FunctionDef) -> str | None:
    """``"function"``, ``"module"``, … when ``fn`` is a pytest fixture, else None."""
    for dec in fn.decorator_list:
        call = dec if isinstance(dec, ast.Call) else None
        target = call.func if call else dec
        if ast.unparse(target) in ("pytest.fixture", "fixture"):
            for kw in call.keywords if call else ():
                if kw.arg == "scope" and isinstance(kw.value, ast.Constant):
                    return str(kw.value.value)
            return "function"
    return None


def _params(fn: ast.FunctionDef) -> set[str]:
    return {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}


def module_units(source: str, shared: Iterable[str] = SHARED_RUNS) -> dict[str, str]:
    """Test function name -> unit key (``SHARED_UNIT``, ``"<first test>+"`` for a group sharing a
    module-scoped fixture, or ``""``: a unit of its own) for one module's ``source``."""
    funcs = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    fixtures = {f.name: (_fixture_scope(f), _params(f)) for f in funcs if _fixture_scope(f)}
    shared = set(shared)

    def closure(names: set[str]) -> set[str]:
        seen, todo = set(), list(names)
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += list(fixtures.get(n, (None, set()))[1])
        return seen

    tests = {f.name: closure(_params(f)) for f in funcs if f.name.startswith("test") and f.name not in fixtures}
    units: dict[str, str] = {}
    owner: dict[str, str] = {}  # module-scoped fixture -> the first test that uses it
    for name, uses in tests.items():
        if uses & shared:
            units[name] = SHARED_UNIT
            continue
        mod = sorted(n for n in uses if fixtures.get(n, ("", set()))[0] in ("module", "package"))
        first = next((owner[m] for m in mod if m in owner), name)
        for m in mod:
            owner.setdefault(m, first)
        units[name] = f"{first}+" if mod else ""
    return units


def unit_of(nodeid: str, units_by_file: dict[str, dict[str, str]], root: Path) -> str:
    """The unit of work of the test ``nodeid`` (``tests/test_x.py::test_y[param]``); its module's
    units are read once into ``units_by_file``."""
    file, _, rest = nodeid.partition("::")
    if file not in units_by_file:
        path = root / file
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        units_by_file[file] = module_units(text) if text else {}
    unit = units_by_file[file].get(rest.split("[", 1)[0].split("::")[-1], "")
    if unit == SHARED_UNIT:
        return unit
    return f"{file}::{unit}" if unit else nodeid
