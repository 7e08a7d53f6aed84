"""v7's figure: the joint activation / weight scatter of the candidates (``v7_joint_scatter``),
two panels (activation side, weight side), the leaders labelled, seeds' ranges as whiskers.
It only draws: the numbers come from the summary table (:mod:`ws.v7.report` writes the text).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ws.core.io import atomic_path
from ws.core.log import logger
from ws.core.markdown import fmt_num
from ws.stats import RANKED_AXES, by_score

__all__ = ["family_colors", "joint_scatter", "joint_scatter_figure"]


def _spread(targets: Sequence[float], gap: float, lo: float = 0.02, hi: float = 0.98) -> list[float]:
    """1-D label placement: positions as close as possible to ``targets`` (ascending
    order kept) with at least ``gap`` between neighbours, inside ``[lo, hi]``."""
    n = len(targets)
    if n == 0:
        return []
    if gap * (n - 1) > hi - lo:  # too many labels: spread evenly
        return list(np.linspace(lo, hi, n))
    y = [min(max(t, lo), hi) for t in targets]
    for i in range(1, n):
        y[i] = max(y[i], y[i - 1] + gap)
    if y[-1] > hi:
        y[-1] = hi
        for i in range(n - 2, -1, -1):
            y[i] = min(y[i], y[i + 1] - gap)
    return y


def family_colors(families: Iterable[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    fams = sorted(set(families))
    cmap = colormaps["tab20"] if len(fams) > 10 else colormaps["tab10"]
    n = cmap.N
    # tab20 pairs dark/light shades: take the dark ones first, then the light ones
    order = list(range(0, n, 2)) + list(range(1, n, 2)) if n == 20 else list(range(n))
    return {f: cmap(order[i % n]) for i, f in enumerate(fams)}


_CEILING_COLOR = "gold"
#: where each panel sits in the figure: a square-ish plot, its label column to its right
_PANEL_RECTS = ((0.045, 0.22, 0.255, 0.64), (0.56, 0.22, 0.255, 0.64))
_SCATTER_COLUMNS = {"subspace", "family", "axis_kind", "kind", "mean_conc_act", "mean_conc_w_combined", "joint_score"}


@dataclass(frozen=True)
class _Point:
    """One row as drawn: its place (``x``, ``y``; raised to the floor when not positive, then
    ``clipped``), whether it is a ceiling, its joint score, its family's colour."""

    name: str
    x: float
    y: float
    ceiling: bool
    joint: float | None
    clipped: bool
    color: Any


