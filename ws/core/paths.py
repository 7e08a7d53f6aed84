"""Where things live: the repository root, ``out/``, ``logs/``, the model cache, and each
model's own output folder.

Every path can be moved with an environment variable so that a notebook run from any
working directory writes to the same place:

- ``WS_OUT``    (default ``<repo>/out``)
- ``WS_LOGS``   (default ``<repo>/logs``)
- ``WS_CACHE``  (default ``<repo>/cache``): converted models and activation caches

A relative value resolves against the folder the user ran the command from
(:func:`run_dir`), not against the kernel's working folder: `jupytext --execute` and
Jupyter start the kernel in another folder (``logs/``, ``nbs/``).

Under ``WS_OUT``, :func:`model_root` alone decides where a model's diffs and output sets
go: the embedded default model's at the output root itself (``<out>/<behavior>/<adapter>/…``,
where the spec puts them), every other model's under ``<out>/models/<model_slug>/``, the
same layout below it, so two models never share a diff or an output folder. The persona
completions carry the model in their own path (``<out>/data/<model_slug>/…``).
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The folder that holds ``ws/`` (this file is ``ws/core/paths.py``)."""
    return Path(__file__).resolve().parents[2]


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


#: The embedded default model (SmolLM2-135M-Instruct, :mod:`ws.model.load`) and the other
#: names it loads under.
DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_NAMES = (DEFAULT_MODEL, "SmolLM2-135M-Instruct", "smollm2")
#: The folder under the output root that holds every other model's outputs.
MODELS_DIR = "models"
#: Folders under the output root that hold the base model's completions and the benchmark.
DATA_DIR = "data"
BENCH_DIR = "bench"
#: Names a behaviour may not take: its output folder would be one of these.
RESERVED_OUT_DIRS = {
    MODELS_DIR: "the output folder of the other models' outputs",
    DATA_DIR: "the output folder of the base model's completions",
    BENCH_DIR: "the output folder of `make bench`",
}


def model_root(model_name: str, out_root: str | Path | None = None) -> Path:
    """The folder that holds ``model_name``'s diffs and output sets (``out_root`` defaults
    to ``WS_OUT``): the output root itself for the embedded default model (under any of its
    names), ``<out_root>/models/<model_slug>`` for every other model. Below it the layout is
    the same for every model: ``<behavior>/<adapter>/seed<k>/w.safetensors``,
    ``<behavior>/<adapter>/v7/``, ``…/v8/``, ``<behavior>/cross_adapter/``."""
    root = Path(out_root) if out_root is not None else out_dir()
    return root if model_name in EMBEDDED_NAMES else root / MODELS_DIR / model_slug(model_name)
