"""Per-candidate summaries over the layers the LoRA touched, the one ranking rule, the
bootstrap of the EVAL rows, and Benjamini–Hochberg q-values."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import polars as pl
from scipy.stats import false_discovery_control

from ws.core.bootstrap import percentile_interval, resample
from ws.core.caveats import CI_LEVEL
from ws.core.columns import (
    BOOTSTRAP_COLUMNS,
    CANDIDATE_COLUMNS,
    CEILING_ACT,
    CEILING_W,
    SPECIFIC_SUMMARY_COLUMNS,
    SUMMARY_COLUMNS,
    SUMMARY_EXTRA,
    SUMMARY_PCT_COLUMNS,
    WRITER_TAGS,
)
from ws.core.log import logger
from ws.stats.null import NAN
from ws.stats.scoring import SweepScores

#: the axis kinds ranked by the joint score (read rows are reported apart)
RANKED_AXES: tuple[str, ...] = ("write", "mixed")

# ------------------------------------------------------------------------------ ranking


def by_score(df: pl.DataFrame, col: str, *, drop_missing: bool = False) -> pl.DataFrame:
    """Rows sorted by ``col`` descending, NaN and null last (or dropped with
    ``drop_missing``), ties by ``subspace`` name: the one ranking order of every table and
    report."""
    key = pl.col(col).cast(pl.Float64).fill_nan(None)
    if drop_missing:
        df = df.filter(key.is_not_null())
    return (
        df.with_columns(key.alias("__key")).sort(["__key", "subspace"], descending=[True, False], nulls_last=True).drop("__key")
    )


def ranked(summary: pl.DataFrame, col: str = "joint_score", axis_kinds: Sequence[str] = RANKED_AXES) -> pl.DataFrame:
    """The A-hypotheses of ``axis_kinds`` (write and mixed unless told) with a finite
    ``col``, best first, ties by name: row 0 is the winner."""
    hyp = summary.filter((pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(list(axis_kinds)))
    return by_score(hyp, col, drop_missing=True)


# ---------------------------------------------------------------------------- summaries


def _nanmean(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64).fill_nan(None).mean().fill_null(NAN)


def _select_layers(df: pl.DataFrame, layers: Sequence[int] | None) -> pl.DataFrame:
    if layers is None:
        return df
    layers = [int(l) for l in layers]
    present = set(df["layer"].unique().to_list())
    miss = [l for l in layers if l not in present]
    if miss:
        logger.warning(f"summary layers not in the per-layer table: {miss}")
    return df.filter(pl.col("layer").is_in(layers))


#: summary column <- per-layer column it averages
_MEANS = {
    "mean_conc_act": "conc_act",
    "mean_z_act": "z_act",
    "mean_energy_frac_act": "energy_frac_act",
    "mean_conc_w_oproj": "conc_w_oproj",
    "mean_conc_w_downproj": "conc_w_downproj",
    "mean_conc_w_combined": "conc_w_combined",
    "mean_z_w_oproj": "z_w_oproj",
    "mean_z_w_downproj": "z_w_downproj",
    "mean_z_w_combined": "z_w_combined",
    "mean_cos_dW": "cos_with_dW",
    "mean_rank": "rank",
    "mean_pct_act_matched_rank": "pct_act_matched_rank",
    "mean_pct_w_combined_matched_rank": "pct_w_combined_matched_rank",
    "mean_energy_frac_w_oproj": "energy_frac_w_oproj",
    "mean_energy_frac_w_downproj": "energy_frac_w_downproj",
    "mean_energy_frac_w_combined": "energy_frac_w_combined",
}


def joint_score(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sqrt(R_act · R_w combined)``; NaN unless both are ≥ 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((a >= 0) & (w >= 0), np.sqrt(np.abs(a * w)), np.nan)


def summarize(per_layer: pl.DataFrame, layers: Sequence[int] | None) -> pl.DataFrame:
    """Per-candidate means over ``layers`` (NaN-aware), columns :data:`SUMMARY_COLUMNS`
    then extras; ``joint_score = sqrt(mean_conc_act · mean_conc_w_combined)``,
    ``act_w_gap_log2 = log2(mean_conc_act / mean_conc_w_combined)`` (NaN unless both > 0);
    sorted by joint_score (:func:`by_score`)."""
    df = _select_layers(per_layer, layers)
    aggs = [pl.col(c).first() for c in CANDIDATE_COLUMNS[1:]]
    aggs += [_nanmean(src).alias(dst) for dst, src in _MEANS.items() if src in df.columns]
    aggs.append(pl.col("conc_act").fill_nan(None).is_not_null().sum().cast(pl.Int64).alias("n_layers_scored"))
    out = df.group_by("subspace", maintain_order=True).agg(aggs)
    for dst in _MEANS:
        if dst not in out.columns:
            out = out.with_columns(pl.lit(NAN, dtype=pl.Float64).alias(dst))
    a = out["mean_conc_act"].to_numpy().astype(np.float64)
    w = out["mean_conc_w_combined"].to_numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where((a > 0) & (w > 0), np.log2(a / w), np.nan)
    out = out.with_columns(
        pl.Series("joint_score", joint_score(a, w), dtype=pl.Float64), pl.Series("act_w_gap_log2", gap, dtype=pl.Float64)
    )
    out = out.select(SUMMARY_COLUMNS + SUMMARY_EXTRA)
    return by_score(out, "joint_score")


def _ceiling_value(summary: pl.DataFrame, name: str, col: str) -> float:
    row = summary.filter(pl.col("subspace") == name)
    if row.height == 0:
        logger.warning(f"summary has no {name!r} row: {col} percentages are NaN")
        return NAN
    v = row[col][0]
    return float(v) if v is not None else NAN


def summary_pct(summary: pl.DataFrame) -> pl.DataFrame:
    """The summary plus ``pct_act_ceiling`` (100·mean_conc_act / the activation ceiling's)
    and ``pct_w_oracle_{combined,oproj,downproj}`` (100·mean_conc_w_<t> / the dW ceiling's).

    Columns: :data:`SUMMARY_PCT_COLUMNS` (the summary's contract columns, then the four
    percentages), then any other columns of ``summary`` in their order; rows unchanged."""

    def pct(col: str, ref: float) -> pl.Expr:
        if not (math.isfinite(ref) and ref != 0):
            return pl.lit(NAN, dtype=pl.Float64)
        return (100.0 * pl.col(col) / ref).cast(pl.Float64)

    ca = _ceiling_value(summary, CEILING_ACT, "mean_conc_act")
    exprs = [pct("mean_conc_act", ca).alias("pct_act_ceiling")]
    for t in ("combined", *WRITER_TAGS):
        exprs.append(pct(f"mean_conc_w_{t}", _ceiling_value(summary, CEILING_W, f"mean_conc_w_{t}")).alias(f"pct_w_oracle_{t}"))
    out = summary.with_columns(exprs)
    first = [c for c in SUMMARY_PCT_COLUMNS if c in out.columns]
    return out.select(first + [c for c in out.columns if c not in first])


def summarize_specific(specific_per_layer: pl.DataFrame, layers: Sequence[int] | None) -> pl.DataFrame:
    """Per-candidate means of the specificity scores over ``layers``, columns
    :data:`SPECIFIC_SUMMARY_COLUMNS`, sorted by mean_specific_conc_act (:func:`by_score`)."""
    df = _select_layers(specific_per_layer, layers)
    out = (
        df.group_by("subspace", maintain_order=True)
        .agg(
            [pl.col(c).first() for c in ("family", "source", "kind")]
            + [
                _nanmean(c).alias(f"mean_{c}")
                for c in ("specific_conc_act", "specific_z_act", "specific_energy_frac_act", "specific_rank")
            ]
        )
        .select(SPECIFIC_SUMMARY_COLUMNS)
    )
    return by_score(out, "mean_specific_conc_act")


# ---------------------------------------------------------------------- bootstrap and FDR


def _row_matrix(scores: SweepScores, names: list[str], lays: list[int], rank: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-row activation fractions ``[cells, n]`` (cell = candidate × layer, NaN where
    undefined) and each cell's ``k/d``."""
    n, d = scores.n_eval, scores.d_model
    nC, nL = len(names), len(lays)
    R = np.full((nC * nL, n), np.nan)
    kd = np.full(nC * nL, np.nan)
    for i, nm in enumerate(names):
        for j, l in enumerate(lays):
            rows = scores.act_rows.get((nm, l))
            k = rank.get((nm, l))
            if rows is not None and k:
                R[i * nL + j] = rows
                kd[i * nL + j] = k / d
    return R, kd


def _resampled_means(R: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Each draw's mean per cell ``[n_boot, cells]``: a draw resamples the row indices once
    and is a row-count vector, so all cell means come from one matrix product."""
    n = R.shape[1]
    valid = ~np.isnan(R)
    idx = resample(n, n_boot, seed)
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    num = counts @ np.where(valid, R, 0.0).T  # [n_boot, cells]
    den = counts @ valid.T.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _act_draws(
    scores: SweepScores, layers: Sequence[int] | None, n_boot: int, seed: int
) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """Candidates, layers, and each draw's ``mean_energy_frac_act`` and ``mean_conc_act``
    per candidate (``[n_boot, candidates]``, means over the layers)."""
    pl_df = _select_layers(scores.per_layer, layers)
    names = pl_df["subspace"].unique(maintain_order=True).to_list()
    lays = sorted(set(pl_df["layer"].to_list()))
    nC, nL = len(names), len(lays)
    rank = {(r["subspace"], r["layer"]): r["rank"] for r in pl_df.select("subspace", "layer", "rank").iter_rows(named=True)}
    R, kd = _row_matrix(scores, names, lays, rank)
    frac = _resampled_means(R, n_boot, seed).reshape(n_boot, nC, nL)
    with np.errstate(invalid="ignore", divide="ignore"):
        cnc = frac / kd.reshape(1, nC, nL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return names, lays, np.nanmean(frac, axis=2), np.nanmean(cnc, axis=2)


def act_conc_draws(
    scores: SweepScores, layers: Sequence[int] | None, n_boot: int = 2000, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Candidates and each bootstrap draw's ``mean_conc_act`` (``[n_boot, candidates]``),
    the EVAL rows resampled as :func:`bootstrap_summary_ci` resamples them: the same
    ``seed`` and row count give the same draws, so diffs scored on the same probes share
    them (a paired bootstrap across seeds or adapters)."""
    names, _, _, m_conc = _act_draws(scores, layers, n_boot, seed)
    return names, m_conc


def bootstrap_summary_ci(
    scores: SweepScores, layers: Sequence[int] | None, n_boot: int = 2000, seed: int = 0, level: float = CI_LEVEL
) -> pl.DataFrame:
    """Percentile bootstrap CIs of ``mean_conc_act``, ``mean_energy_frac_act`` and
    ``joint_score`` per candidate, resampling the EVAL label rows.

    One draw resamples row indices once and applies them to every layer and candidate
    (rows are probes, shared by layers). The weight side has no rows and stays fixed.
    Columns :data:`BOOTSTRAP_COLUMNS`, candidates in the order of the per-layer table.
    """
    names, lays, m_frac, m_conc = _act_draws(scores, layers, n_boot, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summ = summarize(scores.per_layer, lays)
        wmap = dict(zip(summ["subspace"].to_list(), summ["mean_conc_w_combined"].to_list(), strict=True))
        w = np.array([wmap.get(nm, np.nan) for nm in names], dtype=np.float64)
        joint = joint_score(m_conc, w[None])
        c_lo, c_hi = percentile_interval(m_conc, level)
        f_lo, f_hi = percentile_interval(m_frac, level)
        j_lo, j_hi = percentile_interval(joint, level)
    return pl.DataFrame(
        {
            "subspace": names,
            "mean_conc_act_ci_lo": c_lo,
            "mean_conc_act_ci_hi": c_hi,
            "mean_energy_frac_act_ci_lo": f_lo,
            "mean_energy_frac_act_ci_hi": f_hi,
            "joint_score_ci_lo": j_lo,
            "joint_score_ci_hi": j_hi,
        },
        schema={c: (pl.String if c == "subspace" else pl.Float64) for c in BOOTSTRAP_COLUMNS},
    )


def bh_qvalues(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values); NaN entries stay NaN and do not
    count towards the number of tests."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def add_qvalues(per_layer: pl.DataFrame) -> pl.DataFrame:
    """Add ``q_act, q_w_combined, q_w_oproj, q_w_downproj``: BH over all A-hypothesis ×
    layer cells with a p-value (ceilings excluded and NaN)."""
    is_hyp = (per_layer["kind"] == "A-hypothesis").to_numpy()
    new = []
    for q_col, p_col in (
        ("q_act", "p_act"),
        ("q_w_combined", "p_w_combined"),
        ("q_w_oproj", "p_w_oproj"),
        ("q_w_downproj", "p_w_downproj"),
    ):
        p = per_layer[p_col].cast(pl.Float64).fill_null(NAN).to_numpy().copy()
        p[~is_hyp] = np.nan
        new.append(pl.Series(q_col, bh_qvalues(p), dtype=pl.Float64))
    return per_layer.with_columns(new)