def joint_scatter(
    summary: pl.DataFrame,
    path_png: str | Path,
    path_pdf: str | Path,
    top_n: int = 8,
    title: str | None = None,
    seeds: pl.DataFrame | None = None,
) -> tuple[Path, Path]:
    """Two log-log panels of ``mean_conc_act`` (R_act, x) against ``mean_conc_w_combined``
    (R_w, y): write + mixed candidates on the left, read candidates on the right.

    Colour = family; ceilings = large stars in both panels; dashed lines at 1 (a random
    subspace); the ``top_n`` rows of each panel by joint_score are numbered and labelled in
    a column beside the panel, joined to their points by leader lines (labels never
    overlap). Non-positive or NaN values are drawn at a floor with a hollow marker.
    seeds: optional long table (``subspace, seed, mean_conc_act, mean_conc_w_combined``, one
    row per seed); with two or more seeds, every labelled point gets whiskers from the
    smallest to the largest value over the seeds on both axes.
    Saves PNG (150 dpi) and PDF atomically (the figure is :func:`joint_scatter_figure`);
    returns both paths.
    """
    fig = joint_scatter_figure(summary, top_n, title, seeds)
    path_png, path_pdf = Path(path_png), Path(path_pdf)
    with atomic_path(path_png) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    with atomic_path(path_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    logger.debug(f"wrote {path_png} and {path_pdf}")
    return path_png, path_pdf


def joint_scatter_figure(summary: pl.DataFrame, top_n: int = 8, title: str | None = None, seeds: pl.DataFrame | None = None):
    """The figure :func:`joint_scatter` saves: the two panels, the legend and the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    df = _scatter_table(summary)
    floor, lim = _scatter_limits(df)
    ranges = _seed_ranges(seeds, floor)
    colors = family_colors(df.filter(pl.col("kind") != "ceiling")["family"].to_list())
    order = {n: i for i, n in enumerate(by_score(df, "joint_score")["subspace"].to_list())}
    fig = Figure(figsize=(18, 8.2))
    FigureCanvasAgg(fig)
    any_clipped = False
    for (ptitle, mask), rect in zip(_panels(df), _PANEL_RECTS, strict=True):
        ax = _panel_axes(fig, rect, ptitle, lim)
        pts = _points(df, mask, floor, colors)
        for p in pts:
            _draw_point(ax, p)
        any_clipped |= any(p.clipped for p in pts)
        if not mask.any():
            ax.text(
                0.5, 0.5, "no candidates of this kind", transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.4"
            )
        chosen = _labelled(pts, order, top_n)
        if chosen:
            _draw_whiskers(ax, chosen, ranges)
            _draw_labels(fig, ax, rect, chosen)
    _draw_legend(fig, colors, seeds["seed"].n_unique() if ranges else 0, any_clipped)
    fig.suptitle(
        title
        or "Where does the weight diff act? Activation vs weight concentration "
        "(mean over LoRA-touched layers; 1 = random subspace)",
        fontsize=12.5,
        y=0.975,
    )
    return fig


def _scatter_table(summary: pl.DataFrame) -> pl.DataFrame:
    """The summary with its three scores as floats; ``ValueError`` naming missing columns."""
    miss = _SCATTER_COLUMNS - set(summary.columns)
    if miss:
        raise ValueError(f"joint_scatter: summary lacks columns {sorted(miss)}")
    return summary.with_columns(pl.col("mean_conc_act", "mean_conc_w_combined", "joint_score").cast(pl.Float64))


def _scatter_limits(df: pl.DataFrame) -> tuple[float, tuple[float, float]]:
    """``(floor, (lo, hi))``: the floor (a third of the smallest positive score) that
    non-positive and NaN scores are drawn at, and both axes' limits (1 always inside)."""
    x_all = df["mean_conc_act"].to_numpy()
    y_all = df["mean_conc_w_combined"].to_numpy()
    pos = np.concatenate([x_all[np.isfinite(x_all) & (x_all > 0)], y_all[np.isfinite(y_all) & (y_all > 0)]])
    floor, top = (float(pos.min()) / 3.0, float(pos.max())) if pos.size else (1e-2, 1.0)
    return floor, (min(floor, 1.0) / 1.6, max(top, 1.0) * 1.8)


def _panels(df: pl.DataFrame) -> list[tuple[str, np.ndarray]]:
    """``(title, row mask)`` of each panel: write + mixed rows, then read rows."""
    return [
        ("write + mixed hypotheses", df["axis_kind"].is_in(list(RANKED_AXES)).to_numpy()),
        ("read hypotheses (kept out of the joint ranking)", (df["axis_kind"] == "read").to_numpy()),
    ]


def _panel_axes(fig, rect: Sequence[float], ptitle: str, lim: tuple[float, float]):
    """One empty log-log panel: its limits, the dashed lines at 1 (random), grid and labels."""
    ax = fig.add_axes(list(rect))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.axvline(1.0, ls="--", lw=1.0, color="0.45", zorder=1)
    ax.axhline(1.0, ls="--", lw=1.0, color="0.45", zorder=1)
    ax.text(1.0, lim[1], " random = 1", fontsize=7.5, color="0.4", va="top", ha="left")
    ax.grid(True, which="major", lw=0.4, color="0.9", zorder=0)
    ax.set_title(ptitle, fontsize=11)
    ax.set_xlabel("R_act = energy_frac_act / (k/d)   (activation label)", fontsize=9.5)
    ax.set_ylabel("R_w = energy_frac_w_combined / (k/d)   (weight label)", fontsize=9.5)
    ax.tick_params(labelsize=8.5)
    return ax


def _positive(v: float | None) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def _points(df: pl.DataFrame, mask: np.ndarray, floor: float, colors: Mapping[str, Any]) -> list[_Point]:
    """The panel's rows (``mask``) and every ceiling, in table order, placed on the axes."""
    is_ceiling = (df["kind"] == "ceiling").to_numpy()
    pts = []
    for i in np.flatnonzero(mask | is_ceiling):
        r = df.row(int(i), named=True)
        x, y = r["mean_conc_act"], r["mean_conc_w_combined"]
        ceil = bool(is_ceiling[i])
        pts.append(
            _Point(
                name=r["subspace"],
                x=x if _positive(x) else floor,
                y=y if _positive(y) else floor,
                ceiling=ceil,
                joint=r["joint_score"],
                clipped=not (_positive(x) and _positive(y)),
                color=None if ceil else colors[r["family"]],
            )
        )
    return pts


def _draw_point(ax, p: _Point) -> None:
    """The marker rule: a ceiling is a large gold star; a candidate a dot of its family's
    colour, hollow when a score is not positive (drawn at the floor)."""
    if p.ceiling:
        ax.scatter([p.x], [p.y], marker="*", s=420, c=_CEILING_COLOR, edgecolors="black", linewidths=1.0, zorder=5)
    elif p.clipped:
        ax.scatter([p.x], [p.y], marker="o", s=46, facecolors="none", edgecolors=[p.color], linewidths=1.4, zorder=3)
    else:
        ax.scatter([p.x], [p.y], marker="o", s=46, c=[p.color], edgecolors="white", linewidths=0.6, zorder=3)


def _labelled(pts: Sequence[_Point], order: Mapping[str, int], top_n: int) -> list[tuple[str, _Point]]:
    """``(tag, point)`` of the labelled points: the panel's ``top_n`` candidates by joint
    score, numbered from 1 (``order``: each name's place in the ranking), then the ceilings (★)."""
    hyps = sorted((p for p in pts if not p.ceiling), key=lambda p: order[p.name])
    return [(f"{j + 1}", p) for j, p in enumerate(hyps[:top_n])] + [("★", p) for p in pts if p.ceiling]


def _draw_whiskers(ax, chosen: Sequence[tuple[str, _Point]], ranges: Mapping[str, Any]) -> None:
    """Min–max over the seeds on both axes for every labelled point that has a range."""
    for _tag, p in chosen:
        rg = ranges.get(p.name)
        if rg is None or p.clipped:
            continue
        (x0, x1), (y0, y1) = rg
        wc = "darkgoldenrod" if p.ceiling else p.color
        for xs, ys in (([x0, x1], [p.y, p.y]), ([p.x, p.x], [y0, y1])):
            ax.plot(
                xs,
                ys,
                color=wc,
                lw=2.0,
                alpha=0.8,
                zorder=2,
                solid_capstyle="butt",
                marker="|" if xs[0] != xs[1] else "_",
                markersize=6,
                markeredgewidth=1.4,
            )


def _draw_labels(fig, ax, rect: Sequence[float], chosen: Sequence[tuple[str, _Point]]) -> None:
    """The label column right of the panel, in the points' height order and never
    overlapping, each joined to its point by a leader line; the tag beside each candidate."""
    to_axes = ax.transData + ax.transAxes.inverted()
    targets = sorted(((float(to_axes.transform((p.x, p.y))[1]), tag, p) for tag, p in chosen), key=lambda t: t[0])
    gap = 15.0 / (fig.get_figheight() * 72 * rect[3])  # ~15 pt per label line
    for (_ty, tag, p), ly in zip(targets, _spread([t[0] for t in targets], gap), strict=True):
        text = f"{tag}  {p.name}" if p.ceiling else f"{tag}. {p.name}  ({fmt_num(p.joint)})"
        ax.annotate(
            text,
            xy=(p.x, p.y),
            xycoords="data",
            xytext=(1.04, ly),
            textcoords="axes fraction",
            fontsize=8.5,
            ha="left",
            va="center",
            annotation_clip=False,
            fontweight="bold" if p.ceiling else "normal",
            arrowprops=dict(arrowstyle="-", lw=0.5, color="0.7", shrinkA=0, shrinkB=4),
        )
        if not p.ceiling:
            ax.annotate(tag, xy=(p.x, p.y), xytext=(4, 4), textcoords="offset points", fontsize=7.5, color="0.15", zorder=6)
    ax.text(
        1.04,
        1.0,
        "top by joint score (joint)",
        transform=ax.transAxes,
        fontsize=8.5,
        ha="left",
        va="bottom",
        color="0.3",
        style="italic",
    )


def _draw_legend(fig, colors: Mapping[str, Any], n_seeds: int, any_clipped: bool) -> None:
    """Below the panels: one entry per family, the ceiling star, the seed whiskers (with
    ``n_seeds`` ≥ 2) and the hollow floor marker (when a point was drawn at the floor)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=c, markersize=7, label=f) for f, c in colors.items()]
    star = dict(markerfacecolor=_CEILING_COLOR, markeredgecolor="black", markersize=14)
    handles.append(Line2D([], [], marker="*", ls="", **star, label="ceiling (B side)"))
    if n_seeds:
        whisker = dict(color="0.25", lw=2.0, alpha=0.8, marker="|", markersize=6)
        handles.append(Line2D([], [], **whisker, label=f"min–max over {n_seeds} seeds (labelled rows)"))
    if any_clipped:
        hollow = dict(marker="o", ls="", markerfacecolor="none", markeredgecolor="0.3", markersize=7)
        handles.append(Line2D([], [], **hollow, label="≤ 0 or NaN: drawn at floor"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(7, len(handles)),
        fontsize=8.5,
        frameon=False,
        title="family",
        title_fontsize=9,
        bbox_to_anchor=(0.5, 0.0),
    )


def _seed_ranges(seeds: pl.DataFrame | None, floor: float) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """``subspace -> ((x_min, x_max), (y_min, y_max))`` of R_act / R_w over the seeds (values
    that are not positive are raised to ``floor``); empty with fewer than two seeds."""
    if seeds is None or not {"subspace", "seed", "mean_conc_act", "mean_conc_w_combined"} <= set(seeds.columns):
        return {}
    if seeds["seed"].n_unique() < 2:
        return {}
    g = (
        seeds.with_columns(pl.col("mean_conc_act", "mean_conc_w_combined").cast(pl.Float64).fill_nan(None))
        .group_by("subspace")
        .agg(
            pl.col("mean_conc_act").min().alias("x0"),
            pl.col("mean_conc_act").max().alias("x1"),
            pl.col("mean_conc_w_combined").min().alias("y0"),
            pl.col("mean_conc_w_combined").max().alias("y1"),
        )
    )
    out = {}
    for r in g.iter_rows(named=True):
        if any(r[c] is None for c in ("x0", "x1", "y0", "y1")):
            continue
        f = lambda v: max(float(v), floor)  # noqa: E731
        out[r["subspace"]] = ((f(r["x0"]), f(r["x1"])), (f(r["y0"]), f(r["y1"])))
    return out
