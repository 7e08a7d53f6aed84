"""Where things live: the repository root, ``out/``, ``logs/`` and the model cache.

Every path can be moved with an environment variable so that a notebook run from any
working directory writes to the same place:

- ``WS_OUT``    (default ``<repo>/out``)
- ``WS_LOGS``   (default ``<repo>/logs``)
- ``WS_CACHE``  (default ``<repo>/cache``): converted models and activation caches
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The folder that holds ``ws/`` (this package's parent)."""
    return Path(__file__).resolve().parent.parent


def out_dir() -> Path:
    return Path(os.environ.get("WS_OUT", repo_root() / "out"))


def logs_dir() -> Path:
    return Path(os.environ.get("WS_LOGS", repo_root() / "logs"))


def cache_dir() -> Path:
    return Path(os.environ.get("WS_CACHE", repo_root() / "cache"))
