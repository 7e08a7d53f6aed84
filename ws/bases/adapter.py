"""Candidates from the adapter families the design draws on (source ``adapter-family``).

``corda_write``: top-8 left singular vectors of ``[W_o·C_o^{1/2} | W_down·C_down^{1/2}]``
with ``C`` the uncentred second moment ``E[xxᵀ]`` of that projection's inputs over all real
tokens of the clean FIT probes, damped to ``C + εI`` with ``ε = eps_rel · tr(C)/n``
(``eps_rel = 1e-3`` by default: a thousandth of the mean eigenvalue; it keeps ``C^{-1/2}``
finite and barely moves ``C^{1/2}``). Since ``(W C^{1/2})(W C^{1/2})ᵀ = W C Wᵀ``, the
basis is the top eigenspace of ``W_o C_o W_oᵀ + W_down C_down W_downᵀ`` (+ the damping
terms) — the uncentred PCA of what the two writers actually write into the residual
stream. With ``C = I`` it is exactly ``write``. When the captures hold the second moments
of the two projections' outputs (``E[yyᵀ] = W C Wᵀ`` for a projection without bias) the
builder uses them directly instead of forming ``W C Wᵀ`` (same Gram, ~10× cheaper).

``asvd_write``: the same with ``diag(C)`` (per-input-channel scaling only).

``diff_in_means``: rank 1, the unit vector ``mean(persona+) − mean(persona−)`` of the block
outputs per layer. Its sign points to persona+ (a score is sign-independent).
"""

from __future__ import annotations

import torch

from ws.bases.registry import BuildContext, candidate
from ws.core import linalg
from ws.core.log import logger


def corda_gram(W_o, C_o, W_down, C_down, eps_rel: float = 1e-3, diagonal: bool = False) -> torch.Tensor:
    """``W_o C_o,ε W_oᵀ + W_down C_down,ε W_downᵀ`` (``diagonal``: with ``diag(C)``), ``[d, d]``."""
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


def _corda_fast(ctx: BuildContext, layer: int) -> torch.Tensor | None:
    """The corda Gram from the captured OUTPUT second moments, when they equal W C Wᵀ (no bias).

    Only for a float32 (or float64) model: in bfloat16 each output is rounded after the
    product, and the output moments leave W C Wᵀ by up to 5 % on the embedded model's
    massive-activation layers (measured: layer 11's down_proj) — the definition then
    comes from the input moments, silently, since nothing is wrong with the captures."""
    cap = ctx.captures
    if cap.mom_oproj_out is None or cap.mom_downproj_out is None:
        return None
    if next(ctx.model.parameters()).dtype not in (torch.float32, torch.float64):
        return None
    blk = ctx.layers[layer]
    if blk.self_attn.o_proj.bias is not None or blk.mlp.down_proj.bias is not None:
        return None
    G = 0
    g = torch.Generator().manual_seed(1234 + layer)
    for part, Cin, Cout in (("o", cap.mom_oproj, cap.mom_oproj_out), ("down", cap.mom_downproj, cap.mom_downproj_out)):
        Ci, Co = Cin[layer].to(torch.float64), Cout[layer].to(torch.float64)
        # the output moments must belong to these weights: check rᵀ W C Wᵀ r = rᵀ E[yyᵀ] r on random r
        R = torch.randn(Co.shape[0], 2, generator=g, dtype=torch.float64)
        WtR = ctx.W(layer, part).T @ R
        lhs, rhs = (WtR * (Ci @ WtR)).sum(0), (R * (Co @ R)).sum(0)
        if not bool(torch.allclose(lhs, rhs, rtol=1e-3, atol=1e-6 * float(rhs.abs().max()))):
            logger.warning(
                f"corda_write layer {layer}: captured {part}_proj output moments do not match the "
                f"weights (captures from another model?); using W C Wᵀ from the input moments"
            )
            return None
        eps = ctx.eps_rel * float(torch.diagonal(Ci).sum()) / Ci.shape[-1]
        G = G + Co + eps * ctx.write_gram_part(layer, part)
    return G


@candidate(
    "corda_write",
    "W:write",
    "adapter-family",
    "top-8 left singular vectors of [W_o·C_o^{1/2} | W_down·C_down^{1/2}], C = uncentred second moment "
    "E[xxᵀ] of that projection's inputs over clean FIT tokens, damped by ε·I",
    needs=("mom_oproj", "mom_downproj"),
    note="ε = 1e-3 · tr(C)/n (relative to the mean eigenvalue)",
    construction=(
        "C over all real tokens of the clean FIT probes; where the captures hold the projections' "
        "output moments E[yyᵀ] (= W·C·Wᵀ without a bias) the Gram is read from them, checked "
        "against the weights"
    ),
)
def corda_write(ctx: BuildContext, layer: int) -> torch.Tensor:
    G = _corda_fast(ctx, layer)
    if G is None:
        Co, Cd = ctx.captures.mom_oproj[layer], ctx.captures.mom_downproj[layer]
        G = corda_gram(ctx.W(layer, "o"), Co, ctx.W(layer, "down"), Cd, ctx.eps_rel)
    return linalg.top_eigvecs(G, ctx.k)


@candidate(
    "asvd_write",
    "W:write",
    "adapter-family",
    "top-8 left singular vectors of [W_o·diag(C_o)^{1/2} | W_down·diag(C_down)^{1/2}] (corda_write with diag(C))",
    needs=("mom_oproj", "mom_downproj"),
    note="ε = 1e-3 · tr(C)/n added to the diagonal",
    construction="C as in corda_write, only its diagonal",
)
def asvd_write(ctx: BuildContext, layer: int) -> torch.Tensor:
    Co, Cd = ctx.captures.mom_oproj[layer], ctx.captures.mom_downproj[layer]
    G = corda_gram(ctx.W(layer, "o"), Co, ctx.W(layer, "down"), Cd, ctx.eps_rel, diagonal=True)
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
