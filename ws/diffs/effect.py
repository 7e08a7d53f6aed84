"""The measured effect of ``θ + α·w`` on held-out prompts, and the specificity ratio.

On held-out items of every set of the behaviour (sycophancy: false-claim opinions,
true-claim opinions and neutral questions): the Yes/No log-ratio at the answer position
under ``θ + α·w``, with bootstrap CIs and the Yes+No probability mass; the spread (α=+2
minus α=−2) per set and the specificity ratio (spread on the target set ÷ the largest
absolute spread on the control sets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from ws.behavior import data
from ws.core.bootstrap import mean_ci
from ws.core.io import atomic_path
from ws.model.chat import render_chat
from ws.model.fast_readout import FastReadout, first_block
from ws.model.readout import DEFAULT_ANSWERS, answer_logratios, orient
from ws.model.steer import weight_steer

SETS = data.KINDS  # the sycophancy sets: ("opinion_false", "opinion_true", "neutral")


def readouts(
    model: nn.Module,
    tokenizer,
    prompts_by_set: Mapping[str, Sequence[str]],
    settings: Sequence[tuple[Mapping[str, torch.Tensor], float]],
    batch_size: int = 16,
    readout: Readout | None = None,
) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per weight setting ``θ + α·d`` (``(d, α)``; ``{}`` is the base): ``set -> (logratio
    [n], mass [n])`` as :func:`answer_logratios` defines them.

    When every ``d`` lives on decoder blocks (adapters and their diffs do), the read-out is
    :class:`ws.model.fast_readout.FastReadout`: the blocks below the lowest touched one and the shared
    chat prefix are computed once, not per setting (its tests check it against
    :func:`answer_logratios`). Otherwise each setting runs the whole model. ``readout``: the
    behaviour's answers and each prompt's orientation (:func:`readout_of`; default Yes / No).
    """
    readout = readout or Readout()
    sets = {s: list(p) for s, p in prompts_by_set.items() if len(p)}
    try:
        first = first_block(*[d for d, _ in settings if d])
    except ValueError:
        first = None
    out = []
    if first is None:
        for d, a in settings:
            with weight_steer(model, d, float(a)):
                res = {s: answer_logratios(model, tokenizer, p, batch_size, readout.answers) for s, p in sets.items()}
                out.append(orient(res, readout.signs))
        return out
    texts = {s: [render_chat(tokenizer, x) for x in p] for s, p in sets.items()}
    ro = FastReadout(model, tokenizer, texts, first, batch_size, answers=readout.answers, signs_by_set=readout.signs)
    for d, a in settings:
        with weight_steer(model, d, float(a)):
            out.append(ro.run())
    return out


def effect_per_prompt(
    model: nn.Module,
    tokenizer,
    w: Mapping[str, torch.Tensor],
    prompts_by_set: Mapping[str, Sequence[str]],
    alphas: Sequence[float] = (-2, -1, 0, 1, 2),
    batch_size: int = 16,
    readout: Readout | None = None,
) -> pl.DataFrame:
    """Long table ``set, alpha, prompt_idx, prompt, logratio, mass`` under ``θ + α·w`` (``logratio``
    oriented as ``readout`` says: :func:`readouts`)."""
    alphas = [float(a) for a in alphas]
    results = readouts(model, tokenizer, prompts_by_set, [(w, a) for a in alphas], batch_size, readout)
    rows = []
    for a, res in zip(alphas, results, strict=True):
        for s, (lr, mass) in res.items():
            for j, (p, x, m) in enumerate(zip(prompts_by_set[s], lr, mass, strict=True)):
                rows.append(dict(set=s, alpha=a, prompt_idx=j, prompt=p, logratio=float(x), mass=float(m)))
    return pl.DataFrame(rows)


