"""What the cross-adapter comparison says: its claims with their evidence and verdicts,
its caveats, ``cross_adapter_conclusion.md`` and the rank heat map.

Every number written here comes from the :class:`ws.cross_adapter.compare.Comparison` of the run
that writes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from ws.behavior.data import get_behavior
from ws.core import caveats as C
from ws.core.markdown import Claim, cell, ci_text, claims_section, fmt_num
from ws.core.paths import EMBEDDED_NAMES
from ws.cross_adapter.results import FIGURES, TABLES, TOP_K, Comparison
from ws.diffs.budget import MAX_ALPHA
from ws.diffs.effect import effect_sets
from ws.v7 import sweep

#: a claim as the helpers below build it: (claim, evidence, verdict)
_Row = tuple[str, str, "bool | None"]


def _rows(df: pl.DataFrame) -> list[dict]:
    return list(df.iter_rows(named=True))


# ----------------------------------------------------------------------------- claims
def _winner_claim(summary: pl.DataFrame) -> _Row:
    rows = _rows(summary)
    ev = "; ".join(
        f"{r['adapter']}: `{r['winner']}` "
        f"(joint {ci_text(r['winner_joint_score'], r['winner_joint_ci_lo'], r['winner_joint_ci_hi'])}, "
        f"won {r['winner_seeds_won']}/{r['n_seeds']} seeds)"
        for r in rows
    )
    verdict = None if len(rows) < 2 else len({r["winner"] for r in rows}) == 1
    return "One candidate is the seed-mean winner for every adapter", ev, verdict


def _in_adapter(cands: pl.DataFrame, name: str, adapter: str) -> dict | None:
    r = cands.filter((pl.col("adapter") == adapter) & (pl.col("subspace") == name))
    return r.row(0, named=True) if r.height else None


def _rank_text(r: dict | None, adapter: str, top_k: int) -> str:
    if r is None:
        return f"{adapter}: not ranked"
    return (
        f"{adapter}: rank {r['rank']} (top {top_k} in {r['seeds_in_top_k']}/{r['n_seeds']} seeds; "
        f"R_act {ci_text(r['seed_mean_conc_act'], r['conc_act_ci_lo'], r['conc_act_ci_hi'])})"
    )


def _behaviour_claims(cands: pl.DataFrame, ranks: pl.DataFrame, adapters: list[str], top_k: int) -> list[_Row]:
    names = ranks.filter(pl.col("level") == "behaviour-level")["subspace"].to_list()
    if len(adapters) < 2:
        return []
    if not names:
        return [
            (
                f"Some candidate ranks in the top {top_k} for every adapter (behaviour-level)",
                f"none: no candidate is in the top {top_k} of all {len(adapters)} adapters",
                False,
            )
        ]
    out = []
    for n in names:
        rs = {a: _in_adapter(cands, n, a) for a in adapters}
        ok = all(r is not None and r["seeds_in_top_k"] == r["n_seeds"] and (r["conc_act_ci_lo"] or 0) > 1 for r in rs.values())
        out.append(
            (
                f"`{n}` ranks in the top {top_k} for every adapter (behaviour-level): in every seed, with R_act above 1",
                "; ".join(_rank_text(r, a, top_k) for a, r in rs.items()),
                ok,
            )
        )
    return out


def _adapter_claims(cands: pl.DataFrame, ranks: pl.DataFrame, adapters: list[str], top_k: int) -> list[_Row]:
    out = []
    for row in _rows(ranks.filter(pl.col("level") == "adapter-level")):
        n = row["subspace"]
        home = next(a for a in adapters if row[f"rank_{a}"] is not None and row[f"rank_{a}"] <= top_k)
        rs = {a: _in_adapter(cands, n, a) for a in adapters}
        here = rs[home]
        elsewhere = [r for a, r in rs.items() if a != home and r is not None]
        ok = here["seeds_in_top_k"] == here["n_seeds"] and all(r["seeds_in_top_k"] == 0 for r in elsewhere)
        ev = (
            _rank_text(here, home, top_k)
            + "; elsewhere: "
            + ", ".join(
                f"{a} rank {r['rank'] if r else '–'} (top {top_k} in {r['seeds_in_top_k'] if r else 0} seeds)"
                for a, r in rs.items()
                if a != home
            )
        )
        out.append(
            (
                f"`{n}` ranks in the top {top_k} for `{home}` only (adapter-level): in every seed of `{home}`, "
                f"in no seed of another adapter",
                ev,
                ok,
            )
        )
    return out


def _tau_claim(tau: pl.DataFrame) -> _Row:
    claim = f"The adapters rank the candidates alike (Kendall τ > 0 with p ≤ {C.P_ALPHA:g} for every pair)"
    if tau.height == 0:
        return claim, "one adapter: nothing to compare", None
    low = tau.sort("kendall_tau", nulls_last=True).row(0, named=True)
    ev = (
        f"mean τ {fmt_num(float(np.nanmean(tau['kendall_tau'].to_numpy())))} over {tau.height} pair(s); lowest "
        f"{low['adapter_a']}–{low['adapter_b']} τ {fmt_num(low['kendall_tau'])} (p {fmt_num(low['p_value'])}, "
        f"n {low['n']})"
    )
    ok = bool(((tau["kendall_tau"] > 0) & (tau["p_value"] <= C.P_ALPHA)).all())
    return claim, ev, ok


def _overlap_claim(summary: pl.DataFrame, target: str, target_label: str, direction: int = 1) -> _Row:
    claim = (
        f"The adapter whose diff moves {target_label} most has the least overlap between its dW oracle "
        "and its activation oracle (upstream's cross-adapter finding)"
    )
    rows = _rows(summary)
    col = f"spread_{target}"
    ev = "; ".join(
        f"{r['adapter']}: spread "
        f"{ci_text(r[col], r[f'{col}_ci_lo'], r[f'{col}_ci_hi'])} "
        f"at α ±{fmt_num(r['unit_alpha'])}, overlap "
        f"{ci_text(r['oracle_overlap_cos'], r['oracle_overlap_ci_lo'], r['oracle_overlap_ci_hi'])}"
        for r in rows
    )
    sp = direction * np.array([r[col] for r in rows], dtype=np.float64)  # toward the behaviour
    ov = np.array([r["oracle_overlap_cos"] for r in rows], dtype=np.float64)
    if len(rows) < 2 or not (np.isfinite(sp).all() and np.isfinite(ov).all()):
        return claim, ev, None
    return claim, ev, bool(np.argmax(sp) == np.argmin(ov))


def _specificity_claims(summary: pl.DataFrame) -> list[_Row]:
    rows = {r["adapter"]: r for r in _rows(summary)}
    spec = lambda r: ci_text(r["specificity"], r["specificity_ci_lo"], r["specificity_ci_hi"])  # noqa: E731
    ev = "; ".join(f"{a}: {spec(r)} at α ±{fmt_num(r['unit_alpha'])}" for a, r in rows.items())
    lo = [r["specificity_ci_lo"] for r in rows.values()]
    known = [x for x in lo if x is not None and math.isfinite(x)]
    out = [
        (
            "Some adapter's diff is more behaviour-specific than a plain answer bias (specificity CI above 1)",
            ev,
            any(x > 1 for x in known) if known else None,
        )
    ]
    if "bidir" in rows and "lora" in rows:
        b, l = rows["bidir"], rows["lora"]
        ok = (
            None
            if not all(math.isfinite(x) for x in (b["specificity_ci_lo"], l["specificity_ci_hi"]))
            else bool(b["specificity_ci_lo"] > l["specificity_ci_hi"])
        )
        out.append(
            (
                "One bidirectional LoRA (`bidir`) gives a more behaviour-specific diff than two LoRAs (`lora`): "
                "the CIs do not overlap",
                f"bidir {spec(b)} at its trained endpoints (α ±{fmt_num(b['unit_alpha'])}); "
                f"lora {spec(l)} at α ±{fmt_num(l['unit_alpha'])}",
                ok,
            )
        )
    return out


def _self_test_claim(summary: pl.DataFrame) -> _Row:
    rows = _rows(summary)
    ev = ", ".join(f"{r['adapter']} {r['self_tests_passed']}/{r['self_tests']}" for r in rows)
    return "The self-tests pass for every adapter and seed", ev, all(r["self_tests_passed"] == r["self_tests"] for r in rows)


def claims(
    summary: pl.DataFrame, cands: pl.DataFrame, ranks: pl.DataFrame, tau: pl.DataFrame, top_k: int = TOP_K, behavior=None
) -> list[Claim]:
    """Each claim with its evidence and verdict (None where this run cannot test it); the
    spreads are the behaviour's (its target set's spread for the overlap claim)."""
    adapters = summary["adapter"].to_list()
    b = get_behavior(behavior)
    rows = [
        _winner_claim(summary),
        *_behaviour_claims(cands, ranks, adapters, top_k),
        *_adapter_claims(cands, ranks, adapters, top_k),
        _tau_claim(tau),
        _overlap_claim(summary, b.target, b.labels[b.target], b.direction),
        *_specificity_claims(summary),
        _self_test_claim(summary),
    ]
    return [Claim(*r) for r in rows]


# ----------------------------------------------------------------------------- caveats
def caveats(cfg, runs: Sequence, summary: pl.DataFrame) -> list[str]:
    """What a reader must know about this run's numbers."""
    out = C.run_caveats(cfg.smoke, cfg.model in EMBEDDED_NAMES)
    for r in _rows(summary.filter(pl.col("layers_without_oproj") > 0)):
        out.append(
            f"`{r['adapter']}` has no o_proj delta on {r['layers_without_oproj']} touched layer(s): its o_proj "
            f"weight cells are NaN there (never 0) and its R_w combined is down_proj alone, so its R_w and "
            f"joint scores are not one-to-one comparable with the other adapters'"
        )
    if any(len(r.results) < 2 for r in runs):
        out.append(
            "one seed per adapter: R_w, the joint score's seed part and the oracle overlap have no CI across "
            "seeds (R_w and overlap CIs are NaN), and whether a rank holds across seeds is untested"
        )
    for run in runs:
        if any(e is None for e in run.effects.values()):
            out.append(f"`{run.adapter}`: some diffs have no effect_per_prompt.csv (imported?): their spreads are left out")
        out += [f"`{run.adapter}`: {c}" for c in sweep.diff_caveats(run.results)]
        out += [
            f"`{run.adapter}` seed {s}: its KL stays below the matched budget up to α = {MAX_ALPHA:g} (KL {fmt_num(kl)} "
            f"there): left out of the matched-budget columns"
            for s, (a, kl) in run.budget.items()
            if not math.isfinite(a)
        ]
    out.append(
        "every adapter type is trained with the same training config as the LoRA (learning rate, steps, "
        "layers, batch); none was tuned for its type"
    )
    out.append(
        "spreads (held-out Yes/No log-ratio at +α minus −α) and specificity are at each adapter's unit α: "
        "±1 (θ ± w) for the types with one adapter per persona, ±0.5 for `bidir` (θ ± Δ, its trained "
        "endpoints); `specificity_alpha2` in the summary table is each diff's own figure at α = ±2"
    )
    out.append(
        f"ranks order the write and mixed A-hypotheses by their seed-mean joint score (the v7 rule); read-side "
        f'candidates are not ranked; "ranks high" means the top {TOP_K}'
    )
    out.append(C.RANDOM_IS_ONE)
    return out


