"""Figures and markdown of the v8 sweep (the tables are written by :func:`ws.core.io.write_table`).

Every number in the markdown is formatted from the DataFrames or the ``info`` dict passed
in (the run's own results); files are written atomically by the caller's file set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ws.bases.vectors import is_vector
from ws.behavior import data
from ws.core.caveats import CARRY_INSIDE_MIN, CARRY_OUTSIDE_MAX, FDR_ALPHA, NULL_FIT_ALPHA
from ws.core.io import atomic_path
from ws.core.markdown import Claim, cell, ci_text, claims_section, finite, fmt_num, layers_text, pct, row_of
from ws.stats import CEILING_ACT, CEILING_W
from ws.v7.figure import family_colors
from ws.v7.report import definitions_md
from ws.v8.causal import effect_measurable
from ws.v8.results import ConclusionFacts

__all__ = ["causal_figure", "block_figure", "causal_claims", "definitions_v8_md", "conclusion_v8_md"]


def _ci(r: Mapping, col: str, as_pct: bool = True) -> str:
    """``r[col]`` with its CI columns (``<col>_ci_lo``, ``<col>_ci_hi``), as a percentage or a number."""
    return ci_text(r.get(col), r.get(f"{col}_ci_lo"), r.get(f"{col}_ci_hi"), fmt=pct if as_pct else fmt_num)


def _save(fig, path_png: str | Path, path_pdf: str | Path) -> tuple[Path, Path]:
    path_png, path_pdf = Path(path_png), Path(path_pdf)
    with atomic_path(path_png) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    with atomic_path(path_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    return path_png, path_pdf


def _style(kind: str) -> dict:
    if kind == "ceiling":
        return dict(marker="*", s=300, c="gold", edgecolors="black", linewidths=0.9, zorder=5)
    if kind == "self-test":
        return dict(marker="D", s=60, c="0.55", edgecolors="black", linewidths=0.6, zorder=4)
    return dict(marker="o", s=55, edgecolors="white", linewidths=0.6, zorder=4)


# ----------------------------------------------------------------------------- figures
def _whiskers(ax, r: Mapping, color) -> None:
    x, y = r["retention_inside"], r["retention_outside"]
    if finite(r["retention_inside_ci_lo"]):
        ax.plot([r["retention_inside_ci_lo"], r["retention_inside_ci_hi"]], [y, y], color=color, lw=1.3, alpha=0.7, zorder=3)
    if finite(r["retention_outside_ci_lo"]):
        ax.plot([x, x], [r["retention_outside_ci_lo"], r["retention_outside_ci_hi"]], color=color, lw=1.3, alpha=0.7, zorder=3)


def _plane_panel(ax, table: pl.DataFrame, null: pl.DataFrame, colors: Mapping[str, Any]) -> list[str]:
    """Inside (x) vs outside (y) retention with CIs; returns the names in tag order."""
    ax.axhline(1, ls="--", lw=1, color="0.45")
    ax.axvline(1, ls="--", lw=1, color="0.45")
    ax.axhline(0, lw=0.6, color="0.7")
    ax.axvline(0, lw=0.6, color="0.7")
    ax.axvline(CARRY_INSIDE_MIN, ls=":", lw=1, color="0.45")
    ax.axhline(CARRY_OUTSIDE_MAX, ls=":", lw=1, color="0.45")
    if null.height:
        lo = float(null["retention"].min())
        p95 = float(null["retention"].quantile(0.95, interpolation="linear"))
        ax.axvspan(lo, p95, color="0.87", zorder=0, label="random rank-k inside retention: lowest to 95th percentile")
        ax.plot(
            null["retention"].to_numpy(),
            np.zeros(null.height),
            "|",
            color="0.3",
            ms=14,
            mew=1.2,
            zorder=2,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label=f"one random rank-k subspace (inside only; {null.height} draws)",
        )
    names, points = [], []
    for r in table.iter_rows(named=True):
        if not (finite(r["retention_inside"]) and finite(r["retention_outside"])):
            continue
        c = colors.get(r["family"], "0.3") if r["kind"] == "A-hypothesis" else ("gold" if r["kind"] == "ceiling" else "0.55")
        _whiskers(ax, r, "darkgoldenrod" if r["kind"] == "ceiling" else c)
        st = _style(r["kind"])
        if r["kind"] == "A-hypothesis":
            st["c"] = [c]
        if r["kind"] == "A-hypothesis" and r["carries"]:  # the finding: ringed, named
            st.update(s=140, edgecolors="darkgreen", linewidths=2.2, zorder=6)
        ax.scatter([r["retention_inside"]], [r["retention_outside"]], **st)
        names.append(r["subspace"])
        points.append((len(names), r))
    xl, yl = ax.get_xlim(), ax.get_ylim()  # the carries region, shaded within the data's own limits
    ax.fill_between([CARRY_INSIDE_MIN, max(xl[1], CARRY_INSIDE_MIN)], yl[0], CARRY_OUTSIDE_MAX, color="#d9f2d9", zorder=0)
    ax.fill_between([], [], color="#d9f2d9", label="carries most of the effect")
    ax.set_xlim(xl)
    ax.set_ylim(yl)
    _plane_labels(ax, points)
    ax.set_xlabel("inside retention: spread(P_B Δ) / spread(writers-only)")
    ax.set_ylabel("outside retention: spread((I − P_B) Δ) / spread(writers-only)")
    ax.set_title(
        f"carries = inside CI ≥ {pct(CARRY_INSIDE_MIN)} and outside CI ≤ {pct(CARRY_OUTSIDE_MAX)} (dotted lines)\n"
        "above chance = inside CI above the random null and outside CI below 1",
        fontsize=9,
    )
    if ax.get_legend_handles_labels()[0]:  # no null band when no retention could be computed
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    return names


def _plane_labels(ax, points: list[tuple[int, Mapping]]) -> None:
    """Each point's number; points closer than 4 % of the axes' span share one label (``2–10`` or
    ``2, 5, 7``) so that a cluster at the null stays readable; a tested candidate that carries
    the behaviour is labelled with its name."""
    xs = [r["retention_inside"] for _, r in points]
    ys = [r["retention_outside"] for _, r in points]
    if not points:
        return
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1.0)
    groups: list[list[tuple[int, Mapping]]] = []
    for p in points:
        x, y = p[1]["retention_inside"], p[1]["retention_outside"]
        near = next(
            (g for g in groups if math.hypot(g[0][1]["retention_inside"] - x, g[0][1]["retention_outside"] - y) < 0.04 * span),
            None,
        )
        (near.append(p) if near is not None else groups.append([p]))
    for g in groups:
        nums = [n for n, _ in g]
        text = str(nums[0]) if len(nums) == 1 else _number_list(nums)
        r = g[0][1]
        bold = len(g) == 1 and r["kind"] == "A-hypothesis" and r["carries"]
        if bold:
            text = f"{text}. {r['subspace']}: carries"
        ax.annotate(
            text,
            (r["retention_inside"], r["retention_outside"]),
            xytext=(6, 6) if len(g) == 1 else (4, 11),
            textcoords="offset points",
            fontsize=9 if bold else 8,
            fontweight="bold" if bold else "normal",
            color="darkgreen" if bold else "black",
        )


def _number_list(nums: list[int]) -> str:
    """Numbers as runs: ``[2, 3, 4, 5, 9]`` -> ``2–5, 9``."""
    runs: list[list[int]] = []
    for n in sorted(nums):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def _strip_panel(ax, table: pl.DataFrame, null: pl.DataFrame, null_nm: pl.DataFrame) -> None:
    """One row per candidate: inside (filled) and norm-matched inside (hollow) retention with
    CIs, each null's 95th percentile as a tick (red: inside, orange: norm-matched); the random
    draws as clouds in the last two rows."""
    t = table.with_columns(pl.col("retention_inside").fill_nan(None)).sort("retention_inside", nulls_last=False)
    rng = np.random.default_rng(0)
    for i, r in enumerate(t.iter_rows(named=True)):
        for col, face in (("retention_inside", None), ("retention_normmatched", "none")):
            if finite(r[col]):
                ax.plot([r[f"{col}_ci_lo"], r[f"{col}_ci_hi"]], [i + (0.15 if face else 0)] * 2, color="0.4", lw=1.2)
                ax.scatter(
                    [r[col]],
                    [i + (0.15 if face else 0)],
                    marker="*" if r["kind"] == "ceiling" else "o",
                    s=80 if r["kind"] == "ceiling" else 30,
                    facecolors=face or "tab:blue",
                    edgecolors="tab:blue",
                    zorder=4,
                )
        for col, color in (("null_p95", "tab:red"), ("null_normmatched_p95", "tab:orange")):
            if finite(r[col]):
                ax.plot([r[col]] * 2, [i - 0.3, i + 0.3], color=color, lw=1.5)
    for j, (nl, face) in enumerate(((null, "0.5"), (null_nm, "none"))):
        if nl.height:
            ax.scatter(
                nl["retention"].to_numpy(),
                t.height + j + rng.uniform(-0.25, 0.25, nl.height),
                s=14,
                facecolors=face,
                edgecolors="0.5",
                alpha=0.8,
                zorder=3,
            )
    ax.set_yticks(list(range(t.height + 2)))
    labels = ax.set_yticklabels(
        t["subspace"].to_list() + [f"random rank-k ({null.height})", f"random rank-k, norm-matched ({null_nm.height})"],
        fontsize=8,
    )
    for lab, kind, carried in zip(labels, t["kind"].to_list(), t["carries"].to_list(), strict=False):
        if kind == "A-hypothesis" and carried:  # the finding, as in the left panel
            lab.set_color("darkgreen")
            lab.set_fontweight("bold")
    ax.axvline(1, ls="--", lw=1, color="0.45")
    ax.axvline(0, lw=0.6, color="0.7")
    ax.set_xlabel(
        "retention of the writers' effect (filled: inside; hollow: norm-matched inside)\n"
        "ticks: 95th percentile of the random null (red: inside, orange: norm-matched)"
    )
    ax.set_title("inside retention against the random null", fontsize=10)


def causal_figure(
    table: pl.DataFrame, variants: pl.DataFrame, path_png: str | Path, path_pdf: str | Path, title: str = ""
) -> tuple[Path, Path]:
    """Two panels: inside vs outside retention (CIs, ceilings as stars, the random null as a
    band and ticks) and one row per candidate against the random cloud. Saved atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = table["null_profile"].value_counts(sort=True)["null_profile"][0]  # draw the most common profile's null
    drawn = variants.filter((pl.col("null_profile") == top) & pl.col("retention").is_finite())  # none: no ratio
    null = drawn.filter(pl.col("part") == "null_inside")
    null_nm = drawn.filter(pl.col("part") == "null_normmatched")
    fig = Figure(figsize=(17, 7.8))
    FigureCanvasAgg(fig)
    ax1 = fig.add_axes([0.05, 0.16, 0.38, 0.72])
    ax2 = fig.add_axes([0.67, 0.16, 0.31, 0.72])
    colors = family_colors(table.filter(pl.col("kind") == "A-hypothesis")["family"].to_list() or ["-"])
    names = _plane_panel(ax1, table, null, colors)
    fig.text(0.445, 0.88, "\n".join(f"{i + 1}. {n}" for i, n in enumerate(names)), fontsize=8, va="top", family="monospace")
    _strip_panel(ax2, table, null, null_nm)
    fig.suptitle(title or "Does the subspace carry the behaviour? Retention of the writers' effect", fontsize=12)
    return _save(fig, path_png, path_pdf)


