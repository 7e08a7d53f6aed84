"""Candidates 23–40: built from base-model activations (23–24 also from weights).

All activations are FIT probes at the last real token unless stated (see ``ws.captures.capture``):
``clean``, ``pos``, ``neg`` are block outputs ``[L, n, d]``. "PCA" is always the mean-centred
PCA of :func:`ws.core.linalg.pca`, so ``n`` rows give at most ``n − 1`` directions.

Choices the one-line definitions leave open, fixed here:

- ``suppressed`` / ``amplified`` / ``added_features``: ``|h|`` is the elementwise absolute
  value of the block output; "consecutive layers" are block outputs ``l`` and ``l + 1``;
  "first/last layer" are the outputs of blocks 0 and L − 1.
- ``churn`` at layer ``l``: ``h_{l+1} − h_l`` in ``hidden_states`` numbering, i.e. what block
  ``l`` adds to the residual stream (its output minus its input; block 0's input is the
  token embedding).
- ``chars_clusters``: k-means with ``k + 1`` clusters (default 9), then PCA of the centroids.
  With ``k`` clusters (as before) the ``k`` mean-centred centroids span at most ``k − 1``
  dimensions, so the old basis had rank 7; ``k + 1`` centroids span ``k``. The number of
  clusters is a :func:`build_all` option (``n_clusters``).
- ``rotation_contrast``: the joint PCA(32) is of the two persona sets stacked; each set is
  centred on its OWN mean (the usual Procrustes analysis: translation removed first) and
  expressed in the joint coordinates; the orthogonal Procrustes map persona− → persona+ is
  ``R = UVᵀ`` from ``svd(Aᵀ B) = U S Vᵀ``; the basis is the top-8 singular directions of
  ``(R − Rᵀ)/2`` (they come in planes of rotation), mapped back to the residual stream.
  Centring both sets on their joint mean instead (this suite's earlier choice) leaves the
  shift ``t`` between the two means in the data: ``AᵀB`` then carries ``−(n/4)·ttᵀ``, which
  pulls ``R`` toward a reflection of ``t``; where ``t`` overlaps a plane of rotation that
  plane is distorted or lost (a 40° rotation with a shift inside its plane, 20 times the
  spread: less than half the plane recovered, see the tests). Own-mean centring recovers the
  rotation whatever the shift, which ``diff_in_means`` scores on its own (and is what
  upstream v7 does).
  :func:`procrustes_skew_basis` builds either (``centre``).
"""

from __future__ import annotations

import torch

from ws.bases.registry import BuildContext, candidate
from ws.core import linalg

_PERSONA = ("pos", "neg")
_TOKENS = ("pos_tok", "neg_tok", "tok_mask", "pos_attn", "neg_attn")


def _layer(ctx: BuildContext, name: str, layer: int) -> torch.Tensor:
    """One layer of a (possibly large) capture in float64, without caching the whole tensor."""
    t = getattr(ctx.captures, name)
    return t[layer].detach().to(torch.float64)


