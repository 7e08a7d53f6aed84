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

Every name that becomes one folder or file name under these roots (a behaviour's name, a
grid's name, an adapter's name or label, a model's slug, a steering-vector file's name) goes
through :func:`safe_component` first: a name that would climb out of its folder, name
another one, or land in one of the output tree's own folders is refused
(:class:`UnsafeNameError`), never written.
"""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath


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


#: The embedded default model (SmolLM2-135M-Instruct, :mod:`ws.model.load`) and the other
#: names it loads under.
DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_NAMES = (DEFAULT_MODEL, "SmolLM2-135M-Instruct", "smollm2")
#: The folder under the output root that holds every other model's outputs.
MODELS_DIR = "models"
#: Folders under the output root that hold the base model's completions and the benchmark.
DATA_DIR = "data"
BENCH_DIR = "bench"
#: The folder under the output root that holds each grid's summary (``<out>/grids/<name>``).
GRIDS_DIR = "grids"
#: The folder under a behaviour's that holds its cross-adapter comparison.
CROSS_ADAPTER_DIR = "cross_adapter"
#: Names no behaviour, grid, adapter, model or vector may take (in any case): its folder
#: would be one of these.
RESERVED_OUT_DIRS = {
    MODELS_DIR: "the output folder of the other models' outputs",
    DATA_DIR: "the output folder of the base model's completions",
    BENCH_DIR: "the output folder of `make bench`",
    GRIDS_DIR: "the output folder of the grids' summaries",
    CROSS_ADAPTER_DIR: "the output folder of a behaviour's cross-adapter comparison",
}
SAFE_NAME_RULE = "give a name without '/', '\\', control characters or surrounding spaces, other than '.', '..' and " + ", ".join(
    sorted(RESERVED_OUT_DIRS)
)


class UnsafeNameError(ValueError):
    """A name cannot be one folder or file name under the output tree (the message names the
    value, why, what it was for and what to give instead)."""


def _unsafe_why(value: str, reserved: bool = True) -> str | None:
    """Why ``value`` cannot be one path component, or None when it can (``reserved``: the
    reserved folder names are refused too)."""
    if value == "":
        return "is empty"
    if value in (".", ".."):
        return "names its own folder" if value == "." else "climbs out of its folder"
    if value.startswith(("/", "\\")) or PureWindowsPath(value).drive:
        return "is an absolute path (or names a drive)"
    sep = next((c for c in "/\\" if c in value), None)
    if sep:
        return f"holds a path separator ({sep!r})"
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        return f"holds a control or other non-printing character ({bad!r})"
    if value != value.strip():
        return "starts or ends with a space"
    if reserved and value.lower() in RESERVED_OUT_DIRS:
        return f"is {RESERVED_OUT_DIRS[value.lower()]}"
    return None


def safe_component(value: str, what: str, reserved: bool = True) -> str:
    """``value`` itself when it can be one folder or file name under the output tree: not
    empty, ``.`` or ``..``, not absolute, without a path separator (``/``, ``\\``), a NUL or
    other control character, or a leading or trailing space, and none of
    :data:`RESERVED_OUT_DIRS` (in any case; ``reserved=False`` for a name that only ever sits
    below one of those folders). Else :class:`UnsafeNameError`, naming the value, why, ``what``
    it is (e.g. ``"a behaviour's name"``) and the fix."""
    why = _unsafe_why(value, reserved) if isinstance(value, str) else f"is a {type(value).__name__}, not a text"
    if why:
        raise UnsafeNameError(f"{value!r} {why}: it cannot be {what}; {SAFE_NAME_RULE}")
    return value


def model_slug(model_name: str) -> str:
    """A folder-safe model name (``Qwen/Qwen3-0.6B`` -> ``Qwen__Qwen3-0.6B``), checked by
    :func:`safe_component` (``..`` or an empty name is refused, never a folder). A slug only
    ever sits below ``models/`` or ``data/``, so a reserved folder name is a slug like any other."""
    slug = model_name.strip("/").replace("/", "__").replace("\\", "__")
    return safe_component(slug, f"the folder name of model {model_name!r}", reserved=False)


def model_root(model_name: str, out_root: str | Path | None = None) -> Path:
    """The folder that holds ``model_name``'s diffs and output sets (``out_root`` defaults
    to ``WS_OUT``): the output root itself for the embedded default model (under any of its
    names), ``<out_root>/models/<model_slug>`` for every other model. Below it the layout is
    the same for every model: ``<behavior>/<adapter>/seed<k>/w.safetensors``,
    ``<behavior>/<adapter>/v7/``, ``…/v8/``, ``<behavior>/cross_adapter/``."""
    root = Path(out_root) if out_root is not None else out_dir()
    return root if model_name in EMBEDDED_NAMES else root / MODELS_DIR / model_slug(model_name)