def _log_axes(ax) -> None:
    """Log scales with plain tick labels (1, 2, 0.5), no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        scale("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def block_figure(
    summary: pl.DataFrame, scope: pl.DataFrame, path_png: str | Path, path_pdf: str | Path, title: str = "", top_n: int = 8
) -> tuple[Path, Path]:
    """Left: R_act against the cumulative label (x) and the block-local label (y), write/mixed
    candidates and ceilings, log-log. Right: per layer, the overlap of the dW oracle with the
    cumulative and the block-local activation oracle (and of the two activation oracles)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 7))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.add_axes([0.05, 0.1, 0.32, 0.78]), fig.add_axes([0.62, 0.1, 0.35, 0.78])
    s = summary.filter(pl.col("axis_kind").is_in(["write", "mixed", "ceiling"]))
    s = s.with_columns(pl.col("mean_conc_act", "mean_conc_act_block").cast(pl.Float64).fill_nan(None))
    s = s.filter((pl.col("mean_conc_act") > 0) & (pl.col("mean_conc_act_block") > 0))
    colors = family_colors(s.filter(pl.col("kind") != "ceiling")["family"].to_list() or ["-"])
    for r in s.iter_rows(named=True):
        st = _style(r["kind"])
        if r["kind"] != "ceiling":
            st["c"] = [colors[r["family"]]]
        ax.scatter([r["mean_conc_act"]], [r["mean_conc_act_block"]], **st)
    top = s.filter(pl.col("kind") == "A-hypothesis").sort("mean_conc_act_block", descending=True).head(top_n)
    for i, r in enumerate(top.iter_rows(named=True)):
        ax.annotate(
            str(i + 1), (r["mean_conc_act"], r["mean_conc_act_block"]), xytext=(4, 4), textcoords="offset points", fontsize=8
        )
    fig.text(
        0.385,
        0.88,
        "top by block-local R_act\n" + "\n".join(f"{i + 1}. {n}" for i, n in enumerate(top["subspace"])),
        fontsize=8,
        va="top",
        family="monospace",
    )
    if s.height:
        lo = min(float(s["mean_conc_act"].min()), float(s["mean_conc_act_block"].min()), 1.0) / 1.5
        hi = max(float(s["mean_conc_act"].max()), float(s["mean_conc_act_block"].max()), 1.0) * 1.5
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    _log_axes(ax)
    ax.axvline(1, ls="--", lw=1, color="0.45")
    ax.axhline(1, ls="--", lw=1, color="0.45")
    ax.set_xlabel("R_act, cumulative label (v7)")
    ax.set_ylabel("R_act, block-local label (what each block writes)")
    ax.set_title("write + mixed candidates (stars: ceilings); diagonal: equal", fontsize=10)
    lay = scope["layer"].to_numpy()
    for col, lab in (
        ("overlap_dW_act", "dW oracle vs cumulative act oracle"),
        ("overlap_dW_act_block", "dW oracle vs block-local act oracle"),
        ("overlap_act_act_block", "cumulative vs block-local act oracle"),
    ):
        ax2.plot(lay, scope[col].to_numpy(), marker="o", ms=3.5, label=lab)
    ax2.plot(lay, scope["overlap_random"].to_numpy(), ls="--", color="0.5", label="two random rank-k subspaces (k/d)")
    touched = scope.filter(pl.col("touched"))["layer"].to_list()
    if touched:
        ax2.axvspan(min(touched) - 0.5, max(touched) + 0.5, color="0.92", zorder=0, label="layers the LoRA touched")
    from matplotlib.ticker import MaxNLocator

    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("layer")
    ax2.set_ylabel("‖B₁ᵀB₂‖²_F / min(r₁, r₂)")
    ax2.set_ylim(-0.02, 1.02)
    ax2.legend(fontsize=8, frameon=False)
    ax2.set_title("scope: which label does the diff's own write space match?", fontsize=10)
    fig.suptitle(title or "Block-local vs cumulative activation label", fontsize=12)
    return _save(fig, path_png, path_pdf)


