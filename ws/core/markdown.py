"""The markdown the reports write: the one format of every number in prose, table cells,
intervals, layer lists, and the "Which claims survive" table with its :class:`Claim` type.

v7, v8 and the cross-adapter comparison all write their conclusions with these helpers,
so a number or a verdict reads the same in every file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "SelfTest",
    "Claim",
    "cell",
    "ci_text",
    "claims_section",
    "finite",
    "first_row",
    "fmt_num",
    "fmt_pct",
    "layers_text",
    "pct",
    "row_of",
]


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


def finite(x: Any) -> bool:
    """True for a real, finite number (not None, not a string, not NaN/inf)."""
    return x is not None and not isinstance(x, str) and math.isfinite(float(x))


def pct(x: Any) -> str:
    """A fraction (a retention, 0.73) as a percentage for prose (``73.0%``)."""
    return fmt_pct(100 * float(x)) if finite(x) else "NaN%"


def ci_text(x: Any, lo: Any, hi: Any, fmt=fmt_num) -> str:
    """``x [lo, hi]``, or ``x`` alone when the interval is missing."""
    if not (finite(lo) and finite(hi)):
        return fmt(x)
    return f"{fmt(x)} [{fmt(lo)}, {fmt(hi)}]"


def cell(x: Any) -> str:
    """Text for one markdown table cell: pipes escaped, on one line."""
    s = "" if x is None else str(x)
    return s.replace("|", "\\|").replace("\n", " ").strip()


def df_table(df: pl.DataFrame) -> str:
    """A markdown table of ``df``, every value as text (:func:`cell`)."""
    head = "| " + " | ".join(df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.iter_rows()]
    return "\n".join([head, "|" + "---|" * len(df.columns), *rows])


def layers_text(layers: Iterable[int] | None) -> str:
    """``9–23 (15 layers)`` for a run of layers, a comma list otherwise."""
    if layers is None:
        return "not recorded"
    ls = sorted(int(l) for l in layers)
    if not ls:
        return "none"
    if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 2:
        return f"{ls[0]}–{ls[-1]} ({len(ls)} layers)"
    return ", ".join(str(l) for l in ls) + f" ({len(ls)} layers)"


def row_of(df: pl.DataFrame | None, name: str, column: str = "subspace") -> dict | None:
    """The first row whose ``column`` is ``name``, as a dict (None when absent)."""
    if df is None:
        return None
    sub = df.filter(pl.col(column) == name)
    return sub.row(0, named=True) if sub.height else None


def first_row(df: pl.DataFrame) -> dict | None:
    """The first row of ``df`` as a dict (None when empty): the leader of a ranked table."""
    return df.row(0, named=True) if df.height else None


@dataclass(frozen=True)
class SelfTest:
    """One self-test row's verdict: ``passed`` and the measured ``detail`` (v7's and v8's)."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Claim:
    """A headline claim, the evidence from the run, and whether it survives (None: this run
    cannot test it)."""

    claim: str
    evidence: str
    survives: bool | None

    @property
    def verdict(self) -> str:
        return {True: "survives", False: "does not survive", None: "not tested"}[self.survives]


def claims_section(claims: Sequence[Claim], title: str = "## Which claims survive") -> list[str]:
    """The claims table (one row per claim: claim | evidence | verdict); a failed claim's
    verdict in bold. Empty when there are no claims."""
    if not claims:
        return []
    L = [title, "", "| claim | evidence | verdict |", "|---|---|---|"]
    for c in claims:
        verdict = f"**{c.verdict}**" if c.survives is False else c.verdict
        L.append(f"| {cell(c.claim)} | {cell(c.evidence)} | {verdict} |")
    return L + [""]


def claims_frame(claims: Sequence[Claim]) -> pl.DataFrame:
    """The claims as a table: claim (backticks dropped), evidence, verdict."""
    return pl.DataFrame(
        [{"claim": c.claim.replace("`", ""), "evidence": c.evidence, "verdict": c.verdict} for c in claims],
        schema={"claim": pl.String, "evidence": pl.String, "verdict": pl.String},
    )
