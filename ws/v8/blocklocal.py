"""v8's block-local label: candidates scored against what each block itself writes.

v7's activation label at layer l is cumulative: block outputs at ``+w`` minus at ``−w``,
everything the diff changed up to and including block l. The block-local label is
``(post⁺ − pre⁺) − (post⁻ − pre⁻)``: only what block l adds to the residual stream
(:func:`ws.captures.capture.block_labels`). Every candidate is scored against it exactly as v7
scores the cumulative label (:func:`ws.stats.score_sweep`: energy fraction, ``conc``, the
closed-form null, BH q-values), giving ``conc_act_block``, ``z_act_block``, … .

The scope table compares, per layer, three "oracle" subspaces of rank k:

- the dW oracle: the top-k left singular vectors of the layer's writer delta (v7's
  ``dW_left_basis_ceiling``);
- the cumulative and the block-local activation oracle: the top-k eigenvectors of
  ``A = mean_i x̂_i x̂_iᵀ`` of the label rows (unit rows, not centred), the rank-k subspace
  with the largest ``energy_frac_act`` any subspace can reach;

by their overlap ``‖B₁ᵀB₂‖²_F / min(r₁, r₂)`` (1: one contains the other, 0: orthogonal; two
random rank-k subspaces of ``d`` dimensions overlap ``k/d`` in expectation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import torch

from ws import stats
from ws.core.linalg import top_eigvecs
from ws.stats import act_traces, best_frac_at_rank, participation_ratio

__all__ = ["BLOCK_COLUMNS", "BLOCK_SUMMARY_COLUMNS", "SCOPE_COLUMNS", "score_block", "act_oracle", "overlap", "scope_table"]

#: per (layer, candidate) columns the block-local label adds to the per-layer table
BLOCK_COLUMNS = [
    "conc_act_block",
    "z_act_block",
    "energy_frac_act_block",
    "p_act_block",
    "null_method_act_block",
    "q_act_block",
    "pr_act_block",
]
#: per candidate columns it adds to the summary
BLOCK_SUMMARY_COLUMNS = [
    "mean_conc_act_block",
    "mean_z_act_block",
    "mean_energy_frac_act_block",
    "mean_conc_act_block_ci_lo",
    "mean_conc_act_block_ci_hi",
    "joint_score_block",
]
SCOPE_COLUMNS = [
    "layer",
    "touched",
    "rank_dW",
    "rank_act",
    "rank_act_block",
    "overlap_dW_act",
    "overlap_dW_act_block",
    "overlap_act_act_block",
    "overlap_random",
    "best_frac_act",
    "best_frac_act_block",
    "pr_act",
    "pr_act_block",
    "label_norm",
    "label_norm_block",
]


def score_block(
    bases: Mapping[str, Sequence[torch.Tensor | None]],
    meta: pl.DataFrame,
    label_block: torch.Tensor,
    deltas: Sequence,
    clean_pcs: Sequence,
    touched: Sequence[int],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Score every candidate against the block-local label ``[L, n, d]`` as v7 scores the
    cumulative one. Returns ``(per_layer, summary)``: per (layer, subspace) the
    :data:`BLOCK_COLUMNS`; per subspace the :data:`BLOCK_SUMMARY_COLUMNS` (means over the
    ``touched`` layers, bootstrap CI over EVAL rows, joint score with the weight label)."""
    sc = stats.score_sweep(bases, meta, label_block, deltas, clean_pcs, pr_threshold=stats.PR_THRESHOLD, progress=False)
    pl_q = stats.add_qvalues(sc.per_layer)
    src = ["conc_act", "z_act", "energy_frac_act", "p_act", "null_method_act", "q_act", "pr_act"]
    per_layer = pl_q.select(["layer", "subspace", *[pl.col(c).alias(f"{c}_block") for c in src]])
    summ = stats.summarize(sc.per_layer, touched)
    ci = stats.bootstrap_summary_ci(sc, touched, n_boot=n_boot, seed=seed)
    a = summ["mean_conc_act"].to_numpy().astype(np.float64)
    w = summ["mean_conc_w_combined"].to_numpy().astype(np.float64)
    with np.errstate(invalid="ignore"):
        joint = np.where((a >= 0) & (w >= 0), np.sqrt(np.abs(a * w)), np.nan)
    summary = (
        summ.select(
            "subspace",
            pl.col("mean_conc_act").alias("mean_conc_act_block"),
            pl.col("mean_z_act").alias("mean_z_act_block"),
            pl.col("mean_energy_frac_act").alias("mean_energy_frac_act_block"),
        )
        .with_columns(pl.Series("joint_score_block", joint, dtype=pl.Float64))
        .join(
            ci.select(
                "subspace",
                pl.col("mean_conc_act_ci_lo").alias("mean_conc_act_block_ci_lo"),
                pl.col("mean_conc_act_ci_hi").alias("mean_conc_act_block_ci_hi"),
            ),
            on="subspace",
            how="left",
            maintain_order="left",
        )
    )
    return per_layer, summary.select(["subspace", *BLOCK_SUMMARY_COLUMNS])