# ----------------------------------------------------------------------------- claims
def _tag(kind: str) -> str:
    return {"ceiling": " (ceiling, B side)", "self-test": " (self-test row)"}.get(kind, "")


#: the rule of "carries" in words (:func:`ws.v8.causal.carries`)
CARRY_RULE = (
    f"inside CI ≥ {pct(CARRY_INSIDE_MIN)} and outside CI ≤ {pct(CARRY_OUTSIDE_MAX)} of the writers' effect, "
    "inside CI above the random null's 95th percentile"
)
#: the rule of "contributes above chance" in words (:func:`ws.v8.causal.above_chance`)
CHANCE_RULE = "inside CI above the random null's 95th percentile and outside CI below the writers' effect (100%)"
#: where the writers-only effect's CI spans zero
NO_EFFECT = "the diff's writers have no measurable effect to divide by"


def _verdicts(r: Mapping) -> str:
    """The two verdicts of one row in words."""
    if r.get("carries") is None:
        return "cannot be judged"
    if r["carries"]:
        return "carries the behaviour (most of the writers' effect)"
    return "contributes above chance, does not carry most of it" if r.get("above_chance") else "does not beat chance"


def causal_claims(table: pl.DataFrame) -> list[Claim]:
    """A :class:`~ws.core.markdown.Claim` per tested A-hypothesis and ceiling (the self-test rows
    are checks, reported with the self-tests): "`X` carries the behaviour" survives only when it
    carries most of the writers' effect (:data:`CARRY_RULE`); the evidence also says whether it
    contributes above chance (:data:`CHANCE_RULE`). None where a number is missing."""
    out = []
    for r in table.filter(pl.col("kind") != "self-test").iter_rows(named=True):
        ev = (
            f"inside {_ci(r, 'retention_inside')} vs random rank-k 95th percentile {pct(r['null_p95'])}; "
            f"outside {_ci(r, 'retention_outside')} (carries: {CARRY_RULE}); "
            f"contributes above chance: {_yes_no(r.get('above_chance'))}"
        )
        out.append(Claim(f"`{r['subspace']}` carries the behaviour{_tag(r['kind'])}", ev, r["carries"]))
    return out


