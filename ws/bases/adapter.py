"""Candidates from the adapter families the design draws on (source ``adapter-family``).

``corda_write``: top-8 left singular vectors of ``[W_o·C_o^{1/2} | W_down·C_down^{1/2}]``
with ``C`` the uncentred second moment ``E[xxᵀ]`` of that projection's inputs over all real
tokens of the clean FIT probes, damped to ``C + εI`` with ``ε = eps_rel · tr(C)/n``
(``eps_rel = 1e-3`` by default: a thousandth of the mean eigenvalue; it keeps ``C^{-1/2}``
finite and barely moves ``C^{1/2}``). Since ``(W C^{1/2})(W C^{1/2})ᵀ = W C Wᵀ``, the
basis is the top eigenspace of ``W_o C_o W_oᵀ + W_down C_down W_downᵀ`` (+ the damping
terms) — the uncentred PCA of what the two writers actually write into the residual
stream. With ``C = I`` it is exactly ``write``. The captures hold ``W C Wᵀ`` itself (the
written moment, ``[d, d]``) and ``diag(C)`` for ``ε``, never ``C`` (``d_ff × d_ff`` for
``down_proj``): the same Gram, without the matrix that dominated host memory at 8B.

``asvd_write``: the same with ``diag(C)`` (per-input-channel scaling only).

``diff_in_means``: rank 1, the unit vector ``mean(persona+) − mean(persona−)`` of the block
outputs per layer. Its sign points to persona+ (a score is sign-independent).
"""

from __future__ import annotations

import torch

from ws.bases.registry import BuildContext, candidate
from ws.captures.capture import probe_vector
from ws.core import linalg
from ws.model.anatomy import WRITERS


def corda_gram(W_o, C_o, W_down, C_down, eps_rel: float = 1e-3, diagonal: bool = False) -> torch.Tensor:
    """``W_o C_o,ε W_oᵀ + W_down C_down,ε W_downᵀ`` (``diagonal``: with ``diag(C)``), ``[d, d]``,
    from the full input moments ``C`` (the definition; the builders below read the captured
    written moments and diagonals instead, which give the same Gram without ``C``)."""
    G = 0
    for W, C in ((W_o, C_o), (W_down, C_down)):
        W = W.to(torch.float64)
        if diagonal:
            c = torch.diagonal(C).to(torch.float64)
            eps = eps_rel * float(c.sum()) / c.shape[0]
            G = G + linalg.gram(W * (c.clamp(min=0) + eps).sqrt())
        else:
            C = C.to(torch.float64)
            eps = eps_rel * float(torch.trace(C)) / C.shape[0]
            G = G + W @ (C @ W.T) + eps * (W @ W.T)
    return G


def _damping(ctx: BuildContext, layer: int, part: str) -> tuple[torch.Tensor, float]:
    """``(c, ε)``: the captured ``diag(C) [d_in]`` of ``part``'s input (float64) and its damping
    ``ε = eps_rel · tr(C) / d_in``."""
    c = getattr(ctx.captures, f"mom_{PARTS[part]}_diag")[layer].to(torch.float64)
    return c, ctx.eps_rel * float(c.sum()) / c.shape[0]


#: the builder's weight names -> the captures' names of the two writers
PARTS = {p.removesuffix("_proj"): t for t, p in WRITERS.items()}


def _check_writers(ctx: BuildContext, layer: int) -> None:
    """Stop when the captured written moments belong to other writer weights than the model's
    (captures of another model, or weights edited after capturing): recompute the captures'
    ``mom_writer_probe`` from the weights here (:func:`ws.captures.capture.writer_probe`)."""
    probe = ctx.captures.mom_writer_probe[layer].to(torch.float64)
    for i, part in enumerate(PARTS):
        W = ctx.weights.W(layer, part)
        if not torch.allclose(W @ probe_vector(W.shape[1], i), probe[i], rtol=1e-4, atol=1e-5 * float(probe[i].abs().max())):
            raise ValueError(
                f"corda_write, layer {layer}: the captured {part}_proj moments were taken with other weights than the "
                f"model's (captures of another model, or weights changed after capturing): capture them again"
            )


@candidate(
    "corda_write",
    "W:write",
    "adapter-family",
    "top-8 left singular vectors of [W_o·C_o^{1/2} | W_down·C_down^{1/2}], C = uncentred second moment "
    "E[xxᵀ] of that projection's inputs over clean FIT tokens, damped by ε·I",
    needs=("mom_oproj_out", "mom_downproj_out", "mom_oproj_diag", "mom_downproj_diag", "mom_writer_probe"),
    note="ε = 1e-3 · tr(C)/n (relative to the mean eigenvalue)",
    construction=(
        "C over all real tokens of the clean FIT probes, read as the written moment W·C·Wᵀ the "
        "captures hold (the outputs' own moments for a float32 model without bias, else the "
        "inputs mapped through W in float64) and C's diagonal for ε: no d_ff × d_ff matrix"
    ),
)
def corda_write(ctx: BuildContext, layer: int) -> torch.Tensor:
    _check_writers(ctx, layer)
    G = 0
    for part in PARTS:
        _, eps = _damping(ctx, layer, part)
        G = (
            G
            + getattr(ctx.captures, f"mom_{PARTS[part]}_out")[layer].to(torch.float64)
            + eps * ctx.weights.write_gram_part(layer, part)
        )
    return linalg.top_eigvecs(G, ctx.k)


@candidate(
    "asvd_write",
    "W:write",
    "adapter-family",
    "top-8 left singular vectors of [W_o·diag(C_o)^{1/2} | W_down·diag(C_down)^{1/2}] (corda_write with diag(C))",
    needs=("mom_oproj_diag", "mom_downproj_diag"),
    note="ε = 1e-3 · tr(C)/n added to the diagonal",
    construction="C as in corda_write, only its diagonal",
)
def asvd_write(ctx: BuildContext, layer: int) -> torch.Tensor:
    G = 0
    for part in PARTS:
        c, eps = _damping(ctx, layer, part)
        G = G + linalg.gram(ctx.weights.W(layer, part) * (c.clamp(min=0) + eps).sqrt())
    return linalg.top_eigvecs(G, ctx.k)


@candidate(
    "diff_in_means",
    "act:persona",
    "adapter-family",
    "rank 1: unit mean(persona+) − mean(persona−) per layer",
    needs=("pos", "neg"),
    max_rank=lambda k: 1,
    note="block outputs at the last token; points to persona+",
    construction="the persona± FIT block outputs at the last token",
)
def diff_in_means(ctx: BuildContext, layer: int) -> torch.Tensor:
    v = ctx.cap("pos")[layer].mean(dim=0) - ctx.cap("neg")[layer].mean(dim=0)
    n = float(v.norm())
    if not n > 0:
        return torch.zeros(ctx.d, 0, dtype=torch.float64)
    return (v / n)[:, None]
