"""Steering head to head at a matched budget: every method at the α where it moves the model by
the same mean next-token KL on the neutral prompts, and what it does to the behaviour there.

For one behaviour, model and diff (the primary seed's, ``WS_SEEDS``' first):

1. the methods (:mod:`ws.steering.methods`): the diff, its writers, v8's carrier when a v8 run
   exists (:func:`v8_carrier`), the contrastive vector at its block, every ``WS_VECTORS`` file,
   and prompting;
2. per method the budget's α (:func:`ws.diffs.budget.bisect_budget` on its own KL curve,
   :class:`ws.diffs.budget.KLCurve`; prompting has no α and is measured at its one setting);
3. at ``±α``, on the behaviour's held-out items (at most ``WS_CAUSAL_ITEMS`` per set, the
   subset v8 uses): each set's spread (mean of ``logratio(+α) − logratio(−α)`` per prompt) with
   a percentile bootstrap CI, the specificity (:func:`ws.diffs.effect.specificity`) with its CI,
   the share of target prompts moved against the behaviour, and the capability guard: the
   control items' answer accuracy (items both personas answer alike: the answer is the item's
   own, not the behaviour's) at the base, at ``+α`` and at ``−α``, beside the KL there;
4. a sweep of α (fractions of the budget's α) for the spread-against-KL figure;
5. the verdict: the method with the largest target spread toward the behaviour among those
   that reached the budget, against the runner-up and prompting by a paired bootstrap over the
   same target prompts; and a few sampled completions per method (same seed).

    h2h = head_to_head(cfg, model, tok)          # every method, measured
    write_steering(cfg, h2h)                     # ws.steering.report: the file set
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

from ws.behavior import data
from ws.behavior.files import Topic
from ws.config import Config
from ws.core.bootstrap import mean_ci, percentile_interval, resample
from ws.core.columns import CEILING_W
from ws.core.linalg import blas_threads
from ws.core.log import logger, progress
from ws.diffs.budget import MAX_ALPHA, BudgetNotReached, KLCurve, bisect_budget, mean_kl, neutral_set
from ws.diffs.completions import generate_completions
from ws.diffs.effect import Readout, specificity
from ws.model.chat import render_chat
from ws.model.fast_readout import FastReadout
from ws.model.load import d_model, n_layers
from ws.model.readout import next_token_logprobs
from ws.steering.methods import (
    LAYER_PICK_ALPHA,
    LayerPick,
    Method,
    caa_method,
    contrastive_vectors,
    pick_layer,
    prompt_method,
    vector_methods,
    weight_methods,
)
from ws.v7 import sweep
from ws.v8.carrier import CARRIER_FILE, read_carrier_raw
from ws.v8.causal import item_subset

#: the α of the sweep behind the figure, as fractions of each method's budget α
SWEEP_FRACTIONS = (0.25, 0.5, 1.0, 1.5, 2.0)
#: held-out prompts whose completions are sampled per method: from the target set, and from each control set
COMPLETION_PROMPTS = (2, 1)
#: tokens sampled per completion (smoke mode: 8)
COMPLETION_TOKENS = 32
#: the sampling seed of every completion (the same for every method)
COMPLETION_SEED = 0


# ----------------------------------------------------------------------------- prompts
@dataclass
class HeldOut:
    """The held-out items the methods are read on: per set the user prompts and their items,
    the read-out (answers, each prompt's orientation) and the set the KL is measured on."""

    prompts: dict[str, list[str]]
    topics: dict[str, list[Topic]]
    readout: Readout
    neutral: str

    @property
    def sets(self) -> list[str]:
        return list(self.prompts)


def heldout(behavior=None, n_items: int | None = None, seed: int = 0) -> HeldOut:
    """The behaviour's held-out items per set, at most ``n_items`` per set (the seeded subset
    v8's causal test uses, :func:`ws.v8.causal.item_subset`)."""
    b = data.get_behavior(behavior)
    topics = {}
    for s, items in data.heldout_sets(0, behavior=b).items():
        keep = item_subset(len(items), n_items, s, seed)
        if keep:
            topics[s] = [items[i] for i in keep]
    prompts = {s: [data.eval_prompt(t, b) for t in ts] for s, ts in topics.items()}
    signs = {s: [t.sign for t in ts] for s, ts in topics.items()}
    ro = Readout(tuple(b.readout), signs if any(x < 0 for v in signs.values() for x in v) else None)
    return HeldOut(prompts, topics, ro, neutral_set(b))


def expected_answers(held: HeldOut, behavior=None) -> dict[str, list[bool | None]]:
    """Per control set and item: whether the correct answer is the item's first read-out answer,
    for items both personas answer alike (their answer is the item's own, not the behaviour's);
    None for items where the personas differ (no behaviour-free correct answer)."""
    b = data.get_behavior(behavior)
    out = {}
    for s in b.controls:
        if s in held.topics:
            out[s] = [b.agrees("pos", t) if b.agrees("pos", t) == b.agrees("neg", t) else None for t in held.topics[s]]
    return out


def accuracy(lr: Mapping[str, np.ndarray], expected: Mapping[str, Sequence[bool | None]]) -> tuple[float, int]:
    """``(share answered correctly, items scored)``: an item is answered with its first answer
    when its (oriented) log-ratio is > 0."""
    right = [bool(x > 0) == e for s, exp in expected.items() for x, e in zip(lr[s], exp, strict=True) if e is not None]
    return (float(np.mean(right)) if right else math.nan), len(right)


# ----------------------------------------------------------------------------- the read-outs
class Reader:
    """Read-outs and KLs of steering methods on fixed held-out prompts: one fast read-out
    (:class:`ws.model.fast_readout.FastReadout`) per (lowest changed block, system prompt),
    one KL curve (:class:`ws.diffs.budget.KLCurve`) per method."""

    def __init__(self, model: nn.Module, tok, held: HeldOut, batch_size: int = 16) -> None:
        self.model, self.tok, self.held, self.bs = model, tok, held, batch_size
        self.kl_prompts = held.prompts[held.neutral]
        self._fast: dict[tuple[int, str | None], FastReadout] = {}
        self._curves: dict[str, KLCurve] = {}
        self._base_logp: Tensor | None = None

    def fast(self, first: int, system: str | None) -> FastReadout:
        key = (first, system)
        if key not in self._fast:
            texts = {s: [render_chat(self.tok, p, system) for p in ps] for s, ps in self.held.prompts.items()}
            ro = self.held.readout
            self._fast[key] = FastReadout(self.model, self.tok, texts, first, self.bs, answers=ro.answers, signs_by_set=ro.signs)
        return self._fast[key]

    def logratios(self, m: Method, alpha: float, sets: Sequence[str] | None = None) -> dict[int, dict[str, np.ndarray]]:
        """``sign -> set -> oriented log-ratio [n]`` at ``+alpha`` and ``−alpha`` (prompting: its two instructions)."""
        out = {}
        for sign in (1, -1):
            ro = self.fast(m.first(), m.system(sign))
            with m.steer(self.model, sign * alpha):
                out[sign] = {s: lr for s, (lr, _) in ro.run(sets).items()}
        return out

    def base(self) -> dict[str, np.ndarray]:
        """``set -> oriented log-ratio [n]`` of the base model."""
        return {s: lr for s, (lr, _) in self.fast(0, None).run().items()}

    def curve(self, m: Method) -> KLCurve:
        if m.name not in self._curves:
            self._curves[m.name] = KLCurve(self.model, self.tok, lambda a: m.steer(self.model, a), self.kl_prompts, self.bs)
        return self._curves[m.name]

    def kl(self, m: Method, alpha: float = 1.0) -> float:
        """The mean KL from the base model over ``±alpha`` (prompting: over its two instructions)."""
        if m.has_strength:
            return self.curve(m).at(alpha)
        if self._base_logp is None:
            self._base_logp = next_token_logprobs(self.model, self.tok, self.kl_prompts, self.bs)
        kls = [
            mean_kl(self._base_logp, next_token_logprobs(self.model, self.tok, self.kl_prompts, self.bs, system=s))
            for s in m.systems
        ]
        return sum(kls) / 2


# ----------------------------------------------------------------------------- one method
@dataclass
class MethodResult:
    """One method at the budget: its α (NaN for prompting), the KL there, whether the budget was
    reached (None for prompting), the log-ratios at ``±α`` and the sweep ``(α, KL, target spread)``."""

    method: Method
    alpha: float
    kl: float
    reached: bool | None
    lr: dict[int, dict[str, np.ndarray]]
    sweep: list[tuple[float, float, float]] = field(default_factory=list)
    seconds: float = 0.0

    def spreads(self) -> dict[str, np.ndarray]:
        """``set -> per-prompt spread`` (log-ratio at ``+α`` minus at ``−α``)."""
        return {s: self.lr[1][s] - self.lr[-1][s] for s in self.lr[1]}


def measure(reader: Reader, m: Method, budget: float, target: str, fractions: Sequence[float] = SWEEP_FRACTIONS) -> MethodResult:
    """``m`` at the budget's α (bisection on its KL curve; at :data:`ws.diffs.budget.MAX_ALPHA`,
    flagged, when the budget is out of reach), its read-outs there and its sweep."""
    t0 = time.perf_counter()
    if not m.has_strength:
        lr = reader.logratios(m, 1.0)
        kl = reader.kl(m)
        spread = float(np.mean(lr[1][target] - lr[-1][target]))
        return MethodResult(m, math.nan, kl, None, lr, [(math.nan, kl, spread)], time.perf_counter() - t0)
    curve = reader.curve(m)
    try:
        alpha, kl = bisect_budget(curve.at, budget, what=f"steering method {m.name}")
        reached = True
    except BudgetNotReached as e:
        alpha, kl, reached = MAX_ALPHA, e.reached, False
        logger.warning(f"{m.name}: {e}; measured at α = {MAX_ALPHA:g}")
    lr = reader.logratios(m, alpha)
    points = []
    for f in fractions:
        a = f * alpha
        if f == 1.0:
            points.append((a, kl, float(np.mean(lr[1][target] - lr[-1][target]))))
            continue
        r = reader.logratios(m, a, [target])
        points.append((a, curve.at(a), float(np.mean(r[1][target] - r[-1][target]))))
    return MethodResult(m, alpha, kl, reached, lr, points, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- the table
def _set_draws(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    return x[resample(len(x), n_boot, seed)].mean(axis=1) if len(x) else np.full(n_boot, np.nan)


def method_row(
    r: MethodResult,
    held: HeldOut,
    base_lr: Mapping[str, np.ndarray],
    budget: float,
    behavior=None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """One row of the table (the seeds of every CI are the same for every method: the same
    prompts are resampled the same way)."""
    b = data.get_behavior(behavior)
    m, sp = r.method, r.spreads()
    row: dict[str, Any] = {
        "method": m.name,
        "kind": m.kind,
        "layers": ", ".join(str(l) for l in m.layers),
        "alpha": r.alpha,
        "kl": r.kl,
        "kl_budget": budget,
        "budget_reached": r.reached,
    }
    draws = {}
    for i, s in enumerate(held.sets):
        lo, hi = mean_ci(sp[s], n_boot, seed=seed + i)
        row.update({f"n_{s}": len(sp[s]), f"spread_{s}": float(np.mean(sp[s])), f"spread_{s}_ci_lo": lo, f"spread_{s}_ci_hi": hi})
        draws[s] = _set_draws(sp[s], n_boot, seed + 100 + i)
    controls = [s for s in b.controls if s in sp]
    row["specificity"] = float(specificity(np.mean(sp[b.target]), [np.mean(sp[s]) for s in controls], b.direction))
    lo, hi = percentile_interval(specificity(draws[b.target], [draws[s] for s in controls], b.direction))
    row["specificity_ci_lo"], row["specificity_ci_hi"] = float(lo), float(hi)
    row["wrong_way_frac"] = float(np.mean(b.direction * sp[b.target] < 0))
    exp = expected_answers(held, b)
    row["control_accuracy_base"], row["control_items"] = accuracy(base_lr, exp)
    row["control_accuracy_pos"] = accuracy(r.lr[1], exp)[0]
    row["control_accuracy_neg"] = accuracy(r.lr[-1], exp)[0]
    row["detail"] = m.detail
    return row


def sweep_table(results: Sequence[MethodResult], target: str) -> pl.DataFrame:
    """Every method's sweep: ``method, kind, fraction, alpha, kl, spread_<target>`` (the fraction
    of the budget's α; prompting: one row, fraction and α NaN)."""
    rows = []
    for r in results:
        fr = SWEEP_FRACTIONS if r.method.has_strength else (math.nan,)
        for f, (a, kl, s) in zip(fr, r.sweep, strict=True):
            rows.append(
                {"method": r.method.name, "kind": r.method.kind, "fraction": f, "alpha": a, "kl": kl, f"spread_{target}": s}
            )
    return pl.DataFrame(rows)


# ----------------------------------------------------------------------------- the verdict
@dataclass(frozen=True)
class Pairwise:
    """``a`` against ``b`` on the target set: the mean difference of their per-prompt spreads
    toward the behaviour with its paired bootstrap CI (the same prompts resampled for both)."""

    a: str
    b: str
    diff: float
    lo: float
    hi: float
    cis_overlap: bool

    @property
    def separated(self) -> bool:
        """The paired difference's CI excludes zero."""
        return bool(math.isfinite(self.lo) and math.isfinite(self.hi) and (self.lo > 0 or self.hi < 0))


@dataclass(frozen=True)
class Verdict:
    """Which method wins at the budget (the largest target spread toward the behaviour among
    the methods that reached it), against the runner-up and against prompting."""

    winner: str | None
    runner_up: Pairwise | None
    prompt: Pairwise | None
    ranked: tuple[str, ...]


def pairwise(
    results: Mapping[str, MethodResult], table: pl.DataFrame, a: str, b: str, behavior=None, n_boot: int = 2000, seed: int = 0
) -> Pairwise:
    beh = data.get_behavior(behavior)
    t = beh.target
    d = beh.direction * (results[a].spreads()[t] - results[b].spreads()[t])
    lo, hi = mean_ci(d, n_boot, seed=seed + 200)
    ra, rb = (table.filter(pl.col("method") == x).row(0, named=True) for x in (a, b))
    ia = sorted(beh.direction * np.array([ra[f"spread_{t}_ci_lo"], ra[f"spread_{t}_ci_hi"]]))
    ib = sorted(beh.direction * np.array([rb[f"spread_{t}_ci_lo"], rb[f"spread_{t}_ci_hi"]]))
    overlap = bool(ia[0] <= ib[1] and ib[0] <= ia[1])
    return Pairwise(a, b, float(np.mean(d)), lo, hi, overlap)


def verdict(results: Sequence[MethodResult], table: pl.DataFrame, behavior=None, n_boot: int = 2000, seed: int = 0) -> Verdict:
    beh = data.get_behavior(behavior)
    by = {r.method.name: r for r in results}
    toward = {r.method.name: beh.direction * float(np.mean(r.spreads()[beh.target])) for r in results if r.reached}
    ranked = tuple(sorted(toward, key=lambda n: (-toward[n], n)))
    if not ranked:
        return Verdict(None, None, None, ranked)
    win = ranked[0]
    runner = pairwise(by, table, win, ranked[1], beh, n_boot, seed) if len(ranked) > 1 else None
    prompt = pairwise(by, table, win, "prompt", beh, n_boot, seed) if "prompt" in by else None
    return Verdict(win, runner, prompt, ranked)


# ----------------------------------------------------------------------------- the carrier
#: how v8 chose its carrier, in words (:data:`ws.v8.carrier.VERDICTS`)
CARRIER_HOW = {
    "carries": "the carrier with the highest inside retention",
    "above_chance": "no tested candidate carries; the one above chance with the highest inside retention",
    "dW_ceiling": "no tested candidate carries or beats chance: the dW ceiling",
}


def v8_carrier(cfg: Config, model: nn.Module) -> tuple[tuple[str, str, dict] | None, str]:
    """``((candidate, how chosen, {block: basis or None}) or None, a note)``: the carrier v8 chose
    (:func:`ws.v8.carrier.choose_carrier`) and wrote beside its tables
    (:data:`ws.v8.carrier.CARRIER_FILE`, read here, not rebuilt); None when no v8 run is there.
    A file of another width than the model's is refused."""
    path = cfg.v8_dir / CARRIER_FILE
    if not path.is_file():
        return None, f"no v8 run at {cfg.v8_dir} (no {CARRIER_FILE}): the carrier row is left out; run `make sweep` first"
    tensors, meta = read_carrier_raw(path)
    d = d_model(model)
    bases = {int(k.split(".", 1)[1]): t.to(torch.float64) for k, t in tensors.items() if k.startswith("layer.")}
    wrong = sorted(l for l, B in bases.items() if B.ndim != 2 or B.shape[0] != d or l >= n_layers(model))
    if wrong:
        raise ValueError(
            f"{path} does not fit the model ({d} wide, {n_layers(model)} blocks) at layer(s) {wrong}: "
            "it was written for another model; run `make sweep` for this one"
        )
    name, verdict = str(meta.get("candidate", CEILING_W)), str(meta.get("verdict", "dW_ceiling"))
    how = CARRIER_HOW.get(verdict, verdict)
    per = {l: bases.get(l) for l in range(n_layers(model))}
    return (name, how, per), f"v8's carrier: `{name}` ({how}; from {path})"


# ----------------------------------------------------------------------------- completions
def completion_prompts(held: HeldOut, behavior=None, counts: tuple[int, int] = COMPLETION_PROMPTS) -> list[tuple[str, str]]:
    """``(set, prompt)``: the first held-out prompts of the target set and of each control set."""
    b = data.get_behavior(behavior)
    out = [(b.target, p) for p in held.prompts[b.target][: counts[0]]]
    for s in b.controls:
        out += [(s, p) for p in held.prompts.get(s, [])[: counts[1]]]
    return out


def sample_completions(
    model: nn.Module,
    tok,
    results: Sequence[MethodResult],
    prompts: Sequence[tuple[str, str]],
    max_new_tokens: int = COMPLETION_TOKENS,
    seed: int = COMPLETION_SEED,
    batch_size: int = 16,
) -> pl.DataFrame:
    """``method, sign, alpha, set, prompt, completion``: the base model's completions, then each
    method's at ``+α`` and ``−α`` (prompting: its two instructions), every one sampled with ``seed``."""
    users = [p for _, p in prompts]
    rows = []

    def add(name: str, sign: int, alpha: float, texts: Sequence[str]) -> None:
        rows.extend(
            {"method": name, "sign": sign, "alpha": alpha, "set": s, "prompt": p, "completion": c}
            for (s, p), c in zip(prompts, texts, strict=True)
        )

    gen = dict(max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    add("base", 0, 0.0, generate_completions(model, tok, users, desc="completions: base", **gen))
    for r in results:
        m = r.method
        for sign in (1, -1):
            a = 0.0 if math.isnan(r.alpha) else sign * r.alpha
            with m.steer(model, a):
                out = generate_completions(
                    model, tok, users, systems=[m.system(sign)] * len(users), desc=f"completions: {m.name}", **gen
                )
            add(m.name, sign, r.alpha, out)
    return pl.DataFrame(rows)


# ----------------------------------------------------------------------------- the whole comparison
@dataclass
class HeadToHead:
    """Everything the comparison measured (:func:`head_to_head`); :mod:`ws.steering.report` writes it."""

    model: str
    behavior: str
    adapter: str
    seed: int
    budget: float
    held: HeldOut
    results: list[MethodResult]
    table: pl.DataFrame
    sweep: pl.DataFrame
    verdict: Verdict
    pick: LayerPick
    carrier_note: str
    completions: pl.DataFrame | None
    n_boot: int
    smoke: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def target(self) -> str:
        """The behaviour's target set."""
        return data.get_behavior(self.behavior).target

    def result(self, name: str) -> MethodResult:
        return next(r for r in self.results if r.method.name == name)


def methods_for(
    cfg: Config, model: nn.Module, tok, w: Mapping[str, Tensor], seed: int, diff_meta: dict
) -> tuple[list[Method], LayerPick, str]:
    """Every method of the comparison, the contrastive vector's block choice, and the carrier's note."""
    b = data.get_behavior(cfg.behavior)
    carrier, note = v8_carrier(cfg, model)
    methods = weight_methods(w, model, carrier)
    probes = sweep.probe_prompts(cfg, tok)
    vecs = contrastive_vectors(model, tok, probes.fit_pos, probes.fit_neg, cfg.batch_size)
    signs = [t.sign for t in probes.fit_topics]
    pick = pick_layer(
        model,
        tok,
        vecs,
        probes.fit_clean,
        tuple(b.readout),
        signs if any(s < 0 for s in signs) else None,
        b.direction,
        LAYER_PICK_ALPHA,
        cfg.batch_size,
    )
    methods.append(caa_method(vecs, pick))
    methods += vector_methods(sweep.user_vectors(cfg, model))
    methods.append(prompt_method(probes.persona_pos, probes.persona_neg))
    return methods, pick, note


def head_to_head(
    cfg: Config,
    model: nn.Module,
    tok,
    w: Mapping[str, Tensor] | None = None,
    diff_meta: dict | None = None,
    seed: int | None = None,
    methods: Sequence[Method] | None = None,
    completions: bool = True,
    threads: int | None = -1,
) -> HeadToHead:
    """Every steering method at the budget ``cfg.kl_budget`` (``WS_KL_BUDGET``) on ``cfg``'s
    behaviour: ``w`` (default: the diff of ``WS_SEEDS``' first seed, trained when missing as
    ``make sweep`` does). ``methods``: measure these instead of :func:`methods_for`'s.
    ``threads``: torch / BLAS threads for the passes (None: torch's setting; the default, −1,
    is 1 in smoke mode, where a tiny model's passes are all overhead and a second thread only
    waits, and torch's setting otherwise: :func:`ws.core.linalg.blas_threads`)."""
    if threads == -1:
        threads = 1 if cfg.smoke else None
    with blas_threads(threads):
        return _head_to_head(cfg, model, tok, w, diff_meta, seed, methods, completions)


def _head_to_head(cfg, model, tok, w, diff_meta, seed, methods, completions) -> HeadToHead:
    t0 = time.perf_counter()
    b = data.get_behavior(cfg.behavior)
    if w is None:
        seed = cfg.seeds[0] if seed is None else seed
        (seed, (w, diff_meta)), *_ = sweep.get_diffs(replace(cfg, seeds=(seed,)), model, tok).items()
    seed = cfg.seeds[0] if seed is None else seed
    pick, note = LayerPick(-1, LAYER_PICK_ALPHA, (), 0), "methods given by the caller"
    if methods is None:
        methods, pick, note = methods_for(cfg, model, tok, w, seed, diff_meta or {})
    held = heldout(cfg.behavior, cfg.causal_items, cfg.basis_seed)
    reader = Reader(model, tok, held, cfg.batch_size)
    base_lr = reader.base()
    results = []
    with torch.no_grad():
        for m in progress(methods, "steering: methods at the KL budget"):
            r = measure(reader, m, cfg.kl_budget, b.target)
            results.append(r)
            a = "no α" if math.isnan(r.alpha) else f"α = {r.alpha:.4g}"
            logger.info(f"steering {m.name}: {a}, KL {r.kl:.4g} ({r.seconds:.1f} s)")
    table = pl.DataFrame([method_row(r, held, base_lr, cfg.kl_budget, b, cfg.n_boot, cfg.boot_seed) for r in results])
    comps = None
    if completions:
        tokens = 8 if cfg.smoke else COMPLETION_TOKENS
        comps = sample_completions(model, tok, results, completion_prompts(held, b), tokens, COMPLETION_SEED, cfg.batch_size)
    notes = [
        f"`{r.method.name}` did not reach the budget up to α = {MAX_ALPHA:g} (KL {r.kl:.4g}): measured there, not ranked"
        for r in results
        if r.reached is False
    ]
    return HeadToHead(
        model=cfg.model,
        behavior=b.name,
        adapter=cfg.adapter,
        seed=int(seed),
        budget=cfg.kl_budget,
        held=held,
        results=results,
        table=table,
        sweep=sweep_table(results, b.target),
        verdict=verdict(results, table, b, cfg.n_boot, cfg.boot_seed),
        pick=pick,
        carrier_note=note,
        completions=comps,
        n_boot=cfg.n_boot,
        smoke=cfg.smoke,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )


__all__ = [
    "SWEEP_FRACTIONS",
    "HeldOut",
    "heldout",
    "expected_answers",
    "accuracy",
    "Reader",
    "MethodResult",
    "measure",
    "method_row",
    "sweep_table",
    "Pairwise",
    "Verdict",
    "verdict",
    "v8_carrier",
    "completion_prompts",
    "sample_completions",
    "HeadToHead",
    "methods_for",
    "head_to_head",
]