def _yes_no(x: bool | None) -> str:
    return {True: "yes", False: "no", None: "—"}[x]


# ----------------------------------------------------------------------------- definitions
TERMS = [
    (
        "writers-only",
        "the diff restricted to `o_proj` and `down_proj` (the tensors that write into the residual "
        "stream) of the blocks the LoRA touched; the reference every retention is measured against",
    ),
    (
        "inside",
        "per touched layer, each writer delta Δ (`[d, in]`, rows in residual space) replaced by `P_B Δ`, "
        "`P_B = BBᵀ` for the candidate's basis B of that layer: only what the block writes into span(B)",
    ),
    ("outside", "per touched layer `(I − P_B) Δ`: everything the writers write except into span(B)"),
    (
        "norm-matched inside",
        "the inside part of each layer times one factor so that the layer's two writer deltas "
        "together have the writers-only Frobenius norm (`normmatch_scale_max` is the largest factor)",
    ),
    (
        "spread",
        "on one prompt, the Yes/No log-ratio at α = +1 minus at α = −1 (nats); a set's spread is the mean "
        "over its prompts. Target set: held-out {target}; controls: held-out {controls} (the diff's own held-out "
        "effect prompts)",
    ),
    (
        "retention",
        "mean spread of a variant ÷ mean spread of writers-only on the same prompts; CI: percentile "
        "bootstrap over prompts, the same resampled prompts for numerator and denominator",
    ),
    (
        "random null",
        "per draw, a seeded Haar-random subspace per touched layer with the candidate's own rank there; "
        "its inside retention on the target set. z = (retention − null mean)/null sd; p: the normal tail fitted "
        "to the draws (Student t with draws − 1 degrees of freedom of (retention − mean)/(sd·√(1 + 1/draws)), "
        "exact for a normal null) when the draws pass a Shapiro–Wilk test of normality (its p ≥ "
        f"{NULL_FIT_ALPHA:g}), else the empirical p = (1 + #{{draw ≥ retention}})/(1 + draws), whose smallest value "
        "is 1/(1 + draws); q: Benjamini–Hochberg over the tested A-hypotheses, on the p used",
    ),
    (
        "carries",
        f"the subspace carries most of the writers' effect: inside retention's CI lower end ≥ {pct(CARRY_INSIDE_MIN)} "
        f"AND outside retention's CI upper end ≤ {pct(CARRY_OUTSIDE_MAX)} AND it contributes above chance",
    ),
    (
        "contributes above chance",
        "inside retention's CI lower end above the random null's 95th percentile AND outside retention's "
        "CI upper end below 1 (the writers-only effect): more than a random subspace, however little",
    ),
    (
        "no measurable effect",
        "when the writers-only spread's CI spans zero there is nothing to divide by: no retention, z, p or "
        "verdict is given (NaN / empty cells)",
    ),
    (
        "works as an intervention target",
        "norm-matched inside retention's CI lower end above the 95th percentile of "
        "the same random subspaces norm-matched (a blown-up random subspace moves the answer too)",
    ),
    (
        "writers' share",
        "spread(writers-only) ÷ spread(full diff) on the target set: how much of the diff's effect the "
        "residual writers alone carry",
    ),
    ("cumulative label", "v7's activation label: block outputs (last token, EVAL probes) at +w minus at −w"),
    (
        "block-local label",
        "`(post⁺ − pre⁺) − (post⁻ − pre⁻)` per block: block output minus block input, at +w "
        "minus at −w — what the block itself writes. Zero below the first touched block; blocks after the last "
        "touched one respond to their changed input, so it is not zero there",
    ),
    (
        "conc_act_block, z_act_block",
        "v7's activation score and closed-form null applied to the block-local label "
        "(`energy_frac_act_block`, `p_act_block`, `q_act_block` likewise; `joint_score_block` = geometric mean of "
        "`mean_conc_act_block` and `mean_conc_w_combined`)",
    ),
    (
        "activation oracle",
        "top-k eigenvectors of `A = mean x̂x̂ᵀ` of a label's rows at one layer: the rank-k "
        "subspace with the largest energy fraction any subspace can reach (`best_frac_*`)",
    ),
    ("dW oracle", "`dW_left_basis_ceiling`: the top-k left singular vectors of the layer's `[Δo_proj | Δdown_proj]`"),
    (
        "overlap",
        "`‖B₁ᵀB₂‖²_F / min(r₁, r₂)`: 1 when one subspace contains the other, 0 when orthogonal; two random "
        "rank-k subspaces of d dimensions give k/d (`overlap_random`)",
    ),
]