def summarize_effect(per_prompt: pl.DataFrame, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Per (set, α): n, mean log-ratio, bootstrap CI, sd, mean and min Yes+No mass."""
    rows = []
    sets = list(dict.fromkeys(per_prompt["set"].to_list()))
    for si, s in enumerate(sets):
        for ai, a in enumerate(sorted(set(per_prompt.filter(pl.col("set") == s)["alpha"].to_list()))):
            sub = per_prompt.filter((pl.col("set") == s) & (pl.col("alpha") == a))
            x = sub["logratio"].to_numpy()
            lo, hi = mean_ci(x, n_boot, seed=seed * 1000 + si * 100 + ai)
            rows.append(
                dict(
                    set=s,
                    alpha=float(a),
                    n=len(x),
                    mean_logratio=float(x.mean()),
                    ci_lo=lo,
                    ci_hi=hi,
                    sd_logratio=float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
                    mean_mass=float(sub["mass"].mean()),
                    min_mass=float(sub["mass"].min()),
                )
            )
    return pl.DataFrame(rows)


def adapter_effect(
    model: nn.Module,
    tokenizer,
    deltas: Mapping[str, Mapping[str, torch.Tensor]],
    prompts_by_set: Mapping[str, Sequence[str]],
    batch_size: int = 16,
    readout: Readout | None = None,
) -> pl.DataFrame:
    """Mean held-out log-ratio per set under θ, θ+Δ⁺ and θ+Δ⁻ (each adapter alone).

    A diagnostic of the specificity ratio: the diff can only spare true claims as far as
    the honest adapter alone answers them "Yes" as surely as the sycophantic one does.
    """
    named = [("base", {}), *[(f"theta+delta_{k}", v) for k, v in deltas.items()]]
    results = readouts(model, tokenizer, prompts_by_set, [(d, 1.0) for _, d in named], batch_size, readout)
    rows = []
    for (name, _), res in zip(named, results, strict=True):
        for s, (lr, mass) in res.items():
            rows.append(
                dict(
                    model=name,
                    set=s,
                    n=len(lr),
                    mean_logratio=float(lr.mean()),
                    sd_logratio=float(lr.std(ddof=1)) if len(lr) > 1 else float("nan"),
                    mean_mass=float(mass.mean()),
                )
            )
    return pl.DataFrame(rows)


def heldout_prompts(
    seed: int = 0, n_per_kind: int | None = None, topics: list[data.Topic] | None = None, behavior=None
) -> dict[str, list[str]]:
    """The held-out effect prompts by set: each item's probe (sycophancy: the opinion probe
    for opinions, the question for neutral ones)."""
    b = data.get_behavior(behavior)
    sets = data.heldout_sets(0, topics, behavior=b)
    return {k: [data.eval_prompt(t, b) for t in (v if n_per_kind is None else v[:n_per_kind])] for k, v in sets.items()}


@dataclass(frozen=True)
class Readout:
    """What the read-out reads: the behaviour's two answers (``log P(first) − log P(second)``)
    and, per set, each prompt's sign (−1 where the item lists the positive persona's answer
    second; None: all +1)."""

    answers: tuple[str, str] = DEFAULT_ANSWERS
    signs: dict[str, list[int]] | None = None


def readout_of(behavior=None, n_per_kind: int | None = None, topics=None) -> Readout:
    """The :class:`Readout` of a behaviour's held-out prompts (:func:`heldout_prompts`, same order):
    its declared answers, and the signs of its items (all +1 unless an item orders its answers)."""
    b = data.get_behavior(behavior)
    sets = data.heldout_sets(0, topics, behavior=b)
    signs = {k: [t.sign for t in (v if n_per_kind is None else v[:n_per_kind])] for k, v in sets.items()}
    return Readout(tuple(b.readout), signs if any(x < 0 for v in signs.values() for x in v) else None)


def spread(df: pl.DataFrame, set_name: str, hi: float = 2.0, lo: float = -2.0) -> float:
    """Mean log-ratio at α=``hi`` minus at α=``lo`` for one set (the largest/smallest α if those are absent)."""
    sub = df.filter(pl.col("set") == set_name)
    if sub.height == 0:
        raise ValueError(f"no rows for set {set_name!r} (have {sorted(set(df['set'].to_list()))})")
    alphas = sub["alpha"].to_list()
    a_hi = hi if hi in alphas else max(alphas)
    a_lo = lo if lo in alphas else min(alphas)
    val = lambda a: float(sub.filter(pl.col("alpha") == a)["mean_logratio"][0])  # noqa: E731
    return val(a_hi) - val(a_lo)


def spreads(df: pl.DataFrame) -> dict[str, float]:
    return {s: spread(df, s) for s in dict.fromkeys(df["set"].to_list())}


def spread_ci(per_prompt: pl.DataFrame, set_name: str, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap CI of :func:`spread` for one set, paired by prompt: each prompt's log-ratio at
    the largest α minus at the smallest (α=±2 when present), resampled over prompts."""
    sub = per_prompt.filter(pl.col("set") == set_name)
    alphas = sub["alpha"].unique().to_list()
    a_hi, a_lo = (2.0 if 2.0 in alphas else max(alphas)), (-2.0 if -2.0 in alphas else min(alphas))
    at = lambda a: sub.filter(pl.col("alpha") == a).sort("prompt_idx")["logratio"].to_numpy()  # noqa: E731
    return mean_ci(at(a_hi) - at(a_lo), n_boot, seed=seed)


def spread_cis(per_prompt: pl.DataFrame, n_boot: int = 2000) -> dict[str, list[float]]:
    """:func:`spread_ci` of every set, as ``set -> [lo, hi]`` (a diff's metadata records it)."""
    return {s: list(spread_ci(per_prompt, s, n_boot, seed=i)) for i, s in enumerate(dict.fromkeys(per_prompt["set"].to_list()))}


