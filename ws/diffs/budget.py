"""A matched budget for comparing diffs: the α at which a diff moves the model by a stated KL.

Each adapter type is trained to its own endpoint (α = ±1, or ±½), so a type that moves the
model more looks stronger at its unit α. Here every diff is compared at the α where it
moves the model by the same amount: the mean next-token KL divergence ``KL(p_θ ‖ p_{θ+α·w})``
at the answer position of the behaviour's neutral prompts (its last control set; the target
set for a behaviour without controls), averaged over ``+α`` and ``−α``, reaches
:data:`KL_BUDGET` nats. Found by bisection on α ≥ 0 (the KL is 0 at α = 0 and grows with |α|
along the diff; the bracket doubles until it holds the budget).

    a, kl = alpha_at_kl(model, tok, w, neutral_prompts)        # e.g. (0.63, 0.0500)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


class _KL:
    """KL from the base model at ``±α·w`` on fixed prompts (the base distribution computed once)."""

    def __init__(self, model: nn.Module, tok, w: Mapping[str, Tensor], prompts: Sequence[str], batch_size: int) -> None:
        self.model, self.tok, self.w, self.prompts, self.bs = model, tok, w, list(prompts), batch_size
        self.base = next_token_logprobs(model, tok, self.prompts, batch_size)
        self.evals = 0

    def at(self, alpha: float) -> float:
        self.evals += 1
        kls = []
        for a in (alpha, -alpha):
            with weight_steer(self.model, self.w, a):
                kls.append(mean_kl(self.base, next_token_logprobs(self.model, self.tok, self.prompts, self.bs)))
        return sum(kls) / 2


def alpha_at_kl(
    model: nn.Module,
    tok,
    w: Mapping[str, Tensor],
    prompts: Sequence[str],
    budget: float = KL_BUDGET,
    batch_size: int = 16,
    steps: int = BISECT_STEPS,
) -> tuple[float, float]:
    """``(α, KL at α)``: the α ≥ 0 at which the mean KL over ``±α`` reaches ``budget`` on ``prompts``.

    Raises ``ValueError`` when no prompts are given, and :class:`BudgetNotReached` when the KL
    stays below the budget up to :data:`MAX_ALPHA` (a diff too small to reach it)."""
    if not prompts:
        raise ValueError("alpha_at_kl needs prompts to measure the KL on")
    kl = _KL(model, tok, w, prompts, batch_size)
    lo, hi = 0.0, 1.0
    k_hi = kl.at(hi)
    while k_hi < budget:
        lo, hi = hi, hi * 2
        if hi > MAX_ALPHA:
            raise BudgetNotReached(
                f"the diff's KL stays below the budget {budget} nats up to α = {MAX_ALPHA:g} (reached {k_hi:.4g})", k_hi
            )
        k_hi = kl.at(hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        k = kl.at(mid)
        if k < budget:
            lo = mid
        else:
            hi, k_hi = mid, k
    return hi, k_hi


__all__ = ["BudgetNotReached", "KL_BUDGET", "BISECT_STEPS", "MAX_ALPHA", "neutral_set", "mean_kl", "alpha_at_kl"]