COLUMN_DOCS = {
    "causal_rank": "position by the seed-mean joint score among write/mixed A-hypotheses (empty: ceiling or self-test)",
    "seed_mean_joint_score": "v7's joint score, mean over the seeds",
    "mean_rank": "the candidate's mean rank over the touched layers",
    "null_profile": "the ranks per touched layer its random null matches (`8x15`: rank 8 on 15 layers)",
    "energy_frac_inside": "share of the writers' energy ‖Δ‖²_F (summed over touched layers) inside the candidate",
    "spread_<part>": "target-set spread of the variant (nats)",
    "retention_<part>, _ci_lo, _ci_hi": "retention of the variant and its bootstrap CI",
    "normmatch_scale_max": "largest per-layer factor the norm-matched variant applied (inf: a layer with nothing inside)",
    "null_n, null_mean, null_sd, null_p95": "number of random draws, their mean, sd and 95th percentile of inside retention",
    "z_inside, p_inside, q_inside": "inside retention against the random null (`p_inside`: the p used, BH gives `q_inside`)",
    "p_inside_method": "which p `p_inside` is: `normal` (the normal tail) or `empirical` (the fit was poor or impossible)",
    "p_inside_normal, p_inside_empirical": "the normal predictive tail and the empirical p (see `random null`)",
    "null_fit_p": f"Shapiro–Wilk p of the null's inside retentions (below {NULL_FIT_ALPHA:g}: the empirical p is used)",
    "null_normmatched_mean, null_normmatched_sd, null_normmatched_p95, z_normmatched": (
        "the same random subspaces norm-matched, and the norm-matched variant against them"
    ),
    "mass_<part>": "mean P(Yes) + P(No) over target prompts at α = ±1 (a log-ratio of tiny masses means little)",
    "spread_<control set>_<part>": "the variant's spread on a control set",
    "carries": "carries most of the writers' effect (see `carries` above; empty: cannot be judged)",
    "above_chance": "contributes above chance (see `contributes above chance` above)",
    "works_as_target": "norm-matched inside beats norm-matched random subspaces (see above)",
}


def definitions_v8_md(meta: pl.DataFrame, behavior=None) -> str:
    """Terms of v8 (with the behaviour's set names; default sycophancy), the columns of its new
    tables, then every candidate (as in v7)."""
    b = data.get_behavior(behavior)
    sets = {"target": b.labels[b.target], "controls": " and ".join(b.labels[c] for c in b.controls)}
    L = ["# v8 definitions", "", "## Terms", ""]
    L += [f"- **{t}**: {d.format(**sets) if '{target}' in d else d}" for t, d in TERMS]
    L += ["", "## Columns of `v8_causal.tsv` (also in `v8_summary.tsv` for the tested rows)", ""]
    L += [f"- `{c}`: {d}" for c, d in COLUMN_DOCS.items()]
    L += [
        "",
        "`v8_causal_variants.tsv` has one row per variant × prompt set (`full`, `writers_only`, each "
        "`<candidate>:<part>`, each null draw `random:<profile>:<j>:<inside or normmatched>` "
        "(part `null_inside` / `null_normmatched`), on the target set only): spread with CI, mean "
        "log-ratio at +1 and −1, mean and smallest Yes+No mass, the writers' energy inside, retention with CI.",
        "",
        "`v8_scope.tsv` has one row per layer: the ranks of the dW oracle and the two activation oracles, their "
        "pairwise overlaps, `overlap_random`, the best energy fraction at rank k, the participation ratio and the "
        "mean row norm of each label.",
        "",
    ]
    cand = definitions_md(meta).split("\n", 2)[2]  # drop the title line
    return "\n".join(L) + "\n## Candidates\n\n" + cand


# ----------------------------------------------------------------------------- conclusion
def _target_row(variants: pl.DataFrame, variant: str, s: str) -> dict | None:
    sub = variants.filter((pl.col("variant") == variant) & (pl.col("set") == s))
    return sub.row(0, named=True) if sub.height else None


