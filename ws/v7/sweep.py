"""The v7 sweep, step by step: what the notebook ``nbs/hypothesis_sweep_v7.py`` calls.

Each function is one paragraph of the method:

1. :class:`Config` – parameters (:mod:`ws.config`, from ``WS_*`` variables, validated).
2. :func:`get_diffs` – the weight diff of every seed (trained when missing).
3. :func:`probe_prompts` – FIT / EVAL probes rendered through the chat template.
4. :func:`run_seed` – capture, build the candidates, score them, summarise (one seed).
5. :func:`seed_stability` – how the seeds agree (Kendall τ, winner counts).
6. :func:`write_v7` – the tables, figure and markdown files of the spec, atomically.

What the run concludes (self-tests, sanity lines, which claims survive, the conclusion's
run facts) is decided in :mod:`ws.v7.verdicts`; its ``self_tests``, ``sanity_lines``,
``rank_collapses`` and ``conclusion_info`` are importable from here too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from scipy.stats import kendalltau

from ws import stats
from ws.bases import build_all
from ws.bases.gradient import gradient_candidates
from ws.bases.planted import planted_candidates
from ws.bases.registry import append_candidates
from ws.bases.vectors import vector_candidates
from ws.behavior import data
from ws.behavior.files import capped_text
from ws.captures.capture import capture_all
from ws.config import Config
from ws.core.columns import WRITER_TAGS
from ws.core.io import staged_files, write_staged
from ws.core.linalg import compute_in, pca
from ws.core.log import logger
from ws.core.markdown import layers_text
from ws.core.memory import peak_rss_gib
from ws.diffs.import_store import ImportSpec, ensure_imported
from ws.diffs.store import (
    check_existing_diff,
    check_misplaced_diffs,
    load_diff,
    missing_writers,
    side_bases,
    stale_reasons,
    writer_deltas_by_layer,
)
from ws.diffs.train import DiffSpec, ensure_diff
from ws.model.anatomy import WRITERS
from ws.model.chat import render_chat
from ws.model.load import d_model, n_layers
from ws.model.vectors import SteeringVectors, read_vectors
from ws.stats import PR_THRESHOLD, ranked
from ws.stats.lens import lens_profile, plot_lens, sspace_lens
from ws.v7 import figure, plan_merge, report
from ws.v7.results import EXTRA_FILES, V7_FILES, Probes, SeedResult, SeedStability
from ws.v7.verdicts import conclusion_info, imported_text, rank_collapses

#: The sweep's parameters are the one run configuration of :mod:`ws.config`.


# ----------------------------------------------------------------------------- diffs
def import_diff(cfg: Config, model, tok) -> Path:
    """The imported diff's path (``WS_POS_ADAPTER``/``WS_NEG_ADAPTER``, ``WS_BIDIR_ADAPTER`` or
    ``WS_POS_MODEL``/``WS_NEG_MODEL``): imported once into ``cfg.diff_path(0)``, never overwritten
    unless ``WS_REBUILD=1`` (:func:`ws.diffs.import_store.ensure_imported`)."""
    spec = ImportSpec(cfg.imported, cfg.import_sources, cfg.diff_path(0), cfg.behavior, cfg.n_boot, cfg.batch_size)
    return ensure_imported(spec, model, tok, rebuild=cfg.rebuild)


def user_vectors(cfg: Config, model) -> list[SteeringVectors]:
    """The steering vectors of ``WS_VECTORS``, read and checked against the model (:func:`ws.model.vectors.read_vectors`)."""
    conv = None if cfg.vector_convention == "auto" else cfg.vector_convention
    return [read_vectors(p, n_layers(model), d_model(model), convention=conv, shift=cfg.vector_shift) for p in cfg.vectors]


def planted_of(cfg: Config, seed: int, diff_meta: dict | None) -> dict | None:
    """The frozen bases an S-space diff was confined to (its known answer), read from beside
    its ``w`` when its metadata names the file; None for every other diff."""
    return side_bases(diff_meta or {}, "planted_file")


def get_diffs(cfg: Config, model, tok=None) -> dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """``seed -> (w, meta)``. Every existing diff is checked first, before any training: one
    that cannot be used stops the run with its error (docs/errors.md) and stays untouched (a diff
    made for another model raises :class:`DiffMismatchError`); so does a steering-vector file
    of ``WS_VECTORS`` that does not fit the model. An imported diff (``cfg.imported``) is
    imported instead (:func:`import_diff`; it needs ``tok``). Then the missing ones are
    trained; an existing diff is retrained only with ``cfg.rebuild`` (``WS_REBUILD=1``).
    A diff made for this model at the default model's path stops it first, rebuild or not
    (:class:`ws.diffs.store.MisplacedDiffError`)."""
    check_misplaced_diffs(cfg.model, cfg.behavior, cfg.out_root)
    user_vectors(cfg, model)  # a vector file that does not fit the model stops the run before any work
    if cfg.imported is not None:
        if tok is None:
            raise ValueError("an imported diff is evaluated on held-out prompts: pass the tokenizer, get_diffs(cfg, model, tok)")
        return {0: load_diff(import_diff(cfg, model, tok), model)}
    if not cfg.rebuild:
        for seed in cfg.seeds:
            path = cfg.diff_path(seed)
            if path.exists():
                check_existing_diff(path, model)
    out = {}
    for seed in cfg.seeds:
        spec = DiffSpec(cfg.model, cfg.behavior, cfg.adapter, seed, cfg.train_config(), cfg.out_root, cfg.model_kwargs())
        path = ensure_diff(spec, rebuild=cfg.rebuild, model=model)
        out[seed] = load_diff(path, model)
    return out


# ----------------------------------------------------------------------------- probes
def probe_prompts(cfg: Config, tok) -> Probes:
    """FIT and EVAL probes (disjoint topics; EVAL never a LoRA training topic), every one
    rendered through the chat template. Persona± FIT use the chosen persona pair as the
    system prompt; clean FIT and EVAL use none (the template's default)."""
    fit, ev = data.sweep_probes(cfg.n_fit, cfg.n_eval, seed=0, behavior=cfg.behavior)
    pos, neg = data.persona_pairs(cfg.behavior)[cfg.persona_pair]
    render = lambda t, sys=None: render_chat(tok, data.probe_prompt(t, cfg.behavior), system=sys)  # noqa: E731
    return Probes(
        fit_topics=fit,
        eval_topics=ev,
        fit_clean=[render(t) for t in fit],
        fit_pos=[render(t, pos) for t in fit],
        fit_neg=[render(t, neg) for t in fit],
        eval=[render(t) for t in ev],
        persona_pos=pos,
        persona_neg=neg,
    )


# ----------------------------------------------------------------------------- one seed
def clean_pcs(captures, k: int) -> list[torch.Tensor]:
    """Per layer, the top-``k`` PCA basis of the clean FIT residuals ``[d, k]`` (specificity)."""
    return [pca(captures.clean[l], k) for l in range(captures.clean.shape[0])]


def run_seed(cfg: Config, model, tok, probes: Probes, seed: int, w: dict, diff_meta: dict) -> SeedResult:
    """Capture (cached), build every candidate, score every (layer, candidate), summarise.
    Each stage's seconds go into ``timings``, the process's peak RSS when it ended into
    ``peak_rss_gib`` (the peak only grows: read later, it would be a later stage's)."""
    t = {}
    t0 = time.perf_counter()
    caps = capture_all(
        model, tok, probes.fit_clean, probes.fit_pos, probes.fit_neg, probes.eval, w, batch_size=cfg.batch_size, cache=cfg.cache
    )
    t["capture"] = time.perf_counter() - t0
    peaks = {"capture": peak_rss_gib()}
    deltas = writer_deltas_by_layer(w, n_layers(model), partial=True)  # IA3: down_proj only, NaN o_proj cells
    touched = [l for l, d in enumerate(deltas) if d is not None]
    if not touched:
        raise ValueError("the diff has no o_proj / down_proj delta on any layer: nothing to score the weight side against")
    t0 = time.perf_counter()
    device = next(model.parameters()).device  # WS_LINALG's device for the build and the lens
    with compute_in(cfg.linalg, device):
        bases, meta = build_all(
            model,
            caps,
            deltas,
            caps.label_fit,
            k=cfg.k,
            k_broad=cfg.k_broad,
            seed=cfg.basis_seed,
            label_eval=caps.label_eval,
            cache=cfg.cache,
        )
    L, d = n_layers(model), d_model(model)
    if vectors := user_vectors(cfg, model):
        bases, meta = append_candidates(bases, meta, vector_candidates(vectors, L, d), "steering-vector")
    if planted := planted_of(cfg, seed, diff_meta):
        bases, meta = append_candidates(bases, meta, planted_candidates(planted, L, d), "planted")
    t["build"] = time.perf_counter() - t0
    peaks["build"] = peak_rss_gib()
    t0 = time.perf_counter()
    if directions := side_bases(diff_meta or {}, "gradient_file"):
        bases, meta = append_candidates(bases, meta, gradient_candidates(directions, L, cfg.k), "gradient")
    t["gradient"] = time.perf_counter() - t0
    peaks["gradient"] = peak_rss_gib()
    t0 = time.perf_counter()
    scores = stats.score_sweep(bases, meta, caps.label_eval, deltas, clean_pcs(caps, cfg.k), pr_threshold=PR_THRESHOLD)
    per_layer = stats.add_qvalues(scores.per_layer)
    summary = stats.summarize(per_layer, touched)
    ci = stats.bootstrap_summary_ci(scores, touched, n_boot=cfg.n_boot, seed=cfg.boot_seed)
    summary = summary.join(ci, on="subspace", how="left", maintain_order="left")
    summary_pct = stats.summary_pct(summary)
    specific_summary = stats.summarize_specific(scores.specific_per_layer, touched)
    t["score"] = time.perf_counter() - t0
    peaks["score"] = peak_rss_gib()
    t0 = time.perf_counter()
    with compute_in(cfg.linalg, device):
        lens_table, lens_rows = sspace_lens(model, w)
    t["lens"] = time.perf_counter() - t0
    peaks["lens"] = peak_rss_gib()
    return SeedResult(
        seed=seed,
        captures=caps,
        bases=bases,
        meta=meta,
        scores=scores,
        per_layer=per_layer,
        specific_per_layer=scores.specific_per_layer,
        summary=summary,
        summary_pct=summary_pct,
        specific_summary=specific_summary,
        layers_touched=touched,
        layers_without_delta=[l for l in range(len(deltas)) if deltas[l] is None],
        diff_meta=diff_meta,
        timings=t,
        peak_rss_gib=peaks,
        missing_writers=missing_writers(deltas),
        lens=lens_table,
        lens_rows=lens_rows,
    )


# ----------------------------------------------------------------------------- seeds
def run_seeds(cfg: Config, model, tok, probes: Probes, diffs: dict, label: str = "") -> list[SeedResult]:
    """:func:`run_seed` for every ``seed -> (w, meta)`` of ``diffs``, in order, each seed's timings logged."""
    results = []
    for seed, (w, meta) in diffs.items():
        r = run_seed(cfg, model, tok, probes, seed, w, meta)
        logger.info(f"{label}seed {seed}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.timings.items()))
        results.append(r)
    return results


def seed_stability(results: Sequence[SeedResult]) -> SeedStability:
    """Kendall τ between every pair of seeds' joint-score rankings (write/mixed
    A-hypotheses), each seed's winner, and per-candidate seed mean / sd."""
    seeds = [r.seed for r in results]
    winners = {}
    for r in results:
        rk = ranked(r.summary)
        winners[r.seed] = rk["subspace"][0] if rk.height else ""
    winner = winners[seeds[0]]
    rows = []
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            a = ranked(results[i].summary).select("subspace", pl.col("joint_score").alias("a"))
            b = ranked(results[j].summary).select("subspace", pl.col("joint_score").alias("b"))
            ab = a.join(b, on="subspace", how="inner")
            tau, p = kendalltau(ab["a"].to_numpy(), ab["b"].to_numpy()) if ab.height > 1 else (float("nan"), float("nan"))
            rows.append({"seed_a": seeds[i], "seed_b": seeds[j], "kendall_tau": float(tau), "p_value": float(p), "n": ab.height})
    tau_df = pl.DataFrame(
        rows, schema={"seed_a": pl.Int64, "seed_b": pl.Int64, "kendall_tau": pl.Float64, "p_value": pl.Float64, "n": pl.Int64}
    )
    cols = ["joint_score", "mean_conc_act", "mean_conc_w_combined"]
    stacked = pl.concat([r.summary.select(["subspace", *cols]).with_columns(pl.lit(r.seed).alias("seed")) for r in results])
    agg = stacked.group_by("subspace", maintain_order=True).agg(
        [pl.col(c).mean().alias(f"seed_mean_{c}") for c in cols]
        + [pl.col(c).std(ddof=1).alias(f"seed_sd_{c}") for c in cols]
        + [pl.len().alias("n_seeds")]
    )
    wins = pl.DataFrame({"subspace": list(winners.values())}).group_by("subspace").agg(pl.len().alias("seeds_won"))
    agg = agg.join(wins, on="subspace", how="left").with_columns(pl.col("seeds_won").fill_null(0).cast(pl.Int64))
    return SeedStability(seeds, winners, winner, sum(w == winner for w in winners.values()), tau_df, agg)


# ----------------------------------------------------------------------------- writing
def plan_merge_changes(cfg: Config, probes: Probes, res: SeedResult, stab: SeedStability) -> list[str]:
    """What this version changes against v6 and against upstream v7 (facts from this run)."""
    train, _ = data.split_topics(0, behavior=cfg.behavior)
    train_ids = {t.id for t in train}
    leak = sum(t.id in train_ids for t in probes.eval_topics)
    fit_eval = len({t.id for t in probes.fit_topics} & {t.id for t in probes.eval_topics})
    rc = rank_collapses(res.meta)
    return [
        "**Against v6**: v7 adds the write-not-read family, the compound candidates, the dW ceiling, the "
        "specificity score and the percent-of-ceiling tables (see `v7_definitions.md` for every row).",
        "**Chat template everywhere** (upstream v7 rendered the label prompts raw and the persona prompts "
        "templated): every capture here — clean FIT, persona± FIT, the label at α = ±1 — goes through the "
        "tokenizer's chat template.",
        f"**Held-out EVAL topics**: upstream v7 leaked LoRA training topics into EVAL. Here EVAL comes from the "
        f"held-out half of a fixed topic split; EVAL topics that are LoRA training topics in this run: {leak}; "
        f"topics shared by FIT and EVAL: {fit_eval}.",
        "**Closed-form null**: upstream v7 drew 120 random QR bases per cell with a per-tensor seed from Python's "
        "salted `hash` (noisy, slow, not reproducible). Here the null mean and std are exact "
        "(E[tr PA] = (k/d)·tr A; Var from tr A and tr A²), checked against a Monte Carlo of Haar bases in the tests; "
        "cells whose label has a very low effective rank get a seeded Monte Carlo p-value instead.",
        "**Rows computed differently from upstream v7**: " + plan_merge.EARLIER_COMPARISON + ". Figures marked "
        "'earlier comparison' come from that run; 'this run' figures from this run's tables and captures."
        + "".join(f"\n  - {line}" for line in plan_merge.difference_lines(res)),
        "**True ranks below the requested k** (reported, never padded): " + ("; ".join(rc) or "none") + ".",
        f"**Error bars and multiple comparisons**: bootstrap CIs over EVAL probes ({cfg.n_boot} resamples, seed "
        f"{cfg.boot_seed}) for the activation means and the joint score; Benjamini–Hochberg q-values across all "
        f"A-hypothesis × layer cells.",
        f"**Seeds**: the diff is trained for seeds {list(stab.seeds)}; the tables are seed {stab.seeds[0]}'s, the "
        f"summary carries the seed mean / sd, and `v7_seed_stability.tsv` the Kendall τ between seeds.",
        "**Claims that survive and claims that do not**: the conclusion's bottom line names every headline claim "
        "that fails its check (q-values on most layers, non-overlapping CIs, every seed won, diff specificity, "
        "self-tests), with a table of the evidence; the scatter draws each labelled point's range over the seeds. "
        "With several seeds the bottom line leads with the answer that survives them: the leader by the seed-mean "
        "joint score when it wins more than half of the seeds and leads the runner-up by more than the larger seed "
        "sd, otherwise 'no stable winner'; the first seed's winner follows as the detail.",
        "**Self-tests as rows**: `random_orthonormal` (must sit within its null) and `planted_label_half` (fitted on "
        "half of the EVAL label without centring, must reach ≥ 80 % of the best rank-k subspace of the whole EVAL "
        "label); **adapter-family candidates**: `corda_write`, `asvd_write`, `diff_in_means`.",
        "**Determinism and atomic outputs**: explicit seeds everywhere; every file is written to a temporary name "
        "and renamed, so a failed run leaves the previous files intact.",
    ]


def diff_caveats(results: Sequence[SeedResult], behavior=None) -> list[str]:
    """One caveat per seed whose diff may not be what this suite would build now (another or
    no data version of ``behavior``, e.g. an imported diff): the run used it as it is."""
    capped = capped_text(data.get_behavior(behavior))
    out = [capped] if capped else []
    for r in results:
        meta = r.diff_meta or {}
        if meta.get("imported"):
            out.append(
                imported_text(meta) + ": not trained by this suite on this behaviour's data; its effect above was "
                "measured on the behaviour's held-out prompts like a trained diff's"
            )
            out += [str(c) for c in meta.get("caveats") or []]
        else:
            src = f" (its source: {meta['source']})" if meta.get("source") else ""
            out += [
                f"seed {r.seed}'s diff{src} was used as it is, though {why}" for why in stale_reasons(meta, behavior=behavior)
            ]
        out += writer_caveats(r)
    return out


def writer_caveats(res: SeedResult) -> list[str]:
    """One caveat per residual writer the diff lacks on touched layers (IA3 has no o_proj):
    its weight cells are NaN there, never 0, and R_w combined is the other writer alone."""
    names, other = WRITERS, dict(zip(WRITER_TAGS, reversed(WRITERS.values()), strict=True))
    adapter = (res.diff_meta or {}).get("adapter", "the")
    return [
        f"seed {res.seed}'s {adapter} diff has no {names[t]} delta on touched layers {layers_text(ls)}: "
        f"its `conc_w_{t}` cells are NaN there (never 0) and R_w combined is {other[t]} alone"
        for t, ls in (res.missing_writers or {}).items()
        if ls
    ]


@dataclass
class V7Outputs:
    """The v7 file set's contents before anything is written: ``tables`` (file name → table),
    ``texts`` (file name → markdown), and what the figure is drawn from."""

    tables: dict[str, pl.DataFrame]
    texts: dict[str, str]
    summary: pl.DataFrame
    seeds_long: pl.DataFrame
    figure_title: str
    lens_profile: pl.DataFrame | None = None  # ws.stats.lens.lens_profile of the first seed


def v7_outputs(cfg: Config, probes: Probes, results: Sequence[SeedResult], stab: SeedStability) -> V7Outputs:
    """Every v7 table and markdown text of a sweep (:func:`write_v7` writes them)."""
    res = results[0]
    seed_cols = stab.per_candidate
    summary = res.summary.join(seed_cols, on="subspace", how="left", maintain_order="left")
    summary_pct = res.summary_pct.join(seed_cols, on="subspace", how="left", maintain_order="left")
    seeds_long = pl.concat(
        [r.summary.with_columns(pl.lit(r.seed).cast(pl.Int64).alias("seed")) for r in results], how="diagonal_relaxed"
    )
    # paths relative to the conclusion's own folder, so its links work where it lies
    artifacts = [f for f in (*V7_FILES, *EXTRA_FILES)] + [
        f"../seed{r.seed}/{f}" for r in results for f in ("w.safetensors", "effect.csv", "effect.png")
    ]
    info = conclusion_info(cfg, probes, res, stab, artifacts, notes=diff_caveats(results, cfg.behavior))
    texts = {
        "v7_definitions.md": report.definitions_md(res.meta),
        "v7_plan_merge.md": report.plan_merge_md(plan_merge_changes(cfg, probes, res, stab), title="v7: what changed"),
        "v7_conclusion.md": report.conclusion_md(summary_pct, res.specific_summary, res.per_layer, info),
    }
    tables = {
        "v7_per_layer.csv": res.per_layer,
        "v7_summary.tsv": summary,
        "v7_summary_pct.tsv": summary_pct,
        "v7_specific_per_layer.csv": res.specific_per_layer,
        "v7_specific_summary.tsv": res.specific_summary,
        "v7_seeds.tsv": seeds_long,
        "v7_seed_stability.tsv": stab.tau,
        "v7_sspace_lens.tsv": res.lens,
    }
    title = f"Where does the weight diff act? Seed {res.seed}'s scores (mean over LoRA-touched layers; 1 = random subspace)" + (
        f"; whiskers: min–max over seeds {', '.join(map(str, stab.seeds))}" if len(stab.seeds) > 1 else ""
    )
    return V7Outputs(tables, texts, summary, seeds_long, title, lens_profile(res.lens_rows, res.lens))


def write_v7(
    cfg: Config, probes: Probes, results: Sequence[SeedResult], stab: SeedStability, outputs: V7Outputs | None = None
) -> list[Path]:
    """Write the v7 file set into ``cfg.v7_dir`` (every file atomically) and return the paths.

    Everything is computed first (:func:`v7_outputs`, or ``outputs`` already computed); files are staged, then moved into place
    together (the conclusion last: it is what users read first), so a failure leaves the
    previous run's files as they were.
    """
    o = outputs if outputs is not None else v7_outputs(cfg, probes, results, stab)
    d = cfg.v7_dir
    with staged_files(d, last=tuple(o.texts)) as stage:
        figure.joint_scatter(
            o.summary,
            stage / "v7_joint_act_weight_scatter.png",
            stage / "v7_joint_act_weight_scatter.pdf",
            title=o.figure_title,
            seeds=o.seeds_long,
        )
        plot_lens(
            o.lens_profile,
            stage / "v7_sspace_lens.png",
            title=f"{cfg.behavior}/{cfg.adapter} seed {results[0].seed}: share of ‖dW‖² on W's top-i left singular "
            "directions (mean over layers)",
        )
        written = write_staged(stage, d, o.tables, o.texts)
    logger.info(f"wrote {len(written)} files to {d}")
    return written
