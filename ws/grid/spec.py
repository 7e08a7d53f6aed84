"""A grid file, read and checked, and the cells it asks for.

A grid file is YAML (JSON is YAML too)::

    behaviors: [sycophancy, behaviors/ab/sycophancy-ab.jsonl]
    adapters: [lora, bidir, {pos_adapter: adapters/pos, neg_adapter: adapters/neg}]
    seeds: [0, 1, 2]
    models: [smollm2-135m]
    sweeps: [v7, v8, cross_adapter]
    env: {WS_STEPS: 80}              # optional: any other WS_* setting, for every cell
    resources: {cpus_per_cell: 2}    # optional: what one cell asks Ray for (see docs/grid.md)
    max_cells: 200                   # optional: the most cells the grid may plan (default 200)
    max_seeds: 50                    # optional: the most seeds it may list (default 50)

Each (model, behaviour, adapter) gets one cell per sweep of ``v7`` / ``v8``; ``cross_adapter``
is one cell per (model, behaviour) over the grid's adapter types. An adapter entry is a
registered type, or the import variables of one diff without their ``WS_`` prefix
(``pos_adapter`` + ``neg_adapter``, ``bidir_adapter``, ``pos_model`` + ``neg_model``); an
imported diff has one seed and takes no part in ``cross_adapter``. Paths resolve against the
folder the grid was started from, as every ``WS_*`` path does.

:func:`plan` turns a grid into :class:`Cell` objects, each with the complete ``WS_*``
environment its job runs with, checked by :func:`ws.config.from_env` now (a cell that cannot
run is reported with its error before any work starts, and the others go on).

Nothing a grid file names reaches the disk unchecked: its name, each adapter type's name
and every cell's behaviour name and model slug go through
:func:`ws.core.paths.safe_component`; the seeds must be below 2**32; a grid that plans more
than ``max_cells`` cells or lists more than ``max_seeds`` seeds, and two cells that would
write one folder, are refused before any work (:class:`GridError`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ws.config import BY_NAME, MAX_SEED, Config, ConfigError, from_env
from ws.core.paths import UnsafeNameError, model_slug, resolve_user_path, run_dir, safe_component

SWEEPS = ("v7", "v8", "cross_adapter")
KEYS = ("name", "behaviors", "adapters", "seeds", "models", "sweeps", "env", "resources", "max_cells", "max_seeds")
#: the size guard: the most cells a grid may plan, and seeds it may list, unless its file allows more
MAX_CELLS = 200
MAX_SEEDS = 50
DEFAULTS: dict[str, Any] = {"seeds": [0, 1, 2], "models": ["smollm2-135m"], "sweeps": ["v7", "v8"]}
RESOURCE_KEYS = ("cpus_per_cell", "gpus_per_cell")
#: adapter-entry keys (an imported diff) and the variables they set
IMPORT_KEYS = {
    "pos_adapter": "WS_POS_ADAPTER",
    "neg_adapter": "WS_NEG_ADAPTER",
    "bidir_adapter": "WS_BIDIR_ADAPTER",
    "pos_model": "WS_POS_MODEL",
    "neg_model": "WS_NEG_MODEL",
}
#: variables the grid sets per cell: a grid's ``env`` (or the shell) may not set them
CELL_VARIABLES = ("WS_MODEL", "WS_BEHAVIOR", "WS_ADAPTER", "WS_ADAPTERS", "WS_SEEDS", "WS_SEED", *IMPORT_KEYS.values())
#: the grid runner's own variables: read by the driver, never passed to a cell
GRID_VARIABLES = ("WS_GRID", "WS_RAY_ADDRESS")
#: path variables every cell gets from the driver, absolute (not part of a cell's identity)
PATH_VARIABLES = ("WS_OUT", "WS_CACHE", "WS_LOGS", "WS_RUN_DIR")


class GridError(ValueError):
    """The grid file cannot be used (the message says which key and why)."""


@dataclass(frozen=True)
class Grid:
    """A checked grid file."""

    name: str
    path: Path
    behaviors: tuple[str, ...]
    adapters: tuple[str | tuple[tuple[str, str], ...], ...]  # a type, or an import's (key, path) pairs
    seeds: tuple[int, ...]
    models: tuple[str, ...]
    sweeps: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    resources: tuple[tuple[str, float], ...] = ()
    max_cells: int = MAX_CELLS
    max_seeds: int = MAX_SEEDS

    @property
    def adapter_types(self) -> tuple[str, ...]:
        return tuple(a for a in self.adapters if isinstance(a, str))

    @property
    def n_cells(self) -> int:
        """How many cells :func:`plan` makes of this grid."""
        per_adapter = sum(s in self.sweeps for s in ("v7", "v8"))
        cross = int("cross_adapter" in self.sweeps and bool(self.adapter_types))
        return len(self.models) * len(self.behaviors) * (len(self.adapters) * per_adapter + cross)


@dataclass(frozen=True)
class Cell:
    """One job of a grid: a sweep of one (model, behaviour, adapter), or a cross-adapter
    comparison of one (model, behaviour). ``env`` is every ``WS_*`` variable it runs with."""

    sweep: str
    model: str
    behavior: str
    adapter: str  # the adapter type, an import's label, or "cross_adapter"
    env: tuple[tuple[str, str], ...]
    error: str | None = None  # why the cell cannot run (found by plan), else None
    config: Config | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.sweep} · {self.model} · {self.behavior} · {self.adapter}"

    @property
    def slug(self) -> str:
        """A file-name-safe id of the cell (for its log)."""
        model = model_slug(self.model) if self.config is not None else self.model
        raw = f"{self.sweep}_{model}_{Path(self.behavior).name}_{self.adapter}"
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def fingerprint(self) -> str:
        """12 hex digits of the settings that make this cell's results: the run parameters
        (:data:`ws.config.VARIABLES`), not the folders nor the log settings."""
        ident = {k: v for k, v in self.env if k in BY_NAME and k not in PATH_VARIABLES}
        return hashlib.sha256(json.dumps([self.sweep, ident], sort_keys=True).encode()).hexdigest()[:12]

    @property
    def folder(self) -> Path | None:
        """The folder the cell's file set goes to (None when the cell cannot run)."""
        if self.config is None:
            return None
        return {"v7": self.config.v7_dir, "v8": self.config.v8_dir, "cross_adapter": self.config.cross_dir}[self.sweep]

    @property
    def lock(self) -> Path | None:
        """The folder the cell holds alone while it runs: its adapter's folder (the diffs, v7
        and v8 of that adapter), or the cross-adapter folder."""
        f = self.folder
        return None if f is None else (f if self.sweep == "cross_adapter" else f.parent)


