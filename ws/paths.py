"""Where things live: the repository root, ``out/``, ``logs/`` and the model cache.

Every path can be moved with an environment variable so that a notebook run from any
working directory writes to the same place:

- ``WS_OUT``    (default ``<repo>/out``)
- ``WS_LOGS``   (default ``<repo>/logs``)
- ``WS_CACHE``  (default ``<repo>/cache``): converted models and activation caches

A relative value resolves against the folder the user ran the command from
(:func:`run_dir`), not against the kernel's working folder: `jupytext --execute` and
Jupyter start the kernel in another folder (``logs/``, ``nbs/``).
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The folder that holds ``ws/`` (this package's parent)."""
    return Path(__file__).resolve().parent.parent


def run_dir() -> Path:
    """The folder the user ran the command from.

    ``WS_RUN_DIR`` when set (the Makefile sets it to the folder ``make`` ran in), else the
    shell's ``PWD`` (a kernel inherits it from the shell that started Jupyter or
    jupytext), else the process's working folder.
    """
    for name in ("WS_RUN_DIR", "PWD"):
        v = os.environ.get(name, "").strip()
        if v and os.path.isabs(v) and os.path.isdir(v):
            return Path(v)
    return Path.cwd()


def resolve_user_path(value: str | Path) -> Path:
    """``value`` as an absolute path; a relative one is taken from :func:`run_dir`."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else run_dir() / p


def _env_dir(name: str, default: Path) -> Path:
    v = os.environ.get(name, "").strip()
    return resolve_user_path(v) if v else default


def out_dir() -> Path:
    return _env_dir("WS_OUT", repo_root() / "out")


def logs_dir() -> Path:
    return _env_dir("WS_LOGS", repo_root() / "logs")


def cache_dir() -> Path:
    return _env_dir("WS_CACHE", repo_root() / "cache")


def model_slug(model_name: str) -> str:
    """A folder-safe model name (``Qwen/Qwen3-0.6B`` -> ``Qwen__Qwen3-0.6B``)."""
    return model_name.strip("/").replace("/", "__").replace("\\", "__")
