"""Run a grid's cells on Ray: ``make grid GRID=<file>`` (``nbs/grid.py``, or :func:`run_grid`).

The driver (this process) reads and checks the grid, plans its cells
(:func:`ws.grid.spec.plan`), reports every cell that cannot run before any work starts,
skips the cells already done (:func:`ws.grid.cells.state`), and hands the rest to Ray, each
as one task in a worker process of its own (``max_calls=1``: the process, and with it the
GPU memory, ends with the task). A cell waits for the cells it depends on
(:func:`ws.grid.spec.dependencies`); a cell whose dependency failed is skipped, and every
other cell goes on. At the end the grid's summary is written (:mod:`ws.grid.summary`).

Ray: a local Ray started here by default (and stopped at the end), or an existing cluster at
``WS_RAY_ADDRESS`` (every node needs this environment and the output folders on a shared
file system). What one cell asks for: ``resources.cpus_per_cell`` (default: a whole node's
CPUs on a machine without GPUs, so a 2-core machine runs one model job at a time; on GPU
nodes the node's CPUs ÷ its GPUs) and ``resources.gpus_per_cell`` (default: 1 where the
cluster has GPUs, a whole node's GPUs for ``WS_DEVICE_MAP=auto``, else 0).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import ray
from tqdm.auto import tqdm

from ws.config import from_env
from ws.core.io import hold_run_lock
from ws.core.log import logger, setup_logging
from ws.core.paths import GRIDS_DIR
from ws.grid import cells as C
from ws.grid import summary
from ws.grid.spec import Cell, Grid, base_env, dependencies, load_grid, plan

#: the local Ray's shared-memory store: the cells pass only small dicts through it
OBJECT_STORE_BYTES = 256 * 1024**2


@dataclass
class GridRun:
    """What :func:`run_grid` did: the grid, its cells, one result per cell (by key), the files."""

    grid: Grid
    cells: list[Cell]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    folder: Path | None = None
    files: list[Path] = field(default_factory=list)
    ray_address: str | None = None

    @property
    def todo(self) -> list[Cell]:
        """The cells with no result yet, in plan order."""
        return [c for c in self.cells if c.key not in self.results]

    def states(self):
        """One row per cell: its key parts and its state now (``todo`` for the cells to run)."""
        rows = [
            {
                "sweep": c.sweep,
                "model": c.model,
                "behavior": c.behavior,
                "adapter": c.adapter,
                "state": self.results.get(c.key, {}).get("status", "todo"),
                "why": self.results.get(c.key, {}).get("error", ""),
            }
            for c in self.cells
        ]
        return pl.DataFrame(rows, schema={k: pl.String for k in ("sweep", "model", "behavior", "adapter", "state", "why")})

    def status(self, status: str) -> list[str]:
        return [k for k, r in self.results.items() if r["status"] == status]


def grid_dir(grid: Grid, out_root: Path) -> Path:
    """``<WS_OUT>/grids/<grid name>``: the grid's summary and its lock."""
    return Path(out_root) / GRIDS_DIR / grid.name


# ----------------------------------------------------------------------------- Ray
def start_ray(address: str | None) -> bool:
    """Connect to the cluster at ``address``, or start a local Ray; True when started here."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        ray.init(address=address, **kw)
        return True
    ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=OBJECT_STORE_BYTES, **kw)
    return True


def node_shape() -> tuple[float, float]:
    """The largest node's CPUs and GPUs in the cluster Ray is connected to."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return max(n.get("CPU", 1.0) for n in nodes), max(n.get("GPU", 0.0) for n in nodes)


