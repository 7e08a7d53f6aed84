"""The head-to-head's files: the table, the sweep, the spread-against-KL figure, the conclusion
and the sampled completions, written as one set into ``<model root>/<behavior>/<adapter>/steering/``
(staged, then moved into place: a failure leaves the previous run's files as they were)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from ws.behavior import data
from ws.config import Config
from ws.core.io import atomic_path, staged_files, write_staged
from ws.core.log import logger
from ws.core.markdown import cell, ci_text, fmt_num, pct
from ws.steering.compare import COMPLETION_SEED, SWEEP_FRACTIONS, HeadToHead, Pairwise

TABLE = "steering_head_to_head.tsv"
SWEEP = "steering_sweep.tsv"
FIGURE = "steering_spread_vs_kl.png"
CONCLUSION = "steering_conclusion.md"
COMPLETIONS = "steering_completions.md"
#: every file of the set, in the order they land (the markdown last)
FILES = (SWEEP, TABLE, FIGURE, COMPLETIONS, CONCLUSION)


def steering_dir(cfg: Config) -> Path:
    """``<model root>/<behavior>/<adapter>/steering``: the head-to-head's file set."""
    return cfg.model_root / cfg.behavior / cfg.adapter / "steering"


# ----------------------------------------------------------------------------- the figure
def plot_spread_vs_kl(h: HeadToHead, path: str | Path) -> Path:
    """Target spread toward the behaviour against the mean KL, one line per method over its
    swept α (its budget point ringed), prompting a single star; the budget a dashed line."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = data.get_behavior(h.behavior)
    col = f"spread_{b.target}"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(h.results):
        sub = h.sweep.filter(pl.col("method") == r.method.name)
        kl, sp = sub["kl"].to_numpy(), b.direction * sub[col].to_numpy()
        c = colors[i % len(colors)]
        if not r.method.has_strength:
            ax.plot(kl, sp, marker="*", ms=14, ls="none", color=c, label=f"{r.method.name} (no α)")
            continue
        ax.plot(kl, sp, marker="o", ms=4, color=c, label=f"{r.method.name} (α* = {fmt_num(r.alpha)})")
        at = np.asarray(sub["fraction"].to_list()) == 1.0
        ax.plot(kl[at], sp[at], marker="o", ms=10, mfc="none", color=c)
    ax.axvline(h.budget, color="k", ls="--", lw=0.8, label=f"budget {fmt_num(h.budget)} nats")
    ax.axhline(0, color="gray", lw=0.5)
    positive = h.sweep["kl"].drop_nans().filter(h.sweep["kl"].drop_nans() > 0)
    if positive.len() and float(positive.max()) / max(float(positive.min()), 1e-300) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("mean next-token KL from the base model on the neutral prompts (nats, over ±α)")
    ax.set_ylabel(f"{b.labels.get(b.target, b.target)}: spread toward the behaviour")
    ax.set_title(
        f"{h.behavior}, {h.model}, diff {h.adapter} seed {h.seed}: "
        f"α swept at {', '.join(fmt_num(f) for f in SWEEP_FRACTIONS)} × α*",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the conclusion
def _spread(row: dict, s: str) -> str:
    return ci_text(row[f"spread_{s}"], row[f"spread_{s}_ci_lo"], row[f"spread_{s}_ci_hi"])


def _alpha(row: dict) -> str:
    a = row["alpha"]
    return "—" if a is None or (isinstance(a, float) and math.isnan(a)) else fmt_num(a)


def _pair_text(p: Pairwise, target_n: int) -> str:
    where = "outside" if p.separated else "inside"
    overlap = "the two spreads' CIs overlap" if p.cis_overlap else "the two spreads' CIs do not overlap"
    return (
        f"`{p.a}` − `{p.b}` = {ci_text(p.diff, p.lo, p.hi)} toward the behaviour (paired bootstrap over the same "
        f"{target_n} target prompts): the difference is {where} the CI "
        f"(zero {'excluded' if p.separated else 'included'}); {overlap}"
    )


def conclusion_text(h: HeadToHead) -> str:
    b = data.get_behavior(h.behavior)
    labels = b.labels
    rows = {r["method"]: r for r in h.table.iter_rows(named=True)}
    n_t = len(h.held.prompts[b.target])
    v = h.verdict
    lines = [
        "# Steering head to head at a matched budget",
        "",
        f"Behaviour `{h.behavior}`, model `{h.model}`, diff `{h.adapter}` seed {h.seed}. Every method is steered at the α "
        f"where the mean next-token KL from the base model on the {len(h.held.prompts[h.held.neutral])} held-out "
        f"{labels.get(h.held.neutral, h.held.neutral)} reaches **{fmt_num(h.budget)} nats** (averaged over ±α; "
        f"bisection, `WS_KL_BUDGET`); prompting has no α and is measured at its one setting. Spreads are the mean per-prompt "
        f"log-ratio at +α minus at −α, with 95 % percentile bootstrap CIs ({h.n_boot} resamples) over the held-out prompts "
        f"({', '.join(f'{labels.get(s, s)} {len(p)}' for s, p in h.held.prompts.items())}).",
        "",
        "## Which method wins at the budget",
        "",
    ]
    if v.winner is None:
        lines.append("No method reached the budget: nothing is ranked (see the caveats).")
    else:
        w = rows[v.winner]
        lines.append(
            f"**`{v.winner}`** moves the {labels.get(b.target, b.target)} most toward the behaviour at the budget: spread "
            f"{_spread(w, b.target)} at α = {_alpha(w)} (KL {fmt_num(w['kl'])}), specificity "
            f"{ci_text(w['specificity'], w['specificity_ci_lo'], w['specificity_ci_hi'])}."
        )
        if v.runner_up is not None:
            r = rows[v.runner_up.b]
            lines += [
                "",
                f"- Runner-up `{v.runner_up.b}`: spread {_spread(r, b.target)} at α = {_alpha(r)} (KL {fmt_num(r['kl'])}). "
                + _pair_text(v.runner_up, n_t)
                + ".",
                "- So the win is "
                + (
                    "**outside the CIs**."
                    if v.runner_up.separated
                    else "**not outside the CIs**: the two are not told apart on these prompts."
                ),
            ]
        else:
            lines += ["", "- It is the only method that reached the budget: there is no runner-up."]
        lines += ["", f"Order at the budget (target spread toward the behaviour): {' > '.join(f'`{n}`' for n in v.ranked)}."]
    if "prompt" in rows:
        p = rows["prompt"]
        lines += [
            "",
            "## Prompting",
            "",
            f"The persona instructions as the system prompt reach KL {fmt_num(p['kl'])} nats "
            f"({'above' if p['kl'] > h.budget else 'below'} the budget; prompting cannot be set to it) with spread "
            f"{_spread(p, b.target)} and specificity "
            f"{ci_text(p['specificity'], p['specificity_ci_lo'], p['specificity_ci_hi'])}.",
        ]
        if v.prompt is not None:
            lines.append(_pair_text(v.prompt, n_t) + ".")
    lines += ["", "## Every method", "", _markdown_table(h), ""]
    lines += [
        "Columns: α at the budget (— for prompting), the KL reached, each set's spread with its CI, the specificity "
        "(target spread toward the behaviour ÷ the largest absolute control spread) with its CI, the share of target prompts "
        "moved against the behaviour, and the capability guard: the control items' answer accuracy (items both personas "
        f"answer alike; {rows[next(iter(rows))]['control_items']} items) at the base model, at +α and at −α. "
        f"All numbers: `{TABLE}`; "
        f"the sweep behind the figure: `{SWEEP}` and `{FIGURE}`; sampled completions: `{COMPLETIONS}`.",
        "",
        "## How the methods were built",
        "",
    ]
    lines += [f"- `{r.method.name}`: {r.method.detail}." for r in h.results]
    if h.pick.spreads:
        lines.append(
            f"- The contrastive vector's block: FIT target spread toward the behaviour at α = ±{fmt_num(h.pick.alpha)} per block "
            f"{', '.join(f'{l}: {fmt_num(s)}' for l, s in enumerate(h.pick.spreads))}; block {h.pick.layer} chosen."
        )
    lines.append(f"- {h.carrier_note}.")
    caveats = list(h.notes)
    if h.smoke:
        caveats.append(
            "smoke run (`WS_SMOKE=1`): a tiny random model, a tiny budget; the numbers test the plumbing, not the method"
        )
    if n_t < 10:
        caveats.append(f"only {n_t} target prompts: the CIs are wide")
    guard = [
        r["method"]
        for r in rows.values()
        if all(np.isfinite([r["control_accuracy_base"], r["control_accuracy_pos"], r["control_accuracy_neg"]]))
        and min(r["control_accuracy_pos"], r["control_accuracy_neg"]) < r["control_accuracy_base"] - 0.1
    ]
    if guard:
        caveats.append(f"the control accuracy falls by more than 10 points at ±α for {', '.join(f'`{g}`' for g in guard)}")
    if caveats:
        lines += ["", "## Caveats", "", *[f"- {c}." for c in caveats]]
    return "\n".join(lines) + "\n"


def _markdown_table(h: HeadToHead) -> str:
    b = data.get_behavior(h.behavior)
    sets = h.held.sets
    head = [
        "method",
        "α",
        "KL",
        *[f"spread {b.labels.get(s, s)}" for s in sets],
        "specificity",
        "wrong way",
        "control acc. base / + / −",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in h.table.iter_rows(named=True):
        vals = [
            f"`{r['method']}`" + ("" if r["budget_reached"] is not False else " (budget not reached)"),
            _alpha(r),
            fmt_num(r["kl"]),
            *[_spread(r, s) for s in sets],
            ci_text(r["specificity"], r["specificity_ci_lo"], r["specificity_ci_hi"]),
            pct(r["wrong_way_frac"]),
            " / ".join(pct(r[c]) for c in ("control_accuracy_base", "control_accuracy_pos", "control_accuracy_neg")),
        ]
        out.append("| " + " | ".join(cell(x) for x in vals) + " |")
    return "\n".join(out)


def completions_text(h: HeadToHead) -> str:
    """The sampled completions, grouped by prompt: the base model, then each method at ±α."""
    lines = [
        "# Sampled completions per steering method",
        "",
        f"Behaviour `{h.behavior}`, model `{h.model}`; every completion sampled with seed {COMPLETION_SEED} "
        "(temperature 0.7, top-p 0.95), each method at ±its budget α (prompting: its two instructions).",
    ]
    if h.completions is None or h.completions.height == 0:
        return "\n".join([*lines, "", "No completions were sampled."]) + "\n"
    for (s, p), sub in h.completions.group_by(["set", "prompt"], maintain_order=True):
        lines += ["", f"## {s}: {p}", "", "| method | sign | α | completion |", "|---|---|---|---|"]
        for r in sub.iter_rows(named=True):
            sign = {0: "", 1: "+", -1: "−"}[r["sign"]]
            a = "" if r["method"] == "base" or math.isnan(r["alpha"]) else fmt_num(r["alpha"])
            lines.append(f"| `{r['method']}` | {sign} | {a} | {cell(r['completion'])} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the file set
def write_steering(cfg: Config, h: HeadToHead) -> list[Path]:
    """The file set (:data:`FILES`) into :func:`steering_dir`, staged and moved into place."""
    dest = steering_dir(cfg)
    with staged_files(dest, last=(CONCLUSION,)) as stage:
        plot_spread_vs_kl(h, stage / FIGURE)
        written = write_staged(
            stage,
            dest,
            {TABLE: h.table, SWEEP: h.sweep},
            {COMPLETIONS: completions_text(h), CONCLUSION: conclusion_text(h)},
        )
    logger.info(f"wrote {len(written)} files to {dest}")
    return written


__all__ = [
    "TABLE",
    "SWEEP",
    "FIGURE",
    "CONCLUSION",
    "COMPLETIONS",
    "FILES",
    "steering_dir",
    "plot_spread_vs_kl",
    "conclusion_text",
    "completions_text",
    "write_steering",
]
