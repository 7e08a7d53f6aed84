"""Candidates 1–22: derived from the base model's weights alone (no data).

Shapes (PyTorch ``[out, in]``): ``W_q [H·hd, d]``, ``W_k, W_v [H_kv·hd, d]``,
``W_o [d, H·hd]``, ``W_gate, W_up [m, d]``, ``W_down [d, m]``, ``lm_head [V, d]``.
"Read" spaces live in the input (row) space of the readers, "write" spaces in the output
(column) space of the writers; both are subspaces of the residual stream (``d``).

Implementation: every "left SVD of write_cols" is the top eigenspace of the ``d × d`` Gram
``W_oW_oᵀ + W_downW_downᵀ``, every "right SVD of a stack of readers" the top eigenspace of
the sum of their ``WᵀW``; "projected off Q" is the Gram ``(I − QQᵀ)G(I − QQᵀ)``. These are
exactly the same subspaces as the SVDs of the wide matrices, at a fraction of the cost.
The raw weights are used (the RMSNorm gains in front of the readers are not folded in),
as the definitions say. Rotary position embeddings and Qwen3's per-head q/k norms are
outside the position-free ``W_qᵀW_k`` of ``qk_circuit``.
"""

from __future__ import annotations

import torch

from ws.bases.registry import BuildContext, candidate
from ws.core import linalg


@candidate("lm_head_read", "W:unembed", "weights", "top-8 right singular vectors of lm_head (same every layer)", per_layer=False)
def lm_head_read(ctx: BuildContext) -> torch.Tensor:
    return ctx.weights.lm_read(ctx.k)


@candidate(
    "logits_null",
    "W:unembed",
    "weights",
    "bottom-8 right singular vectors of lm_head",
    per_layer=False,
    note="the 8 smallest eigenvalues of lm_headᵀlm_head, smallest first",
    construction=(
        "eigenvectors of the {k} smallest eigenvalues of lm_headᵀlm_head, smallest first: the "
        "directions the unembedding reads least"
    ),
)
def logits_null(ctx: BuildContext) -> torch.Tensor:
    vals, vecs = ctx.weights.lm_eig()  # ascending
    return linalg.sign_fix(vecs[:, : ctx.k].clone())


@candidate("global_read", "W:read", "weights", "top-8 eigenvectors of Σ_layers read Gram + lm_headᵀlm_head", per_layer=False)
def global_read(ctx: BuildContext) -> torch.Tensor:
    return ctx.weights.global_read(ctx.k)


@candidate(
    "global_write", "W:write", "weights", "top-8 left singular vectors of all layers' write_cols side by side", per_layer=False
)
def global_write(ctx: BuildContext) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.global_write_gram(), ctx.k)


@candidate(
    "global_write_not_global_read",
    "W:write-not-read",
    "weights",
    "the same, after projecting the columns off the top-64 global read space",
    per_layer=False,
    construction=(
        "the global read space projected off is its top {k_broad} directions (k_broad = {k_broad} "
        "in this run, from WS_K_BROAD; the spec's 64)"
    ),
)
def global_write_not_global_read(ctx: BuildContext) -> torch.Tensor:
    G = linalg.project_gram(ctx.weights.global_write_gram(), ctx.weights.global_read(ctx.k_broad))
    return linalg.top_eigvecs(G, ctx.k)


@candidate("write", "W:write", "weights", "per layer, left SVD of write_cols")
def write(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.write_gram(layer), ctx.k)


@candidate("attn_write", "W:write", "weights", "per layer, left SVD of W_o")
def attn_write(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.write_gram_part(layer, "o"), ctx.k)


@candidate("mlp_write", "W:write", "weights", "per layer, left SVD of W_down")
def mlp_write(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.write_gram_part(layer, "down"), ctx.k)


