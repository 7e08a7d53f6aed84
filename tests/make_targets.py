"""Running the README's ``make`` targets in the tests, as a user runs them.

A test gets a throw-away checkout (:func:`checkout`): the Makefile, the requirement files
(their times kept, so the environment counts as installed), the notebooks and the behaviours
copied. ``make`` is told the project's own environment (``VENV=<this repo>/.venv``, never a
link to it: a package installed through a link would get the link's path in its scripts), so
its setup finds everything installed and does nothing. ``make`` then runs there
(:func:`run_make`) with the smoke run's folders, so a target's recipe, its dependencies and
the command it calls are what a user's ``make`` runs, and nothing is written into this
repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from smoke_env import smoke_env

ROOT = Path(__file__).resolve().parent.parent

#: the targets the README names, each run by a test of ``tests/test_make_targets.py`` or of
#: the end-to-end module named (``test`` is the command that runs them all; ``lint`` rewrites
#: the user's files and ``test`` runs its check)
TESTED_TARGETS = {
    "sweep": "tests/test_v7_smoke.py",
    "cross-adapter": "tests/test_cross_adapter.py",
    "compare-steering": "tests/test_steering.py",
    "diff": "tests/test_make_targets.py",
    "export": "tests/test_make_targets.py",
    "grid": "tests/test_make_targets.py",
    "bench": "tests/test_make_targets.py",
    "bench-scale": "tests/test_bench_scale.py",
    "monitor": "tests/test_monitor.py",
    "lab": "tests/test_make_targets.py",
    "sync-nbs": "tests/test_make_targets.py",
    "clean-cache": "tests/test_make_targets.py",
    "setup": "every target (its first dependency)",
    "test": "CI (.ci/run)",
    "test-fast": "tests/test_make_targets.py",
    "lint": "make test (ruff check and ruff format --check)",
}


def checkout(dest: Path) -> Path:
    """A checkout of this repository's runnable parts at ``dest`` (its environment is this
    repository's, see :func:`run_make`)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Makefile", "requirements.txt", "requirements-lab.txt", "pyproject.toml", "jupytext.toml"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("nbs", "behaviors"):
        shutil.copytree(ROOT / name, dest / name, copy_function=shutil.copy2, dirs_exist_ok=True)
    return dest


def run_make(repo: Path, *args: str, base: Path | None = None, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    """``make <args>`` in ``repo`` (a :func:`checkout`), as a user runs it from that folder:
    the smoke run's environment with every folder under ``base`` (default ``repo``), plus
    ``env``; this checkout's ``ws`` is the one imported."""
    e = smoke_env(base or repo)
    e.pop("MAKEFLAGS", None)
    e.pop("MAKELEVEL", None)
    e.update(PWD=str(repo), **env)
    e.pop("WS_RUN_DIR", None)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    venv = f"VENV={ROOT / '.venv'}"
    return subprocess.run(["make", venv, *args], cwd=repo, env=e, capture_output=True, text=True, timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> str:
    """The run's output, after checking that it succeeded (its tail in the failure)."""
    assert r.returncode == 0, f"make failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r.stdout + r.stderr
