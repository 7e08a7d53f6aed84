"""The grid: several behaviours × adapter types × seeds × models × sweeps, one cell per job,
run on Ray (``runner``); the grid file and its cells (``spec``), one cell: done or not, and
running it (``cells``), the summary across cells (``summary``). See docs/grid.md.

May import: every stage below it (``ws.core`` … ``ws.analysis``).
"""