@candidate(
    "write_not_lm_head_read",
    "W:write-not-read",
    "weights",
    "write_cols projected off the top-64 lm_head read space",
    construction=(
        "the lm_head read space projected off is its top {k_broad} directions (k_broad = {k_broad} "
        "in this run, from WS_K_BROAD; the spec's 64)"
    ),
)
def write_not_lm_head_read(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(linalg.project_gram(ctx.weights.write_gram(layer), ctx.weights.lm_read(ctx.k_broad)), ctx.k)


@candidate(
    "write_not_global_read",
    "W:write-not-read",
    "weights",
    "write_cols projected off the top-64 global read space",
    construction=(
        "the global read space projected off is its top {k_broad} directions (k_broad = {k_broad} "
        "in this run, from WS_K_BROAD; the spec's 64)"
    ),
)
def write_not_global_read(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(linalg.project_gram(ctx.weights.write_gram(layer), ctx.weights.global_read(ctx.k_broad)), ctx.k)


@candidate(
    "write_not_downstream_read",
    "W:write-not-read",
    "weights",
    "write_cols projected off the top-64 eigenspace of (lm_head Gram + read Grams of all later layers)",
    note="the last layer's downstream readers are the lm_head alone",
    construction=(
        "later layers are l+1 … L−1, so the last layer's downstream reader is the lm_head alone; "
        "the eigenspace projected off has {k_broad} directions (k_broad = {k_broad} in this run, "
        "from WS_K_BROAD; the spec's 64)"
    ),
)
def write_not_downstream_read(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(linalg.project_gram(ctx.weights.write_gram(layer), ctx.weights.downstream_read(layer)), ctx.k)


@candidate("mlp_up_read", "W:read", "weights", "right SVD of W_up")
def mlp_up_read(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.read_gram_part(layer, "up"), ctx.k)


@candidate("mlp_gate_read", "W:read", "weights", "right SVD of W_gate")
def mlp_gate_read(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.read_gram_part(layer, "gate"), ctx.k)


@candidate("attn_qkv_read", "W:read", "weights", "right SVD of [W_q; W_k; W_v]")
def attn_qkv_read(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.read_gram_part(layer, "q") + ctx.weights.read_gram_part(layer, "kv"), ctx.k)


@candidate(
    "attn_ov_write",
    "W:OV",
    "weights",
    "left SVD of W_o·W_v (GQA-expanded)",
    construction=(
        "GQA-expanded as the model computes attention: W_v's rows are repeated head block by head "
        "block (query head h reads KV head ⌊h·n_kv/n_heads⌋), so each head's W_o columns meet its "
        "own KV head's W_v rows; never row by row"
    ),
)
def attn_ov_write(ctx: BuildContext, layer: int) -> torch.Tensor:
    Wv = linalg.expand_kv(ctx.weights.W(layer, "v"), ctx.n_heads, ctx.n_kv)
    return linalg.left_svd_basis(ctx.weights.W(layer, "o") @ Wv, ctx.k)


@candidate("mlp_roundtrip_write", "W:MLP", "weights", "left SVD of W_down·W_up")
def mlp_roundtrip_write(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.left_svd_basis(ctx.weights.W(layer, "down") @ ctx.weights.W(layer, "up"), ctx.k)


@candidate(
    "qk_circuit",
    "W:QK",
    "weights",
    "left SVD of W_qᵀ·W_k (GQA-expanded)",
    note="query-side directions of the position-free bilinear form Σ_h W_qʰᵀW_kʰ",
    construction=(
        "GQA-expanded as in attn_ov_write (W_k's head blocks repeated, never single rows); the "
        "query-side (left) singular vectors of the position-free Σ_h W_qʰᵀW_kʰ: rotary position "
        "embeddings and per-head q/k norms (Qwen3) are not in it"
    ),
)
def qk_circuit(ctx: BuildContext, layer: int) -> torch.Tensor:
    Wk = linalg.expand_kv(ctx.weights.W(layer, "k"), ctx.n_heads, ctx.n_kv)
    return linalg.left_svd_basis(ctx.weights.W(layer, "q").T @ Wk, ctx.k)


@candidate("input_super", "W:read", "weights", "right SVD of [W_q; W_k; W_v; W_up; W_gate]")
def input_super(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.read_gram(layer), ctx.k)


@candidate("kv_super", "W:read", "weights", "right SVD of [W_k; W_v]")
def kv_super(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(ctx.weights.read_gram_part(layer, "kv"), ctx.k)


@candidate(
    "attention_sink",
    "W:OV",
    "weights",
    "PCA over the per-head vectors W_oʰ·W_vʰ·e_BOS (e_BOS = BOS embedding, or EOS if no BOS)",
    note="H per-head vectors, mean-centred: true rank ≤ H − 1 (8 for 9 heads)",
    construction=(
        "e_BOS = the input embedding's row bos_token_id (eos_token_id when the config names no "
        "BOS); head h's vector uses its own KV head's W_v block; the PCA is mean-centred over the H "
        "vectors, so rank ≤ H − 1"
    ),
)
def attention_sink(ctx: BuildContext, layer: int) -> torch.Tensor:
    e = ctx.weights.bos_embedding()
    hd, H = ctx.head_dim, ctx.n_heads
    v = linalg.expand_kv(ctx.weights.W(layer, "v"), H, ctx.n_kv) @ e  # [H·hd]
    Wo = ctx.weights.W(layer, "o")  # [d, H·hd]
    per_head = torch.stack([Wo[:, h * hd : (h + 1) * hd] @ v[h * hd : (h + 1) * hd] for h in range(H)])  # [H, d]
    return linalg.pca(per_head, ctx.k)


@candidate(
    "causally_isolated",
    "W:write-not-read",
    "weights",
    "write_cols projected off the orthonormal union of input_super, kv_super and the top-64 lm_head read space",
    construction=(
        "the union is this layer's input_super and kv_super (rank {k} each) and the top-{k_broad} "
        "lm_head read space (k_broad = {k_broad} in this run, from WS_K_BROAD; the spec's 64)"
    ),
)
def causally_isolated(ctx: BuildContext, layer: int) -> torch.Tensor:
    U = linalg.union(ctx.basis("input_super", layer), ctx.basis("kv_super", layer), ctx.weights.lm_read(ctx.k_broad))
    return linalg.top_eigvecs(linalg.project_gram(ctx.weights.write_gram(layer), U), ctx.k)


@candidate(
    "input_super_not_lm_read",
    "W:read",
    "weights",
    "input_super projected off the top-64 lm_head read space, first 8",
    note="the stacked readers' rows are projected off, then their top-8 right singular vectors taken",
    construction=(
        "built as the top-{k} right singular vectors of the reader stack [W_q; W_k; W_v; W_up; "
        "W_gate] after its rows are projected off the top-{k_broad} lm_head read space (k_broad = "
        "{k_broad} in this run, from WS_K_BROAD; the spec's 64): what the readers read outside the "
        "lm_head's space, rank {k}. Not input_super's {k} columns projected off and "
        "re-orthonormalised, which would keep only what is left of those {k} directions"
    ),
)
def input_super_not_lm_read(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.top_eigvecs(linalg.project_gram(ctx.weights.read_gram(layer), ctx.weights.lm_read(ctx.k_broad)), ctx.k)
