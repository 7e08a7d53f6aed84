"""``python -m ws.grid GRID_FILE``: run a grid without Jupyter (``make grid`` runs ``nbs/grid.py``)."""

import sys

from ws.grid.runner import run_grid

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ws.grid <grid file (YAML or JSON)>")
    run = run_grid(sys.argv[1])
    print(f"{run.folder / 'grid_summary.md'}")
    sys.exit(1 if run.status("failed") else 0)