# ----------------------------------------------------------------------------- reading
def _read(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise GridError(f"no grid file at {path}: give GRID=<file> (YAML or JSON; see docs/grid.md)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise GridError(f"{path} is not YAML or JSON: {e}") from None
    if not isinstance(data, dict):
        raise GridError(f"{path} must hold a mapping with the keys {', '.join(KEYS)}; it holds {type(data).__name__}")
    bad = [k for k in data if k not in KEYS]
    if bad:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(str(k), KEYS, n=1)) else str(k) for k in bad]
        raise GridError(f"{path}: unknown key(s) {', '.join(hints)}; the keys are {', '.join(KEYS)}")
    return data


def _list(data: dict, key: str, path: Path) -> list:
    v = data.get(key, DEFAULTS.get(key))
    if v is None:
        raise GridError(f"{path}: `{key}` is missing: give a list, e.g. {key}: [...] (see docs/grid.md)")
    v = v if isinstance(v, list) else [v]
    if not v:
        raise GridError(f"{path}: `{key}` is empty: give at least one")
    if len({json.dumps(x, sort_keys=True, default=str) for x in v}) != len(v):
        raise GridError(f"{path}: `{key}` repeats an entry: give each once")
    return v


def _safe(value: str, what: str, path: Path) -> str:
    """``value`` when it can be one folder name (:func:`ws.core.paths.safe_component`), else :class:`GridError`."""
    try:
        return safe_component(value, what)
    except UnsafeNameError as e:
        raise GridError(f"{path}: {e}") from None


def _seeds(data: dict, path: Path) -> tuple[int, ...]:
    """``seeds``: integers from 0 to :data:`ws.config.MAX_SEED`, at most ``max_seeds`` of them."""
    seeds = _list(data, "seeds", path)
    bad = [s for s in seeds if not (isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED)]
    if bad:
        raise GridError(
            f"{path}: seeds must be integers ≥ 0 and at most {MAX_SEED} (below 2**32, what numpy and torch take), "
            f"got {', '.join(map(repr, bad[:5]))}"
        )
    limit = _limit(data, "max_seeds", MAX_SEEDS, path)
    if len(seeds) > limit:
        raise GridError(
            f"{path}: `seeds` lists {len(seeds)} seeds, more than max_seeds={limit} (each v7 cell trains a diff per "
            f"seed): check the list, or allow it with `max_seeds: {len(seeds)}` in the grid file"
        )
    return tuple(seeds)