def _mlp_act(ctx: BuildContext, layer: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(act(h W_gateᵀ), h W_upᵀ)`` for up_proj inputs ``h [n, d]``."""
    return ctx.weights.act_fn(layer)(h @ ctx.weights.W(layer, "gate").T), h @ ctx.weights.W(layer, "up").T


# ----------------------------------------------------------------------------- weight × clean
@candidate(
    "gate_kernel",
    "W:MLP",
    "weights+clean",
    "left SVD of W_down·diag(mean silu(W_gate·h))·W_up, h = clean FIT up_proj inputs",
    needs=("clean_up_in",),
    note="the model's own MLP activation in place of silu when it differs",
    construction=(
        "h = the inputs of mlp.up_proj (after the layer's RMSNorm) of the clean FIT probes at the "
        "last token; silu is the model's own MLP activation; the mean is over the probes"
    ),
)
def gate_kernel(ctx: BuildContext, layer: int) -> torch.Tensor:
    h = ctx.cap("clean_up_in")[layer]
    g, _ = _mlp_act(ctx, layer, h)
    s = g.mean(dim=0)  # [m]
    return linalg.left_svd_basis((ctx.weights.W(layer, "down") * s) @ ctx.weights.W(layer, "up"), ctx.k)


@candidate(
    "gate_active_written",
    "act:MLP",
    "weights+clean",
    "PCA of (silu(W_gate·h) ⊙ W_up·h)·W_downᵀ on clean FIT",
    needs=("clean_up_in",),
    construction=(
        "h = the inputs of mlp.up_proj (after the layer's RMSNorm) of the clean FIT probes at the "
        "last token; silu is the model's own MLP activation"
    ),
)
def gate_active_written(ctx: BuildContext, layer: int) -> torch.Tensor:
    h = ctx.cap("clean_up_in")[layer]
    g, u = _mlp_act(ctx, layer, h)
    return linalg.pca((g * u) @ ctx.weights.W(layer, "down").T, ctx.k)


# ----------------------------------------------------------------------------- clean
def _abs_steps(ctx: BuildContext) -> torch.Tensor:
    A = ctx.cap("clean").abs()  # [L, n, d]
    return A[1:] - A[:-1]  # [L-1, n, d]


@candidate(
    "suppressed",
    "act:clean",
    "activations",
    "PCA over samples of min(Σ_l relu(Δ|h|), Σ_l relu(−Δ|h|)), Δ across consecutive layers (one basis for all layers)",
    per_layer=False,
    needs=("clean",),
    construction=(
        "|h| is the elementwise absolute value of the block outputs (clean FIT, last token); Δ is "
        "between the outputs of blocks l and l+1"
    ),
)
def suppressed(ctx: BuildContext) -> torch.Tensor:
    dA = _abs_steps(ctx)
    X = torch.minimum(dA.clamp(min=0).sum(dim=0), (-dA).clamp(min=0).sum(dim=0))
    return linalg.pca(X, ctx.k)


@candidate(
    "amplified",
    "act:clean",
    "activations",
    "PCA of relu(|h_last layer| − |h_first layer|)",
    per_layer=False,
    needs=("clean",),
    construction=("first and last layer = the outputs of blocks 0 and L − 1 (clean FIT, last token); |h| elementwise"),
)
def amplified(ctx: BuildContext) -> torch.Tensor:
    A = ctx.cap("clean").abs()
    return linalg.pca((A[-1] - A[0]).clamp(min=0), ctx.k)


@candidate(
    "added_features",
    "act:clean",
    "activations",
    "PCA of Σ_l relu(Δ|h|)",
    per_layer=False,
    needs=("clean",),
    construction="|h| and Δ as in suppressed (clean FIT, last token)",
)
def added_features(ctx: BuildContext) -> torch.Tensor:
    return linalg.pca(_abs_steps(ctx).clamp(min=0).sum(dim=0), ctx.k)


@candidate(
    "global_clean_resid_pca",
    "act:baseline",
    "activations",
    "PCA of all clean residuals pooled over layers",
    per_layer=False,
    needs=("clean",),
    construction=("the block outputs of every layer (clean FIT, last token) pooled as samples; one mean-centred PCA"),
)
def global_clean_resid_pca(ctx: BuildContext) -> torch.Tensor:
    R = ctx.cap("clean")
    return linalg.pca(R.reshape(-1, R.shape[-1]), ctx.k)


@candidate(
    "global_persona_resid_pca",
    "act:baseline",
    "activations",
    "PCA of persona± residuals pooled over layers",
    per_layer=False,
    needs=_PERSONA,
    construction=(
        "the persona+ and persona− block outputs of every layer (FIT, last token) pooled as samples; one mean-centred PCA"
    ),
)
def global_persona_resid_pca(ctx: BuildContext) -> torch.Tensor:
    R = torch.cat([ctx.cap("pos"), ctx.cap("neg")], dim=1)
    return linalg.pca(R.reshape(-1, R.shape[-1]), ctx.k)


@candidate("layer_clean_resid_pca", "act:baseline", "activations", "per-layer PCA of clean residuals", needs=("clean",))
def layer_clean_resid_pca(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.pca(ctx.cap("clean")[layer], ctx.k)


@candidate(
    "TaskDiff_contrast",
    "act:persona",
    "activations",
    "per-layer PCA of (persona+ − persona−) residuals",
    needs=_PERSONA,
    construction=(
        "rows: per FIT probe, the persona+ minus the persona− block output at the last token; the "
        "PCA is mean-centred, so the shift all probes share (diff_in_means) is not in it"
    ),
)
def TaskDiff_contrast(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.pca(ctx.cap("pos")[layer] - ctx.cap("neg")[layer], ctx.k)


# ----------------------------------------------------------------------------- attention-selected
_ATTN_DEF = (
    "per-layer PCA of token-level persona differences, each row scaled by √weight, "
    "weight = {} of the two final-token attention rows"
)


def _attn_weighted(ctx: BuildContext, layer: int, mode: str) -> torch.Tensor:
    m = ctx.captures.tok_mask.bool()  # [n, T]
    D = (_layer(ctx, "pos_tok", layer) - _layer(ctx, "neg_tok", layer))[m]  # [rows, d]
    a = _layer(ctx, "pos_attn", layer)[m]
    b = _layer(ctx, "neg_attn", layer)[m]
    if mode == "min":
        w = torch.minimum(a, b)
    elif mode == "max":
        w = torch.maximum(a, b)
    elif mode == "diff":
        w = (a - b).abs()
    elif mode == "min_x_diffnorm":
        nrm = D.norm(dim=1)
        mean = nrm.mean()
        w = torch.minimum(a, b) * (nrm / mean if float(mean) > 0 else torch.zeros_like(nrm))
    else:
        raise ValueError(mode)
    return linalg.pca(D * w.clamp(min=0).sqrt()[:, None], ctx.k)


@candidate(
    "attn_min_taskdiff",
    "act:attn-selected",
    "activations",
    _ATTN_DEF.format("min"),
    needs=_TOKENS,
    construction=(
        "rows: the tokens of the suffix the persona+ and persona− renderings share (same token ids: "
        "the user turn and the generation prompt), aligned on the final token; each attention row "
        "is the final token's head-averaged softmax restricted to that suffix, not renormalised"
    ),
)
def attn_min_taskdiff(ctx: BuildContext, layer: int) -> torch.Tensor:
    return _attn_weighted(ctx, layer, "min")


@candidate(
    "attn_max_taskdiff",
    "act:attn-selected",
    "activations",
    _ATTN_DEF.format("max"),
    needs=_TOKENS,
    construction=("rows and attention as in attn_min_taskdiff (the shared token suffix, aligned on the final token)"),
)
def attn_max_taskdiff(ctx: BuildContext, layer: int) -> torch.Tensor:
    return _attn_weighted(ctx, layer, "max")


@candidate(
    "attn_diff_taskdiff",
    "act:attn-selected",
    "activations",
    _ATTN_DEF.format("|difference|"),
    needs=_TOKENS,
    construction=("rows and attention as in attn_min_taskdiff (the shared token suffix, aligned on the final token)"),
)
def attn_diff_taskdiff(ctx: BuildContext, layer: int) -> torch.Tensor:
    return _attn_weighted(ctx, layer, "diff")


@candidate(
    "attn_min_x_diffnorm_taskdiff",
    "act:attn-selected",
    "activations",
    "per-layer PCA of token-level persona differences, each row scaled by √weight, "
    "weight = min of the two final-token attention rows × (token diff norm / its mean)",
    needs=_TOKENS,
    construction=(
        "rows and attention as in attn_min_taskdiff; the mean of the token diff norms is over the layer's real suffix tokens"
    ),
)
def attn_min_x_diffnorm_taskdiff(ctx: BuildContext, layer: int) -> torch.Tensor:
    return _attn_weighted(ctx, layer, "min_x_diffnorm")


# ----------------------------------------------------------------------------- up_proj
@candidate(
    "up_proj_input_contrast",
    "act:up_proj",
    "activations",
    "PCA of the persona contrast in up_proj inputs",
    needs=("pos_up_in", "neg_up_in"),
    construction=(
        "per FIT probe, the persona+ minus the persona− input of mlp.up_proj (after the layer's "
        "RMSNorm) at the last token; mean-centred PCA"
    ),
)
def up_proj_input_contrast(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.pca(ctx.cap("pos_up_in")[layer] - ctx.cap("neg_up_in")[layer], ctx.k)


@candidate(
    "up_proj_output_written_contrast",
    "act:up_proj",
    "activations",
    "PCA of the persona contrast of up_proj outputs mapped through W_down",
    needs=("pos_up_written", "neg_up_written"),
    construction=(
        "the mlp.up_proj outputs (before the gate product) at the last token times W_downᵀ, "
        "persona+ minus persona− per FIT probe; mean-centred PCA"
    ),
)
def up_proj_output_written_contrast(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.pca(ctx.cap("pos_up_written")[layer] - ctx.cap("neg_up_written")[layer], ctx.k)


# ----------------------------------------------------------------------------- clusters, churn, rotation
@candidate(
    "chars_clusters",
    "act:cluster",
    "activations",
    "k-means (9 clusters) over clean + persona± residuals, PCA of the centroids (v7's 8 clusters collapsed to rank 7)",
    needs=("clean", "pos", "neg"),
    note="seeded k-means++ / Lloyd, best of 4 starts; k+1 centred centroids span k dims, k could only span k−1",
    describe=lambda ctx: (
        f"k-means ({ctx.n_clusters} clusters) over clean + persona± residuals, PCA of the "
        f"centroids" + (" (v7's 8 clusters collapsed to rank 7)" if ctx.n_clusters != 8 else " (rank ≤ 7: 8 centred centroids)")
    ),
    construction=(
        "samples: the layer's clean, persona+ and persona− block outputs (FIT, last token) stacked; "
        "seeded k-means++ start, Lloyd iterations, best of 4 starts; PCA of the unweighted "
        "centroids"
    ),
)
def chars_clusters(ctx: BuildContext, layer: int) -> torch.Tensor:
    X = torch.cat([ctx.cap("clean")[layer], ctx.cap("pos")[layer], ctx.cap("neg")[layer]], dim=0)
    C, _, _ = linalg.kmeans(X, ctx.n_clusters, seed=ctx.seed * 1_000_003 + layer)
    return linalg.pca(C, ctx.k)


@candidate(
    "churn",
    "act:clean",
    "activations",
    "PCA of h_{l+1} − h_l on clean",
    needs=("clean",),
    note="h in hidden_states numbering: what block l adds (its output minus its input)",
    construction=(
        "h in hidden_states numbering (h_0 = the token embedding): at layer l the basis is the PCA "
        "of block l's output minus its input, what block l adds (clean FIT, last token)"
    ),
)
def churn(ctx: BuildContext, layer: int) -> torch.Tensor | None:
    R = ctx.cap("clean")
    if layer == 0:
        if not ctx.available("clean_embed"):
            return None
        prev = ctx.cap("clean_embed")
    else:
        prev = R[layer - 1]
    return linalg.pca(R[layer] - prev, ctx.k)


def procrustes_skew_basis(P: torch.Tensor, N: torch.Tensor, k: int, rot_dim: int = 32, centre: str = "own") -> torch.Tensor:
    """Leading directions ``[d, ≤k]`` of the rotation persona− → persona+ (rows of ``N`` → rows
    of ``P``, paired by probe) in the joint PCA(``rot_dim``) space of the two sets.

    centre: ``"own"`` centres each set on its own mean (the rotation without the shift between
    the sets); ``"joint"`` on the mean of both (the shift then enters the fit, see the module
    doc). ``R = UVᵀ`` from ``svd(AᵀB)`` minimises ``‖AR − B‖_F`` over orthogonal ``R``; the
    basis is the top-``k`` left singular directions of ``(R − Rᵀ)/2``.
    """
    if centre not in ("own", "joint"):
        raise ValueError(f"centre must be 'own' or 'joint', got {centre!r}")
    P, N = P.to(torch.float64), N.to(torch.float64)
    X = torch.cat([P, N], dim=0)
    V = linalg.pca(X, rot_dim)  # [d, r]
    if V.shape[1] < 2:
        return torch.zeros(X.shape[1], 0, dtype=torch.float64)
    if centre == "own":
        A, B = (N - N.mean(dim=0, keepdim=True)) @ V, (P - P.mean(dim=0, keepdim=True)) @ V  # [n, r]
    else:
        mu = X.mean(dim=0, keepdim=True)
        A, B = (N - mu) @ V, (P - mu) @ V
    U, _, Vh = torch.linalg.svd(A.T @ B)
    R = U @ Vh  # argmin_R orthogonal ‖A R − B‖_F
    S = 0.5 * (R - R.T)
    Q = linalg.top_eigvecs(S @ S.T, k)  # left singular directions of the skew part
    return linalg.sign_fix(V @ Q)  # V and Q orthonormal, so V @ Q is too


@candidate(
    "rotation_contrast",
    "act:rotation",
    "activations",
    "in a joint PCA(32) space, the orthogonal Procrustes rotation persona− → persona+; "
    "basis = leading singular directions of its skew part",
    needs=_PERSONA,
    construction=(
        "persona± block outputs (FIT, last token); the joint PCA(32) is of the two sets stacked; "
        "each set is centred on its own mean (the usual Procrustes analysis, so the shift between "
        "the two sets is not fitted as a rotation) and expressed in the joint coordinates; R = UVᵀ "
        "from svd(AᵀB), A = persona−, B = persona+; basis = top-{k} singular directions of "
        "(R − Rᵀ)/2 (they come in planes of rotation), mapped back"
    ),
)
def rotation_contrast(ctx: BuildContext, layer: int) -> torch.Tensor:
    return procrustes_skew_basis(ctx.cap("pos")[layer], ctx.cap("neg")[layer], ctx.k, ctx.rot_dim, centre="own")