def act_oracle(X: torch.Tensor, k: int, zero_tol: float = 0.0) -> torch.Tensor | None:
    """Top-``k`` eigenvectors ``[d, r]`` of ``A = mean_i x̂_i x̂_iᵀ`` over the rows of ``X [n, d]``
    with norm above ``zero_tol`` (r = min(k, rank A)); None when no row is left."""
    X = X.detach().double()
    nrm = X.norm(dim=1)
    Xh = X[nrm > zero_tol] / nrm[nrm > zero_tol, None]
    if Xh.shape[0] == 0:
        return None
    B = top_eigvecs(Xh.T @ Xh / Xh.shape[0], k)
    return B if B.shape[1] else None


def overlap(B1: torch.Tensor | None, B2: torch.Tensor | None) -> float:
    """``‖B₁ᵀB₂‖²_F / min(r₁, r₂)`` for orthonormal ``[d, r₁]``, ``[d, r₂]`` (NaN if either is missing)."""
    if B1 is None or B2 is None or B1.shape[1] == 0 or B2.shape[1] == 0:
        return float("nan")
    return float(((B1.double().T @ B2.double()) ** 2).sum()) / min(B1.shape[1], B2.shape[1])


def _label_stats(X: torch.Tensor, k: int, zero_tol: float) -> dict[str, float]:

    X = X.double()
    keep = X[X.norm(dim=1) > zero_tol]
    if keep.shape[0] == 0:
        return {"best_frac": float("nan"), "pr": float("nan"), "norm": 0.0}
    tr_a, tr_a2, _ = act_traces(keep)
    return {
        "best_frac": best_frac_at_rank(keep, k, kind="X"),
        "pr": participation_ratio(tr_a, tr_a2),
        "norm": float(X.norm(dim=1).mean()),
    }


def scope_table(
    label: torch.Tensor,
    label_block: torch.Tensor,
    dW: Sequence[torch.Tensor | None],
    k: int,
    touched: Sequence[int],
    zero_row_rel_tol: float = 1e-7,
) -> pl.DataFrame:
    """Per layer (:data:`SCOPE_COLUMNS`): ranks of the three oracles, their pairwise overlaps,
    the random expectation ``k/d``, and for each label the best energy fraction at rank k,
    its participation ratio and its mean row norm. ``label``, ``label_block``: ``[L, n, d]``;
    ``dW``: per layer the dW oracle ``[d, r]`` or None. Rows with norm ≤ ``zero_row_rel_tol``
    × the label's largest row norm count as zero (as in the scores)."""
    L, _, d = label.shape
    tol = {id(t): zero_row_rel_tol * float(t.double().norm(dim=2).max()) for t in (label, label_block)}
    rows = []
    for l in range(L):
        a = act_oracle(label[l], k, tol[id(label)])
        b = act_oracle(label_block[l], k, tol[id(label_block)])
        sa, sb = _label_stats(label[l], k, tol[id(label)]), _label_stats(label_block[l], k, tol[id(label_block)])
        rk = lambda B: 0 if B is None else int(B.shape[1])  # noqa: E731
        rows.append(
            {
                "layer": l,
                "touched": l in set(touched),
                "rank_dW": rk(dW[l]),
                "rank_act": rk(a),
                "rank_act_block": rk(b),
                "overlap_dW_act": overlap(dW[l], a),
                "overlap_dW_act_block": overlap(dW[l], b),
                "overlap_act_act_block": overlap(a, b),
                "overlap_random": k / d,
                "best_frac_act": sa["best_frac"],
                "best_frac_act_block": sb["best_frac"],
                "pr_act": sa["pr"],
                "pr_act_block": sb["pr"],
                "label_norm": sa["norm"],
                "label_norm_block": sb["norm"],
            }
        )
    schema = {
        c: pl.Int64 if c.startswith(("layer", "rank")) else pl.Boolean if c == "touched" else pl.Float64 for c in SCOPE_COLUMNS
    }
    return pl.DataFrame(rows, schema=schema)