def _limit(data: dict, key: str, default: int, path: Path) -> int:
    """A size guard's value (``max_cells``, ``max_seeds``): a whole number ≥ 1."""
    v = data.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise GridError(f"{path}: {key}={v!r} must be a whole number ≥ 1 (default {default})")
    return v


def _check_size(grid: Grid, path: Path) -> None:
    """Refuse a grid that plans more than ``max_cells`` cells (say how many, and how to allow it)."""
    n = grid.n_cells
    if n > grid.max_cells:
        raise GridError(
            f"{path}: the grid plans {n} cells ({len(grid.models)} model(s) × {len(grid.behaviors)} behaviour(s) × "
            f"{len(grid.adapters)} adapter(s) × sweeps {', '.join(grid.sweeps)}), more than max_cells={grid.max_cells}: "
            f"check its lists, or allow it with `max_cells: {n}` in the grid file"
        )


def _adapters(data: dict, path: Path) -> tuple[str | tuple[tuple[str, str], ...], ...]:
    """The adapter entries, normalised; two that normalise to one (``lora`` and ``" lora"``)
    would write one folder: refused, naming both."""
    raw = _list(data, "adapters", path)
    norm = [_adapter(a, path) for a in raw]
    for i, v in enumerate(norm):
        if (j := norm.index(v)) < i:
            raise GridError(
                f"{path}: `adapters` entries {raw[j]!r} and {raw[i]!r} would write the same folder (both are {v!r}): give it once"
            )
    return tuple(norm)


def _adapter(entry: Any, path: Path) -> str | tuple[tuple[str, str], ...]:
    if isinstance(entry, str):
        return _safe(entry.strip(), "an adapter type's name (it names the output folder)", path)
    if isinstance(entry, dict) and entry and all(k in IMPORT_KEYS for k in entry):
        return tuple(sorted((k, str(v)) for k, v in entry.items()))
    raise GridError(
        f"{path}: adapter entry {entry!r} is neither an adapter type nor an imported diff (a mapping of {', '.join(IMPORT_KEYS)})"
    )


