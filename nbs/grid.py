# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (ws)
#     language: python
#     name: ws
# ---

# %% [markdown]
# # A grid of runs: behaviours × adapter types × seeds × models, on Ray
#
# A grid file (`WS_GRID`, or `make grid GRID=<file>`; YAML or JSON, see `docs/grid.md`)
# names behaviours, adapter types (or imported diffs), seeds, models and sweeps (`v7`, `v8`,
# `cross_adapter`). Each (model, behaviour, adapter, sweep) is one cell: one job that builds
# the missing diffs and runs the sweep into the folder the suite already uses for it, with
# the suite's usual rules (checks before work, nothing of yours overwritten, file sets
# written as a whole, the folder's run lock).
#
# The cells run on Ray: a local Ray started here (one model job at a time on a machine
# without GPUs; one cell per GPU where there are GPUs), or the cluster at `WS_RAY_ADDRESS`.
# A finished cell is skipped, so a grid that was stopped does only what is missing when it
# runs again; a cell that fails is reported with its error and the others go on.

# %%
import os

import polars as pl

from ws.core import show
from ws.grid import runner

pl.Config.set_tbl_rows(60)
pl.Config.set_tbl_cols(12)
pl.Config.set_fmt_str_lengths(60)
pl.Config.set_tbl_width_chars(220)
pl.Config.set_float_precision(3)

# %% [markdown]
# ## Read the grid and plan its cells
# Every cell's configuration is checked now: a cell that cannot run (a bad behaviour file,
# an unknown setting) is reported here, before any work starts, and the others go on.

# %%
if "WS_GRID" not in os.environ:
    raise SystemExit("set WS_GRID to a grid file (make grid GRID=<file>); docs/grid.md shows the format")
run = runner.prepare(os.environ["WS_GRID"])
print(f"grid {run.grid.name}: {len(run.cells)} cells, {len(run.todo)} to run; summary into {run.folder}")
show.table(run.states())

# %% [markdown]
# ## Run the cells
# A progress bar over the cells; each cell's log is `logs/grid_<cell>.verbose.log`.

# %%
run = runner.execute(run)
print(f"ran {len(run.status('ran'))}, done earlier {len(run.status('done'))}, failed {len(run.status('failed'))}")

# %% [markdown]
# ## The summary: one row per cell, from the cells' own files

# %%
summary = pl.read_csv(run.folder / "grid_summary.tsv", separator="\t")
show.table(summary.drop("folder", "host"))
show.image(run.folder / "grid_summary.png")

# %% [markdown]
# ## Across cells, as written to `grid_summary.md`

# %%
show.markdown((run.folder / "grid_summary.md").read_text())
