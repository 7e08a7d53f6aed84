"""Scores of candidate subspaces against the LoRA labels, and their statistics.

The question every score answers: how much of a label's energy lies inside a candidate
basis ``B`` (``[d, k]``, orthonormal columns), compared with a random rank-k subspace?

Labels (the "B side", built from the LoRA):

- activation label ``X`` (``[n, d]`` rows, one per EVAL probe): the energy fraction of
  row ``x_i`` is ``‖Bᵀx_i‖²/‖x_i‖²`` and ``energy_frac_act`` is the mean over rows;
- weight label ``M`` (``[d, in]``, rows in residual space):
  ``energy_frac_w = ‖BᵀM‖²_F/‖M‖²_F``; ``combined`` uses ``[M_o/‖M_o‖_F | M_down/‖M_down‖_F]``.

Both fractions are ``tr(P A)`` with ``P = BBᵀ`` and a trace-one PSD matrix ``A``:
``A = mean_i x̂_i x̂_iᵀ`` (activation, ``x̂ = x/‖x‖``) or ``A = MMᵀ/‖M‖²_F`` (weight). For a
Haar-random rank-k projection in dimension d the null moments are exact::

    E[tr(PA)]   = (k/d) · tr A
    Var[tr(PA)] = 2k(d−k) / (d(d−1)(d+2)) · (tr(A²) − (tr A)²/d)

so ``z = (frac − mean)/std`` needs only ``tr A`` and ``tr A²``. When the label is close to
rank one (participation ratio ``(tr A)²/tr(A²)`` below a threshold) the null is far from
Gaussian and the p-value comes from a seeded Monte Carlo of the exact null instead.

The concentration ``R = frac/(k/d)`` (1 = what a random subspace of the same rank gets) is
what the prose and the figure call R; the tables spell it ``conc``:

=================  ========================================================================
prose              table column
=================  ========================================================================
R_act              ``conc_act`` (per layer), ``mean_conc_act`` (summary)
R_w (per tensor)   ``conc_w_oproj``, ``conc_w_downproj`` and their ``mean_`` columns
R_w combined       ``conc_w_combined``, ``mean_conc_w_combined``
joint score        ``joint_score = sqrt(mean_conc_act · mean_conc_w_combined)``
=================  ========================================================================

Computation is in float64; public results are Python floats, numpy arrays or polars
Float64 columns. The modules, by role:

- :mod:`ws.core.columns`: table and column names (the contract), the two ceilings;
- :mod:`ws.stats.null`: the closed-form null, Monte Carlo draws, :class:`LabelNull`, and
  :func:`null_tail_p` (a value against a few null draws: normal tail or empirical p);
- :mod:`ws.stats.scoring`: :func:`score_sweep`, every (layer, candidate) cell at once;
- :mod:`ws.stats.summaries`: means over layers, the ranking rule, bootstrap CIs, q-values;
- :mod:`ws.stats.reference`: one-cell implementations the fast path is tested against.

May import: ``ws.core`` (the stats are pure functions of tensors and tables).
"""

from ws.core.columns import (
    BOOTSTRAP_COLUMNS,
    CANDIDATE_COLUMNS,
    CEILING_ACT,
    CEILING_W,
    META_COLUMNS,
    PCT_COLUMNS,
    PER_LAYER_COLUMNS,
    SPECIFIC_COLUMNS,
    SPECIFIC_SUMMARY_COLUMNS,
    SUMMARY_COLUMNS,
    SUMMARY_PCT_COLUMNS,
    TENSORS,
)
from ws.core.linalg import check_orthonormal
from ws.stats.null import (
    PR_THRESHOLD,
    LabelNull,
    NullTail,
    act_traces,
    conc,
    normal_fit_p,
    null_mean_std_from_traces,
    null_tail_p,
    p_empirical,
    p_gaussian,
    p_normal_predictive,
    p_with_draws,
    participation_ratio,
    weight_traces,
    zscore,
)
from ws.stats.reference import (
    best_frac_at_rank,
    combined_delta,
    cos_principal,
    energy_frac_act,
    energy_frac_act_rows,
    energy_frac_w,
    energy_frac_w_combined,
    mc_null,
    null_mean_std,
    null_mean_std_act,
    null_mean_std_w,
    specific_act_scores,
    spectrum,
)
from ws.stats.scoring import SweepScores, check_finite, score_sweep, specific_basis
from ws.stats.summaries import (
    RANKED_AXES,
    act_conc_draws,
    add_qvalues,
    bh_qvalues,
    bootstrap_summary_ci,
    by_score,
    ranked,
    summarize,
    summarize_specific,
    summary_pct,
)

__all__ = [
    "TENSORS",
    "CEILING_ACT",
    "CEILING_W",
    "CANDIDATE_COLUMNS",
    "META_COLUMNS",
    "PER_LAYER_COLUMNS",
    "SPECIFIC_COLUMNS",
    "SUMMARY_COLUMNS",
    "PCT_COLUMNS",
    "SUMMARY_PCT_COLUMNS",
    "SPECIFIC_SUMMARY_COLUMNS",
    "BOOTSTRAP_COLUMNS",
    "PR_THRESHOLD",
    "RANKED_AXES",
    "check_orthonormal",
    "check_finite",
    "energy_frac_act_rows",
    "energy_frac_act",
    "energy_frac_w",
    "combined_delta",
    "energy_frac_w_combined",
    "act_traces",
    "weight_traces",
    "null_mean_std_from_traces",
    "null_mean_std",
    "null_mean_std_act",
    "null_mean_std_w",
    "zscore",
    "conc",
    "participation_ratio",
    "p_gaussian",
    "p_empirical",
    "p_normal_predictive",
    "normal_fit_p",
    "null_tail_p",
    "p_with_draws",
    "NullTail",
    "spectrum",
    "mc_null",
    "best_frac_at_rank",
    "specific_act_scores",
    "specific_basis",
    "cos_principal",
    "LabelNull",
    "SweepScores",
    "score_sweep",
    "summarize",
    "summary_pct",
    "summarize_specific",
    "by_score",
    "ranked",
    "bootstrap_summary_ci",
    "act_conc_draws",
    "bh_qvalues",
    "add_qvalues",
]
