"""The v8 sweep, step by step: what the notebook ``nbs/hypothesis_sweep_v8.py`` calls.

v7 says where the diff's energy sits; v8 asks which subspace CARRIES the behaviour.
It reuses v7's steps (:mod:`ws.v7.sweep`: diffs, probes, captures, candidates, scores; the
captures and bases come from the on-disk cache when v7 ran first) and adds:

1. :func:`causal_candidates` – the candidates of the causal test: the top write/mixed
   A-hypotheses by the seed-mean joint score, both ceilings and the self-test rows.
2. :func:`block_local` – the block-local label, every candidate scored against it, and
   the per-layer scope table (:mod:`ws.v8.blocklocal`).
3. :func:`causal` – the causal projection test on the primary seed's diff (:mod:`ws.v8.causal`).
4. :func:`v8_tables`, :func:`write_v8` – the v8 file set, atomically; its checks and the
   conclusion's facts are in :mod:`ws.v8.verdicts`, its types in :mod:`ws.v8.results`.

Why recompute v7's per-seed results instead of reading ``v7_summary.tsv``: the causal test
needs the bases themselves (``[d, k]`` per layer), which no table holds; recomputing them
through the same functions gives the same numbers as v7 by construction, works when v7 has
not run (or ran on another diff), and costs seconds when the cache holds the captures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from ws.bases.vectors import is_vector
from ws.behavior import data
from ws.captures.capture import block_labels
from ws.core.io import staged_files, write_staged
from ws.core.log import logger
from ws.diffs.store import writer_deltas_by_layer
from ws.model.load import n_layers
from ws.stats import CEILING_ACT, CEILING_W, RANKED_AXES, by_score
from ws.v7 import report, sweep
from ws.v8 import blocklocal
from ws.v8 import report as report_v8
from ws.v8.carrier import CARRIER_FILE, carrier_basis, save_carrier
from ws.v8.causal import causal_prompts, run_causal
from ws.v8.results import BlockLocal, V8Outputs, V8Tables
from ws.v8.verdicts import conclusion_info, plan_merge_changes

__all__ = [
    "causal_candidates",
    "block_local",
    "causal",
    "v8_tables",
    "write_v8",
]


# ----------------------------------------------------------------------------- candidates
def causal_candidates(
    summary: pl.DataFrame, per_candidate: pl.DataFrame, n: int
) -> tuple[list[str], dict[str, tuple[int | None, float]]]:
    """``(names, ranking)``: the ``n`` write/mixed A-hypotheses with the highest seed-mean
    joint score (NaN last, ties by name), then the user's steering vectors (``vector:*``,
    always, wherever they rank), then the ceilings, then the self-test rows.
    ``ranking[name] = (causal_rank or None, seed_mean_joint_score)``."""
    sm = per_candidate.select("subspace", pl.col("seed_mean_joint_score").cast(pl.Float64).fill_nan(None))
    s = summary.select("subspace", "kind", "axis_kind").join(sm, on="subspace", how="left", maintain_order="left")
    hyp = s.filter((pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(list(RANKED_AXES)))
    wm = by_score(hyp, "seed_mean_joint_score")  # the one ranking order; NaN last, still candidates
    top = wm["subspace"].head(n).to_list()
    ceilings = [c for c in (CEILING_ACT, CEILING_W) if c in s["subspace"].to_list()]
    tests = s.filter(pl.col("kind") == "self-test")["subspace"].to_list()
    vectors = [nm for nm in s["subspace"].to_list() if is_vector(nm) and nm not in top]
    val = dict(zip(s["subspace"].to_list(), s["seed_mean_joint_score"].to_list(), strict=True))
    f = lambda x: float("nan") if x is None else float(x)  # noqa: E731
    names = top + vectors + ceilings + tests
    ranking = {nm: (i + 1 if i < len(top) else None, f(val.get(nm))) for i, nm in enumerate(names)}
    return names, ranking


# ----------------------------------------------------------------------------- block-local


def block_local(cfg, model, tok, probes: sweep.Probes, res: sweep.SeedResult, w: dict) -> BlockLocal:
    """Capture both labels on the EVAL probes (cached), score every candidate against the
    block-local one, build the scope table."""
    t0 = time.perf_counter()
    labs = block_labels(model, tok, probes.eval, w, cfg.batch_size, cache=cfg.cache)
    deltas = writer_deltas_by_layer(w, n_layers(model))
    per, summ = blocklocal.score_block(
        res.bases,
        res.meta,
        labs["label_block"],
        deltas,
        sweep.clean_pcs(res.captures, cfg.k),
        res.layers_touched,
        n_boot=cfg.n_boot,
        seed=cfg.boot_seed,
    )
    scope = blocklocal.scope_table(labs["label"], labs["label_block"], res.bases[CEILING_W], cfg.k, res.layers_touched)
    diff = float((labs["label"].double() - res.captures.label_eval.double()).abs().max())
    return BlockLocal(labs["label"], labs["label_block"], per, summ, scope, diff, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- causal


def causal(cfg, model, tok, res: sweep.SeedResult, w: dict, names: Sequence[str], ranking: dict, threads: int | None = None):
    """The causal projection test of ``names`` on this seed's diff (:func:`ws.v8.causal.run_causal`).

    ``threads``: torch / BLAS threads for its passes (None, the default: torch's setting, one
    per core). Measured on the suite's 2-core machine, idle: the 52 held-out prompts at α = ±1
    through blocks 9–29 of the embedded model took 4.4–5.3 s with two threads and 7.6–9.1 s
    with one; while other jobs shared the cores, two threads took 36–68 s and one 8–9 s (the
    threads wait on each other): pass 1 there. ``cfg.causal_items`` (``WS_CAUSAL_ITEMS``) bounds the
    held-out items per set (:func:`causal_prompts`)."""
    beh = data.get_behavior(cfg.behavior)
    texts, readout = causal_prompts(tok, cfg.behavior, cfg.causal_items, cfg.basis_seed)
    return run_causal(
        model,
        tok,
        w,
        res.bases,
        res.meta,
        names,
        res.layers_touched,
        texts,
        readout=readout,
        ranking=ranking,
        n_null=cfg.n_causal_null,
        n_null_max=cfg.causal_null_max,
        n_boot=cfg.n_boot,
        half_width=cfg.causal_half_width,
        target=beh.target,
        controls=beh.controls,
        seed=cfg.basis_seed,
        boot_seed=cfg.boot_seed,
        batch_size=cfg.batch_size,
        threads=threads,
    )


# ----------------------------------------------------------------------------- tables


#: causal columns that repeat what the summary already has
_DUP = ("family", "axis_kind", "kind", "mean_rank", "seed_mean_joint_score")


def v8_tables(res: sweep.SeedResult, stab: sweep.SeedStability, bl: BlockLocal, cr) -> V8Tables:
    """The v8 tables of the primary seed: v7's rows, v7's columns first, v8's after them."""
    per_layer = res.per_layer.join(bl.per_layer, on=["layer", "subspace"], how="left", maintain_order="left")
    summary = (
        res.summary_pct.join(stab.per_candidate, on="subspace", how="left", maintain_order="left")
        .join(bl.summary, on="subspace", how="left", maintain_order="left")
        .join(cr.table.drop(list(_DUP)), on="subspace", how="left", maintain_order="left")
    )
    return V8Tables(per_layer, summary, cr.table, cr.variants, bl.scope)


