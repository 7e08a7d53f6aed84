"""The cross-adapter comparison: does where the diff acts depend on how it was trained?

For every adapter type of ``WS_ADAPTERS`` and every seed of ``WS_SEEDS`` the v7 sweep runs
on that diff (trained first when missing); then the adapters are compared:

- :func:`adapter_summary`: one row per adapter: the diff's effect spreads and specificity
  at its unit α, the seed-mean winner with R_act, R_w and the joint score, the overlap
  of the two oracles (dW ceiling and activation ceiling), each with a 95 % CI;
- :func:`candidate_table`: the rank of every ranked candidate for every adapter;
- :func:`rank_table`: the ranks side by side, and which candidates rank high for every
  adapter (behaviour-level) or for one only (adapter-level);
- :func:`tau_table`: Kendall τ between the adapters' rankings;
- :func:`claims`: each claim with its evidence and a verdict from this run.

CIs are percentile bootstraps over two levels: the seeds (drawn with replacement) and,
within them, the prompts (EVAL probes for R_act, held-out prompts for the spreads), the
same prompt draws for every seed and adapter (they all use the same prompts). R_w and the
oracle overlap vary only with the seed: with one seed they have no CI (NaN).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import kendalltau

from ws.behavior.data import get_behavior
from ws.config import Config
from ws.core.bootstrap import percentile_interval, resample
from ws.core.io import staged_files, write_table, write_text
from ws.core.log import logger
from ws.cross_adapter.report import caveats, claims, conclusion_md, rank_heatmap
from ws.cross_adapter.results import CONCLUSION, FIGURES, TABLES, TOP_K, AdapterRun, Comparison
from ws.diffs.adapters import TrainConfig, unit_alpha
from ws.diffs.budget import BudgetNotReached, alpha_at_kl, neutral_set
from ws.diffs.effect import effect_per_prompt, effect_sets, heldout_prompts, readout_of, specificity
from ws.diffs.store import check_existing_diff, check_misplaced_diffs
from ws.stats import CEILING_ACT, act_conc_draws, ranked
from ws.stats.summaries import joint_score
from ws.v7 import sweep, verdicts


def adapter_cfg(cfg: Config, adapter: str) -> Config:
    return replace(cfg, adapter=adapter)


def check_all_diffs(cfg: Config, model) -> None:
    """Every existing diff of every adapter and seed, checked before any training: one that
    cannot be used stops the run with its error (docs/errors.md) and stays untouched (so does a
    diff made for this model at the default model's path, rebuild or not)."""
    check_misplaced_diffs(cfg.model, cfg.behavior, cfg.out_root)
    if cfg.rebuild:
        return
    for adapter in cfg.adapters:
        for seed in cfg.seeds:
            path = cfg.diff_path(seed, adapter)
            if path.exists():
                check_existing_diff(path, model)


def read_effects(cfg: Config) -> dict[int, pl.DataFrame | None]:
    """``seed -> effect_per_prompt.csv`` beside each diff (None for a diff without one, e.g. imported)."""
    out = {}
    for seed in cfg.seeds:
        p = cfg.diff_path(seed).parent / "effect_per_prompt.csv"
        out[seed] = pl.read_csv(p) if p.exists() else None
    return out


def run_adapter(cfg: Config, model, tok, probes: sweep.Probes, adapter: str) -> AdapterRun:
    """The v7 sweep of one adapter over the seeds: diffs built where missing, every seed
    scored, the adapter's v7 file set written to its ``v7_dir``
    (``<model root>/<behavior>/<adapter>/v7/``, :attr:`ws.config.Config.v7_dir`)."""
    acfg = adapter_cfg(cfg, adapter)
    diffs = sweep.get_diffs(acfg, model)
    results = sweep.run_seeds(acfg, model, tok, probes, diffs, label=f"{adapter} ")
    stab = sweep.seed_stability(results)
    sweep.write_v7(acfg, probes, results, stab)
    slim = [replace(r, captures=None, bases={}) for r in results]
    budget, budget_effects = matched_budget(acfg, model, tok, {s: w for s, (w, _) in diffs.items()})
    return AdapterRun(adapter, slim, stab, read_effects(acfg), budget, budget_effects)


def matched_budget(cfg: Config, model, tok, ws: dict) -> tuple[dict[int, tuple[float, float]], dict[int, pl.DataFrame | None]]:
    """Per seed: the α at which the diff's mean next-token KL on the neutral prompts reaches
    ``cfg.kl_budget`` (``WS_KL_BUDGET``; :func:`ws.diffs.budget.alpha_at_kl`), and the held-out
    read-outs at ±that α (the α column relabelled ±1, so :func:`effect_stats` reads them at 1).
    A diff that does not reach the budget by :data:`ws.diffs.budget.MAX_ALPHA` gets NaN and
    no read-outs (the caveats say so)."""
    n_eval = (cfg.train_config() or TrainConfig()).n_eval_per_kind
    prompts = heldout_prompts(0, n_eval, behavior=cfg.behavior)
    readout = readout_of(cfg.behavior, n_eval)
    budget, effects = {}, {}
    for seed, w in ws.items():
        try:
            a, kl = alpha_at_kl(model, tok, w, prompts[neutral_set(cfg.behavior)], cfg.kl_budget, cfg.batch_size)
        except BudgetNotReached as e:
            logger.warning(f"{cfg.adapter} seed {seed}: {e}")
            budget[seed], effects[seed] = (math.nan, e.reached), None
            continue
        per = effect_per_prompt(model, tok, w, prompts, (-a, a), cfg.batch_size, readout)
        budget[seed] = (a, kl)
        effects[seed] = per.with_columns(pl.col("alpha").sign())
        logger.info(f"{cfg.adapter} seed {seed}: KL budget {cfg.kl_budget} nats reached at α = {a:.3f} (KL {kl:.4f})")
    return budget, effects


# ----------------------------------------------------------------------------- bootstrap
def seed_picks(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_seeds]`` seed indices drawn with replacement (seeded)."""
    return resample(n_seeds, n_boot, seed)


def row_draws(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``values [n_seeds, n]`` -> each draw's row mean per seed ``[n_seeds, n_boot]``: the
    same resampled row indices for every seed (the rows are the same prompts), NaN rows
    left out of the mean."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[1]
    idx = resample(n, n_boot, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values[:, idx], axis=2)


def over_seeds(per_seed: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """``per_seed [n_seeds, n_boot, ...]`` -> ``[n_boot, ...]``: each draw's mean over its
    picked seeds (``picks [n_boot, n_seeds]``)."""
    b = np.arange(picks.shape[0])[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_seed[picks, b], axis=1)


# ----------------------------------------------------------------------------- effects
def prompt_spreads(per_prompt: pl.DataFrame, set_name: str, alpha: float) -> np.ndarray:
    """Per held-out prompt of a set: log-ratio at ``+alpha`` minus at ``−alpha``."""
    sub = per_prompt.filter(pl.col("set") == set_name)
    hi = sub.filter(pl.col("alpha") == alpha).sort("prompt_idx")["logratio"].to_numpy()
    lo = sub.filter(pl.col("alpha") == -alpha).sort("prompt_idx")["logratio"].to_numpy()
    if hi.size == 0 or hi.size != lo.size:
        return np.full(max(hi.size, lo.size, 1), np.nan)
    return hi - lo


def effect_stats(run: AdapterRun, alpha: float, n_boot: int, seed: int, behavior=None) -> dict[str, float]:
    """Seed-mean spread per set of the behaviour (target, then controls) at ``±alpha`` and the
    specificity (:func:`ws.diffs.effect.specificity`, the effect eval's rule), each with its CI."""
    b = get_behavior(behavior)
    sets = effect_sets(b)
    out: dict[str, float] = {}
    effects = [e for e in run.effects.values() if e is not None]
    if not effects:
        for s in (*sets, "specificity"):
            out.update({s: math.nan, f"{s}_ci_lo": math.nan, f"{s}_ci_hi": math.nan})
        return out
    picks = seed_picks(len(effects), n_boot, seed + 1)
    draws, point = {}, {}
    for i, s in enumerate(sets):
        vals = np.stack([prompt_spreads(e, s, alpha) for e in effects])  # [seeds, prompts]
        point[s] = float(np.nanmean(np.nanmean(vals, axis=1)))
        draws[s] = over_seeds(row_draws(vals, n_boot, seed + 10 + i), picks)
    draws["specificity"] = specificity(draws[b.target], [draws[s] for s in b.controls], b.direction)
    point["specificity"] = float(specificity(point[b.target], [point[s] for s in b.controls], b.direction))
    for s, d in draws.items():
        lo, hi = percentile_interval(d)
        out.update({s: point[s], f"{s}_ci_lo": float(lo), f"{s}_ci_hi": float(hi)})
    return out


# ----------------------------------------------------------------------------- candidates
def seed_ranks(run: AdapterRun) -> pl.DataFrame:
    """``seed, subspace, seed_rank``: each seed's ranking of the write/mixed A-hypotheses."""
    rows = []
    for r in run.results:
        rk = ranked(r.summary)
        rows += [{"seed": r.seed, "subspace": n, "seed_rank": i + 1} for i, n in enumerate(rk["subspace"].to_list())]
    return pl.DataFrame(rows, schema={"seed": pl.Int64, "subspace": pl.String, "seed_rank": pl.Int64})


def _aligned(run: AdapterRun, names: list[str], cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, each draw's R_act ``[seeds, n_boot, C]`` and R_w combined ``[seeds, C]``
    for the candidates ``names``."""
    act, w = [], []
    for r in run.results:
        cand, draws = act_conc_draws(r.scores, r.layers_touched, cfg.n_boot, cfg.boot_seed)
        col = {n: i for i, n in enumerate(cand)}
        act.append(np.stack([draws[:, col[n]] if n in col else np.full(cfg.n_boot, np.nan) for n in names], axis=1))
        wmap = dict(zip(r.summary["subspace"].to_list(), r.summary["mean_conc_w_combined"].to_list(), strict=True))
        w.append([float(wmap.get(n, math.nan)) for n in names])
    return np.stack(act), np.asarray(w, dtype=np.float64)


def candidate_table(run: AdapterRun, cfg: Config) -> pl.DataFrame:
    """Every write/mixed A-hypothesis in the order of its seed-mean joint score (``rank``
    1 = the seed-mean winner), with the seed means of the joint score, R_act and R_w, their
    CIs, and how it ranked in each seed."""
    res0 = run.results[0]
    j = res0.summary.select("subspace", "family", "kind", "axis_kind").join(run.stab.per_candidate, on="subspace", how="inner")
    order = ranked(j, "seed_mean_joint_score")
    names = order["subspace"].to_list()
    act, w = _aligned(run, names, cfg)
    picks = seed_picks(len(run.results), cfg.n_boot, cfg.boot_seed + 1)
    a_draw = over_seeds(act, picks)
    w_draw = over_seeds(np.repeat(w[:, None, :], cfg.n_boot, axis=1), picks)
    j_draw = over_seeds(joint_score(act, w[:, None, :]), picks)
    (a_lo, a_hi), (w_lo, w_hi), (j_lo, j_hi) = (percentile_interval(x) for x in (a_draw, w_draw, j_draw))
    if len(run.results) < 2:
        w_lo = w_hi = np.full(len(names), np.nan)
    sr = seed_ranks(run)
    per = sr.group_by("subspace").agg(
        (pl.col("seed_rank") <= TOP_K).sum().cast(pl.Int64).alias("seeds_in_top_k"),
        pl.col("seed_rank").min().alias("best_seed_rank"),
        pl.col("seed_rank").max().alias("worst_seed_rank"),
    )
    table = pl.DataFrame(
        {
            "adapter": [run.adapter] * len(names),
            "rank": list(range(1, len(names) + 1)),
            "subspace": names,
            "family": order["family"].to_list(),
            "axis_kind": order["axis_kind"].to_list(),
            "seed_mean_joint_score": order["seed_mean_joint_score"].to_list(),
            "joint_ci_lo": j_lo,
            "joint_ci_hi": j_hi,
            "seed_mean_conc_act": order["seed_mean_mean_conc_act"].to_list(),
            "conc_act_ci_lo": a_lo,
            "conc_act_ci_hi": a_hi,
            "seed_mean_conc_w_combined": order["seed_mean_mean_conc_w_combined"].to_list(),
            "conc_w_ci_lo": w_lo,
            "conc_w_ci_hi": w_hi,
            "n_seeds": order["n_seeds"].cast(pl.Int64).to_list(),
            "seeds_won": order["seeds_won"].cast(pl.Int64).to_list(),
        }
    )
    return table.join(per, on="subspace", how="left", maintain_order="left").with_columns(pl.col("seeds_in_top_k").fill_null(0))


# ----------------------------------------------------------------------------- per adapter
def oracle_overlap(run: AdapterRun, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Seed mean (and CI over seeds) of the mean principal cosine between the activation
    ceiling and the dW ceiling over the touched layers (``mean_cos_dW`` of the activation
    ceiling's row)."""
    vals = []
    for r in run.results:
        row = r.summary.filter(pl.col("subspace") == CEILING_ACT)
        vals.append(float(row["mean_cos_dW"][0]) if row.height and row["mean_cos_dW"][0] is not None else math.nan)
    v = np.asarray(vals, dtype=np.float64)
    if len(v) < 2:
        return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan, math.nan, math.nan
    lo, hi = percentile_interval(over_seeds(np.repeat(v[:, None], n_boot, axis=1), seed_picks(len(v), n_boot, seed + 2)))
    return float(np.nanmean(v)), float(lo), float(hi)


def _self_tests(run: AdapterRun) -> tuple[int, int]:
    checks = [t.passed for r in run.results for t in verdicts.self_tests(r)]
    return sum(checks), len(checks)


def adapter_row(run: AdapterRun, cands: pl.DataFrame, cfg: Config) -> dict:
    """One row of :func:`adapter_summary`."""
    alpha = unit_alpha(run.adapter)
    eff = effect_stats(run, alpha, cfg.n_boot, cfg.boot_seed, cfg.behavior)
    spec2 = [r.diff_meta.get("specificity_ratio") for r in run.results if r.diff_meta.get("specificity_ratio") is not None]
    top = cands.row(0, named=True) if cands.height else {}
    ov, ov_lo, ov_hi = oracle_overlap(run, cfg.n_boot, cfg.boot_seed)
    passed, n_tests = _self_tests(run)
    missing = sorted({l for r in run.results for l in (r.missing_writers or {}).get("oproj", [])})
    row = {
        "adapter": run.adapter,
        "n_seeds": len(run.results),
        "seeds": ",".join(str(r.seed) for r in run.results),
        "unit_alpha": alpha,
    }
    for s in (*effect_sets(cfg.behavior), "specificity"):
        key = s if s == "specificity" else f"spread_{s}"
        row.update({key: eff[s], f"{key}_ci_lo": eff[f"{s}_ci_lo"], f"{key}_ci_hi": eff[f"{s}_ci_hi"]})
    row["specificity_alpha2"] = float(np.mean(spec2)) if spec2 else math.nan
    row.update(budget_columns(run, cfg))
    row.update(
        {
            "winner": top.get("subspace", ""),
            "winner_seeds_won": top.get("seeds_won"),
            "winner_joint_score": top.get("seed_mean_joint_score"),
            "winner_joint_ci_lo": top.get("joint_ci_lo"),
            "winner_joint_ci_hi": top.get("joint_ci_hi"),
            "winner_conc_act": top.get("seed_mean_conc_act"),
            "winner_conc_act_ci_lo": top.get("conc_act_ci_lo"),
            "winner_conc_act_ci_hi": top.get("conc_act_ci_hi"),
            "winner_conc_w_combined": top.get("seed_mean_conc_w_combined"),
            "winner_conc_w_ci_lo": top.get("conc_w_ci_lo"),
            "winner_conc_w_ci_hi": top.get("conc_w_ci_hi"),
            "oracle_overlap_cos": ov,
            "oracle_overlap_ci_lo": ov_lo,
            "oracle_overlap_ci_hi": ov_hi,
            "seed_mean_tau": run.stab.mean_tau,
            "self_tests_passed": passed,
            "self_tests": n_tests,
            "layers_without_oproj": len(missing),
        }
    )
    return row


def budget_columns(run: AdapterRun, cfg: Config) -> dict[str, float]:
    """The matched-budget columns: ``kl_budget``, the seed-mean ``budget_alpha``, and the spreads
    and specificity at ±that α (``budget_spread_<set>``, ``budget_specificity``, with CIs)."""
    alphas = [a for a, _ in run.budget.values() if math.isfinite(a)]
    out = {"kl_budget": cfg.kl_budget, "budget_alpha": float(np.mean(alphas)) if alphas else math.nan}
    reached = {s: e for s, e in run.budget_effects.items() if e is not None} or {0: None}
    eff = effect_stats(replace(run, effects=reached), 1.0, cfg.n_boot, cfg.boot_seed, cfg.behavior)
    for s in (*effect_sets(cfg.behavior), "specificity"):
        key = "budget_specificity" if s == "specificity" else f"budget_spread_{s}"
        out.update({key: eff[s], f"{key}_ci_lo": eff[f"{s}_ci_lo"], f"{key}_ci_hi": eff[f"{s}_ci_hi"]})
    return out


def adapter_summary(runs: Sequence[AdapterRun], cands: dict[str, pl.DataFrame], cfg: Config) -> pl.DataFrame:
    """One row per adapter (see the module's docstring)."""
    rows = [adapter_row(r, cands[r.adapter], cfg) for r in runs]
    schema = {k: (pl.String if isinstance(v, str) else pl.Int64 if k in _INT_COLS else pl.Float64) for k, v in rows[0].items()}
    return pl.DataFrame(rows, schema=schema)


_INT_COLS = {"n_seeds", "winner_seeds_won", "self_tests_passed", "self_tests", "layers_without_oproj"}


# ----------------------------------------------------------------------------- across
def rank_table(cands: dict[str, pl.DataFrame], top_k: int = TOP_K) -> pl.DataFrame:
    """The ranks side by side (``rank_<adapter>``), how many adapters rank each candidate in
    their top ``top_k``, and its ``level``: ``behaviour-level`` (every adapter's top k),
    ``adapter-level`` (one adapter's only), ``some adapters``, ``none``; with one adapter
    there is nothing to compare (``single adapter``). Sorted by the mean rank, ties by name."""
    adapters = list(cands)
    wide = None
    for a in adapters:
        part = cands[a].select("subspace", "family", "axis_kind", pl.col("rank").alias(f"rank_{a}"))
        wide = part if wide is None else wide.join(part, on=["subspace", "family", "axis_kind"], how="full", coalesce=True)
    rank_cols = [f"rank_{a}" for a in adapters]
    n_top = pl.sum_horizontal([(pl.col(c) <= top_k).fill_null(False).cast(pl.Int64) for c in rank_cols])
    wide = wide.with_columns(n_top.alias("n_adapters_top_k"), pl.mean_horizontal(rank_cols).alias("mean_rank"))
    n = len(adapters)

    def level(k: int) -> str:
        if n < 2:
            return "single adapter"
        if k == 0:
            return "none"
        return "behaviour-level" if k == n else "adapter-level" if k == 1 else "some adapters"

    wide = wide.with_columns(pl.col("n_adapters_top_k").map_elements(level, return_dtype=pl.String).alias("level"))
    return wide.sort(["mean_rank", "subspace"], nulls_last=True)


def tau_table(cands: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Kendall τ between every pair of adapters' seed-mean joint-score rankings (candidates
    with a finite score in both)."""
    adapters, rows = list(cands), []
    for i, a in enumerate(adapters):
        for b in adapters[i + 1 :]:
            ab = (
                cands[a]
                .select("subspace", pl.col("seed_mean_joint_score").alias("a"))
                .join(cands[b].select("subspace", pl.col("seed_mean_joint_score").alias("b")), on="subspace")
                .filter(pl.col("a").is_finite() & pl.col("b").is_finite())
            )
            tau, p = kendalltau(ab["a"].to_numpy(), ab["b"].to_numpy()) if ab.height > 1 else (math.nan, math.nan)
            rows.append({"adapter_a": a, "adapter_b": b, "kendall_tau": float(tau), "p_value": float(p), "n": ab.height})
    return pl.DataFrame(
        rows,
        schema={"adapter_a": pl.String, "adapter_b": pl.String, "kendall_tau": pl.Float64, "p_value": pl.Float64, "n": pl.Int64},
    )


def compare(cfg: Config, runs: Sequence[AdapterRun]) -> Comparison:
    """The comparison's tables, claims and caveats (nothing written)."""
    if not runs:
        raise ValueError("no adapters to compare: WS_ADAPTERS names none")
    cands = {r.adapter: candidate_table(r, cfg) for r in runs}
    summary = adapter_summary(runs, cands, cfg)
    ranks = rank_table(cands)
    tau = tau_table(cands)
    stacked = pl.concat(list(cands.values()))
    return Comparison(
        [r.adapter for r in runs],
        summary,
        stacked,
        ranks,
        tau,
        claims(summary, stacked, ranks, tau, behavior=cfg.behavior),
        caveats(cfg, runs, summary),
    )


def write_cross_adapter(cfg: Config, cmp: Comparison) -> list[Path]:
    """The tables, the rank heat map and ``cross_adapter_conclusion.md`` into
    ``cfg.cross_dir`` as one set (the conclusion last); returns the paths."""
    d = cfg.cross_dir
    tables = dict(zip(TABLES, (cmp.summary, cmp.candidates, cmp.ranks, cmp.tau), strict=True))
    text = conclusion_md(cfg, cmp)
    with staged_files(d, last=(CONCLUSION,)) as stage:
        rank_heatmap(
            cmp.ranks,
            cmp.adapters,
            stage / FIGURES[0],
            stage / FIGURES[1],
            title=f"rank of each candidate per adapter (seed-mean joint score)\n{cfg.behavior} on {cfg.model}",
        )
        for name, df in tables.items():
            write_table(df, stage / name)
        write_text(stage / CONCLUSION, text)
    written = [d / n for n in (*TABLES, *FIGURES, CONCLUSION)]
    logger.info(f"wrote {len(written)} files to {d}")
    return written
