"""v8's checks and the facts its conclusion is written from, as v7's :mod:`ws.v7.verdicts`.

- :func:`causal_self_tests` – the causal test's self-test rows (random at its null, the
  planted S-space basis keeping the writers' effect);
- :func:`block_checks`, :func:`sanity_lines` – what must hold in every run;
- :func:`plan_merge_changes` – how this run differs from the earlier rows;
- :func:`conclusion_info` – the facts ``v8_conclusion.md`` is written from, its caveats among
  them (:func:`null_caveat`, :func:`rows_caveat`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from ws.behavior import data
from ws.core import caveats as C
from ws.core.markdown import SelfTest, pct
from ws.core.paths import EMBEDDED_NAMES
from ws.stats import CEILING_ACT, CEILING_W, ranked
from ws.v7 import verdicts as v7
from ws.v7.results import Probes, SeedResult, SeedStability
from ws.v7.sweep import diff_caveats
from ws.v8.causal import causal_item_counts, effect_measurable
from ws.v8.results import V8_FILES, BlockLocal, ConclusionFacts

__all__ = [
    "causal_self_tests",
    "block_checks",
    "sanity_lines",
    "plan_merge_changes",
    "null_caveat",
    "rows_caveat",
    "conclusion_info",
]


def _spread_z(cr, name: str) -> tuple[float, float, float, float]:
    """``(spread, null mean, null sd, z)`` of a row's inside spread against its random draws'
    inside spreads on the target set (no ratio: usable when the writers' effect is not measurable)."""
    v = cr.variants.filter(pl.col("set") == cr.target)
    own = v.filter(pl.col("variant") == f"{name}:inside")
    prof = own["null_profile"][0] if own.height else ""
    null = v.filter((pl.col("part") == "null_inside") & (pl.col("null_profile") == prof))["spread"].to_numpy()
    if not own.height or null.size < 2:
        return (float("nan"),) * 4
    x, m, sd = float(own["spread"][0]), float(null.mean()), float(null.std(ddof=1))
    return x, m, sd, (x - m) / sd if sd > 0 else float("nan")


def _random_self_test(cr, r: dict, z_max: float) -> SelfTest:
    """The random self-test row against its null: on retention, or on the spreads when the
    writers' effect is not measurable (no retention then)."""
    z = r["z_inside"]
    if z is not None and np.isfinite(z):
        detail = (
            f"inside retention {100 * r['retention_inside']:.1f}% against its "
            f"random null {100 * r['null_mean']:.1f}% ± {100 * r['null_sd']:.1f}%: z {z:.2f} (|z| must be < {z_max:g})"
        )
    else:
        x, m, sd, z = _spread_z(cr, r["subspace"])
        detail = (
            f"no retention (the writers' effect is not measurable): inside spread {x:.3g} nats against its random "
            f"null {m:.3g} ± {sd:.3g} nats: z {z:.2f} (|z| must be < {z_max:g})"
        )
    return SelfTest("random_orthonormal (causal)", bool(np.isfinite(z) and abs(z) < z_max), detail)


def causal_self_tests(cr, z_max: float = C.SELFTEST_Z_MAX, min_inside: float = C.SELFTEST_PLANTED_MIN_INSIDE) -> list[SelfTest]:
    """The random self-test row must sit within the random null of the causal test; an
    S-space diff's planted basis (``sspace_planted``) must keep ≥ ``min_inside`` of the
    writers' effect inside and ≤ ``1 − min_inside`` outside."""
    out = []
    r = cr.table.filter(pl.col("subspace") == "random_orthonormal")
    if r.height:
        out.append(_random_self_test(cr, r.row(0, named=True), z_max))
    p = cr.table.filter(pl.col("subspace") == "sspace_planted")
    if p.height:
        p = p.row(0, named=True)
        inside, outside = p["retention_inside"], p["retention_outside"]
        ok = bool(np.isfinite(inside) and np.isfinite(outside) and inside >= min_inside and outside <= 1 - min_inside)
        out.append(
            SelfTest(
                "sspace_planted (causal)",
                ok,
                f"keeps {100 * inside:.1f}% of the writers' effect inside (must be ≥ {100 * min_inside:g}%) and "
                f"{100 * outside:.1f}% outside (must be ≤ {100 * (1 - min_inside):g}%)",
            )
        )
    return out


def block_checks(res: SeedResult, bl: BlockLocal) -> tuple[int, float, float]:
    """``(first, below, drift)``: the first touched block, the largest |block-local label| below
    it (must be 0), and the largest gap between the summed block-local labels and the
    cumulative label, relative to the label's largest entry (rounding only)."""
    lab, loc = bl.label.double(), bl.label_block.double()
    first = min(res.layers_touched)
    drift = float((loc.cumsum(dim=0) - lab).abs().max()) / (float(lab.abs().max()) or 1.0)
    return first, float(loc[:first].abs().max()) if first else 0.0, drift


def sanity_lines(res: SeedResult, bl: BlockLocal, cr, k: int) -> list[tuple[bool, str]]:
    """``(ok, "SHOULD: … ELSE: …")`` lines of v8, with their measured values."""
    first, below, drift = block_checks(res, bl)
    scale = float(bl.label.abs().max()) or 1.0
    lines = [
        (
            bl.label_max_abs_diff <= 1e-6 * scale,
            f"SHOULD: the cumulative label of the block capture equals v7's "
            f"label (max |difference| {bl.label_max_abs_diff:.3g}; 0 when both ran with the same thread count). "
            f"ELSE: the two captures do not see the same passes.",
        ),
        (
            below == 0.0,
            f"SHOULD: the block-local label is exactly zero below block {first} (max {below:.3g}). "
            f"ELSE: the diff reaches blocks it does not touch.",
        ),
        (
            drift < 1e-4,
            f"SHOULD: the block-local labels add up to the cumulative one (largest gap {drift:.2e} of the "
            f"label's scale). ELSE: a block's input is not the previous block's output.",
        ),
    ]
    w = cr.writers_spread
    lines.append(
        (
            effect_measurable(w[1], w[2]),
            f"SHOULD: the writers-only spread's CI excludes 0 (measured {w[0]:.3g} "
            f"[{w[1]:.3g}, {w[2]:.3g}] nats). ELSE: the writers have no measurable effect to divide by: no "
            "retention, z, p or verdict is given.",
        )
    )
    t = cr.table
    dw = t.filter(pl.col("subspace") == CEILING_W)
    low = t.filter(pl.col("mean_rank") <= k)
    if dw.height and low.height:
        best = float(low["energy_frac_inside"].fill_nan(None).max())
        e = float(dw["energy_frac_inside"][0])
        lines.append(
            (
                e >= best - 1e-9,
                f"SHOULD: no tested row of rank ≤ {k} holds more of the writers' energy than "
                f"the dW oracle ({100 * e:.1f}%; best {100 * best:.1f}%). ELSE: the oracle is not the top SVD.",
            )
        )
    for name, ok, detail in ((t.name, t.passed, t.detail) for t in causal_self_tests(cr)):
        lines.append((ok, f"SHOULD: self-test {name} passes ({detail}). ELSE: the causal null is broken."))
    return lines


def _act_ceiling_fact(cr) -> str:
    """What this run says about upstream v10's reading of the activation ceiling."""
    r = cr.table.filter(pl.col("subspace") == CEILING_ACT)
    if not r.height:
        return "the activation ceiling was not tested in this run"
    r = r.row(0, named=True)
    target = r["works_as_target"]
    verdict = {True: "carries most of", False: "does not carry most of", None: "cannot be judged on"}[r["carries"]]
    chance = {True: "contributes above chance", False: "does not beat chance", None: "cannot be judged"}[r["above_chance"]]
    return (
        f"`{CEILING_ACT}` keeps {pct(r['retention_inside'])} inside ({pct(r['energy_frac_inside'])} of the writers' "
        f"energy) and {pct(r['retention_normmatched'])} norm-matched (norm-matched random subspaces: 95th percentile "
        f"{pct(r['null_normmatched_p95'])}): as an intervention target it "
        f"{'works' if target else 'does not beat random subspaces'}, and by the rules it {verdict} what the adapter "
        f"writes ({chance})"
    )


def plan_merge_changes(cfg, res: SeedResult, stab: SeedStability, bl: BlockLocal, cr) -> list[str]:
    """What v8 changes against v7 and against upstream v8 / v9 / v10, with this run's facts."""
    t = cr.table
    hyp = t.filter(pl.col("kind") == "A-hypothesis")
    n_carry, n_chance = int(hyp["carries"].fill_null(False).sum()), int(hyp["above_chance"].fill_null(False).sum())
    sc = bl.scope.filter(pl.col("touched"))
    first, below, drift = block_checks(res, bl)
    med = lambda c: float(sc[c].fill_nan(None).drop_nulls().median() or float("nan"))  # noqa: E731
    return [
        "**Against v7**: v7's notebook, tables and files are unchanged (`v7/` is still written by "
        "`nbs/hypothesis_sweep_v7.py`, the upstream-comparable contract). v8 reads none of v7's files: it recomputes "
        "every seed's results through the same functions (captures and bases come from the cache), so the v7 columns "
        f"of `v8_summary.tsv` and `v8_per_layer.csv` are v7's numbers. Seeds {list(stab.seeds)}; tables of seed {res.seed}.",
        f"**New: the causal projection test** on seed {res.seed}'s diff: the top {hyp.height} write/mixed candidates by "
        f"the seed-mean joint score, both ceilings and the self-test rows; each as inside, outside and norm-matched "
        f"inside; {cr.n_null} random subspaces per rank profile as the null. This run: the writers carry "
        f"{pct(cr.writers_share[0])} of the full diff's effect; {n_carry} of {hyp.height} candidates carry most of it "
        f"and {n_chance} contribute above chance (`v8_causal.tsv`, `v8_causal_variants.tsv`, `v8_causal_retention.png`).",
        "**New: the block-local label** `(post⁺ − pre⁺) − (post⁻ − pre⁻)`, captured from block inputs and outputs at "
        f"±w in the same passes that give v7's label (this run: the cumulative label it gives differs from v7's by "
        f"{bl.label_max_abs_diff:.3g}); every candidate scored against it with v7's closed-form null and BH q-values "
        "(`conc_act_block`, `z_act_block`, … in `v8_per_layer.csv` and `v8_summary.tsv`).",
        f"**New: the scope table** (`v8_scope.tsv`, `v8_block_local.png`): per layer the overlap of the dW oracle with "
        f"the cumulative and the block-local activation oracle; this run, medians over the touched layers: "
        f"{med('overlap_dW_act'):.3g} and {med('overlap_dW_act_block'):.3g} "
        f"(random: {cfg.k / res.captures.label_eval.shape[-1]:.3g}).",
        "**Against upstream v8**: this suite's sources hold no description of upstream's v8; this v8 is the suite's "
        "next version after v7, built from the questions upstream's v9 and v10 asked, not a port of upstream v8.",
        "**Against upstream v9** (it scored a block-local label): here the block-local label sits beside the "
        "cumulative one for every candidate, with the same null, CIs and q-values, and two checks from this run: "
        f"its largest entry below the first touched block {first} is {below:.3g} (must be 0), and the block-local "
        f"labels add up to the cumulative one within {drift:.2g} of its scale.",
        "**Against upstream v10** (it projected the weight diff onto an activation subspace, measured how much "
        "steering survived, and found the act-PCA directions work as an intervention target but are not what the "
        "adapter carries): here the projection acts on the residual writers only (their share of the full effect is "
        "reported), for every tested candidate, with the complement (outside), norm-matched inside (the "
        "intervention-target reading), a rank-matched random null with z, p and BH q, bootstrap CIs over prompts and "
        f"the control sets. This run: {_act_ceiling_fact(cr)}.",
        "**Cost**: the forward passes reuse the prompts' shared prefix and the residual entering the first touched "
        f"block (computed once, bit-exact against running every block; `tests/test_fast_readout.py`); the null runs on the "
        f"target set only. This run: {sum(cr.timings.values()):.0f} s for {cr.n_rows} prompt rows.",
    ]


def _caveats(cfg, results: Sequence[SeedResult], stab: SeedStability, cr) -> list[str]:
    res, t = results[0], cr.table
    wo = cr.variants.filter((pl.col("variant") == "writers_only") & (pl.col("set") == cr.target))
    sc = t["normmatch_scale_max"].fill_nan(None).drop_nulls()
    out = [
        f"the causal test ran on seed {res.seed}'s diff only; the candidates were chosen by the joint score "
        f"averaged over seeds {list(stab.seeds)}",
        f"α = ±1 only (the trained regime); the mean Yes+No mass of writers-only on the target set there is "
        f"{float(wo['mean_mass'][0]):.3g} (smallest {float(wo['min_mass'][0]):.3g})"
        if wo.height
        else "α = ±1 only",
        null_caveat(cr),
        "retention is a ratio of mean spreads; the writers-only spread is its denominator for every row",
        "the block-local label is zero below the first touched block (no score there); blocks after the last touched "
        "one respond to their changed input, so their block-local label is not zero",
        "R = 1 and retention of a random subspace are the yardsticks; each verdict needs every half of its rule",
    ]
    if not effect_measurable(cr.writers_spread[1], cr.writers_spread[2]):
        out.append(
            f"the writers-only spread's CI spans zero ({cr.writers_spread[1]:.3g} to {cr.writers_spread[2]:.3g} nats): "
            "the diff's writers have no measurable effect to divide by, so no retention and no verdict is given"
        )
    cut = {s: c for s, c in causal_item_counts(cfg.behavior, cfg.causal_items).items() if c[0] < c[1]}
    if cut:
        out.append(
            "the causal test steered a seeded subset of the held-out items (`WS_CAUSAL_ITEMS` = "
            f"{cfg.causal_items}): " + ", ".join(f"{u} of {n} in `{s}`" for s, (u, n) in cut.items())
        )
    out.append(rows_caveat(cr))
    if sc.len():
        out.append(
            f"norm-matching rescales a layer's inside part by up to ×{float(sc.max()):.3g} (largest over the "
            f"tested rows): far outside the trained regime for subspaces that hold little of the writers' energy"
        )
    if cfg.model in EMBEDDED_NAMES:
        out.append(C.QUANTIZED)
    if cfg.smoke:
        out.append(C.SMOKE)
    return out + diff_caveats(results, cfg.behavior)


def null_caveat(cr) -> str:
    """How many null draws the causal test made, and which p it read from them."""
    t = cr.table
    n_prof, n_normal = t["null_profile"].n_unique(), int((t["p_inside_method"] == "normal").sum())
    more = (
        f"; {cr.n_null_first} first, then more because a BH decision could still change"
        if cr.n_null > cr.n_null_first > 0
        else ""
    )
    return (
        f"{cr.n_null} random subspaces per rank profile ({n_prof} profile(s) in this run{more}): p is the normal tail "
        f"fitted to them where they pass a Shapiro–Wilk check ({n_normal} of {t.height} rows), else the empirical p, "
        f"whose smallest value is 1/{cr.n_null + 1} = {1 / (cr.n_null + 1):.3g} (`p_inside_method`); the null's 95th "
        f"percentile rests on {cr.n_null} draws"
    )


def rows_caveat(cr) -> str:
    """How the causal test chose its prompt rows (:func:`ws.v8.causal.run_causal`), with the widest
    inside / outside retention CI half-width of the tested candidates it reached."""
    used = ", ".join(f"{u} of {n} in `{s}`" for s, (u, n) in cr.rows.items())
    if cr.half_width is None:
        return f"the causal test steered every prompt it was given ({used}; `WS_CAUSAL_HALF_WIDTH` = 0)"
    t = cr.table.filter(pl.col("kind") == "A-hypothesis")
    hw = [
        float(h) for p in ("inside", "outside") for h in ((t[f"retention_{p}_ci_hi"] - t[f"retention_{p}_ci_lo"]) / 2).to_list()
    ]
    hw = [h for h in hw if h == h]
    reached = f"; the widest retention CI half-width of the tested candidates is {100 * max(hw):.1f} points" if hw else ""
    why = (
        f"the pilot ({cr.pilot.get(cr.target, 0)} target prompts) asked for {cr.rows_asked} to reach a retention CI "
        f"half-width of {100 * cr.half_width:.3g} points of the writers' effect"
        if cr.rows_asked is not None
        else "the writers' effect was not measurable on the pilot, so every prompt was used"
    )
    return f"prompt rows sized by a precision target (`WS_CAUSAL_HALF_WIDTH`): {why}; used {used}{reached}"


def conclusion_info(
    cfg, probes: Probes, results: Sequence[SeedResult], stab: SeedStability, bl: BlockLocal, cr
) -> ConclusionFacts:
    """Facts of the run for :func:`ws.v8.report.conclusion_v8_md`."""
    labels = data.get_behavior(cfg.behavior).labels
    res = results[0]
    info7 = v7.conclusion_info(cfg, probes, res, stab, [])
    v7_ranking = ranked(res.summary)
    tests = [*v7.self_tests(res), *causal_self_tests(cr)]
    cost = [
        f"causal test: {sum(cr.timings.values()):.1f} s ("
        + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in cr.timings.items())
        + f"), {cr.n_rows} prompt rows through blocks {cr.first_block}–{len(bl.scope) - 1}",
        f"block-local label and its scores: {bl.seconds:.1f} s",
    ]
    return ConclusionFacts(
        title=f"v8 — which subspace carries the behaviour? {cfg.behavior}/{cfg.adapter} on `{cfg.model}`",
        seed=res.seed,
        n_null=cr.n_null,
        layers_touched=res.layers_touched,
        n_target=int(cr.variants.filter((pl.col("variant") == "writers_only") & (pl.col("set") == cr.target))["n"][0]),
        controls=[c for c in cr.controls if c in set(cr.variants["set"].to_list())],
        target_label=labels.get(cr.target, cr.target),
        control_labels={c: labels.get(c, c) for c in cr.controls},
        writers_share=cr.writers_share,
        writers_spread=cr.writers_spread,
        full_spread=cr.full_spread,
        v7_leader=v7_ranking["subspace"][0] if v7_ranking.height else None,
        v7_claims=v7.claim_checks(res.summary_pct, res.per_layer, info7),
        self_tests=tests,
        caveats=_caveats(cfg, results, stab, cr),
        cost=cost,
        artifacts=[*V8_FILES, "../v7/v7_conclusion.md", f"../seed{res.seed}/effect.csv"],
    )