def cell_resources(grid: Grid, cell: Cell, cpus: float, gpus: float) -> tuple[float, float]:
    """``(num_cpus, num_gpus)`` of one cell's task (see the module doc)."""
    r = dict(grid.resources)
    auto_map = cell.config is not None and cell.config.device_map == "auto"
    g = r.get("gpus_per_cell", (gpus if auto_map else 1.0) if gpus else 0.0)
    c = r.get("cpus_per_cell", cpus if not gpus else max(1.0, cpus // max(gpus / max(g, 1.0), 1.0)))
    return float(min(c, cpus)), float(g)


# ----------------------------------------------------------------------------- the loop
def _submit(grid: Grid, cell: Cell, cpus: float, gpus: float):
    c, g = cell_resources(grid, cell, cpus, gpus)
    task = ray.remote(max_calls=1, max_retries=0)(C.run_cell).options(num_cpus=c, num_gpus=g, name=cell.slug)
    return task.remote(cell, int(c))


def _collect(ref) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except Exception as e:  # noqa: BLE001 - a worker that died (memory, a signal) fails its cell only
        return {"status": "failed", "error": C.one_line(e)}


def run_cells(run: GridRun, todo: list[Cell], bar) -> None:
    """Run ``todo`` on Ray, each after its dependencies; results into ``run.results``."""
    cpus, gpus = node_shape()
    pending, running = list(todo), {}
    while pending or running:
        for cell in list(pending):
            deps = [d.key for d in dependencies(cell, run.cells)]
            if any(run.results.get(d, {}).get("status") in ("failed", "skipped", "kept") for d in deps):
                bad = [d for d in deps if run.results[d]["status"] in ("failed", "skipped", "kept")]
                run.results[cell.key] = {"status": "skipped", "error": f"needs {bad[0]}, which did not finish"}
                pending.remove(cell)
                bar.update(1)
            elif all(d in run.results for d in deps):
                running[_submit(run.grid, cell, cpus, gpus)] = cell
                pending.remove(cell)
        if not running:
            continue
        ready, _ = ray.wait(list(running), num_returns=1)
        cell = running.pop(ready[0])
        run.results[cell.key] = _collect(ready[0])
        r = run.results[cell.key]
        logger.info(
            f"{cell.key}: {r['status']}"
            + (f" in {r.get('seconds', 0):.0f} s" if "seconds" in r else "")
            + (f" ({r['error']})" if r.get("error") else "")
        )
        bar.update(1)


def prepare(path: str | Path, env: Mapping[str, str] | None = None) -> GridRun:
    """Read and check the grid file ``path``, plan its cells (a grid that cannot run is refused
    here, before anything is written), take its folder's lock and decide each cell's state
    (nothing runs yet): the cells that cannot run get status
    ``failed`` with their error, those done earlier ``done``, a complete set made with other
    settings ``kept``; ``env``: the shell's variables (default ``os.environ``)."""
    env = dict(os.environ if env is None else env)
    grid = load_grid(path)
    root = from_env({k: v for k, v in env.items() if k.startswith("WS_") and k not in ("WS_GRID", "WS_RAY_ADDRESS")})
    cells = plan(grid, base_env(env, grid, root))
    setup_logging(f"grid_{grid.name}", root.logs_root)
    folder = grid_dir(grid, root.out_root)
    hold_run_lock(root.out_root, f"grid {grid.name}", shared=True)
    hold_run_lock(folder, f"grid {grid.name}")
    run = GridRun(grid, cells, folder=folder, ray_address=env.get("WS_RAY_ADDRESS"))
    for cell in run.cells:
        if cell.error:
            logger.warning(f"{cell.key} cannot run: {cell.error}")
            run.results[cell.key] = {"status": "failed", "error": cell.error}
            continue
        st, why = C.state(cell)
        if st != "todo":
            run.results[cell.key] = {"status": st, "error": why if st == "kept" else "", **_stamped(cell)}
    n = len(run.todo)
    logger.info(f"grid {grid.name}: {len(run.cells)} cells, {n} to run, {len(run.cells) - n} not")
    return run


def execute(run: GridRun, progress: bool = True) -> GridRun:
    """Run the cells :func:`prepare` left to do on Ray, then write the summary."""
    t0, todo = time.perf_counter(), run.todo
    with tqdm(
        total=len(run.cells), initial=len(run.cells) - len(todo), desc=f"grid {run.grid.name}", disable=not progress
    ) as bar:
        if todo:
            started = start_ray(run.ray_address)
            try:
                run_cells(run, todo, bar)
            finally:
                if started:
                    ray.shutdown()
    logger.info(f"grid {run.grid.name}: done in {time.perf_counter() - t0:.0f} s")
    run.files = summary.write_summary(run)
    return run


def run_grid(path: str | Path, env: Mapping[str, str] | None = None, progress: bool = True) -> GridRun:
    """Run a whole grid: :func:`prepare` (every cell planned and checked first), then :func:`execute`.

    Args:
        path: the grid file (YAML; see ``docs/grid.md``).
        env: the ``WS_*`` variables the cells start from (default ``os.environ``).
        progress: show a progress bar.

    Returns:
        The :class:`GridRun`; its summary is written to ``<WS_OUT>/grids/<name>/``.

    Raises:
        GridError: the grid file is malformed or plans cells that collide (before any cell runs).
    """
    return execute(prepare(path, env), progress)


def _stamped(cell: Cell) -> dict[str, Any]:
    """Time, device and host of an earlier run of the cell, from its stamp."""
    s = C.read_stamp(cell) or {}
    return {k: s[k] for k in ("seconds", "device", "host") if k in s}