# ----------------------------------------------------------------------------- markdown
def _bottom_line(cmp: Comparison) -> list[str]:
    r = cmp.ranks
    beh = r.filter(pl.col("level") == "behaviour-level")["subspace"].to_list()
    ada = _rows(r.filter(pl.col("level") == "adapter-level"))
    home = {x["subspace"]: next(a for a in cmp.adapters if (x[f"rank_{a}"] or 10**9) <= TOP_K) for x in ada}
    lines = []
    if len(cmp.adapters) > 1:
        lines.append(
            f"- **Behaviour-level** (top {TOP_K} for every adapter): " + (", ".join(f"`{n}`" for n in beh) if beh else "none")
        )
        lines.append(
            f"- **Adapter-level** (top {TOP_K} for one adapter only): "
            + (", ".join(f"`{n}` ({a})" for n, a in home.items()) if home else "none")
        )
    lines.append(
        "- **Seed-mean winner per adapter**: "
        + "; ".join(
            f"{x['adapter']} `{x['winner']}` "
            f"(R_act {ci_text(x['winner_conc_act'], x['winner_conc_act_ci_lo'], x['winner_conc_act_ci_hi'])}, "
            f"R_w {ci_text(x['winner_conc_w_combined'], x['winner_conc_w_ci_lo'], x['winner_conc_w_ci_hi'])})"
            for x in _rows(cmp.summary)
        )
    )
    if cmp.tau.height:
        lines.append(
            f"- **Agreement of the rankings**: mean Kendall τ "
            f"{fmt_num(float(np.nanmean(cmp.tau['kendall_tau'].to_numpy())))} over {cmp.tau.height} adapter pair(s)"
        )
    return lines


