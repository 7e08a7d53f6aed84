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


def execute_notebook(name: str, base: Path, **extra: str) -> nbformat.NotebookNode:
    """Run ``nbs/<name>.ipynb`` as Jupyter does (errors kept in the outputs, not raised)."""
    from nbclient import NotebookClient

    env = smoke_env(base)
    env.update(WS_MODEL="tiny-llama", WS_LOG_TERMINAL="0", **extra)
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
