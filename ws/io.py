"""Atomic file writes: every output goes to a temporary file in the same folder and is
renamed into place, so a crash never leaves a half-written file that looks complete.
:func:`write_table` is the one table writer of the suite."""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import polars as pl

from ws.log import logger


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on clean exit rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content.
    The temporary name keeps the suffix so writers that look at it (matplotlib) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def format_float(x: float | None, sig: int = 6) -> str:
    """Fixed table format: ``sig`` significant digits (``%g``), ``NaN``, ``inf``,
    ``-inf``; None (null) → empty string."""
    if x is None:
        return ""
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = f"{x:.{sig}g}"
    return "0" if s == "-0" else s


def write_table(df: pl.DataFrame, path: str | Path, sig: int | None = 6) -> Path:
    """Write ``df`` atomically as ``.csv`` (comma) or ``.tsv`` (tab).

    Float columns are formatted with ``sig`` significant digits (``NaN``/``inf`` spelled
    out, nulls empty), so identical inputs give byte-identical files. ``sig=None`` keeps
    polars' own shortest round-trip float text (full precision: the training logs).
    """
    path = Path(path)
    sep = {".csv": ",", ".tsv": "\t"}.get(path.suffix.lower())
    if sep is None:
        raise ValueError(f"write_table: unknown table suffix {path.suffix!r} (use .csv or .tsv): {path}")
    cols = []
    for name, dtype in df.schema.items():
        s = df[name]
        if dtype.is_float() and sig is not None:
            # nulls stay null (written as an empty field, not as a quoted empty string)
            cols.append(pl.Series(name, [None if v is None else format_float(v, sig) for v in s.to_list()],
                                  dtype=pl.String))
        else:
            cols.append(s)
    out = pl.DataFrame(cols) if cols else df
    with atomic_path(path) as tmp:
        out.write_csv(tmp, separator=sep, null_value="", quote_style="necessary", line_terminator="\n")
    logger.debug(f"wrote {path} ({df.height} rows × {df.width} cols)")
    return path