def _writers_lines(variants: pl.DataFrame, info: ConclusionFacts) -> list[str]:
    sh, wsp, fsp = info.writers_share, info.writers_spread, info.full_spread
    out = [
        f"- **The residual writers** (`o_proj`, `down_proj` of layers {layers_text(info.layers_touched)}) carry "
        f"{pct(sh[0])} [{pct(sh[1])}, {pct(sh[2])}] of the full diff's effect on the {info.n_target} held-out "
        f"{info.target_label} (spread at α = ±1: writers-only {fmt_num(wsp[0])} nats "
        f"[{fmt_num(wsp[1])}, {fmt_num(wsp[2])}], full diff {fmt_num(fsp[0])} nats)."
    ]
    ctl = []
    for s in info.controls:
        w, f = _target_row(variants, "writers_only", s), _target_row(variants, "full", s)
        if w and f:
            ctl.append(f"{info.control_labels.get(s, s)}: writers-only {fmt_num(w['spread'])}, full {fmt_num(f['spread'])}")
    if ctl:
        out.append(f"  On the control sets (nats): {'; '.join(ctl)}.")
    return out


def _carry_text(r: Mapping) -> str:
    return (
        f"restricted to its subspace (mean rank {fmt_num(r['mean_rank'])}, {pct(r['energy_frac_inside'])} of the "
        f"writers' energy) the writers keep {_ci(r, 'retention_inside')} of their effect, against "
        f"{pct(r['null_mean'])} ± {pct(r['null_sd'])} for random subspaces of the same rank (95th percentile "
        f"{pct(r['null_p95'])}; z {fmt_num(r['z_inside'])}, {_p_text(r)}, q {fmt_num(r['q_inside'])}); "
        f"outside it {_ci(r, 'retention_outside')} remains; norm-matched inside gives {_ci(r, 'retention_normmatched')} "
        f"(norm-matched random subspaces: 95th percentile {pct(r['null_normmatched_p95'])})"
    )


def _p_text(r: Mapping) -> str:
    """``p 1e-30 (normal tail; empirical 0.0476)``: the p used and the other one."""
    if r.get("p_inside_method") == "normal":
        return f"p {fmt_num(r['p_inside'])} (normal tail; empirical {fmt_num(r.get('p_inside_empirical'))})"
    if r.get("p_inside_method") == "empirical":
        fit = fmt_num(r.get("null_fit_p"))
        return f"p {fmt_num(r['p_inside'])} (empirical: the null's normal fit is poor, Shapiro–Wilk p {fit})"
    return f"p {fmt_num(r.get('p_inside'))}"


def _vector_lines(causal: pl.DataFrame) -> list[str]:
    """One line per steering vector of ``WS_VECTORS`` (always in the causal test): how much of the
    writers' effect it keeps inside, against random subspaces of its rank."""
    rows = [r for r in causal.iter_rows(named=True) if is_vector(r["subspace"])]
    if not rows:
        return []
    L = ["", "**Your steering vectors** (always in the causal test, wherever they rank):", ""]
    for r in rows:
        L.append(
            f"- your vector `{r['subspace']}` keeps {_ci(r, 'retention_inside')} of the writers' effect inside "
            f"(mean rank {fmt_num(r['mean_rank'])}, {pct(r['energy_frac_inside'])} of their energy); random subspaces "
            f"of its rank keep {pct(r['null_mean'])} ± {pct(r['null_sd'])} (z {fmt_num(r['z_inside'])}, "
            f"{_p_text(r)}); outside it {_ci(r, 'retention_outside')} remains: {_verdicts(r)}"
        )
    return L + [""]


def _carry_caution(r: Mapping, n_tested: int) -> str | None:
    """What a verdict does not say: a subspace that beats chance while keeping under
    :data:`~ws.core.caveats.CARRY_INSIDE_MIN` of the writers' effect, or whose p-value does not
    survive BH over the tested candidates."""
    notes = []
    if r["retention_inside"] < CARRY_INSIDE_MIN:
        notes.append(
            f"it beats chance, yet only {pct(r['retention_inside'])} of the writers' effect survives inside it and "
            f"{pct(r['retention_outside'])} outside: most of the behaviour is carried elsewhere"
        )
    q = r.get("q_inside")
    if q is not None and math.isfinite(q) and q > FDR_ALPHA:
        notes.append(f"its p {fmt_num(r['p_inside'])} does not survive BH over the {n_tested} tested candidates (q {fmt_num(q)})")
    return ("  Read with care: " + "; ".join(notes) + ".") if notes else None


def _no_effect_line(info: ConclusionFacts) -> str:
    w = info.writers_spread
    return (
        "- **No tested write/mixed candidate carries the behaviour, and none can be judged**: "
        f"{NO_EFFECT} (writers-only spread {fmt_num(w[0])} nats [{fmt_num(w[1])}, {fmt_num(w[2])}]: its CI spans "
        "zero), so no retention, z, p or verdict is given."
    )


def _chance_lines(hyp: pl.DataFrame, n_tested: int) -> list[str]:
    """The candidates that contribute above chance without carrying most of the effect."""
    weak = hyp.filter(pl.col("above_chance").fill_null(False) & ~pl.col("carries").fill_null(False))
    if not weak.height:
        return []
    weak = weak.sort(["retention_inside", "subspace"], descending=[True, False])
    names = ", ".join(
        f"`{r['subspace']}` (inside {pct(r['retention_inside'])}, outside {pct(r['retention_outside'])})"
        for r in weak.iter_rows(named=True)
    )
    caution = _carry_caution(weak.row(0, named=True), n_tested)
    return [f"- Contribute above chance ({CHANCE_RULE}) but do not carry most of the effect: {names}."] + (
        [caution] if caution else []
    )


