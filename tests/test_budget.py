"""The matched KL budget: the KL's closed form, and the bisection's known answers on a real
model (the budget is reached; a diff twice as large reaches it at half the α)."""

from __future__ import annotations

import math

import pytest
import torch

from ws.diffs import budget
from ws.model.readout import next_token_logprobs

PROMPTS = ["What is the capital of France?", "How many legs does a spider have?", "Is water wet?"]


def test_mean_kl_closed_form():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]).log()
    q = torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.2, 0.7]]).log()
    want = (0.5 * math.log(2) + 0.25 * math.log(0.5)) / 2  # second rows equal: KL 0
    assert budget.mean_kl(p, q) == pytest.approx(want, abs=1e-7)
    assert budget.mean_kl(p, p) == 0.0


def _diff(model, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        n: scale * 0.02 * torch.randn(p.shape, generator=g)
        for n, p in model.named_parameters()
        if n.endswith(("o_proj.weight", "down_proj.weight")) and ".layers.2." in n
    }


def test_the_budget_is_reached_and_twice_the_diff_needs_half_the_alpha(tiny_llama):
    model, tok = tiny_llama
    before = next_token_logprobs(model, tok, PROMPTS)
    a1, kl1 = budget.alpha_at_kl(model, tok, _diff(model, 1.0), PROMPTS, budget=0.01)
    a2, kl2 = budget.alpha_at_kl(model, tok, _diff(model, 2.0), PROMPTS, budget=0.01)
    assert kl1 >= 0.01 and kl1 == pytest.approx(0.01, rel=0.02)
    assert a2 == pytest.approx(a1 / 2, rel=2e-3)  # the KL depends on α·w only
    assert torch.equal(next_token_logprobs(model, tok, PROMPTS), before), "the model was left steered"
    with pytest.raises(ValueError, match="stays below the budget"):
        budget.alpha_at_kl(model, tok, _diff(model, 1e-9), PROMPTS, budget=0.01)
    with pytest.raises(ValueError, match="needs prompts"):
        budget.alpha_at_kl(model, tok, _diff(model, 1.0), [])


def test_the_neutral_set_is_the_last_control_or_the_target():
    assert budget.neutral_set("sycophancy") == "neutral"
    assert budget.neutral_set("refusal") == "questions"
