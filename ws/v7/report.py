"""The markdown reports of a v7 sweep (the figure is :mod:`ws.v7.figure`).

Every file is written atomically (temporary file beside the target, then renamed), so a
crash never leaves a half-written file that looks complete. Tables are written with a
fixed float format so that two identical runs give byte-identical files. Every number in
the markdown is formatted from the DataFrames or the run facts passed in
(:class:`ws.v7.verdicts.ConclusionInfo`); what the run concludes (which claims survive, the
self-tests) is decided in :mod:`ws.v7.verdicts`, this module only writes it down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from ws.bases.vectors import is_vector
from ws.core import caveats as C
from ws.core.linalg import DEFAULT_RTOL
from ws.core.markdown import cell, claims_section, finite, first_row, fmt_num, fmt_pct, layers_text, row_of
from ws.model.anatomy import WRITERS
from ws.stats import CEILING_ACT, CEILING_W, by_score, ranked
from ws.v7.verdicts import Claim, ConclusionInfo, SeedSummary, SeedVerdict, claim_checks, low_rank_label, touched_q

__all__ = [
    "definitions_md",
    "conclusion_md",
    "plan_merge_md",
]

# ---------------------------------------------------------------------------- markdown


def definitions_md(meta: pl.DataFrame) -> str:
    """A markdown table ``name | family | axis_kind | source | definition | construction``, one
    row per candidate in ``meta`` order: the definition in the contract's words, and beside it
    how this suite builds the basis where that differs from, or adds to, those words (the
    registry's ``construction``; blank: as defined)."""
    lines = [
        "# Candidate definitions",
        "",
        "`definition` is the contract's wording; `construction` says how this suite builds the basis where "
        "that differs from, or adds to, the definition (blank: as defined). Every SVD and PCA is computed in "
        "float64 (an SVD through the smaller Gram matrix where that is cheaper: the same subspace); directions "
        f"with a singular value below {DEFAULT_RTOL:g} of the largest are dropped, so a basis has its true rank, "
        "never padding.",
        "",
        "| name | family | axis_kind | source | definition | construction |",
        "|---|---|---|---|---|---|",
    ]
    for r in meta.iter_rows(named=True):
        lines.append(
            "| "
            + " | ".join(cell(r.get(c)) for c in ("subspace", "family", "axis_kind", "source", "definition", "construction"))
            + " |"
        )
    return "\n".join(lines) + "\n"


def plan_merge_md(changes: Sequence[str], title: str = "Plan / merge notes") -> str:
    """A markdown bullet list of ``changes`` under a title."""
    lines = [f"# {title}", ""]
    lines += [f"- {c.strip()}" for c in changes if c and c.strip()]
    if not changes:
        lines.append("- (no changes recorded)")
    return "\n".join(lines) + "\n"


def _scores_line(r: Mapping[str, Any]) -> str:
    parts = [f"R_act = {fmt_num(r.get('mean_conc_act'))} (z_act {fmt_num(r.get('mean_z_act'))}"]
    if "pct_act_ceiling" in r:
        parts[-1] += f", {fmt_pct(r.get('pct_act_ceiling'))} of the activation ceiling"
    parts[-1] += ")"
    w = f"R_w combined = {fmt_num(r.get('mean_conc_w_combined'))} (z {fmt_num(r.get('mean_z_w_combined'))}"
    if "pct_w_oracle_combined" in r:
        w += f", {fmt_pct(r.get('pct_w_oracle_combined'))} of the dW oracle"
    parts.append(w + ")")
    return "; ".join(parts)


def _tensor_line(r: Mapping[str, Any]) -> str:
    out = []
    for t, label in WRITERS.items():
        s = f"{label}: R_w = {fmt_num(r.get(f'mean_conc_w_{t}'))} (z {fmt_num(r.get(f'mean_z_w_{t}'))}"
        if f"pct_w_oracle_{t}" in r:
            s += f", {fmt_pct(r.get(f'pct_w_oracle_{t}'))} of oracle"
        out.append(s + ")")
    return "; ".join(out)


def conclusion_md(
    summary_pct: pl.DataFrame,
    specific_summary: pl.DataFrame | None,
    per_layer: pl.DataFrame | None,
    info: ConclusionInfo,
    top_k: int = 5,
) -> str:
    """The BLUF conclusion of a sweep, as markdown: one function per section, in reading order.

    summary_pct: the summary with ``pct_*`` columns (sorted by joint_score).
    specific_summary: the specificity summary (or None).
    per_layer: the per-layer table (for null methods and q-values; or None).
    info: the run facts (:class:`ws.v7.verdicts.ConclusionInfo`; a field left at its default
        leaves its line out).
    top_k: size of the top lists compared between activation and weight.

    Failing self-tests are listed at the very top. Every number is formatted from the
    inputs; the verdicts come from :func:`ws.v7.verdicts.claim_checks`.
    """
    best = first_row(ranked(summary_pct))
    claims = claim_checks(summary_pct, per_layer, info)
    sections = [
        [f"# {info.title}", ""],
        _failed_self_tests_section(info),
        _bottom_line_section(summary_pct, per_layer, info, claims),
        claims_section(claims),
        _vectors_section(summary_pct),
        _ceilings_section(summary_pct),
        _leaders_section(summary_pct),
        _overlap_section(summary_pct, top_k),
        _read_side_section(summary_pct),
        _lens_section(info),
        _specificity_section(specific_summary, best, info),
        _statistics_section(per_layer, info),
        _caveats_section(per_layer, info),
        _self_tests_section(info),
        _artifacts_section(info),
    ]
    return "\n".join(line for section in sections for line in section)


def _failed_self_tests_section(info: ConclusionInfo) -> list[str]:
    """A warning block above everything else when a self-test failed."""
    failed = [t for t in info.self_tests if not t.passed]
    if not failed:
        return []
    return (
        ["> **SELF-TEST FAILED: read this before trusting any number below.**"]
        + [f"> - FAILED `{t.name}`: {t.detail}" for t in failed]
        + [""]
    )


def _bottom_line_section(
    sp: pl.DataFrame, per_layer: pl.DataFrame | None, info: ConclusionInfo, claims: Sequence[Claim]
) -> list[str]:
    """With several seeds, the answer that survives across them first; then the first seed's
    winner with its scores, CI, q-values, runner-up and seeds; the claims that fail."""
    L = ["## Bottom line", ""]
    if info.diff_reading:
        L += [f"**What the diff does on this model:** {info.diff_reading}.", ""]
    if info.diff_source:
        L += [f"**Where the diff comes from:** {info.diff_source}.", ""]
    order = ranked(sp)
    best = first_row(order)
    if info.seed_verdict is not None:
        L += _cross_seed_lines(info.seed_verdict)
        if best is not None:
            L += [
                f"Seed {fmt_num(info.seed)}'s winner and tables, in detail:"
                if info.seed is not None
                else "The first seed's winner and tables, in detail:",
                "",
            ]
    if best is None:
        L.append(
            "No write/mixed A-hypothesis has a finite joint score: nothing to rank (check the labels "
            "and the layers the LoRA touched)."
        )
    else:
        L += _winner_lines(best, info)
        if per_layer is not None and {"q_act", "q_w_combined"} <= set(per_layer.columns):
            L.append("- " + _q_text(per_layer, best["subspace"], info))
        if len(order) > 1:
            nxt = order.row(1, named=True)
            L.append(
                f"- runner-up: `{nxt['subspace']}` (joint {fmt_num(nxt['joint_score'])}, "
                f"R_act {fmt_num(nxt['mean_conc_act'])}, R_w combined {fmt_num(nxt['mean_conc_w_combined'])})"
            )
        st = info.seed_stability
        L.append("- " + _seed_text(st) if st else "- seeds: one seed only, seed stability not measured")
    if claims:
        dead = [c.claim for c in claims if c.survives is False]
        L.append("- claims that do NOT survive: " + ("; ".join(dead) if dead else "none of the checks below failed"))
    return L + [""]


def _cross_seed_lines(v: SeedVerdict) -> list[str]:
    """The answer that survives across the seeds, with the rule it passed or failed."""
    lead = (
        (
            f"its lead over `{v.runner_up}` ({fmt_num(v.runner_up_mean)} ± {fmt_num(v.runner_up_sd)} sd) is "
            f"{fmt_num(v.lead)}, "
            + ("more than" if v.clear_lead else "not more than")
            + f" the seeds' spread ({fmt_num(v.spread)})"
        )
        if v.runner_up is not None
        else "it has no runner-up"
    )
    wins = f"wins {v.leader_wins} of {v.n_seeds} seeds" + ("" if v.wins_most else ", not more than half")
    if v.stable:
        head = (
            f"**Across the {v.n_seeds} seeds: `{v.leader}` is the stable winner.** It has the highest joint "
            f"score averaged over the seeds ({fmt_num(v.leader_mean)} ± {fmt_num(v.leader_sd)} sd), {wins}, "
            f"and {lead}."
        )
    else:
        head = (
            f"**Across the {v.n_seeds} seeds: no stable winner.** The leader by the joint score averaged over "
            f"the seeds, `{v.leader}` ({fmt_num(v.leader_mean)} ± {fmt_num(v.leader_sd)} sd), {wins}; {lead}. "
            f"Read the winner below as one seed's, not as the answer."
        )
    rule = (
        "Rule: the leader by the seed-mean joint score is a stable winner when it wins in more than half of "
        "the seeds and leads the runner-up by more than the larger of their two seed sds."
    )
    return [head, "", rule, ""]


def _winner_lines(best: Mapping[str, Any], info: ConclusionInfo) -> list[str]:
    """The winner's headline sentence and its per-tensor, rank and CI lines."""
    L = [
        f"**`{best['subspace']}`** ({best['family']}, {best['axis_kind']}) has the highest joint score "
        f"among write/mixed A-hypotheses: joint = {fmt_num(best['joint_score'])}, {_scores_line(best)}.",
        "",
    ]
    L.append(f"- per tensor: {_tensor_line(best)}")
    L.append(
        f"- mean cosine of principal angles with the dW basis: {fmt_num(best.get('mean_cos_dW'))}; "
        f"mean rank {fmt_num(best.get('mean_rank'))}; act_w_gap_log2 = "
        f"{fmt_num(best.get('act_w_gap_log2'))} (positive: more concentrated in the activation "
        f"label than in the weight label)"
    )
    if "mean_pct_act_matched_rank" in best:
        L.append(
            f"- at its own rank it captures {fmt_pct(best.get('mean_pct_act_matched_rank'))} of the best "
            f"possible activation energy and {fmt_pct(best.get('mean_pct_w_combined_matched_rank'))} of the "
            f"best possible weight energy"
        )
    c = row_of(info.bootstrap_ci, best["subspace"]) if info.bootstrap_ci is not None else None
    if c is not None:
        lvl = f"{fmt_num(100 * float(info.ci_level))}% " if info.ci_level is not None else ""
        extra = []
        if info.n_boot is not None:
            extra.append(f"{info.n_boot} resamples of the EVAL rows")
        if info.seed is not None:
            extra.append(f"seed {info.seed}")
        L.append(
            f"- bootstrap {lvl}CI: R_act [{fmt_num(c['mean_conc_act_ci_lo'])}, "
            f"{fmt_num(c['mean_conc_act_ci_hi'])}], joint [{fmt_num(c['joint_score_ci_lo'])}, "
            f"{fmt_num(c['joint_score_ci_hi'])}]" + (f" ({', '.join(extra)})" if extra else "")
        )
    return L


def _vectors_section(sp: pl.DataFrame) -> list[str]:
    """The user's steering vectors (``WS_VECTORS``): each one's rank among the write/mixed
    A-hypotheses and its scores, beside the ceilings."""
    order = ranked(sp)["subspace"].to_list()
    rows = [r for r in sp.iter_rows(named=True) if is_vector(r["subspace"])]
    if not rows:
        return []
    L = ["## Your steering vectors", ""]
    for r in rows:
        where = f"rank {order.index(r['subspace']) + 1} of {len(order)}" if r["subspace"] in order else "not ranked"
        L.append(
            f"- `{r['subspace']}` (mean rank {fmt_num(r.get('mean_rank'))}, scored on {fmt_num(r.get('n_layers_scored'))} "
            f"of the layers the diff touches): {where} by joint score "
            f"(joint {fmt_num(r.get('joint_score'))}); {_scores_line(r)}"
        )
    return L + ["- v8's causal test always includes them: read `v8_conclusion.md` for how much of the effect each keeps.", ""]


def _ceilings_section(sp: pl.DataFrame) -> list[str]:
    """The two ceilings' scores, for scale."""
    ca, cw = row_of(sp, CEILING_ACT), row_of(sp, CEILING_W)
    if ca is None and cw is None:
        return []
    L = ["## Ceilings (B side, for scale)", ""]
    if ca is not None:
        L.append(
            f"- `{CEILING_ACT}`: R_act = {fmt_num(ca['mean_conc_act'])}, R_w combined = {fmt_num(ca['mean_conc_w_combined'])}"
        )
    if cw is not None:
        L.append(
            f"- `{CEILING_W}`: R_w combined = {fmt_num(cw['mean_conc_w_combined'])} "
            f"(o_proj {fmt_num(cw['mean_conc_w_oproj'])}, down_proj {fmt_num(cw['mean_conc_w_downproj'])}), "
            f"R_act = {fmt_num(cw['mean_conc_act'])}"
        )
    return L + [""]


def _leaders_section(sp: pl.DataFrame) -> list[str]:
    """The leader of each label (activation, combined weight, each tensor)."""
    L = ["## Leaders per label (write/mixed A-hypotheses)", ""]
    for col, label, pct in (
        ("mean_conc_act", "activation R_act", "pct_act_ceiling"),
        ("mean_conc_w_combined", "weight R_w combined", "pct_w_oracle_combined"),
        ("mean_conc_w_oproj", "o_proj R_w", "pct_w_oracle_oproj"),
        ("mean_conc_w_downproj", "down_proj R_w", "pct_w_oracle_downproj"),
    ):
        r = first_row(ranked(sp, col))
        if r is None:
            L.append(f"- {label}: no finite scores")
        else:
            p = f", {fmt_pct(r.get(pct))} of ceiling" if pct in r else ""
            L.append(f"- {label}: `{r['subspace']}` = {fmt_num(r[col])}{p}")
    return L + [""]


def _overlap_section(sp: pl.DataFrame, top_k: int) -> list[str]:
    """The top-k by activation against the top-k by weight, and their overlap."""
    top_act = ranked(sp, "mean_conc_act")["subspace"].head(top_k).to_list()
    top_w = ranked(sp, "mean_conc_w_combined")["subspace"].head(top_k).to_list()
    both = [n for n in top_act if n in top_w]
    return [
        f"## Top-{top_k} by activation vs by weight (write/mixed)",
        "",
        f"- by R_act: {', '.join(f'`{n}`' for n in top_act) or 'none'}",
        f"- by R_w combined: {', '.join(f'`{n}`' for n in top_w) or 'none'}",
        f"- overlap: {len(both)} of {top_k}" + (f" ({', '.join(f'`{n}`' for n in both)})" if both else ""),
        "",
    ]


def _read_side_section(sp: pl.DataFrame) -> list[str]:
    """The best read candidate (kept out of the joint ranking)."""
    L = ["## Read side (reported apart, not in the joint ranking)", ""]
    r = first_row(ranked(sp, axis_kinds=("read",)))
    if r is not None:
        L.append(
            f"- best read candidate: `{r['subspace']}` ({r['family']}): joint {fmt_num(r['joint_score'])}, {_scores_line(r)}"
        )
    else:
        L.append("- no read candidate with a finite joint score")
    return L + [""]


def _lens_section(info: ConclusionInfo) -> list[str]:
    """The base-W S-space lens: the diff's share on W's own singular directions, per tensor type."""
    t = info.lens
    if t is None or not t.height:
        return []
    r = int(round(t["null_top_block"][0] ** 0.5 * (t["d_out"][0] * t["d_in"][0]) ** 0.5))
    L = [
        "## The diff in the base weights' own singular directions (`v7_sspace_lens.tsv`, `v7_sspace_lens.png`)",
        "",
        f"dS = U₀ᵀ·dW·V₀ per touched tensor (W's own SVD); mean over layers of each share of ‖dW‖², a random diff's "
        f"share in brackets. 100 % on the diagonal is a pure re-weighting of W's singular pairs (what the S-space "
        f"family trains); a diff at the brackets writes directions unrelated to W's. r = {r}.",
        "",
        "| tensor | on the diagonal | in the top-r block | on the top-r output directions | on the top-r input directions |",
        "|---|---|---|---|---|",
    ]
    g = t.group_by("tensor", maintain_order=True).mean()
    for row in g.iter_rows(named=True):
        cells = [
            f"{100 * row[f'frac_{c}']:.1f} % ({100 * row[f'null_{c}']:.1f} %)"
            for c in ("diag", "top_block", "top_rows", "top_cols")
        ]
        L.append(f"| `{row['tensor']}` | " + " | ".join(cells) + " |")
    return L + [""]


def _specificity_section(
    specific_summary: pl.DataFrame | None, best: Mapping[str, Any] | None, info: ConclusionInfo
) -> list[str]:
    """The specificity leader, what the joint leader keeps, and the diff's specificity ratio."""
    L = ["## Specificity (label and bases projected off the clean-residual PCs)", ""]
    if specific_summary is not None and specific_summary.height:
        sh = specific_summary.filter(pl.col("kind") == "A-hypothesis")
        r = first_row(by_score(sh, "mean_specific_conc_act", drop_missing=True))
        if r is not None:
            L.append(
                f"- leader: `{r['subspace']}`: specific R_act = {fmt_num(r['mean_specific_conc_act'])} "
                f"(z {fmt_num(r['mean_specific_z_act'])}, energy fraction "
                f"{fmt_num(r['mean_specific_energy_frac_act'])}, mean specific rank "
                f"{fmt_num(r['mean_specific_rank'])})"
            )
        b = row_of(specific_summary, best["subspace"]) if best is not None else None
        if b is not None:
            L.append(
                f"- the joint leader `{best['subspace']}` keeps specific R_act = "
                f"{fmt_num(b['mean_specific_conc_act'])} (z {fmt_num(b['mean_specific_z_act'])})"
            )
    else:
        L.append("- no specificity scores")
    if info.diff_specificity_ratio is not None:
        L.append(f"- diff specificity ratio (from the run): {fmt_num(info.diff_specificity_ratio)}")
    return L + [""]


def _statistics_section(per_layer: pl.DataFrame | None, info: ConclusionInfo) -> list[str]:
    """Which null gave the p-values (and why some cells have none), the seeds of the statistics."""
    lines = []
    if per_layer is not None and "null_method_act" in per_layer.columns:
        for col, label in (("null_method_act", "activation"), ("null_method_w_combined", "weight combined")):
            if col in per_layer.columns:
                line = _null_method_line(per_layer, col, label, info)
                if line:
                    lines.append(line)
    if info.mc_seed is not None:
        lines.append(f"- Monte Carlo null seed: {info.mc_seed}")
    if info.seed is not None and info.bootstrap_ci is None:
        lines.append(f"- seed: {info.seed}")
    return ["## Statistics", ""] + lines + [""] if lines else []


_WHY_NO_P = {
    "activation": "the label is zero on that layer (before the first LoRA layer) or the basis is empty",
    "weight combined": "no LoRA delta on that layer or the basis is empty",
}


def _null_method_line(per_layer: pl.DataFrame, col: str, label: str, info: ConclusionInfo) -> str | None:
    m = per_layer[col].fill_null("")
    vc = m.filter(m != "").value_counts(sort=True)
    counts = ", ".join(f"{r[col]} {r['count']}" for r in vc.sort(col).iter_rows(named=True))
    if not counts:
        return None
    n_none = int((m == "").sum())
    none = f", no p-value {n_none} ({_WHY_NO_P[label]})" if n_none else ""
    thr = f"below {fmt_num(info.pr_threshold)}" if info.pr_threshold is not None else "low"
    return (
        f"- p-value null for {label} cells: {counts}{none}; rule: Monte Carlo where the label's participation "
        f"ratio is {thr}, the Gaussian tail elsewhere"
    )


def _caveats_section(per_layer: pl.DataFrame | None, info: ConclusionInfo) -> list[str]:
    """What limits the reading: model, probe counts, layers, rank shortfalls, a rank-one label,
    quantisation, what R and z mean, and the run's own notes."""
    cav = []
    if info.model is not None:
        cav.append(f"model: `{info.model}`")
    if info.n_fit is not None or info.n_eval is not None:
        cav.append(
            f"{fmt_num(info.n_fit)} FIT probes build the A-side bases and "
            f"{fmt_num(info.n_eval)} EVAL probes build the activation label; per-layer activation "
            f"scores rest on that many rows"
        )
    if info.layers_touched is not None:
        cav.append(f"summaries average the layers the LoRA touched: {layers_text(info.layers_touched)}")
    if info.layers_without_delta:
        cav.append(f"layers without a LoRA delta (weight scores NaN there): {layers_text(info.layers_without_delta)}")
    cav += [f"rank collapse: {rc}" for rc in info.rank_collapses]
    lr = _low_rank_label_text(per_layer, info)
    if lr:
        cav.append(lr)
    if info.quantized:
        cav.append(C.QUANTIZED)
    cav.append(C.RANDOM_IS_ONE)
    cav.append("read candidates are reported apart and kept out of the joint ranking")
    cav += [str(n) for n in info.notes]
    return ["## Caveats", ""] + [f"- {c}" for c in cav] + [""]


def _self_tests_section(info: ConclusionInfo) -> list[str]:
    """Every self-test with its result and measured detail."""
    if not info.self_tests:
        return []
    L = ["## Self-tests", "", "| test | result | detail |", "|---|---|---|"]
    L += [f"| {cell(t.name)} | {'PASS' if t.passed else 'FAIL'} | {cell(t.detail)} |" for t in info.self_tests]
    return L + [""]


def _artifacts_section(info: ConclusionInfo) -> list[str]:
    """Links to the run's files (relative to the conclusion's folder)."""
    arts = info.artifacts
    if not arts:
        return []
    items = arts.items() if isinstance(arts, Mapping) else [(None, a) for a in arts]
    return ["## Artifacts", ""] + [f"- [`{p}`]({p})" + (f": {name}" if name else "") for name, p in items] + [""]


def _q_text(per_layer: pl.DataFrame, name: str, info: ConclusionInfo) -> str:
    alpha = info.fdr_alpha
    parts = []
    for col, label in (("q_act", "activation"), ("q_w_combined", "weight combined")):
        q = touched_q(per_layer, name, col, info)
        if q.len() == 0:
            parts.append(f"{label}: no q-values")
        elif alpha is not None:
            parts.append(f"{label}: q ≤ {fmt_num(alpha)} on {int((q <= float(alpha)).sum())} of {q.len()} layers")
        else:
            parts.append(f"{label}: median q {fmt_num(q.median())} over {q.len()} layers")
    return "Benjamini–Hochberg q-values over all A-hypothesis × layer cells: " + "; ".join(parts)


def _low_rank_label_text(per_layer: pl.DataFrame | None, info: ConclusionInfo) -> str | None:
    """The caveat of a nearly rank-one activation label (:func:`ws.v7.verdicts.low_rank_label`)."""
    low = low_rank_label(per_layer, info)
    if low is None:
        return None
    med, n = low
    return (
        f"the activation label is nearly rank one: median participation ratio {fmt_num(med)} over "
        f"{n} touched layers, so one direction (the shift every EVAL prompt shares) carries most of "
        f"its energy. The activation ceiling is a centred PCA and cannot see that direction; "
        f"`mean_pct_act_matched_rank` (against the label's own top directions) is the honest yardstick"
    )


def _seed_text(st: SeedSummary) -> str:
    """One line on seed stability: the first seed's winner, its wins, τ, its seed mean, and the
    leader by the seed-mean joint score when that is another candidate."""
    n, k = st.n_seeds, st.winner_wins
    per = ", ".join(f"seed {s}: `{w}`" for s, w in (st.winners or {}).items())
    txt = (
        f"seeds: `{st.winner}` wins in {k} of {n} seeds ({per}); mean Kendall τ between the seeds' joint "
        f"rankings {fmt_num(st.mean_tau)}"
    )
    if finite(st.seed_mean_joint):
        txt += f"; its joint score over seeds {fmt_num(st.seed_mean_joint)} ± {fmt_num(st.seed_sd_joint)} (sd)"
    txt += " — stable" if k == n else " — NOT stable across seeds"
    ml = st.mean_leader
    if ml and ml != st.winner:
        txt += (
            f"; by the mean over seeds the leader is `{ml}` (joint {fmt_num(st.mean_leader_joint)} ± "
            f"{fmt_num(st.mean_leader_sd)} sd)"
        )
    return txt