def _carry_lines(causal: pl.DataFrame, info: ConclusionFacts) -> list[str]:
    hyp = causal.filter(pl.col("kind") == "A-hypothesis")
    fin = hyp.filter(pl.col("retention_inside").fill_nan(None).is_not_null())
    yes = hyp.filter(pl.col("carries").fill_null(False)).sort(["retention_inside", "subspace"], descending=[True, False])
    head = (
        f"- Tested: the {hyp.height} write/mixed candidates with the highest seed-mean joint score, both ceilings "
        f"and the self-test rows, on seed {info.seed}'s diff, {info.n_null} random subspaces per rank profile."
    )
    if not effect_measurable(info.writers_spread[1], info.writers_spread[2]):
        return [head, _no_effect_line(info)]
    chance = _chance_lines(hyp, hyp.height)
    if yes.height:
        b = yes.row(0, named=True)
        out = [f"- **`{b['subspace']}` carries the behaviour** (most of the writers' effect: {CARRY_RULE}): {_carry_text(b)}."]
        caution = _carry_caution(b, hyp.height)
        out += [caution] if caution else []
        others = [r for r in yes.iter_rows(named=True) if r["subspace"] != b["subspace"]]
        if others:
            listed = ", ".join(
                f"`{r['subspace']}` (inside {pct(r['retention_inside'])}, outside {pct(r['retention_outside'])})" for r in others
            )
            out.append(f"- Also carrying, by the same rule: {listed}.")
        return [head, *out, *chance]
    if not fin.height:
        return [head, "- No tested write/mixed candidate has a finite retention (is the writers-only spread zero?)."]
    b = fin.sort(["retention_inside", "subspace"], descending=[True, False]).row(0, named=True)
    return [
        head,
        f"- **No tested write/mixed candidate carries the behaviour** ({CARRY_RULE}). The highest inside retention: "
        f"`{b['subspace']}`: {_carry_text(b)}.",
        *chance,
    ]


def _ceiling_lines(causal: pl.DataFrame) -> list[str]:
    out = []
    for name, what in (
        (CEILING_W, "the diff's own top write directions"),
        (CEILING_ACT, "PCA of the activation label on FIT probes"),
    ):
        r = row_of(causal, name)
        if r is None:
            continue
        target = {True: "works", False: "does not beat random subspaces", None: "cannot be judged"}[r["works_as_target"]]
        out.append(
            f"- `{name}` ({what}): inside {_ci(r, 'retention_inside')} ({pct(r['energy_frac_inside'])} of the "
            f"writers' energy), outside {_ci(r, 'retention_outside')} — {_verdicts(r)}; "
            f"norm-matched inside {_ci(r, 'retention_normmatched')} against {pct(r['null_normmatched_p95'])} for "
            f"norm-matched random subspaces (95th percentile): as an intervention target it {target}."
        )
    return out


