"""Shared fixtures: real models, loaded once per session."""

from __future__ import annotations

import fcntl
import functools
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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
#: the test modules that read a shared run, in the order they are sent to the workers: the first
#: two start the two longest runs side by side (the smoke grid, the sweeps), the next one the third
SHARED_FIRST = (
    "test_grid.py",
    "test_v7_smoke.py",
    "test_cross_adapter.py",
    "test_v8_smoke.py",
    "test_steering.py",
    "test_notebooks_jupyter.py",
    "test_make_targets.py",
    "test_analysis.py",
    "test_monitor.py",
    "test_vector_candidates.py",
)


@functools.cache
def _shared_modules() -> frozenset[str]:
    """The names of the test modules whose text names a shared run."""
    here = Path(__file__).parent
    return frozenset(p.name for p in here.glob("test_*.py") if any(f in p.read_text(encoding="utf-8") for f in SHARED_RUNS))


def pytest_collection_modifyitems(config, items):
    """The modules that read a shared run first, in ``SHARED_FIRST``'s order (modules not listed there
    next, by name), then every other test in collection order."""
    shared = _shared_modules()
    rank = {name: i for i, name in enumerate(SHARED_FIRST)}

    def key(item) -> tuple[int, int, str]:
        name = item.path.name
        return (0, rank.get(name, len(rank)), name) if name in shared else (1, 0, "")

    items.sort(key=key)  # stable: each module keeps its tests' order


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown, and not called, without it
def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n`` (``make test``): a test module that reads a shared run is one unit of work
    (its module fixtures are made once), sent first in the collection's order (above); every other
    test is its own unit, sent to whichever worker is free. Each shared run is made once for the
    whole session, by the first worker that asks for it (``_made_once``). (The modules are found by
    their text: a new test that reads a shared run in another module costs time, never a result.)"""
    from xdist.scheduler import LoadScopeScheduling

    shared = _shared_modules()
    config.option.loadscopereorder = False  # keep the collection's order, not the largest module first

    class SharedRunModulesFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).name in shared else nodeid

    return SharedRunModulesFirst(config, log)


T = TypeVar("T")


def _made_once(tmp_path_factory, name: str, make: Callable[[Path], T]) -> T:
    """``make(folder)`` once per test session, whichever worker process asks first: the others wait
    for it and read the same result back (pickled beside the folder). A failed run leaves no result,
    so the next worker to ask runs it again (in a fresh folder) and reports its own failure."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the controller's folder, above every worker's own
    done = root / f"{name}.pickle"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when ``make`` fails
        if done.exists():
            return pickle.loads(done.read_bytes())
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        result = make(folder)
        part = done.with_suffix(".part")
        part.write_bytes(pickle.dumps(result))
        part.replace(done)
        return result


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

    def make(base: Path) -> SweepRuns:
        v7 = execute_notebook("hypothesis_sweep_v7", base)
        _no_errors("hypothesis_sweep_v7", v7)
        v8 = execute_notebook("hypothesis_sweep_v8", base)
        _no_errors("hypothesis_sweep_v8", v8)
        return SweepRuns(base, v7, v8)

    return _made_once(tmp_path_factory, "smoke_sweeps", make)


@pytest.fixture(scope="session")
def smoke_steering(tmp_path_factory, smoke_sweeps):
    """The steering head-to-head notebook as Jupyter runs it (once per session), in a copy of the smoke
    sweeps' folder: it reads their diff and their v8 run, and the sweeps' own folder is only read
    while the tests of other workers read it."""
    from smoke_runs import NotebookRun, execute_notebook

    def make(base: Path) -> NotebookRun:
        for part in ("out", "cache"):
            if (smoke_sweeps.base / part).exists():
                shutil.copytree(smoke_sweeps.base / part, base / part)
        nb = execute_notebook("steering_head_to_head", base)
        _no_errors("steering_head_to_head", nb)
        return NotebookRun(base, nb)

    return _made_once(tmp_path_factory, "smoke_steering", make)


@pytest.fixture(scope="session")
def smoke_cross_refusal(tmp_path_factory, nbs_tree_before):
    """The cross-adapter notebook on the built-in refusal behaviour, lora and bidir (once per session)."""
    from smoke_runs import NotebookRun, execute_notebook

    def make(base: Path) -> NotebookRun:
        nb = execute_notebook("cross_adapter", base, WS_BEHAVIOR="refusal", WS_ADAPTERS="lora,bidir")
        _no_errors("cross_adapter (refusal)", nb)
        return NotebookRun(base, nb)

    return _made_once(tmp_path_factory, "smoke_cross_refusal", make)


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory, nbs_tree_before):
    """The smoke grid (tests/smoke_runs.py): killed after its first cell, then run again to the
    end through ``nbs/grid.ipynb`` as Jupyter runs it (once per session)."""
    from smoke_runs import GridRuns, execute_notebook, run_grid_until, write_smoke_grid

    def make(base: Path) -> GridRuns:
        grid = write_smoke_grid(base)
        v7 = base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v7"
        run_grid_until(base, grid, v7 / ".ws-grid-cell.json")
        after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in v7.iterdir() if p.is_file()}
        v8 = v7.parent / "v8"
        v8_files = sorted(p.name for p in v8.iterdir() if p.is_file() and not p.name.startswith(".")) if v8.exists() else []
        nb = execute_notebook("grid", base, WS_GRID=str(grid), WS_MODEL=None, WS_RUN_DIR=str(base))
        _no_errors("grid", nb)
        return GridRuns(base, grid, nb, after, v8_files)

    return _made_once(tmp_path_factory, "smoke_grid", make)
