"""A matched budget for comparing diffs: the α at which a diff moves the model by a stated KL.

Each adapter type is trained to its own endpoint (α = ±1, or ±½), so a type that moves the
model more looks stronger at its unit α. Here every diff is compared at the α where it
moves the model by the same amount: the mean next-token KL divergence ``KL(p_θ ‖ p_{θ+α·w})``
at the answer position of the behaviour's neutral prompts (its last control set; the target
set for a behaviour without controls), averaged over ``+α`` and ``−α``, reaches
:data:`KL_BUDGET` nats. Found by bisection on α ≥ 0 (the KL is 0 at α = 0 and grows with |α|
along the diff; the bracket doubles until it holds the budget).

    a, kl = alpha_at_kl(model, tok, w, neutral_prompts)        # e.g. (0.63, 0.0500)

Any other steering (an activation vector, :mod:`ws.steering`) goes through the same bisection:
``alpha_at_kl_of(model, tok, steer, prompts)`` with ``steer(a)`` a context manager that runs
the model at strength ``a``; :func:`bisect_budget` is the bisection itself, on any KL curve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

from torch import Tensor, nn

from ws.behavior import data
from ws.model.readout import next_token_logprobs
from ws.model.steer import weight_steer

#: the stated budget: mean next-token KL from the base model on the neutral prompts, nats
KL_BUDGET = 0.05
#: bisection steps after the bracket is found (the α is known to 2⁻¹⁰ of the bracket)
BISECT_STEPS = 10
#: the largest α the bracket may reach before the budget is declared out of reach
MAX_ALPHA = 64.0


class BudgetNotReached(ValueError):
    """The diff's KL stays below the budget up to :data:`MAX_ALPHA`; ``reached``: the KL there."""

    def __init__(self, message: str, reached: float) -> None:
        super().__init__(message)
        self.reached = reached


def neutral_set(behavior=None) -> str:
    """The set the budget is measured on: the behaviour's last control set (sycophancy: neutral
    questions), or its target set when it has no controls."""
    b = data.get_behavior(behavior)
    return b.controls[-1] if b.controls else b.target


def mean_kl(base_logp: Tensor, logp: Tensor) -> float:
    """Mean over prompts of ``KL(base ‖ other)`` (``[n, V]`` log-probabilities each), nats."""
    return float((base_logp.exp() * (base_logp - logp)).sum(dim=-1).mean())


class KLCurve:
    """The mean KL from the base model at ``±α`` of any steering, on fixed prompts (the base
    distribution computed once): ``steer(a)`` is a context manager that runs the model at
    strength ``a`` (:func:`ws.model.steer.weight_steer` of a diff, an activation vector's hook,
    …); :meth:`at` averages ``KL(base ‖ steered)`` over ``+α`` and ``−α``."""

    def __init__(
        self,
        model: nn.Module,
        tok,
        steer: Callable[[float], AbstractContextManager],
        prompts: Sequence[str],
        batch_size: int = 16,
    ) -> None:
        self.model, self.tok, self.steer, self.prompts, self.bs = model, tok, steer, list(prompts), batch_size
        self.base = next_token_logprobs(model, tok, self.prompts, batch_size)
        self.evals = 0

    def at(self, alpha: float) -> float:
        self.evals += 1
        kls = []
        for a in (alpha, -alpha):
            with self.steer(a):
                kls.append(mean_kl(self.base, next_token_logprobs(self.model, self.tok, self.prompts, self.bs)))
        return sum(kls) / 2


def bisect_budget(
    kl_at: Callable[[float], float],
    budget: float = KL_BUDGET,
    steps: int = BISECT_STEPS,
    max_alpha: float = MAX_ALPHA,
    what: str = "the diff",
) -> tuple[float, float]:
    """``(α, kl_at(α))``: the α ≥ 0 at which ``kl_at`` (0 at α = 0, growing with α) reaches
    ``budget``: the bracket doubles from α = 1 until its upper end holds the budget, then
    ``steps`` halvings; the upper end is returned (its KL ≥ the budget, α known to
    2⁻``steps`` of the bracket). :class:`BudgetNotReached` when the KL stays below the budget
    up to ``max_alpha`` (``what`` names the steering in the message)."""
    lo, hi = 0.0, 1.0
    k_hi = kl_at(hi)
    while k_hi < budget:
        lo, hi = hi, hi * 2
        if hi > max_alpha:
            raise BudgetNotReached(
                f"{what}'s KL stays below the budget {budget} nats up to α = {max_alpha:g} (reached {k_hi:.4g})", k_hi
            )
        k_hi = kl_at(hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        k = kl_at(mid)
        if k < budget:
            lo = mid
        else:
            hi, k_hi = mid, k
    return hi, k_hi


def alpha_at_kl_of(
    model: nn.Module,
    tok,
    steer: Callable[[float], AbstractContextManager],
    prompts: Sequence[str],
    budget: float = KL_BUDGET,
    batch_size: int = 16,
    steps: int = BISECT_STEPS,
    what: str = "the steering",
) -> tuple[float, float]:
    """:func:`alpha_at_kl` for any steering: ``steer(a)`` runs the model at strength ``a``
    (:class:`KLCurve`). Raises ``ValueError`` when no prompts are given and
    :class:`BudgetNotReached` when the KL stays below the budget up to :data:`MAX_ALPHA`."""
    if not prompts:
        raise ValueError("alpha_at_kl needs prompts to measure the KL on")
    return bisect_budget(KLCurve(model, tok, steer, prompts, batch_size).at, budget, steps, MAX_ALPHA, what)


def alpha_at_kl(
    model: nn.Module,
    tok,
    w: Mapping[str, Tensor],
    prompts: Sequence[str],
    budget: float = KL_BUDGET,
    batch_size: int = 16,
    steps: int = BISECT_STEPS,
) -> tuple[float, float]:
    """``(α, KL at α)``: the α ≥ 0 at which the mean KL over ``±α·w`` reaches ``budget`` on ``prompts``.

    Raises ``ValueError`` when no prompts are given, and :class:`BudgetNotReached` when the KL
    stays below the budget up to :data:`MAX_ALPHA` (a diff too small to reach it)."""
    return alpha_at_kl_of(model, tok, lambda a: weight_steer(model, w, a), prompts, budget, batch_size, steps, "the diff")


__all__ = [
    "BudgetNotReached",
    "KL_BUDGET",
    "BISECT_STEPS",
    "MAX_ALPHA",
    "neutral_set",
    "mean_kl",
    "KLCurve",
    "bisect_budget",
    "alpha_at_kl_of",
    "alpha_at_kl",
]