def _env(data: dict, path: Path) -> tuple[tuple[str, str], ...]:
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise GridError(f"{path}: `env` must map WS_* variables to values, e.g. env: {{WS_STEPS: 80}}")
    for k in env:
        if k in CELL_VARIABLES or k in GRID_VARIABLES:
            raise GridError(f"{path}: env sets {k}, which the grid sets per cell: use the grid's own keys instead")
        if k not in BY_NAME:
            close = difflib.get_close_matches(str(k), list(BY_NAME), n=1, cutoff=0.75)
            raise GridError(
                f"{path}: env sets {k}, not a variable this suite reads" + (f" (did you mean {close[0]}?)" if close else "")
            )
    return tuple(sorted((str(k), str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()))


def _resources(data: dict, path: Path) -> tuple[tuple[str, float], ...]:
    r = data.get("resources") or {}
    if not isinstance(r, dict) or any(k not in RESOURCE_KEYS for k in r):
        raise GridError(f"{path}: `resources` takes only {', '.join(RESOURCE_KEYS)}")
    for k, v in r.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (k == "cpus_per_cell" and v <= 0):
            raise GridError(f"{path}: resources.{k}={v!r} must be a number > 0 (gpus_per_cell may be 0)")
    return tuple(sorted((k, float(v)) for k, v in r.items()))


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (see the module doc); :class:`GridError` names what is wrong."""
    p = resolve_user_path(str(path))
    data = _read(p)
    sweeps = [str(s) for s in _list(data, "sweeps", p)]
    bad = [s for s in sweeps if s not in SWEEPS]
    if bad:
        raise GridError(f"{p}: sweeps {', '.join(bad)} unknown: choose from {', '.join(SWEEPS)}")
    grid = Grid(
        name=_safe(str(data.get("name") or p.stem), "the grid's name (its folder grids/<name> and its log)", p),
        path=p,
        behaviors=tuple(str(b) for b in _list(data, "behaviors", p)),
        adapters=_adapters(data, p),
        seeds=_seeds(data, p),
        models=tuple(str(m) for m in _list(data, "models", p)),
        sweeps=tuple(sweeps),
        env=_env(data, p),
        resources=_resources(data, p),
        max_cells=_limit(data, "max_cells", MAX_CELLS, p),
        max_seeds=_limit(data, "max_seeds", MAX_SEEDS, p),
    )
    _check_size(grid, p)
    return grid


# ----------------------------------------------------------------------------- cells
def base_env(shell: Mapping[str, str], grid: Grid, root: Config) -> dict[str, str]:
    """What every cell starts from: the shell's ``WS_*`` settings (a shell value of a per-cell
    variable is refused), the grid's ``env`` over them, and the driver's folders, absolute."""
    clash = [k for k in CELL_VARIABLES if k in shell]
    if clash:
        raise GridError(f"{', '.join(clash)} set in the shell, but the grid sets it per cell: unset it for `make grid`")
    env = {k: v for k, v in shell.items() if k.startswith("WS_") and k not in GRID_VARIABLES and k not in PATH_VARIABLES}
    env.update(dict(grid.env))
    env.update(
        WS_OUT=str(root.out_root),
        WS_CACHE=str(root.cache_root),
        WS_LOGS=str(root.logs_root),
        WS_RUN_DIR=str(run_dir()),
    )
    return env


def _cell(sweep: str, model: str, behavior: str, adapter: str, env: dict[str, str]) -> Cell:
    """A cell with its configuration checked now (an error is kept on the cell, not raised)."""
    try:
        cfg = from_env(env)
    except ConfigError as e:
        return Cell(sweep, model, behavior, adapter, tuple(sorted(env.items())), error=str(e))
    label = cfg.adapter if sweep != "cross_adapter" else "cross_adapter"
    return Cell(sweep, model, cfg.behavior, label, tuple(sorted(env.items())), config=cfg)


def plan(grid: Grid, base: Mapping[str, str]) -> list[Cell]:
    """Every cell of ``grid`` in run order (per model and behaviour: each adapter's v7, then its
    v8, then the cross-adapter comparison)."""
    seeds = ",".join(map(str, grid.seeds))
    cells = []
    for model in grid.models:
        for behavior in grid.behaviors:
            common = {**base, "WS_MODEL": model, "WS_BEHAVIOR": behavior}
            for adapter in grid.adapters:
                if isinstance(adapter, str):
                    env, label = {**common, "WS_ADAPTER": adapter, "WS_SEEDS": seeds}, adapter
                else:
                    env = {**common, **{IMPORT_KEYS[k]: v for k, v in adapter}}
                    label = "+".join(Path(v).name for _, v in adapter)
                cells += [_cell(s, model, behavior, label, env) for s in ("v7", "v8") if s in grid.sweeps]
            if "cross_adapter" in grid.sweeps and grid.adapter_types:
                env = {**common, "WS_ADAPTERS": ",".join(grid.adapter_types), "WS_SEEDS": seeds}
                cells.append(_cell("cross_adapter", model, behavior, "cross_adapter", env))
    check_folders(cells, grid.path)
    return cells


def _entries(cell: Cell) -> str:
    """The grid file's entries a cell comes from, as written there."""
    e = cell.env_dict
    adapter = e.get("WS_ADAPTER") or ("" if cell.sweep == "cross_adapter" else cell.adapter)
    return f"{cell.sweep} of model {e['WS_MODEL']!r}, behaviour {e['WS_BEHAVIOR']!r}" + (
        f", adapter {adapter!r}" if adapter else ""
    )


def check_folders(cells: list[Cell], path: Path) -> None:
    """Refuse two cells that would write one folder (:class:`GridError`, naming both), compared
    by the folder each writes (the behaviour's resolved name, the adapter's, the model's slug;
    in any case, as a case-blind file system would), not by the grid file's strings."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.folder is None:
            continue
        first = seen.setdefault(str(cell.folder).casefold(), cell)
        if first is not cell:
            raise GridError(
                f"{path}: two cells would write the same folder {cell.folder}: {_entries(first)}; and {_entries(cell)}. "
                f"Give each (model, behaviour, adapter) once: a behaviour file and its built-in name, two files of one "
                f"behaviour name, or two spellings of one model are the same"
            )


def dependencies(cell: Cell, cells: list[Cell]) -> list[Cell]:
    """The cells that must finish first: v8 after its v7; the cross-adapter comparison after
    every v7 and v8 cell of its model and behaviour (they train and cache what it reuses)."""
    same = [c for c in cells if c.model == cell.model and c.behavior == cell.behavior and c is not cell]
    if cell.sweep == "v8":
        return [c for c in same if c.sweep == "v7" and c.adapter == cell.adapter]
    if cell.sweep == "cross_adapter":
        return [c for c in same if c.sweep in ("v7", "v8")]
    return []
