"""The persona gradient at the base model: where the first training step would go.

``G = ∇_W L⁺ − ∇_W L⁻`` at θ₀ for every linear weight of the decoder blocks, with ``L±`` the
persona training losses (:func:`ws.diffs.training.response_loss`, the stance weighted as in
training) averaged over the first ``n_batches`` batches of the training order (seeded, the
same indices for both personas, no training). One plain gradient step on the two personas'
losses, ``θ± = θ₀ − η ∇L±``, gives ``w = θ⁺ − θ⁻ = −η G`` exactly: the diff of that step lies
in G's row and column spaces (the known answer of ``tests/test_gradient.py``).

Every diff the suite trains keeps its top singular vectors beside ``w``
(``gradient_basis.safetensors``, :func:`gradient_directions`); the sweep turns them into
candidates (:mod:`ws.bases.gradient`): the cheapest base-model predictor of where training
will go, computed without training anything.

    G = persona_gradient(model, tok, pos_examples, neg_examples, config)   # {param name: [out, in]}
    dirs = gradient_directions(G, n_layers(model))                        # {"grad_write": {"9": [d, 64]}, …}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ws.core.device import autocast, input_device, use_bf16
from ws.core.log import logger
from ws.diffs.adapters import TrainConfig
from ws.diffs.training import _batch_order, _collate, _encode_examples, response_loss
from ws.model.anatomy import READERS, WRITERS, param_name

#: batches of the training order the gradient averages (each ``config.batch_size`` examples)
GRADIENT_BATCHES = 4
#: how many singular vectors per layer and side are kept beside the diff (the sweep takes its k of them)
K_MAX = 64


def block_linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: weight}`` of every 2-D linear weight inside the decoder blocks."""
    return {n: p for n, p in model.named_parameters() if ".layers." in n and n.endswith("_proj.weight") and p.ndim == 2}


def loss_gradient(
    model: nn.Module, tok, examples: Sequence[tuple], config: TrainConfig, n_batches: int = GRADIENT_BATCHES
) -> dict[str, Tensor]:
    """``∇_W L`` (float32, CPU) of every block linear weight: the mean over the first
    ``n_batches`` batches of :func:`ws.diffs.training._batch_order` of the weighted response
    loss, at the model's current weights (which are not changed)."""
    weights = block_linear_weights(model)
    enc = _encode_examples(tok, examples, config.max_len)
    batches = _batch_order(len(enc), config)
    dev = input_device(model)
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    total = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in weights.items()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in weights.values():
            p.requires_grad_(True)
        for _ in range(n_batches):
            batch = {k: v.to(dev) for k, v in _collate([enc[i] for i in next(batches)], tok.pad_token_id).items()}
            with autocast(dev, use_bf16(config.bf16, dev)):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            loss = response_loss(logits, batch["labels"], config.stance_weight)
            grads = torch.autograd.grad(loss, list(weights.values()))
            for n, g in zip(weights, grads, strict=True):
                total[n] += g.detach().to("cpu", torch.float32) / n_batches
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
    return total


def persona_gradient(
    model: nn.Module,
    tok,
    pos_examples: Sequence[tuple],
    neg_examples: Sequence[tuple],
    config: TrainConfig,
    n_batches: int = GRADIENT_BATCHES,
) -> dict[str, Tensor]:
    """``G = ∇L⁺ − ∇L⁻`` at the model's weights (float32, keyed by parameter name): the two
    personas' examples are aligned (the same prompts), so the same batch indices are used."""
    if len(pos_examples) != len(neg_examples):
        raise ValueError(f"the personas' examples are not aligned: {len(pos_examples)} positive, {len(neg_examples)} negative")
    was_training = model.training
    model.eval()  # no dropout: the gradient at θ₀ is a function of the weights and the data
    try:
        gp = loss_gradient(model, tok, pos_examples, config, n_batches)
        gn = loss_gradient(model, tok, neg_examples, config, n_batches)
    finally:
        model.train(was_training)
    G = {n: gp[n] - gn[n] for n in gp}
    logger.info(f"persona gradient at the base model: {len(G)} tensors, {n_batches} batches of {config.batch_size} per persona")
    return G


def _layer(G: dict[str, Tensor], layer: int, projs: tuple[str, ...]) -> list[Tensor]:
    return [G[k].double() for p in projs if (k := param_name(layer, p)) in G]


def gradient_directions(G: dict[str, Tensor], n_layers: int, k_max: int = K_MAX) -> dict[str, dict[str, Tensor]]:
    """Per layer (key ``str(layer)``) the top ``k_max`` singular vectors of the gradient, float64,
    sorted by singular value: ``grad_write`` the left ones of ``[G_o_proj | G_down_proj]``
    (``[d, ≤ k_max]``), ``grad_read`` the right ones of the readers' ``[G_q; G_k; G_v; G_gate; G_up]``.
    Their first ``k`` columns are the top-``k`` basis (what the sweep reads, :mod:`ws.bases.gradient`)."""
    out: dict[str, dict[str, Tensor]] = {"grad_write": {}, "grad_read": {}}
    for layer in range(n_layers):
        w, r = _layer(G, layer, tuple(WRITERS.values())), _layer(G, layer, READERS)
        if w:
            U, S, _ = torch.linalg.svd(torch.cat(w, dim=1), full_matrices=False)
            out["grad_write"][str(layer)] = U[:, : min(k_max, int((S > S[0] * 1e-10).sum()))].contiguous()
        if r:
            _, S, Vh = torch.linalg.svd(torch.cat(r, dim=0), full_matrices=False)
            out["grad_read"][str(layer)] = Vh[: min(k_max, int((S > S[0] * 1e-10).sum()))].T.contiguous()
    return {k: v for k, v in out.items() if v}


__all__ = [
    "GRADIENT_BATCHES",
    "K_MAX",
    "block_linear_weights",
    "loss_gradient",
    "persona_gradient",
    "gradient_directions",
]