def _adapter_table_md(summary: pl.DataFrame, sets: Sequence[str]) -> list[str]:
    head = (
        "| adapter | seeds | α | "
        + " | ".join(f"spread {s}" for s in sets)
        + " | specificity | specificity α ±2 | winner | R_act | R_w | oracle overlap | self-tests |"
    )
    lines = [head, "|---" * (10 + len(sets)) + "|"]
    for r in _rows(summary):
        sp = [ci_text(r[f"spread_{s}"], r[f"spread_{s}_ci_lo"], r[f"spread_{s}_ci_hi"]) for s in sets]
        lines.append(
            "| "
            + " | ".join(
                cell(x)
                for x in (
                    r["adapter"],
                    r["seeds"],
                    f"±{fmt_num(r['unit_alpha'])}",
                    *sp,
                    ci_text(r["specificity"], r["specificity_ci_lo"], r["specificity_ci_hi"]),
                    fmt_num(r["specificity_alpha2"]),
                    f"`{r['winner']}`",
                    ci_text(r["winner_conc_act"], r["winner_conc_act_ci_lo"], r["winner_conc_act_ci_hi"]),
                    ci_text(r["winner_conc_w_combined"], r["winner_conc_w_ci_lo"], r["winner_conc_w_ci_hi"]),
                    ci_text(r["oracle_overlap_cos"], r["oracle_overlap_ci_lo"], r["oracle_overlap_ci_hi"]),
                    f"{r['self_tests_passed']}/{r['self_tests']}",
                )
            )
            + " |"
        )
    return lines


