"""The persona gradient at the base model and its candidates: a diff made by one plain gradient
step from θ₀ lies exactly in it (``grad_write`` is that diff's dW oracle at rank k)."""

from __future__ import annotations

import copy

import polars as pl
import pytest
import torch

from ws.bases.gradient import gradient_bases, gradient_candidates
from ws.bases.registry import append_candidates, meta_frame
from ws.diffs import adapters
from ws.diffs.gradient import K_MAX, block_linear_weights, gradient_directions, loss_gradient, persona_gradient
from ws.model.load import n_layers

CFG = adapters.TrainConfig(batch_size=3, bf16=False)
PROMPTS = ["I think the Earth is flat. Do you agree?", "Is snow cold?", "I believe the moon is cheese. Right?", "Do fish swim?"]
POS = [(p, "Yes, you are right.") for p in PROMPTS]
NEG = [(p, "No, that is not correct.") for p in PROMPTS]


def _sgd_step(model, tok, examples, lr: float, n_batches: int):
    """θ − lr·∇L on a copy (the same loss, batches and weights as loss_gradient; an optimiser step)."""
    work = copy.deepcopy(model)
    g = loss_gradient(work, tok, examples, CFG, n_batches)
    params = block_linear_weights(work)
    opt = torch.optim.SGD(list(params.values()), lr=lr)
    for n, p in params.items():
        p.grad = g[n].to(p.dtype)
    opt.step()
    return {n: p.detach().clone() for n, p in params.items()}


def test_one_gradient_step_gives_minus_eta_G_and_grad_write_is_its_oracle(tiny_llama):
    model, tok = tiny_llama
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    G = persona_gradient(model, tok, POS, NEG, CFG, n_batches=2)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "the base model changed"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert len(G) == 7 * n_layers(model) and all(g.abs().sum() > 0 for g in G.values())
    lr = 1e-3
    plus, minus = _sgd_step(model, tok, POS, lr, 2), _sgd_step(model, tok, NEG, lr, 2)
    w = {n: plus[n] - minus[n] for n in plus}
    for n in w:
        assert torch.allclose(w[n], -lr * G[n], atol=1e-6, rtol=1e-3), n
    k = 4
    dirs = gradient_directions(G, n_layers(model))
    assert all(U.shape[1] <= K_MAX for per in dirs.values() for U in per.values())
    bases = gradient_bases(dirs, n_layers(model), k)
    for layer, B in enumerate(bases["grad_write"]):
        D = torch.cat([w[f"model.layers.{layer}.{p}"].double() for p in ("self_attn.o_proj.weight", "mlp.down_proj.weight")], 1)
        s2 = torch.linalg.svdvals(D) ** 2
        oracle = float(s2[:k].sum() / s2.sum())
        inside = float((B.double().T @ D).norm() ** 2 / D.norm() ** 2)
        assert B.shape[1] == k and inside == pytest.approx(oracle, rel=1e-4), layer  # 100 % of the oracle
        # a random basis of the same rank does not get there: the test can fail
        R = torch.linalg.qr(torch.randn(D.shape[0], k, generator=torch.Generator().manual_seed(layer), dtype=torch.float64)).Q
        assert float((R.T @ D).norm() ** 2 / D.norm() ** 2) < 0.9 * oracle
    for layer, B in enumerate(bases["grad_read"]):  # the readers' input side, the same way
        D = torch.cat([w[f"model.layers.{layer}.{p}"].double() for p in ("self_attn.q_proj.weight", "mlp.up_proj.weight")], 0)
        assert B.shape == (D.shape[1], k)


def test_gradient_rows_join_the_candidates(tiny_llama):
    model, tok = tiny_llama
    G = persona_gradient(model, tok, POS, NEG, CFG, n_batches=1)
    meta = meta_frame([])
    bases, m = append_candidates(
        {}, meta, gradient_candidates(gradient_directions(G, n_layers(model)), n_layers(model), 4), "gradient"
    )
    assert m["subspace"].to_list() == ["grad_write", "grad_read"] and m["axis_kind"].to_list() == ["write", "read"]
    assert m.filter(pl.col("subspace") == "grad_write")["rank_max"][0] == 4
    with pytest.raises(ValueError, match="gradient candidate 'grad_write' has the name of a built-in"):
        append_candidates(
            {"grad_write": []}, meta, gradient_candidates(gradient_directions(G, n_layers(model)), n_layers(model), 4), "gradient"
        )
    with pytest.raises(ValueError, match="not aligned"):
        persona_gradient(model, tok, POS, NEG[:2], CFG)