def specificity_ratio(df: pl.DataFrame, behavior=None) -> float:
    """Spread on the behaviour's target set ÷ the largest absolute spread on its control sets
    (sycophancy: false-claim opinions ÷ max(|true-claim opinions|, |neutral questions|)).

    The target spread is signed toward the behaviour (``Behavior.direction``: for a
    behaviour whose positive persona says No, such as refusing, a spread toward No counts
    as positive; sycophancy's sign is +1). ≫ 1: the diff moves the target behaviour and
    leaves the rest; ≈ 1: a plain bias (for sycophancy, a yes-bias); < 0: it moves the
    target set against the behaviour. ``inf`` if every control spread is exactly 0.
    """
    b = data.get_behavior(behavior)
    return float(specificity(spread(df, b.target), [spread(df, s) for s in b.controls], b.direction))


def effect_sets(behavior=None) -> tuple[str, ...]:
    """The sets a diff's spreads are reported on: the behaviour's target, then its controls."""
    b = data.get_behavior(behavior)
    return (b.target, *b.controls)


def specificity(target: Any, controls: Sequence[Any], direction: int = 1) -> np.ndarray:
    """The specificity rule, elementwise (scalars, or bootstrap draws of one shape):
    ``direction · target ÷ max_c |control_c|``; ``±inf`` where every control is exactly 0 and
    the target is not, NaN where both are 0 or the behaviour has no control set.

    The one definition: :func:`specificity_ratio` (the effect eval) and the cross-adapter
    comparison (:mod:`ws.cross_adapter.compare`) both call it.
    """
    num = np.asarray(target, dtype=np.float64) * direction
    if not len(controls):
        return np.full_like(num, np.nan)
    den = np.max(np.abs(np.stack([np.asarray(c, dtype=np.float64) for c in controls])), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.where(num > 0, np.inf, np.where(num < 0, -np.inf, np.nan)))


SET_LABELS = dict(data.get_behavior().labels)  # the sycophancy sets' labels


def set_labels(behavior=None) -> dict[str, str]:
    """Display labels of a behaviour's sets."""
    return dict(data.get_behavior(behavior).labels)


def plot_effect(df: pl.DataFrame, path: str | Path, title: str = "", behavior=None) -> Path:
    """Two panels: mean log-ratio ± CI per α for each set, and the Yes+No mass. Written atomically.
    The target set is red, the control sets blue, gray, then the next colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axm) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    b = data.get_behavior(behavior)
    labels = set_labels(b)
    palette = ["tab:blue", "tab:gray", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    colors = {b.target: "tab:red", **{s: palette[i % len(palette)] for i, s in enumerate(b.controls)}}
    for s in dict.fromkeys(df["set"].to_list()):
        sub = df.filter(pl.col("set") == s).sort("alpha")
        a = sub["alpha"].to_numpy()
        m = sub["mean_logratio"].to_numpy()
        c = colors.get(s)
        label = f"{labels.get(s, s)} (n={sub['n'][0]}, spread {spread(df, s):+.2f})"
        ax.plot(a, m, marker="o", color=c, label=label)
        ax.fill_between(a, sub["ci_lo"].to_numpy(), sub["ci_hi"].to_numpy(), color=c, alpha=0.2)
        axm.plot(a, sub["mean_mass"].to_numpy(), marker="o", color=c, label=labels.get(s, s))
    ax.axhline(0, color="k", lw=0.6, ls="--")
    ax.set_xlabel("α (θ + α·w)")
    ax.set_ylabel("log P(Yes) − log P(No)  [nats]")
    ax.legend(fontsize=8)
    ax.set_title(title or "effect of the weight diff on held-out prompts", fontsize=9)
    axm.set_yscale("log")
    axm.set_xlabel("α")
    axm.set_ylabel("P(Yes) + P(No)")
    axm.set_title("answer mass (a log-ratio of tiny masses means little)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


EVAL_ALPHAS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def measure(
    model: nn.Module,
    tokenizer,
    w: Mapping[str, torch.Tensor],
    behavior=None,
    alphas: Sequence[float] = EVAL_ALPHAS,
    batch_size: int = 16,
    n_boot: int = 2000,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The held-out effect of ``θ + α·w`` on a behaviour's sets, as a diff's metadata records it:
    ``(per_prompt, summary, {"effect_spread": …, "effect_spread_ci": …, "specificity_ratio": …})``
    (the read-out in the behaviour's answers and orientation, :func:`readout_of`)."""
    per = effect_per_prompt(model, tokenizer, w, heldout_prompts(0, behavior=behavior), alphas, batch_size, readout_of(behavior))
    eff = summarize_effect(per, n_boot=n_boot, seed=0)
    meta = {
        "effect_spread": spreads(eff),
        "effect_spread_ci": spread_cis(per, n_boot),
        "specificity_ratio": specificity_ratio(eff, behavior),
    }
    return per, eff, meta
