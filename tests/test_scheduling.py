"""The units of work of ``make test`` (tests/scheduling.py), on a module of known answer and
on this suite's own modules."""

from __future__ import annotations

from pathlib import Path

from scheduling import SHARED_UNIT, module_units, unit_of

SOURCE = """
import pytest

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return 1

@pytest.fixture(scope="module")
def on_top(built):
    return 2

@pytest.fixture
def reads_the_run(smoke_sweeps):
    return smoke_sweeps.base

@pytest.fixture(scope="module")
def other():
    return 3

def test_a(on_top): ...
def test_b(built, tmp_path): ...
def test_c(reads_the_run): ...
def test_d(smoke_grid, built): ...
def test_e(tmp_path): ...
def test_f(other): ...
def helper(smoke_sweeps): ...
"""


def test_a_module_of_known_answer():
    u = module_units(SOURCE)
    assert u == {
        "test_a": "test_a+",
        "test_b": "test_a+",
        "test_c": SHARED_UNIT,
        "test_d": SHARED_UNIT,
        "test_e": "",
        "test_f": "test_f+",
    }


def test_this_suites_modules(tmp_path):
    root, units = Path(__file__).resolve().parent.parent, {}
    assert unit_of("tests/test_v7_smoke.py::test_every_file_of_the_set_exists_and_is_not_empty", units, root) == SHARED_UNIT
    assert unit_of("tests/test_notebooks_jupyter.py::test_no_cell_fails[grid.ipynb]", units, root) == SHARED_UNIT
    assert unit_of("tests/test_grid.py::test_make_grid_on_a_finished_grid_does_nothing_again", units, root) == SHARED_UNIT
    alone = "tests/test_v7_smoke.py::test_spec_names_count"
    assert unit_of(alone, units, root) == alone
    made = {
        unit_of(f"tests/test_make_targets.py::{t}", units, root)
        for t in ("test_make_diff_builds_the_diff_and_keeps_it", "test_make_export_writes_a_peft_folder_peft_loads")
    }
    assert len(made) == 1 and SHARED_UNIT not in made  # one `make diff` for both, on any worker
    assert unit_of("tests/test_nothing_here.py::test_x", units, root) == "tests/test_nothing_here.py::test_x"