def v8_outputs(
    cfg, probes: sweep.Probes, results: Sequence[sweep.SeedResult], stab: sweep.SeedStability, bl: BlockLocal, cr
) -> V8Outputs:
    """Every v8 table and markdown text (:func:`write_v8` writes them)."""
    res, tabs = results[0], v8_tables(results[0], stab, bl, cr)
    info = conclusion_info(cfg, probes, results, stab, bl, cr)
    texts = {
        "v8_definitions.md": report_v8.definitions_v8_md(res.meta, cfg.behavior),
        "v8_plan_merge.md": report.plan_merge_md(plan_merge_changes(cfg, res, stab, bl, cr), title="v8: what changed"),
        "v8_conclusion.md": report_v8.conclusion_v8_md(tabs.summary, tabs.causal, tabs.variants, tabs.scope, info),
    }
    tables = {
        "v8_per_layer.csv": tabs.per_layer,
        "v8_summary.tsv": tabs.summary,
        "v8_causal.tsv": tabs.causal,
        "v8_causal_variants.tsv": tabs.variants,
        "v8_scope.tsv": tabs.scope,
    }
    carrier = carrier_basis(
        tabs.causal,
        res.bases,
        res.layers_touched,
        model=str(res.diff_meta.get("model") or cfg.model),
        behavior=cfg.behavior,
        adapter=cfg.adapter,
        seed=res.seed,
        writers_share=cr.writers_share,
    )
    return V8Outputs(tables, texts, tabs, info.target_label, res.seed, carrier)


def write_v8(
    cfg,
    probes: sweep.Probes,
    results: Sequence[sweep.SeedResult],
    stab: sweep.SeedStability,
    bl: BlockLocal,
    cr,
    outputs: V8Outputs | None = None,
) -> list[Path]:
    """Write the v8 file set into ``cfg.v8_dir`` as one set (staged, then moved into place,
    the markdown last); a failure leaves the previous run's files as they were."""
    o = outputs if outputs is not None else v8_outputs(cfg, probes, results, stab, bl, cr)
    tabs, texts, tables, d = o.tabs, o.texts, o.tables, cfg.v8_dir
    with staged_files(d, last=tuple(texts)) as stage:
        report_v8.causal_figure(
            tabs.causal,
            tabs.variants,
            stage / "v8_causal_retention.png",
            stage / "v8_causal_retention.pdf",
            title=f"Does the subspace carry the behaviour? Seed {o.seed}'s diff, held-out "
            f"{o.target_label}, α = ±1 (retention of the writers-only effect)",
        )
        report_v8.block_figure(
            tabs.summary,
            tabs.scope,
            stage / "v8_block_local.png",
            stage / "v8_block_local.pdf",
            title=f"Block-local vs cumulative activation label (seed {o.seed}; means over touched layers)",
        )
        if o.carrier is not None:
            save_carrier(o.carrier, stage / CARRIER_FILE)
        written = write_staged(stage, d, tables, texts)
    logger.info(f"wrote {len(written)} files to {d}")
    return written
