"""What the notebooks display: figures and tables inline in Jupyter, plain text elsewhere.

Inside a notebook kernel (Jupyter, or a headless ``jupytext --execute`` run) a figure is
shown as an image and a table as HTML; under plain ``python`` the same calls print the
file's path or the table's text, so a notebook's ``.py`` still runs as a script.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl


def in_notebook() -> bool:
    """True inside a notebook kernel (not a terminal IPython, not plain Python)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def image(path: str | Path, title: str | None = None) -> None:
    """Show the PNG at ``path`` inline, its path printed under it (only the path outside a
    notebook)."""
    path = Path(path)
    if title:
        print(title)
    if in_notebook():
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    print(path)


def table(df: pl.DataFrame) -> None:
    """Show a table: HTML in a notebook, text otherwise."""
    if in_notebook():
        from IPython.display import display

        display(df)
    else:
        print(df)


def markdown(text: str) -> None:
    """Render markdown in a notebook; print it otherwise."""
    if in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(text))
    else:
        print(text)


def effect_plots(cfg) -> dict[int, Path]:
    """``seed -> effect.png`` of each seed's diff (written beside ``w.safetensors``)."""
    return {s: cfg.diff_path(s).parent / "effect.png" for s in cfg.seeds}
