"""Headless notebook runs, as ``make`` runs them: ``python -m ws.core.notebooks <script.py> <executed.ipynb>``.

The percent-format script is read with jupytext and executed with its kernel (the
``kernelspec`` of its metadata), the kernel working in the executed copy's folder, as
``jupytext --execute`` does. The executed notebook is written whether the run succeeds or
stops, so the whole traceback is always on disk. When a cell fails, the last thing printed is
the suite's own message — the exception's type and text, which cell, where the traceback is —
instead of the kernel's long traceback, and the exit status is 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def first_error(nb: nbformat.NotebookNode) -> tuple[int, str, str] | None:
    """``(code cell number from 1, exception type, message)`` of the first failed cell, or None."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code, start=1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return i, out.get("ename", "Error"), out.get("evalue", "")
    return None


def stop_message(script: Path, executed: Path, error: tuple[int, str, str] | None) -> str:
    """What the user reads when a headless run stops: the suite's message, then where to look."""
    cell, ename, evalue = error or (0, "Error", "the kernel stopped (see the executed notebook)")
    where = f"code cell {cell}" if cell else "a cell"
    return (
        f"\n{script.name} stopped in {where}:\n\n{ename}: {evalue}\n\n"
        f"The whole traceback: {executed}; what each error means and what to do: docs/errors.md\n"
    )


def run(script: Path, executed: Path) -> int:
    """Execute ``script`` into ``executed``; 0 when every cell ran, else 1 (message printed)."""
    nb = jupytext.read(script)
    executed.parent.mkdir(parents=True, exist_ok=True)
    kernel = nb.metadata.get("kernelspec", {}).get("name")  # none named: the default kernel
    kw = {"kernel_name": kernel} if kernel else {}
    client = NotebookClient(nb, timeout=None, resources={"metadata": {"path": str(executed.parent)}}, **kw)
    try:
        client.execute()
    except CellExecutionError:
        print(stop_message(script, executed, first_error(nb)), file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # the kernel died (memory, a signal) or could not start: no cell error to show
        print(stop_message(script, executed, first_error(nb) or (0, type(e).__name__, str(e))), file=sys.stderr, flush=True)
        return 1
    finally:
        nbformat.write(nb, executed)  # the executed copy, whether the run finished or stopped
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m ws.core.notebooks <notebook script .py> <executed copy .ipynb>", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(Path(args[0]), Path(args[1])))


if __name__ == "__main__":
    main()
