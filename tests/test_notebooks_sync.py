"""Every nbs/*.py (percent format, the source of truth) has an .ipynb pair with the same cells."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

NBS = Path(__file__).resolve().parent.parent / "nbs"
PY_FILES = sorted(NBS.glob("*.py"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells if c.source.strip()]


def test_there_are_notebooks():
    assert PY_FILES, "no notebooks found in nbs/"


@pytest.mark.parametrize("py", PY_FILES, ids=[p.name for p in PY_FILES])
def test_pair_in_sync(py: Path):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{py.name} has no paired {ipynb.name}: run `make sync-nbs`"
    a = _cells(jupytext.read(py))
    b = _cells(jupytext.read(ipynb))
    assert a == b, f"{py.name} and {ipynb.name} differ: run `make sync-nbs` (jupytext --sync)"


@pytest.mark.parametrize("py", PY_FILES, ids=[p.name for p in PY_FILES])
def test_committed_ipynb_has_no_outputs(py: Path):
    nb = jupytext.read(py.with_suffix(".ipynb"))
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.get("outputs"), f"{py.with_suffix('.ipynb').name} carries outputs: clear them before committing"