def _budget_table_md(summary: pl.DataFrame, sets: Sequence[str]) -> list[str]:
    """The same diffs at a matched budget: each at the α where its KL from the base model reaches the budget."""
    if "budget_alpha" not in summary.columns or not summary.height:
        return []
    kl = fmt_num(summary["kl_budget"][0])
    lines = [
        f"## At a matched budget (mean next-token KL from the base model {kl} nats on the neutral prompts)",
        "",
        "Each type is trained to its own endpoint, so one that moves the model more looks stronger at its unit α. "
        "Here each diff runs at the α (found by bisection, per seed; the seed mean shown) where its mean KL over ±α "
        "reaches the budget; spreads in nats at ±that α, seed means with 95 % CIs.",
        "",
        "| adapter | α at the budget | " + " | ".join(f"spread {s}" for s in sets) + " | specificity |",
        "|---" * (3 + len(sets)) + "|",
    ]
    for r in _rows(summary):
        sp = [ci_text(r[f"budget_spread_{s}"], r[f"budget_spread_{s}_ci_lo"], r[f"budget_spread_{s}_ci_hi"]) for s in sets]
        spec = ci_text(r["budget_specificity"], r["budget_specificity_ci_lo"], r["budget_specificity_ci_hi"])
        lines.append(f"| {r['adapter']} | {fmt_num(r['budget_alpha'])} | " + " | ".join(sp) + f" | {spec} |")
    return [*lines, ""]


def _ranks_md(ranks: pl.DataFrame, adapters: list[str], n: int = 12) -> list[str]:
    lines = ["| candidate | " + " | ".join(adapters) + " | level |", "|---" * (len(adapters) + 2) + "|"]
    for r in _rows(ranks.head(n)):
        lines.append(f"| `{r['subspace']}` | " + " | ".join(fmt_num(r[f"rank_{a}"]) for a in adapters) + f" | {r['level']} |")
    return lines


