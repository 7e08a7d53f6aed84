"""The names of the sweep's tables: candidate columns, score columns, the two ceilings.

These names are the v7 contract (users compare them across versions): extend the lists,
never rename an entry.
"""

from __future__ import annotations

import polars as pl

#: the residual writers' column tags (``o_proj``, ``down_proj``: :data:`ws.model.anatomy.WRITERS`)
WRITER_TAGS: tuple[str, ...] = ("oproj", "downproj")
#: weight-label tensors, in the order of the columns
TENSORS: tuple[str, ...] = (*WRITER_TAGS, "combined")
#: the two ceilings (B side; scored, never ranked as hypotheses)
CEILING_ACT = "TaskDiff_lora_ceiling"
CEILING_W = "dW_left_basis_ceiling"

#: the columns that name a candidate, first in every per-candidate table
CANDIDATE_COLUMNS: list[str] = ["subspace", "family", "axis_kind", "source", "kind"]
#: the contract columns of the candidate metadata ``meta`` (extra columns follow them)
META_COLUMNS: list[str] = [*CANDIDATE_COLUMNS, "definition"]

#: the contract columns of the per-layer table (extra columns follow them)
PER_LAYER_COLUMNS: list[str] = [
    "layer",
    *CANDIDATE_COLUMNS,
    "rank",
    "conc_act",
    "z_act",
    "energy_frac_act",
    "conc_w_oproj",
    "z_w_oproj",
    "energy_frac_w_oproj",
    "conc_w_downproj",
    "z_w_downproj",
    "energy_frac_w_downproj",
    "conc_w_combined",
    "z_w_combined",
    "energy_frac_w_combined",
    "cos_with_dW",
]
PER_LAYER_EXTRA: list[str] = [
    "p_act",
    "null_method_act",
    "p_w_oproj",
    "null_method_w_oproj",
    "p_w_downproj",
    "null_method_w_downproj",
    "p_w_combined",
    "null_method_w_combined",
    "pct_act_matched_rank",
    "pct_w_combined_matched_rank",
    "pr_act",
    "pr_w_combined",
]
SPECIFIC_COLUMNS: list[str] = [
    "layer",
    "subspace",
    "family",
    "source",
    "kind",
    "specific_conc_act",
    "specific_z_act",
    "specific_energy_frac_act",
    "specific_rank",
]
SPECIFIC_EXTRA: list[str] = ["specific_p_act", "specific_null_method_act"]
SUMMARY_COLUMNS: list[str] = [
    *CANDIDATE_COLUMNS,
    "mean_conc_act",
    "mean_z_act",
    "mean_energy_frac_act",
    "mean_conc_w_oproj",
    "mean_conc_w_downproj",
    "mean_conc_w_combined",
    "mean_z_w_oproj",
    "mean_z_w_downproj",
    "mean_z_w_combined",
    "mean_cos_dW",
    "mean_rank",
    "joint_score",
    "act_w_gap_log2",
]
SUMMARY_EXTRA: list[str] = [
    "mean_pct_act_matched_rank",
    "mean_pct_w_combined_matched_rank",
    "mean_energy_frac_w_oproj",
    "mean_energy_frac_w_downproj",
    "mean_energy_frac_w_combined",
    "n_layers_scored",
]
#: the four percentage columns :func:`ws.stats.summary_pct` adds
PCT_COLUMNS: list[str] = [
    "pct_act_ceiling",
    "pct_w_oracle_combined",
    "pct_w_oracle_oproj",
    "pct_w_oracle_downproj",
]
#: the contract columns of the summary_pct table (extra columns follow them)
SUMMARY_PCT_COLUMNS: list[str] = SUMMARY_COLUMNS + PCT_COLUMNS
SPECIFIC_SUMMARY_COLUMNS: list[str] = [
    "subspace",
    "family",
    "source",
    "kind",
    "mean_specific_conc_act",
    "mean_specific_z_act",
    "mean_specific_energy_frac_act",
    "mean_specific_rank",
]
BOOTSTRAP_COLUMNS: list[str] = [
    "subspace",
    "mean_conc_act_ci_lo",
    "mean_conc_act_ci_hi",
    "mean_energy_frac_act_ci_lo",
    "mean_energy_frac_act_ci_hi",
    "joint_score_ci_lo",
    "joint_score_ci_hi",
]

_INT_COLS = {"layer", "rank", "specific_rank", "n_layers_scored"}
_STR_COLS = {
    *META_COLUMNS,
    "null_method_act",
    "null_method_w_oproj",
    "null_method_w_downproj",
    "null_method_w_combined",
    "specific_null_method_act",
}


def _dtype(c: str) -> pl.DataType:
    if c in _INT_COLS:
        return pl.Int64
    if c in _STR_COLS:
        return pl.String
    return pl.Float64


def frame(recs: list[dict], columns: list[str]) -> pl.DataFrame:
    """Records as a table with these columns in this order (Int64 / String / Float64 by name)."""
    schema = {c: _dtype(c) for c in columns}
    if not recs:
        return pl.DataFrame(schema=schema)
    data = {c: [r.get(c) for r in recs] for c in columns}
    return pl.DataFrame(data, schema=schema)
