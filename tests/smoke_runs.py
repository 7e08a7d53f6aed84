"""Notebooks executed the way a Jupyter user runs them, once per test session.

The committed ``nbs/*.ipynb`` goes through nbclient with the kernel its metadata names and
the kernel's working directory set to ``nbs/``, in smoke mode (tiny random model), with
``WS_OUT``, ``WS_CACHE`` and ``WS_LOGS`` in a temporary folder. The shared runs (the v7 and
v8 sweeps into one folder, the cross-adapter comparison on ``refusal``) are fixtures of
``conftest.py``: the end-to-end tests of v7, v8, the cross-adapter comparison and the
Jupyter tests all read the same runs instead of each making its own. The ``.py`` files as
``make sweep`` runs them (``jupytext --execute``) are run by the tests that compare a second
run against these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nbformat
from smoke_env import smoke_env

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


def nbs_tree() -> set[str]:
    """Every path under ``nbs/`` (a run must write nothing there)."""
    return {str(p.relative_to(NBS)) for p in NBS.rglob("*")}


def execute_notebook(name: str, base: Path, **extra: str | None) -> nbformat.NotebookNode:
    """Run ``nbs/<name>.ipynb`` as Jupyter does (errors kept in the outputs, not raised)."""
    from nbclient import NotebookClient

    env = smoke_env(base)
    env.update({"WS_MODEL": "tiny-llama", "WS_LOG_TERMINAL": "0", **extra})
    env = {k: v for k, v in env.items() if v is not None}  # a None in ``extra`` unsets the variable
    # the kernel imports this checkout's `ws` (as the editable install of `make setup` does)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    nb = nbformat.read(NBS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=900, allow_errors=True, resources={"metadata": {"path": str(NBS)}})
    client.execute(env=env)
    return nb


def errors(nb: nbformat.NotebookNode) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


@dataclass
class SweepRuns:
    """The v7 notebook, then the v8 notebook, into one folder (v8 reuses v7's diff and cache)."""

    base: Path
    v7: nbformat.NotebookNode
    v8: nbformat.NotebookNode


@dataclass
class NotebookRun:
    base: Path
    nb: nbformat.NotebookNode


# ----------------------------------------------------------------------------- the grid
#: the smoke grid: one real model and one that cannot load, the built-in behaviour and a bad
#: behaviour file, one adapter, v7 and v8 (8 cells: 2 run, 1 fails at work, 1 is skipped
#: after it, 4 cannot run at all)
SMOKE_GRID = """\
name: smoke
behaviors: [sycophancy, bad_behavior.json]
adapters: [lora]
seeds: [0]
models: [tiny-llama, no-such-org/no-such-model]
sweeps: [v7, v8]
"""


@dataclass
class GridRuns:
    """The smoke grid killed after its first cell, then run again as Jupyter runs ``nbs/grid.ipynb``."""

    base: Path
    grid: Path
    nb: nbformat.NotebookNode
    after_kill: dict[str, tuple[int, bytes]]  # the first cell's files right after the kill: mtime, bytes
    v8_after_kill: list[str]  # the v8 folder's files right after the kill (none, or the whole set)


def write_smoke_grid(base: Path) -> Path:
    """The smoke grid's file; each cell asks Ray for as many CPUs as the tests' processes use
    threads (``OMP_NUM_THREADS``, set by ``conftest.py``), so its tables equal the notebooks'."""
    (base / "bad_behavior.json").write_text('{"name": "bad", "items": 3}')
    path = base / "grid.yaml"
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    path.write_text(SMOKE_GRID + (f"resources: {{cpus_per_cell: {threads}}}\n" if threads else ""))
    return path


def run_grid_until(base: Path, grid: Path, stamp: Path, timeout: float = 600) -> None:
    """``python -m ws.grid`` on ``grid`` (from ``base``, smoke mode), killed (SIGKILL, its whole
    process group: the driver, its local Ray and the running cell) once ``stamp`` exists."""
    import signal
    import subprocess
    import sys
    import time

    env = smoke_env(base)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("WS_MODEL", None)
    env["WS_RUN_DIR"] = str(base)  # the grid file's relative paths are the user's folder's
    with open(base / "killed_grid.log", "w") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "ws.grid", str(grid)], cwd=base, env=env, stdout=log, stderr=log, start_new_session=True
        )
        t0 = time.monotonic()
        while not stamp.exists():
            if p.poll() is not None or time.monotonic() - t0 > timeout:
                os.killpg(p.pid, signal.SIGKILL)
                raise RuntimeError(
                    f"the grid ended or hung before its first cell finished: {(base / 'killed_grid.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