def _block_lines(summary: pl.DataFrame, scope: pl.DataFrame, info: ConclusionFacts) -> list[str]:
    wm = summary.filter((pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(["write", "mixed"]))
    lead = wm.filter(pl.col("mean_conc_act_block").fill_nan(None).is_not_null())
    out = []
    if lead.height:
        b = lead.sort(["mean_conc_act_block", "subspace"], descending=[True, False]).row(0, named=True)
        out.append(
            f"- **Block-local label**: the write/mixed leader is `{b['subspace']}`, R_act_block "
            f"{fmt_num(b['mean_conc_act_block'])} [{fmt_num(b['mean_conc_act_block_ci_lo'])}, "
            f"{fmt_num(b['mean_conc_act_block_ci_hi'])}] (z {fmt_num(b['mean_z_act_block'])}; against the "
            f"cumulative label R_act {fmt_num(b['mean_conc_act'])})."
        )
    v = row_of(summary, info.v7_leader or "")
    if v is not None:
        out.append(
            f"- v7's joint leader `{v['subspace']}`: R_act {fmt_num(v['mean_conc_act'])} against the cumulative "
            f"label, R_act_block {fmt_num(v['mean_conc_act_block'])} (z {fmt_num(v['mean_z_act_block'])}) against "
            f"the block-local one; joint score {fmt_num(v['joint_score'])} vs {fmt_num(v['joint_score_block'])}."
        )
    t = scope.filter(pl.col("touched"))
    if t.height:
        med = lambda c: t[c].fill_nan(None).drop_nulls().median()  # noqa: E731
        out.append(
            f"- **Scope** (median over the {t.height} touched layers): the dW oracle overlaps the cumulative "
            f"activation oracle {fmt_num(med('overlap_dW_act'))} and the block-local one "
            f"{fmt_num(med('overlap_dW_act_block'))} (two random rank-k subspaces: "
            f"{fmt_num(t['overlap_random'][0])}); the two activation oracles overlap "
            f"{fmt_num(med('overlap_act_act_block'))}."
        )
    return out


def _causal_table(causal: pl.DataFrame, target_label: str) -> list[str]:
    L = [
        "## The causal test",
        "",
        f"Retention = spread of the variant ÷ spread of writers-only on the held-out {target_label} "
        "(α = ±1), 95% bootstrap CIs over prompts; null: random subspaces of the same rank per layer. "
        f"Carries: {CARRY_RULE}. Above chance: {CHANCE_RULE}.",
        "",
        "| # | candidate | energy inside | inside | outside | random null mean ± sd (p95) | z | p (method) | q "
        "| carries | above chance | norm-matched (random p95) | works as a target | Yes+No mass (inside) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in causal.iter_rows(named=True):
        rk = str(r["causal_rank"]) if r["causal_rank"] is not None else {"ceiling": "★", "self-test": "test"}.get(r["kind"], "")
        L.append(
            f"| {rk} | `{r['subspace']}` | {pct(r['energy_frac_inside'])} | {_ci(r, 'retention_inside')} | "
            f"{_ci(r, 'retention_outside')} | {pct(r['null_mean'])} ± {pct(r['null_sd'])} ({pct(r['null_p95'])}) | "
            f"{fmt_num(r['z_inside'])} | {fmt_num(r['p_inside'])} ({r.get('p_inside_method') or '—'}) | "
            f"{fmt_num(r['q_inside'])} | {_yes_no(r['carries'])} | {_yes_no(r.get('above_chance'))} | "
            f"{_ci(r, 'retention_normmatched')} ({pct(r['null_normmatched_p95'])}) | {_yes_no(r['works_as_target'])} | "
            f"{fmt_num(r['mass_inside'])} |"
        )
    return L + [""]


def _block_table(summary: pl.DataFrame, top: int = 8) -> list[str]:
    wm = summary.filter((pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(["write", "mixed"]))
    wm = wm.filter(pl.col("mean_conc_act_block").fill_nan(None).is_not_null())
    wm = wm.sort(["mean_conc_act_block", "subspace"], descending=[True, False]).head(top)
    L = [
        "## Block-local label: the top write/mixed candidates",
        "",
        "| candidate | R_act_block [CI] | z_act_block | R_act (cumulative) | z_act | joint (block) | joint (v7) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in wm.iter_rows(named=True):
        L.append(
            f"| `{r['subspace']}` | {_ci(r, 'mean_conc_act_block', False)} | {fmt_num(r['mean_z_act_block'])} | "
            f"{fmt_num(r['mean_conc_act'])} | {fmt_num(r['mean_z_act'])} | {fmt_num(r['joint_score_block'])} | "
            f"{fmt_num(r['joint_score'])} |"
        )
    return L + [""]


def _scope_table(scope: pl.DataFrame) -> list[str]:
    L = [
        "## Scope per touched layer",
        "",
        "| layer | dW vs act (cumulative) | dW vs act (block-local) | act vs act-block | random | label norm "
        "(cumulative / block-local) |",
        "|---|---|---|---|---|---|",
    ]
    for r in scope.filter(pl.col("touched")).iter_rows(named=True):
        L.append(
            f"| {r['layer']} | {fmt_num(r['overlap_dW_act'])} | {fmt_num(r['overlap_dW_act_block'])} | "
            f"{fmt_num(r['overlap_act_act_block'])} | {fmt_num(r['overlap_random'])} | "
            f"{fmt_num(r['label_norm'])} / {fmt_num(r['label_norm_block'])} |"
        )
    return L + [""]


def conclusion_v8_md(
    summary: pl.DataFrame, causal: pl.DataFrame, variants: pl.DataFrame, scope: pl.DataFrame, info: ConclusionFacts
) -> str:
    """The v8 conclusion: which subspace carries the behaviour and how much of it; the claims
    table (v7's claims, then one causal claim per tested row); the causal, block-local and
    scope tables; caveats, self-tests, cost, artifacts.

    ``info``: the run's :class:`~ws.v8.results.ConclusionFacts`.
    """
    L = [f"# {info.title}", ""]
    failed = [t for t in info.self_tests if not t.passed]
    if failed:
        L += ["> **SELF-TEST FAILED: read this before trusting any number below.**"]
        L += [f"> - FAILED `{t.name}`: {t.detail}" for t in failed] + [""]
    L += ["## Bottom line: which subspace carries the behaviour, and how much of it", ""]
    L += _writers_lines(variants, info) + _carry_lines(causal, info) + _ceiling_lines(causal)
    L += _block_lines(summary, scope, info)
    L += _vector_lines(causal)
    claims = [*info.v7_claims, *causal_claims(causal)]
    dead = [c for c in claims if c.survives is False]
    L += [f"- claims that do NOT survive: {len(dead)} of {len(claims)} (see the table)", ""]
    L += claims_section(claims) + _causal_table(causal, info.target_label) + _block_table(summary) + _scope_table(scope)
    L += ["## Caveats", ""] + [f"- {c}" for c in info.caveats] + [""]
    if info.self_tests:
        L += ["## Self-tests", "", "| test | result | detail |", "|---|---|---|"]
        L += [f"| {cell(t.name)} | {'PASS' if t.passed else 'FAIL'} | {cell(t.detail)} |" for t in info.self_tests] + [""]
    if info.cost:
        L += ["## Cost of this run", ""] + [f"- {c}" for c in info.cost] + [""]
    if info.artifacts:
        L += ["## Artifacts", ""] + [f"- [`{p}`]({p})" for p in info.artifacts] + [""]
    return "\n".join(L)
