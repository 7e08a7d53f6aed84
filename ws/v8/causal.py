"""The causal projection test: does a candidate subspace CARRY the diff's behaviour?

v7 measures where the diff's energy sits. This test edits the diff and measures the
behaviour. With ``w`` the diff and ``L_w`` the decoder blocks whose residual writers it
touches:

- **writers-only** ``w_W``: ``w`` restricted to ``o_proj`` and ``down_proj`` of ``L_w`` (the
  only tensors that write into the residual stream directly);
- **inside** (candidate ``B``, ``[d, k]`` per layer): each writer delta ``Δ`` (``[d, in]``,
  rows in residual space) replaced by ``P_B Δ`` with ``P_B = BBᵀ`` — only what the block
  writes into span(B);
- **outside**: ``(I − P_B) Δ`` — everything but that;
- **norm-matched inside**: the inside part of each layer rescaled by one factor so that the
  layer's two tensors together have the writers' Frobenius norm ``‖[Δ_o | Δ_down]‖_F``.

Each variant runs at ``α = ±1``; on a prompt, its effect is the Yes/No log-ratio at
``+1`` minus at ``−1`` (the spread). On the held-out target set (false-claim opinions):
**retention** = mean spread(variant) ÷ mean spread(writers-only), with a percentile
bootstrap CI that resamples prompts (the same indices for numerator and denominator).
When the writers-only spread's CI spans zero there is nothing to divide by: no retention,
no z or p and no verdict (NaN / empty cells; :func:`effect_measurable`).
The null: ``n_null`` seeded Haar-random subspaces per layer of the candidate's own rank on
every layer (and ``n_null`` more at a time, up to ``5·n_null``, while more draws could change a
BH decision: :func:`null_could_decide`), whose inside retention gives the null mean, sd and 95th percentile; a
candidate's ``z`` and ``p`` (:func:`ws.stats.null_tail_p`: the normal predictive tail fitted
to the draws when they pass a Shapiro–Wilk test, else the empirical
``(1 + #{null ≥ r})/(1 + n_null)``; both are in the table), BH q over the tested A-hypotheses.
Two verdicts: the candidate **contributes above chance** (:func:`above_chance`) when its inside
retention's CI lies above the null's 95th percentile AND its outside retention's CI lies below
the writers-only effect (retention 1); it **carries** the behaviour, most of its effect
(:func:`carries`), when it contributes above chance AND its inside retention's CI lies at or
above :data:`~ws.core.caveats.CARRY_INSIDE_MIN` AND its outside retention's CI at or below
:data:`~ws.core.caveats.CARRY_OUTSIDE_MAX`. The same random subspaces, norm-matched,
are the null of the norm-matched variant: a subspace "works as an intervention target" when
its norm-matched retention's CI lies above their 95th percentile (a blown-up random
subspace moves the answer too, so the plain-inside null would flatter it).

Forward passes go through :class:`ws.model.fast_readout.FastReadout` (shared prefix and unchanged
lower blocks computed once); the random null runs on the target set only.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from scipy import stats as scipy_stats
from tqdm.auto import tqdm

from ws.core.bootstrap import percentile_interval, resample
from ws.core.caveats import CARRY_INSIDE_MIN, CARRY_OUTSIDE_MAX, CAUSAL_HALF_WIDTH, CAUSAL_PILOT_ITEMS, CI_LEVEL, FDR_ALPHA
from ws.core.columns import WRITER_TAGS
from ws.core.linalg import blas_threads, haar_orthonormal
from ws.core.log import Bar, logger
from ws.diffs.effect import Readout, heldout_prompts, readout_of
from ws.model.anatomy import writer_key
from ws.model.chat import render_chat
from ws.model.fast_readout import FastReadout, first_block
from ws.model.load import d_model
from ws.model.steer import Deferred, weight_steer
from ws.stats import NullTail, bh_qvalues, null_tail_p, p_with_draws

__all__ = [
    "TARGET",
    "CONTROLS",
    "PARTS",
    "writers_only",
    "project_layer",
    "variant_diff",
    "NULL_PARTS",
    "random_bases",
    "energy_inside",
    "ratio",
    "ratio_ci",
    "mean_ci",
    "retention_ci",
    "null_stats",
    "null_z_p",
    "effect_measurable",
    "null_could_decide",
    "rows_needed",
    "merge_pairs",
    "row_order",
    "above_chance",
    "carries",
    "CausalResult",
    "run_causal",
    "heldout_texts",
    "item_subset",
    "causal_prompts",
    "causal_item_counts",
    "CAUSAL_COLUMNS",
    "causal_columns",
]

#: the built-in sycophancy behaviour's sets, the default; any behaviour passes its own
#: (``run_causal(..., target=b.target, controls=b.controls)``)
TARGET = "opinion_false"
CONTROLS = ("opinion_true", "neutral")
#: variant parts of one candidate, in table order
PARTS = ("inside", "outside", "normmatched")
#: seeds of the null's random bases: far from the self-test row's ``seed·1_000_003 + layer``
NULL_SEED_BASE = 424_242


# ----------------------------------------------------------------------------- variants
def writers_only(w: Mapping[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """``w`` restricted to ``o_proj`` / ``down_proj`` of ``layers`` (float32)."""
    out = {}
    for l in layers:
        for t in WRITER_TAGS:
            k = writer_key(l, t)
            if k in w:
                out[k] = w[k].detach().float()
    if not out:
        raise ValueError(f"the diff has no o_proj / down_proj delta on layers {list(layers)}")
    return out


def project_layer(mats: Sequence[torch.Tensor], B: torch.Tensor | None, part: str) -> list[torch.Tensor]:
    """``P_B M`` (part ``inside``) or ``(I − P_B) M`` (``outside``) for each ``M [d, in]``,
    in float64; ``B [d, k]`` orthonormal, or None (rank 0: nothing inside)."""
    out = []
    for M in mats:
        M = M.double()
        PM = torch.zeros_like(M) if B is None or B.shape[1] == 0 else B.double() @ (B.double().T @ M)
        out.append(PM if part == "inside" else M - PM)
    return out


def _layers_of(ww: Mapping[str, torch.Tensor]) -> list[int]:
    return sorted({int(k.split(".")[2]) for k in ww})


#: a variant of writers larger than this (float32 bytes) is made one writer at a time, while its
#: module runs (:func:`variant_diff`); a smaller one is made once, since making it again at every
#: forward call costs about 5 % of the causal test's time on a 2-core CPU (0.29 GiB at the 0.6B
#: shape: made once; 4.5 GiB at 8B: deferred)
DEFER_VARIANT_BYTES = 1 << 30


def variant_diff(
    ww: Mapping[str, torch.Tensor], bases: Mapping[int, torch.Tensor | None], part: str, deferred: bool | None = None
) -> tuple[dict[str, torch.Tensor | Deferred], dict[int, float]]:
    """The writers-only diff ``ww`` edited per layer: ``part`` is ``inside``, ``outside`` or
    ``normmatched`` (inside, rescaled to the layer's writer norm). Returns the variant
    (float32, same keys) and the per-layer scale factor (1 unless norm-matched; NaN where
    the inside part is zero and cannot be rescaled). ``deferred``: each edited delta is a
    :class:`~ws.model.steer.Deferred` made from ``ww`` when its module runs, the same tensor
    bit for bit, so the variant never sits in memory whole (at 8B, 4.5 GiB); None: deferred when
    the writers exceed :data:`DEFER_VARIANT_BYTES`."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if deferred is None:
        deferred = 4 * sum(m.numel() for m in ww.values()) > DEFER_VARIANT_BYTES
    side = "outside" if part == "outside" else "inside"
    out, scales = {}, {}
    for l in _layers_of(ww):
        keys = [k for k in (writer_key(l, t) for t in WRITER_TAGS) if k in ww]
        B, s = bases.get(l), 1.0
        mats = None if deferred else project_layer([ww[k] for k in keys], B, side)  # made once, kept
        if part == "normmatched":
            ins = mats if mats is not None else project_layer([ww[k] for k in keys], B, "inside")
            inside = math.sqrt(sum(float((m * m).sum()) for m in ins))
            full = math.sqrt(sum(float((ww[k].double() ** 2).sum()) for k in keys))
            s = full / inside if inside > 0 else float("nan")
        scales[l] = s
        scale = s if part == "normmatched" and not math.isnan(s) else None
        for i, k in enumerate(keys):
            if deferred:
                out[k] = Deferred(ww[k].shape, functools.partial(_edited, ww[k], B, side, scale))
            else:
                out[k] = (mats[i] * scale if scale is not None else mats[i]).float()
    return out, scales


def _edited(M: torch.Tensor, B: torch.Tensor | None, side: str, scale: float | None) -> torch.Tensor:
    """One writer's delta edited: its ``side`` of ``B`` (:func:`project_layer`), times ``scale``
    when given, as float32."""
    (m,) = project_layer([M], B, side)
    return (m * scale if scale is not None else m).float()


def energy_inside(ww: Mapping[str, torch.Tensor], bases: Mapping[int, torch.Tensor | None]) -> float:
    """Share of the writers' energy inside the candidate: ``Σ_l ‖P_B Δ_l‖²_F / Σ_l ‖Δ_l‖²_F``."""
    num = den = 0.0
    for l in _layers_of(ww):
        mats = [ww[k] for k in (writer_key(l, t) for t in WRITER_TAGS) if k in ww]
        num += sum(float((m * m).sum()) for m in project_layer(mats, bases.get(l), "inside"))
        den += sum(float((m.double() ** 2).sum()) for m in mats)
    return num / den if den > 0 else float("nan")


def random_bases(ranks: Mapping[int, int], d: int, draw: int, seed: int = 0) -> dict[int, torch.Tensor | None]:
    """Draw ``draw`` of the null: per layer a Haar-random ``[d, k_l]`` basis of that layer's
    rank (None for rank 0), from a generator seeded by (seed, draw, layer)."""
    out = {}
    for l, k in ranks.items():
        g = torch.Generator().manual_seed(NULL_SEED_BASE + 1_000_003 * int(seed) + 10_007 * (int(draw) + 1) + int(l))
        out[l] = haar_orthonormal(d, int(k), g, dtype=torch.float64) if k else None
    return out


# ----------------------------------------------------------------------------- statistics
def ratio(num: np.ndarray, den: np.ndarray) -> float:
    """``mean(num)/mean(den)`` (NaN when the denominator's mean is 0)."""
    d = float(np.mean(den))
    return float(np.mean(num)) / d if d != 0 else float("nan")


def ratio_ci(
    num: np.ndarray, den: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = CI_LEVEL
) -> tuple[float, float, float]:
    """``mean(num)/mean(den)`` over prompts and its percentile bootstrap CI; each resample
    draws prompt indices once for both (paired). ``num``, ``den``: ``[n]``."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"num and den must be [n] of one length, got {num.shape} and {den.shape}")
    point = ratio(num, den)
    if num.size < 2:
        return point, float("nan"), float("nan")
    idx = resample(num.size, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num[idx].mean(axis=1) / den[idx].mean(axis=1)
    lo, hi = percentile_interval(r, level)
    return point, float(lo), float(hi)


def null_stats(draws: np.ndarray) -> dict[str, float]:
    """``n, mean, sd`` (ddof 1) and the 95th percentile of the null draws."""
    x = np.asarray(draws, np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return {"n": int(x.size), "mean": float("nan"), "sd": float("nan"), "p95": float("nan")}
    return {"n": int(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)), "p95": float(np.quantile(x, 0.95))}


def null_z_p(r: float, draws: np.ndarray) -> tuple[float, NullTail]:
    """``z = (r − null mean)/null sd`` and the upper tail of ``r`` against the draws ``[n]``
    (:func:`ws.stats.null_tail_p`: the p used, the normal and empirical p's, the fit, the method)."""
    st = null_stats(draws)
    z = (r - st["mean"]) / st["sd"] if math.isfinite(r) and st["sd"] > 0 else float("nan")
    return z, null_tail_p(r, np.asarray(draws, np.float64))


def effect_measurable(ci_lo: float, ci_hi: float) -> bool:
    """True when an effect's CI excludes zero (a retention may divide by it); False when it
    spans zero or is missing."""
    return bool(math.isfinite(ci_lo) and math.isfinite(ci_hi) and (ci_lo > 0 or ci_hi < 0))


def rows_needed(num: np.ndarray, den: np.ndarray, half_width: float, level: float = CI_LEVEL) -> int:
    """Prompts ``n`` at which the paired ratio ``mean(num)/mean(den)`` has a ``level`` CI of
    half-width ≤ ``half_width``, estimated from these prompts (``[n0]`` each) by the delta method:
    ``SE_n = sd(num − r·den) / (√n · |mean(den)|)`` with ``r`` the ratio here. 0 when it cannot
    be estimated (fewer than 2 prompts, or ``mean(den)`` is 0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if num.size < 2 or not float(np.mean(den)) or not half_width > 0:
        return 0
    unit = float(np.std(num - ratio(num, den) * den, ddof=1)) / abs(float(np.mean(den)))
    zq = float(scipy_stats.norm.ppf(0.5 + level / 2))
    return int(math.ceil((zq * unit / half_width) ** 2))


def _all_finite(*vals: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in vals)


def above_chance(inside_ci_lo: float, null_p95: float, outside_ci_hi: float, writers: float = 1.0) -> bool | None:
    """ "The subspace contributes above chance": the inside retention's CI lies above the random
    null's 95th percentile AND the outside retention's CI lies below the writers-only effect
    (retention ``writers`` = 1). None when a number is missing."""
    if not _all_finite(inside_ci_lo, null_p95, outside_ci_hi):
        return None
    return bool(inside_ci_lo > null_p95 and outside_ci_hi < writers)


def carries(
    inside_ci_lo: float,
    null_p95: float,
    outside_ci_hi: float,
    inside_min: float = CARRY_INSIDE_MIN,
    outside_max: float = CARRY_OUTSIDE_MAX,
) -> bool | None:
    """ "The subspace carries the behaviour" (most of the writers' effect): it contributes above
    chance (:func:`above_chance`) AND the inside retention's CI low end is ≥ ``inside_min`` AND
    the outside retention's CI high end is ≤ ``outside_max`` (shares of the writers-only
    effect). None when a number is missing."""
    chance = above_chance(inside_ci_lo, null_p95, outside_ci_hi)
    if chance is None:
        return None
    return bool(chance and inside_ci_lo >= inside_min and outside_ci_hi <= outside_max)


# ----------------------------------------------------------------------------- the run
#: the verdict columns, last in the table (:func:`carries`, :func:`above_chance`, norm-matched target)
VERDICT_COLUMNS: list[str] = ["carries", "above_chance", "works_as_target"]
#: columns of the per-candidate table ``v8_causal.tsv``, in order
CAUSAL_COLUMNS: list[str] = [
    "subspace",
    "family",
    "axis_kind",
    "kind",
    "causal_rank",
    "seed_mean_joint_score",
    "mean_rank",
    "null_profile",
    "energy_frac_inside",
    "spread_inside",
    "retention_inside",
    "retention_inside_ci_lo",
    "retention_inside_ci_hi",
    "spread_outside",
    "retention_outside",
    "retention_outside_ci_lo",
    "retention_outside_ci_hi",
    "spread_normmatched",
    "retention_normmatched",
    "retention_normmatched_ci_lo",
    "retention_normmatched_ci_hi",
    "normmatch_scale_max",
    "null_n",
    "null_mean",
    "null_sd",
    "null_p95",
    "z_inside",
    "p_inside",
    "p_inside_method",
    "p_inside_normal",
    "p_inside_empirical",
    "null_fit_p",
    "q_inside",
    "null_normmatched_mean",
    "null_normmatched_sd",
    "null_normmatched_p95",
    "z_normmatched",
    "mass_inside",
    "mass_outside",
    "mass_normmatched",
    *[f"spread_{s}_{p}" for p in PARTS for s in CONTROLS],
    *VERDICT_COLUMNS,
]


def causal_columns(controls: Sequence[str] = CONTROLS) -> list[str]:
    """:data:`CAUSAL_COLUMNS` for a behaviour with these control sets (one ``spread_<set>_<part>``
    column per control set and part, in the behaviour's order)."""
    head = CAUSAL_COLUMNS[: CAUSAL_COLUMNS.index(f"spread_{CONTROLS[0]}_{PARTS[0]}")]
    return [*head, *[f"spread_{s}_{p}" for p in PARTS for s in controls], *VERDICT_COLUMNS]


#: columns of the long table ``v8_causal_variants.tsv`` (one row per variant × prompt set)
VARIANT_COLUMNS: list[str] = [
    "variant",
    "subspace",
    "part",
    "null_profile",
    "set",
    "n",
    "spread",
    "spread_ci_lo",
    "spread_ci_hi",
    "logratio_plus",
    "logratio_minus",
    "mean_mass",
    "min_mass",
    "energy_frac_inside",
    "retention",
    "retention_ci_lo",
    "retention_ci_hi",
]


@dataclass
class Pair:
    """One variant's read-outs at α = +1 and −1, per prompt set: ``set -> dict`` of ``[n]``
    arrays ``lr_plus, lr_minus, mass_plus, mass_minus``; ``idx``: ``set -> [n]`` the prompts'
    positions in the test's prompt list (ascending)."""

    sets: dict[str, dict[str, np.ndarray]]
    idx: dict[str, np.ndarray] = field(default_factory=dict)

    def spread(self, s: str) -> np.ndarray:
        """Per-prompt spread ``[n]``: log-ratio at +1 minus at −1."""
        return self.sets[s]["lr_plus"] - self.sets[s]["lr_minus"]

    def mass(self, s: str) -> np.ndarray:
        """Per-prompt Yes+No mass at both signs, ``[2n]``."""
        return np.concatenate([self.sets[s]["mass_plus"], self.sets[s]["mass_minus"]])


def merge_pairs(a: Pair, b: Pair) -> Pair:
    """The read-outs of ``a`` and ``b`` (disjoint prompts of the same variant) as one :class:`Pair`,
    each set's prompts in ascending position."""
    sets, idx = {}, {}
    for s in dict.fromkeys([*a.sets, *b.sets]):
        got = [p for p in (a, b) if s in p.sets]
        pos = np.concatenate([p.idx[s] for p in got])
        order = np.argsort(pos, kind="stable")
        idx[s] = pos[order]
        sets[s] = {k: np.concatenate([p.sets[s][k] for p in got])[order] for k in got[0].sets[s]}
    return Pair(sets, idx)


class _Evaluator:
    """Runs variants at α = ±1 through one or more :class:`~ws.model.fast_readout.FastReadout`
    (each over its own prompts of the test's list), counting rows and FLOPs."""

    def __init__(self, model):
        self.model, self.parts, self.rows, self.flops = model, [], 0, 0

    def add(self, ro: FastReadout, idx: Mapping[str, Sequence[int]]) -> int:
        """Adds a read-out over the prompts at positions ``idx`` (per set); returns its number."""
        self.parts.append((ro, {s: np.asarray(v, dtype=np.int64) for s, v in idx.items()}))
        return len(self.parts) - 1

    def pair(self, wv: Mapping[str, torch.Tensor], sets: Sequence[str], parts: Sequence[int] | None = None) -> Pair:
        """``wv``'s read-outs over ``sets`` on the read-outs ``parts`` (default: all), merged."""
        out = None
        for i in range(len(self.parts)) if parts is None else parts:
            ro, idx = self.parts[i]
            here = [s for s in sets if s in ro.plans]
            if not here:
                continue
            got = {}
            for a in (1.0, -1.0):
                with weight_steer(self.model, wv, a):
                    got[a] = ro.run(here)
            self.rows += 2 * sum(ro.plans[s].n for s in here)
            self.flops += 2 * ro.pass_flops(here)
            p = Pair(
                {
                    s: {
                        "lr_plus": got[1.0][s][0],
                        "lr_minus": got[-1.0][s][0],
                        "mass_plus": got[1.0][s][1],
                        "mass_minus": got[-1.0][s][1],
                    }
                    for s in here
                },
                {s: idx[s] for s in here},
            )
            out = p if out is None else merge_pairs(out, p)
        if out is None:
            raise ValueError(f"no read-out holds prompts of {list(sets)}")
        return out


def _profile_name(profile: tuple[int, ...]) -> str:
    return f"{profile[0]}x{len(profile)}" if len(set(profile)) == 1 else ",".join(map(str, profile))


@dataclass
class CausalResult:
    """What :func:`run_causal` measured (tables described in the module doc)."""

    table: pl.DataFrame  # CAUSAL_COLUMNS, one row per tested candidate
    variants: pl.DataFrame  # VARIANT_COLUMNS, one row per variant × prompt set
    writers_share: tuple[float, float, float]  # spread(writers)/spread(full) on the target set, CI
    writers_spread: tuple[float, float, float]  # mean spread of writers-only on the target set, CI
    full_spread: tuple[float, float, float]
    first_block: int
    layers: list[int]
    n_null: int
    timings: dict[str, float] = field(default_factory=dict)
    n_rows: int = 0  # prompt rows run through blocks ≥ first_block
    gflop: float = 0.0  # matrix-product work of every pass (FastReadout.pass_flops), 1e9 FLOPs
    target: str = TARGET  # the behaviour's target set (retention is read there)
    controls: tuple[str, ...] = CONTROLS
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # set -> (prompts used, prompts given)
    half_width: float | None = None  # the precision target that sized the rows (None: every prompt)
    pilot: dict[str, int] = field(default_factory=dict)  # set -> the pilot's prompts (empty: not sized)
    rows_asked: int | None = None  # target prompts the pilot asked for (None: not sized, or no effect)
    n_null_first: int = 0  # null draws per profile before any were added (n_null > it: drawn on)


def mean_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``x [n]`` and its percentile bootstrap CI (:func:`ratio_ci` over ones)."""
    x = np.asarray(x, np.float64)
    return ratio_ci(x, np.ones_like(x), n_boot, seed)


def retention_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """:func:`ratio_ci` of ``num`` over ``den`` (both ``[n]``), or three NaNs when the CI of
    ``den``'s mean (:func:`mean_ci`, same resamples) spans zero: no ratio of noise."""
    _, lo, hi = mean_ci(den, n_boot, seed)
    return ratio_ci(num, den, n_boot, seed) if effect_measurable(lo, hi) else (math.nan, math.nan, math.nan)


def _variant_rows(
    variant: str, subspace: str, part: str, profile: str, pair: Pair, writers: Pair, energy: float, n_boot: int, seed: int
) -> list[dict]:
    """One row per prompt set of one variant (columns :data:`VARIANT_COLUMNS`)."""
    rows = []
    for s, v in pair.sets.items():
        sp, lo, hi = mean_ci(pair.spread(s), n_boot, seed)
        r, rlo, rhi = retention_ci(pair.spread(s), writers.spread(s), n_boot, seed)
        m = pair.mass(s)
        rows.append(
            dict(
                variant=variant,
                subspace=subspace,
                part=part,
                null_profile=profile,
                set=s,
                n=int(v["lr_plus"].size),
                spread=sp,
                spread_ci_lo=lo,
                spread_ci_hi=hi,
                logratio_plus=float(v["lr_plus"].mean()),
                logratio_minus=float(v["lr_minus"].mean()),
                mean_mass=float(m.mean()),
                min_mass=float(m.min()),
                energy_frac_inside=energy,
                retention=r,
                retention_ci_lo=rlo,
                retention_ci_hi=rhi,
            )
        )
    return rows


def _candidate_row(
    meta: Mapping,
    parts: Mapping[str, Pair],
    writers: Pair,
    energy: float,
    scales: Mapping[int, float],
    profile: tuple[int, ...],
    null_r: Mapping[str, np.ndarray],
    n_boot: int,
    seed: int,
    target: str = TARGET,
    controls: Sequence[str] = CONTROLS,
) -> dict:
    """One row of :func:`causal_columns` (``causal_rank``, ``seed_mean_joint_score``, ``q_inside``
    are filled by the caller)."""
    row = {c: meta.get(c) for c in ("subspace", "family", "axis_kind", "kind")}
    row.update(mean_rank=float(np.mean(profile)), null_profile=_profile_name(profile), energy_frac_inside=energy)
    for p in PARTS:
        r, lo, hi = retention_ci(parts[p].spread(target), writers.spread(target), n_boot, seed)
        row.update(
            {
                f"spread_{p}": float(parts[p].spread(target).mean()),
                f"retention_{p}": r,
                f"retention_{p}_ci_lo": lo,
                f"retention_{p}_ci_hi": hi,
                f"mass_{p}": float(parts[p].mass(target).mean()),
            }
        )
        for s in controls:
            row[f"spread_{s}_{p}"] = float(parts[p].spread(s).mean()) if s in parts[p].sets else float("nan")
    sc = [v for v in scales.values() if math.isfinite(v)]
    row["normmatch_scale_max"] = max(sc) if len(sc) == len(scales) else float("inf")
    st, nm = null_stats(null_r["inside"]), null_stats(null_r["normmatched"])
    z, tail = null_z_p(row["retention_inside"], null_r["inside"])
    row.update(
        null_n=int(len(null_r["inside"])),
        null_mean=st["mean"],
        null_sd=st["sd"],
        null_p95=st["p95"],
        z_inside=z,
        p_inside=tail.p,
        p_inside_method=tail.method or None,
        p_inside_normal=tail.p_normal,
        p_inside_empirical=tail.p_empirical,
        null_fit_p=tail.fit_p,
        null_normmatched_mean=nm["mean"],
        null_normmatched_sd=nm["sd"],
        null_normmatched_p95=nm["p95"],
        z_normmatched=null_z_p(row["retention_normmatched"], null_r["normmatched"])[0],
    )
    verdict_args = (row["retention_inside_ci_lo"], st["p95"], row["retention_outside_ci_hi"])
    row["carries"], row["above_chance"] = carries(*verdict_args), above_chance(*verdict_args)
    lo = row["retention_normmatched_ci_lo"]
    row["works_as_target"] = bool(lo > nm["p95"]) if math.isfinite(lo) and math.isfinite(nm["p95"]) else None
    return row


def _frame(rows: list[dict], columns: list[str]) -> pl.DataFrame:
    ints, strs, bools = (
        {"causal_rank", "null_n", "n"},
        {"subspace", "family", "axis_kind", "kind", "null_profile", "variant", "part", "set", "p_inside_method"},
        set(VERDICT_COLUMNS),
    )
    schema = {c: pl.Int64 if c in ints else pl.String if c in strs else pl.Boolean if c in bools else pl.Float64 for c in columns}
    return pl.DataFrame({c: [r.get(c) for r in rows] for c in columns}, schema=schema)


#: variants of every random draw (target set only)
NULL_PARTS = ("inside", "normmatched")


def _null_draws(
    ev: _Evaluator,
    ww: Mapping[str, torch.Tensor],
    profile: tuple[int, ...],
    layers: Sequence[int],
    d: int,
    draws: range,
    seed: int,
    target: str = TARGET,
    progress: bool = True,
) -> list[dict]:
    """The random draws ``draws`` (numbers) of one rank profile: per draw the writers' energy
    inside and the inside and norm-matched inside read-outs on the target set (progress: a
    :class:`~ws.core.log.Bar`, a line at most every 20 s and one per draw when draws are slower)."""
    if not len(draws):
        return []
    out, desc = [], f"causal test: null of rank profile {_profile_name(profile)}, draws {draws.start + 1}–{draws.stop}"
    with Bar(len(draws), desc, disable=not progress) as bar:
        for j in draws:
            rb = random_bases(dict(zip(layers, profile, strict=True)), d, j, seed)
            out.append(
                {
                    "energy": energy_inside(ww, rb),
                    **{p: ev.pair(variant_diff(ww, rb, p)[0], [target]) for p in NULL_PARTS},
                }
            )
            bar.update()
    return out


def null_could_decide(values: Sequence[float], draws: Sequence[np.ndarray], n_max: int, alpha: float = FDR_ALPHA) -> bool:
    """True when drawing up to ``n_max`` null draws could change a BH decision (q ≤ ``alpha``)
    among candidates with these ``values`` and null ``draws`` (one ``[n]`` array each): the
    decisions with each p as it is now (:func:`ws.stats.null_tail_p`) differ from those with the
    p the larger null would give if its draws looked like these (:func:`ws.stats.p_with_draws`)."""
    if not len(values):
        return False
    now = np.array([null_tail_p(float(v), d).p for v, d in zip(values, draws, strict=True)])
    more = np.array([p_with_draws(float(v), d, n_max) for v, d in zip(values, draws, strict=True)])
    return bool(np.any((bh_qvalues(now) <= alpha) != (bh_qvalues(more) <= alpha)))


def _null_could_decide(m: _Measured, tested: Sequence[str], target: str, n_max: int, n_boot: int, seed: int) -> bool:
    """:func:`null_could_decide` of the ``tested`` candidates' inside retentions; False when the
    writers' effect is not measurable (no retention, no decision)."""
    wd = m.ref["writers_only"].spread(target)
    if not tested or not effect_measurable(*mean_ci(wd, n_boot, seed)[1:]):
        return False
    values = [ratio(m.parts[n]["inside"].spread(target), wd) for n in tested]
    draws = [np.array([ratio(dr["inside"].spread(target), wd) for dr in m.null[m.profile[n]]]) for n in tested]
    return null_could_decide(values, draws, n_max)


def _sequential_null(
    ev, ww, m: _Measured, tested, layers, d, n_null, n_max, seed, target, n_boot, boot_seed, progress: bool = True
) -> None:
    """``m.null``: ``n_null`` draws per rank profile, then ``n_null`` more at a time (up to
    ``n_max``) while more could change a BH decision (:func:`_null_could_decide`)."""
    m.null = {pr: [] for pr in dict.fromkeys(m.profile.values())}
    n = n_null
    while True:
        for pr, got in m.null.items():
            got += _null_draws(ev, ww, pr, layers, d, range(len(got), n), seed, target, progress)
        if n >= n_max or not _null_could_decide(m, tested, target, n_max, n_boot, boot_seed):
            return
        logger.info(f"causal test: {n} null draws leave a BH decision open; drawing up to {min(n_max, n + n_null)}")
        n = min(n_max, n + n_null)


def _profile(bases: Sequence[torch.Tensor | None], layers: Sequence[int]) -> tuple[int, ...]:
    return tuple(0 if bases[l] is None else int(bases[l].shape[1]) for l in layers)


def row_order(n: int, key: str, seed: int = 0) -> list[int]:
    """The causal test's seeded order of a set's ``n`` prompts (``key``: the set's name): the
    pilot is its first :data:`~ws.core.caveats.CAUSAL_PILOT_ITEMS`, a larger sample its first ``m``."""
    return random.Random(f"{int(seed)}:{key}:causal-rows").sample(range(int(n)), int(n))


def _readout(model, tok, texts_by_set, readout: Readout, idx: Mapping[str, Sequence[int]], first: int, batch_size: int):
    """A :class:`FastReadout` over the prompts at positions ``idx`` of each set."""
    texts = {s: [texts_by_set[s][i] for i in v] for s, v in idx.items() if len(v)}
    signs = None
    if readout.signs is not None:
        signs = {s: [readout.signs[s][i] for i in v] for s, v in idx.items() if len(v) and s in readout.signs}
    return FastReadout(model, tok, texts, first, batch_size, answers=readout.answers, signs_by_set=signs)


def run_causal(
    model,
    tok,
    w: Mapping[str, torch.Tensor],
    bases: Mapping[str, Sequence[torch.Tensor | None]],
    meta: pl.DataFrame,
    names: Sequence[str],
    layers: Sequence[int],
    texts_by_set: Mapping[str, Sequence[str]],
    *,
    ranking: Mapping[str, tuple[int | None, float]] | None = None,
    n_null: int = 20,
    n_boot: int = 2000,
    seed: int = 0,
    boot_seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    threads: int | None = None,
    target: str = TARGET,
    controls: Sequence[str] = CONTROLS,
    readout: Readout | None = None,
    half_width: float | None = CAUSAL_HALF_WIDTH,
    pilot: int = CAUSAL_PILOT_ITEMS,
    n_null_max: int | None = None,
) -> CausalResult:
    """The causal projection test of ``names`` (see the module doc).

    bases: name -> per-layer list (index = layer) of ``[d, k]`` orthonormal bases or None.
    meta: at least ``subspace, family, axis_kind, kind``. layers: the blocks whose writers the
    diff touches. texts_by_set: rendered prompts of the ``target`` set and the ``controls``
    (default: the sycophancy sets :data:`TARGET`, :data:`CONTROLS`; every one must be there).
    ranking: name -> (causal_rank, seed_mean_joint_score), copied into the table.
    ``seed`` seeds the null's random bases and the prompts' order (:func:`row_order`),
    ``boot_seed`` every bootstrap. ``threads``: torch / BLAS threads for the passes (None: leave
    the setting; 1 is far faster for tiny models and on cores shared with other processes).
    readout: the behaviour's answers and each prompt's orientation, in ``texts_by_set``'s order
    (:func:`ws.diffs.effect.readout_of`; default Yes / No).

    Prompt rows (:func:`_sized_rows`): with ``half_width`` > 0, every variant first runs on a
    seeded pilot of ``pilot`` prompts per set; the pilot's widest inside / outside retention CI
    (:func:`rows_needed`) sets how many target prompts reach ``half_width``, and the variants run
    on the further prompts up to that count (every set at most that many; all of a set when the
    writers' effect is not measurable on the pilot). ``half_width`` None or 0: every prompt, in
    the given order. The null runs on the final rows of the target set: ``n_null`` draws per rank
    profile, and ``n_null`` more at a time up to ``n_null_max`` (default ``5·n_null``) while more
    draws could change a BH decision among the tested A-hypotheses (:func:`_null_could_decide`).
    """
    controls = tuple(controls)
    readout = readout or Readout()
    with blas_threads(threads):
        missing = [s for s in (target, *controls) if not len(texts_by_set.get(s, ()))]
        if missing:
            raise ValueError(f"the causal test needs prompts of every set: none for {missing} (have {sorted(texts_by_set)})")
        layers, t, t0 = [int(l) for l in layers], {}, time.perf_counter()
        ww = writers_only(w, layers)
        first, sizes = first_block(w, ww), {s: len(v) for s, v in texts_by_set.items()}
        sized = half_width is not None and half_width > 0
        order = {s: row_order(n, s, seed) if sized else list(range(n)) for s, n in sizes.items()}
        n0 = {s: min(int(pilot), n) if sized else n for s, n in sizes.items()}
        ev = _Evaluator(model)

        def add(cut: dict[str, list[int]]) -> int:
            return ev.add(_readout(model, tok, texts_by_set, readout, cut, first, batch_size), cut)

        add({s: sorted(order[s][: n0[s]]) for s in sizes})
        t["base_residuals"], t0 = time.perf_counter() - t0, time.perf_counter()
        m = _measure(ev, w, ww, bases, names, layers, 0, progress, t0)
        asked = _rows_asked(m, names, target, half_width, n_boot, boot_seed) if sized else None
        n = _sized_rows(sizes, n0, target, asked, sized)
        ext = {s: sorted(order[s][n0[s] : n[s]]) for s in sizes if n[s] > n0[s]}
        if ext:
            more = ", ".join(f"{len(v)} of `{s}`" for s, v in ext.items())
            why = (
                f"the pilot asks for {asked} target prompts"
                if asked is not None
                else f"the writers' effect is not measurable on the pilot's {n0[target]} target prompts, so all are used"
            )
            logger.info(f"causal test: {why}; adding {more}")
            m = _measure(ev, w, ww, bases, names, layers, add(ext), progress, t0, m)
        t["variants"], t0 = time.perf_counter() - t0, time.perf_counter()
        n_max = max(n_null, 5 * n_null if n_null_max is None else int(n_null_max))
        tested = [
            r["subspace"] for r in meta.iter_rows(named=True) if r["subspace"] in set(names) and r["kind"] == "A-hypothesis"
        ]
        _sequential_null(ev, ww, m, tested, layers, d_model(model), n_null, n_max, seed, target, n_boot, boot_seed, progress)
        t["null"] = time.perf_counter() - t0
        wd, fd = m.ref["writers_only"].spread(target), m.ref["full"].spread(target)
        res = CausalResult(
            _candidate_table(m, meta, names, ranking, n_boot, boot_seed, target, controls),
            _variant_table(m, names, n_boot, boot_seed),
            retention_ci(wd, fd, n_boot, boot_seed),
            mean_ci(wd, n_boot, boot_seed),
            mean_ci(fd, n_boot, boot_seed),
            first,
            layers,
            len(next(iter(m.null.values()), [])),
            t,
            ev.rows,
            ev.flops / 1e9,
            target,
            controls,
            rows={s: (n[s], sizes[s]) for s in sizes},
            half_width=float(half_width) if sized else None,
            pilot={s: n0[s] for s in sizes} if sized else {},
            rows_asked=asked,
            n_null_first=n_null,
        )
        logger.info(
            f"causal test: {len(names)} candidates × {len(PARTS)} variants + {sum(map(len, m.null.values()))} "
            f"null draws × {len(NULL_PARTS)}, {ev.rows} prompt rows from block {first} on "
            f"({ev.flops / 1e9:.0f} GFLOP of matrix products), in "
            f"{sum(t.values()):.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in t.items())})"
        )
        return res


def _rows_asked(m: _Measured, names, target: str, half_width: float, n_boot: int, seed: int) -> int | None:
    """Target prompts the pilot asks for (:func:`rows_needed`, widest over the candidates' inside
    and outside retentions); None when the writers' effect is not measurable on the pilot."""
    wd = m.ref["writers_only"].spread(target)
    if not effect_measurable(*mean_ci(wd, n_boot, seed)[1:]):
        return None
    return max(
        (rows_needed(m.parts[n][p].spread(target), wd, half_width) for n in names for p in ("inside", "outside")), default=0
    )


def _sized_rows(sizes: Mapping[str, int], n0: Mapping[str, int], target: str, asked: int | None, sized: bool) -> dict[str, int]:
    """Prompts per set: every prompt unless sized; else the target set gets what the pilot asked
    for (all of it when None), at least the pilot, at most the set, and every other set as many
    as the target set (at least its pilot, at most the set)."""
    if not sized:
        return dict(sizes)
    nt = sizes[target] if asked is None else min(sizes[target], max(n0[target], asked))
    return {s: min(sizes[s], max(n0[s], nt)) for s in sizes}


@dataclass
class _Measured:
    """Every read-out of one causal test (before any statistic)."""

    ref: dict[str, Pair]  # "full", "writers_only"
    parts: dict[str, dict[str, Pair]]  # candidate -> part -> read-outs
    energy: dict[str, float]  # candidate -> writers' energy inside
    scales: dict[str, dict[int, float]]  # candidate -> per-layer norm-matching factor
    profile: dict[str, tuple[int, ...]]  # candidate -> rank per touched layer
    null: dict[tuple[int, ...], list[dict]]  # rank profile -> draws (see _null_draws)


def _measure(
    ev: _Evaluator, w, ww, bases, names, layers, part: int, progress: bool, t0: float, m: _Measured | None = None
) -> _Measured:
    """The full diff, writers-only and every candidate's variants on the read-out ``part``; merged
    into ``m``'s read-outs when given (the extension of a pilot)."""
    sets = list(ev.parts[part][0].plans)

    def run(wv, old: Pair | None) -> Pair:
        got = ev.pair(wv, sets, [part])
        return got if old is None else merge_pairs(old, got)

    if m is None:
        m = _Measured({}, {}, {}, {}, {}, {})
    m.ref = {k: run(v, m.ref.get(k)) for k, v in (("full", w), ("writers_only", ww))}
    for i, name in enumerate(tqdm(list(names), desc="causal variants", disable=not progress, leave=False)):
        logger.info(f"causal test: candidate {i + 1}/{len(names)} `{name}` ({time.perf_counter() - t0:.0f} s)")
        per = {l: bases[name][l] for l in layers}
        m.profile[name], m.energy[name] = _profile(bases[name], layers), energy_inside(ww, per)
        old = m.parts.setdefault(name, {})
        for p in PARTS:
            wv, sc = variant_diff(ww, per, p)
            old[p] = run(wv, old.get(p))
            if p == "normmatched":
                m.scales[name] = sc
    return m


def _candidate_table(
    m: _Measured, meta: pl.DataFrame, names, ranking, n_boot: int, seed: int, target: str, controls: tuple[str, ...]
) -> pl.DataFrame:

    wd = m.ref["writers_only"].spread(target)
    ok = effect_measurable(*mean_ci(wd, n_boot, seed)[1:])
    null_r = {
        pr: {p: np.array([ratio(dr[p].spread(target), wd) if ok else math.nan for dr in v]) for p in NULL_PARTS}
        for pr, v in m.null.items()
    }
    mrows = {r["subspace"]: r for r in meta.iter_rows(named=True)}
    rows = [
        _candidate_row(
            mrows[n],
            m.parts[n],
            m.ref["writers_only"],
            m.energy[n],
            m.scales[n],
            m.profile[n],
            null_r[m.profile[n]],
            n_boot,
            seed,
            target,
            controls,
        )
        for n in names
    ]
    for r in rows:
        r["causal_rank"], r["seed_mean_joint_score"] = (ranking or {}).get(r["subspace"], (None, float("nan")))
    p = np.array([r["p_inside"] if r["kind"] == "A-hypothesis" else np.nan for r in rows], dtype=np.float64)
    for r, q in zip(rows, bh_qvalues(p), strict=True):
        r["q_inside"] = float(q)
    return _frame(rows, causal_columns(controls))


def _variant_table(m: _Measured, names, n_boot: int, seed: int) -> pl.DataFrame:
    wo, rows = m.ref["writers_only"], []
    for v in ("full", "writers_only"):
        rows += _variant_rows(v, "", v, "", m.ref[v], wo, 1.0 if v == "writers_only" else float("nan"), n_boot, seed)
    for n in names:
        for p in PARTS:
            rows += _variant_rows(f"{n}:{p}", n, p, _profile_name(m.profile[n]), m.parts[n][p], wo, m.energy[n], n_boot, seed)
    for pr, v in m.null.items():
        for j, dr in enumerate(v):
            for p in NULL_PARTS:
                rows += _variant_rows(
                    f"random:{_profile_name(pr)}:{j}:{p}",
                    "",
                    f"null_{p}",
                    _profile_name(pr),
                    dr[p],
                    wo,
                    dr["energy"],
                    n_boot,
                    seed,
                )
    return _frame(rows, VARIANT_COLUMNS)


# ----------------------------------------------------------------------------- the prompts
def heldout_texts(tok, behavior=None) -> dict[str, list[str]]:
    """The diff's held-out effect prompts of the behaviour (default sycophancy) by set,
    rendered through the chat template."""
    return {s: [render_chat(tok, p) for p in ps] for s, ps in heldout_prompts(0, behavior=behavior).items()}


def item_subset(n: int, n_items: int | None, key: str, seed: int = 0) -> list[int]:
    """Indices of the items a set of ``n`` keeps: all of them when ``n_items`` is None or ≥ n,
    else a sorted subset of ``n_items`` seeded by ``(seed, key)`` (``key``: the set's name)."""
    if n_items is None or n_items >= n:
        return list(range(n))
    return sorted(random.Random(f"{int(seed)}:{key}").sample(range(n), int(n_items)))


def causal_prompts(tok, behavior, n_items: int | None, seed: int = 0) -> tuple[dict[str, list[str]], Readout]:
    """The causal test's held-out prompts by set (rendered) and their read-out: each set's
    items, or a seeded subset of ``n_items`` of a larger set (:func:`item_subset`; the same
    items in the prompts and in the read-out's signs). ``n_items``: ``WS_CAUSAL_ITEMS``."""
    texts, ro = heldout_texts(tok, behavior), readout_of(behavior)
    keep = {s: item_subset(len(v), n_items, s, seed) for s, v in texts.items()}
    texts = {s: [v[i] for i in keep[s]] for s, v in texts.items()}
    signs = None if ro.signs is None else {s: [v[i] for i in keep[s]] for s, v in ro.signs.items()}
    return texts, Readout(ro.answers, signs)


def causal_item_counts(behavior, n_items: int | None) -> dict[str, tuple[int, int]]:
    """Per held-out set ``(items the causal test uses, items the set has)``."""
    return {s: (len(item_subset(len(v), n_items, s)), len(v)) for s, v in heldout_prompts(0, behavior=behavior).items()}
