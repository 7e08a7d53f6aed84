"""Numbers in prose: the one format of every number the markdown reports and verdicts write."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["fmt_num", "fmt_pct"]


def fmt_num(x: Any, sig: int = 3) -> str:
    """A number for prose: 3 significant digits, ``NaN`` for missing values."""
    if x is None:
        return "NaN"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    s = f"{x:.{sig}g}"
    return "0" if s == "-0" else s


def fmt_pct(x: Any) -> str:
    """A percentage for prose: one decimal and ``%`` (``NaN%`` when missing)."""
    if x is None or not math.isfinite(float(x)):
        return "NaN%"
    return f"{float(x):.1f}%"