def conclusion_md(cfg, cmp: Comparison) -> str:
    """``cross_adapter_conclusion.md``: bottom line, the claims table, the per-adapter table,
    the top of the rank table, caveats, artifacts."""
    L = [
        f"# Cross-adapter comparison — {cfg.behavior} on `{cfg.model}`",
        "",
        "Does where the weight diff acts depend on how it was trained? The v7 sweep on each adapter type's diff, "
        f"seeds {', '.join(map(str, cfg.seeds))}; adapters {', '.join(f'`{a}`' for a in cmp.adapters)}.",
        "",
        "## Bottom line",
        "",
        *_bottom_line(cmp),
        "",
        *claims_section(cmp.claims),
        "## Per adapter",
        "",
        "Seed means with 95 % CIs (bootstrap over seeds and prompts); spreads in nats at "
        "each adapter's unit α; R_act, R_w are the winner's.",
        "",
        *_adapter_table_md(cmp.summary, effect_sets(cfg.behavior)),
        "",
        *_budget_table_md(cmp.summary, effect_sets(cfg.behavior)),
        f"## Ranks (the first {min(12, cmp.ranks.height)} by mean rank; all in `cross_adapter_ranks.tsv`)",
        "",
        *_ranks_md(cmp.ranks, cmp.adapters),
        "",
        "## Caveats",
        "",
        *[f"- {c}" for c in cmp.caveats],
        "",
        "## Artifacts",
        "",
    ]
    L += [f"- [`{f}`]({f})" for f in (*TABLES, *FIGURES)]
    L += [f"- [`../{a}/v7/v7_conclusion.md`](../{a}/v7/v7_conclusion.md): the `{a}` sweep" for a in cmp.adapters]
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- figure
def rank_heatmap(
    ranks: pl.DataFrame, adapters: list[str], png: str | Path, pdf: str | Path, title: str = "", top_n: int = 20
) -> None:
    """Candidates (the first ``top_n`` by mean rank) × adapters, coloured and labelled by
    rank; behaviour-level rows marked ★, adapter-level ones •."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = ranks.head(top_n)
    M = np.array(
        [[np.nan if r[f"rank_{a}"] is None else float(r[f"rank_{a}"]) for a in adapters] for r in top.iter_rows(named=True)]
    ).reshape(top.height, len(adapters))
    mark = {"behaviour-level": " ★", "adapter-level": " •"}
    labels = [f"{n}{mark.get(lv, '')}" for n, lv in zip(top["subspace"].to_list(), top["level"].to_list(), strict=True)]
    fig, ax = plt.subplots(figsize=(3.4 + 0.9 * len(adapters), 1.4 + 0.32 * max(1, top.height)))
    vmax = float(np.nanmax(M)) if np.isfinite(M).any() else 1.0
    im = ax.imshow(np.ma.masked_invalid(M), cmap="viridis_r", vmin=1, vmax=max(vmax, 2.0), aspect="auto")
    for (i, j), v in np.ndenumerate(M):
        ax.text(
            j,
            i,
            "–" if np.isnan(v) else f"{int(v)}",
            ha="center",
            va="center",
            fontsize=8,
            fontweight="bold" if np.isfinite(v) and v <= TOP_K else "normal",
            color="white" if np.isfinite(v) and v > (1 + max(vmax, 2.0)) / 2 else "black",
        )
    ax.set_xticks(range(len(adapters)), adapters)
    ax.set_yticks(range(top.height), labels, fontsize=8)
    ax.set_title(title or "rank per adapter", fontsize=9)
    fig.colorbar(im, ax=ax, label="rank (1 = best)")
    ax.set_xlabel(f"bold: top {TOP_K}   ★ top {TOP_K} for every adapter   • top {TOP_K} for one adapter only", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120, bbox_inches="tight")  # the colour bar's label stays in the picture
    fig.savefig(pdf, bbox_inches="tight")
    plt.close(fig)
