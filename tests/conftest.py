"""Shared fixtures: real models, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
#: torch's threads in every process of the tests: the test process, and through the variables
#: below every process it starts (notebook kernels, ``make``, the grid's cells: the smoke grid asks
#: Ray for as many CPUs per cell). One count everywhere, because a float sum's order, and with it a
#: table's last digit, follows the thread count; under ``pytest -n`` (``make test``) each worker
#: gets its share of the cores, as more threads than cores make them wait on each other
#: (the variable ``TEST_THREADS`` sets the count; not a ``WS_*`` name, which the runs would refuse).
TEST_THREADS = int(os.environ.get("TEST_THREADS") or 0) or max(
    1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(TEST_THREADS)
torch.set_num_threads(TEST_THREADS)

#: the session fixtures that each cost notebook runs
SHARED_RUNS = ("smoke_sweeps", "smoke_steering", "smoke_cross_refusal", "smoke_grid")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown, and not called, without it
def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n`` (``make test``): every test module that names a shared run goes to one
    worker, as one unit of work sent first, so each shared run is made once, not once per worker;
    every other test is its own unit, sent to whichever worker is free. (The modules are found by
    their text: a new test that reads a shared run in another module costs time, never a result.)"""
    from xdist.scheduler import LoadScopeScheduling

    here = Path(__file__).parent
    shared = {p.name for p in here.glob("test_*.py") if any(f in p.read_text(encoding="utf-8") for f in SHARED_RUNS)}

    class SharedRunsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "shared-runs" if Path(nodeid.split("::", 1)[0]).name in shared else nodeid

    return SharedRunsTogether(config, log)


@pytest.fixture(scope="session")
def tiny_llama():
    from ws.model.load import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen3():
    from ws.model.load import load_model

    return load_model("tiny-qwen3")


@pytest.fixture(scope="session")
def smollm2():
    from ws.model.load import load_model

    return load_model("smollm2-135m")


# ----------------------------------------------------------------------------- shared smoke runs
@pytest.fixture(scope="session", autouse=True)
def nbs_tree_before() -> set[str]:
    """``nbs/`` as it was before the first test (autouse: taken before any notebook runs)."""
    from smoke_runs import nbs_tree

    return nbs_tree()


def _no_errors(name: str, nb) -> None:
    from smoke_runs import errors

    bad = errors(nb)
    if bad:
        pytest.fail(f"{name} failed: {bad[0].ename}: {bad[0].evalue}\n" + "\n".join(bad[0].traceback)[-4000:])


@pytest.fixture(scope="session")
def smoke_sweeps(tmp_path_factory, nbs_tree_before):
    """v7 then v8 in smoke mode, as a Jupyter user runs them, into one folder (once per session)."""
    from smoke_runs import SweepRuns, execute_notebook

    base = tmp_path_factory.mktemp("smoke_sweeps")
    v7 = execute_notebook("hypothesis_sweep_v7", base)
    _no_errors("hypothesis_sweep_v7", v7)
    v8 = execute_notebook("hypothesis_sweep_v8", base)
    _no_errors("hypothesis_sweep_v8", v8)
    return SweepRuns(base, v7, v8)


@pytest.fixture(scope="session")
def smoke_steering(smoke_sweeps):
    """The steering head-to-head notebook as Jupyter runs it, into the smoke sweeps' folder (it reads
    their diff and their v8 run; once per session)."""
    from smoke_runs import NotebookRun, execute_notebook

    nb = execute_notebook("steering_head_to_head", smoke_sweeps.base)
    _no_errors("steering_head_to_head", nb)
    return NotebookRun(smoke_sweeps.base, nb)


@pytest.fixture(scope="session")
def smoke_cross_refusal(tmp_path_factory, nbs_tree_before):
    """The cross-adapter notebook on the built-in refusal behaviour, lora and bidir (once per session)."""
    from smoke_runs import NotebookRun, execute_notebook

    base = tmp_path_factory.mktemp("smoke_cross_refusal")
    nb = execute_notebook("cross_adapter", base, WS_BEHAVIOR="refusal", WS_ADAPTERS="lora,bidir")
    _no_errors("cross_adapter (refusal)", nb)
    return NotebookRun(base, nb)


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory, nbs_tree_before):
    """The smoke grid (tests/smoke_runs.py): killed after its first cell, then run again to the
    end through ``nbs/grid.ipynb`` as Jupyter runs it (once per session)."""
    from smoke_runs import GridRuns, execute_notebook, run_grid_until, write_smoke_grid

    base = tmp_path_factory.mktemp("smoke_grid")
    grid = write_smoke_grid(base)
    v7 = base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v7"
    run_grid_until(base, grid, v7 / ".ws-grid-cell.json")
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in v7.iterdir() if p.is_file()}
    v8 = v7.parent / "v8"
    v8_files = sorted(p.name for p in v8.iterdir() if p.is_file() and not p.name.startswith(".")) if v8.exists() else []
    nb = execute_notebook("grid", base, WS_GRID=str(grid), WS_MODEL=None, WS_RUN_DIR=str(base))
    _no_errors("grid", nb)
    return GridRuns(base, grid, nb, after, v8_files)
