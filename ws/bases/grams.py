"""The base model's weights as the candidate builders see them: float64 on the CPU, with the
Gram matrices and eigenspaces that several candidates share, each formed once per build.

    W = ModelWeights(model, k_broad=64)
    W.W(layer, "q")             # [out, in] float64
    W.read_gram(layer)          # [d, d]: W_qᵀW_q + W_kᵀW_k + W_vᵀW_v + W_upᵀW_up + W_gateᵀW_gate
    W.downstream_read(layer)    # [d, k_broad]: top eigenspace of lm_headᵀlm_head + later read Grams

A build goes layer by layer, last first (:func:`ws.bases.registry.build_all`); :meth:`ModelWeights.at_layer`
frees every other layer's ``d × d`` intermediates, so one layer's float64 work is held at a time.
The candidates reach it as ``ctx.weights`` (:class:`ws.bases.registry.BuildContext`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ws.core import linalg
from ws.core.device import module_weight
from ws.model.anatomy import ATTN_PROJ, MLP_PROJ
from ws.model.load import decoder_layers

__all__ = ["ModelWeights", "PER_LAYER_MEMO"]

#: memo kinds keyed ``(kind, layer, …)``: one layer's intermediates, freed when the build moves on
PER_LAYER_MEMO = ("read", "write", "downstream_read")

_ATTN = {p.removesuffix("_proj"): p for p in ATTN_PROJ}
_MLP = {p.removesuffix("_proj"): p for p in MLP_PROJ}


class ModelWeights:
    """float64 weights of ``model`` and the cached Grams built from them (``k_broad``: the rank of
    the broad read spaces, :meth:`global_read` and :meth:`downstream_read`)."""

    def __init__(self, model: nn.Module, k_broad: int = 64):
        self.model = model
        self.layers = decoder_layers(model)
        self.L = len(self.layers)
        self.d = int(model.config.hidden_size)
        self.k_broad = int(k_broad)
        self._memo: dict = {}
        self.layer: int | None = None  # the layer being built: its intermediates are kept
        self._down: tuple[int, torch.Tensor] | None = None  # downstream_gram's running sum

    # ------------------------------------------------------------------ caching
    def memo(self, key, fn: Callable):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def clear(self) -> None:
        self._memo.clear()
        self._down = None

    def at_layer(self, layer: int | None) -> None:
        """Build ``layer`` next: every per-layer intermediate of the other layers (their ``d × d``
        Grams) is freed, so a build holds one layer's float64 work at a time. Moving down one
        layer first adds the layer just built into :meth:`downstream_gram`'s running sum while its
        read Gram is still held (it is not formed again)."""
        if layer is not None and self._down is not None and self._down[0] == layer + 1 and self._holds_read(layer + 1):
            m, acc = self._down
            acc += self.read_gram(m)
            self._down = (layer, acc)
        self.layer = layer
        self.free_layers()

    def _holds_read(self, layer: int) -> bool:
        return any(isinstance(k, tuple) and k[:2] == ("read", layer) for k in self._memo)

    def free_layers(self) -> None:
        """Free the per-layer intermediates (keys ``(kind, layer, …)`` of :data:`PER_LAYER_MEMO`)
        of every layer but the one being built."""
        for key in [k for k in self._memo if isinstance(k, tuple) and k[0] in PER_LAYER_MEMO and k[1] != self.layer]:
            del self._memo[key]

    # ------------------------------------------------------------------ one layer
    def W(self, layer: int, p: str) -> torch.Tensor:
        """float64 weight ``p`` ∈ q, k, v, o, gate, up, down of ``layer`` (``[out, in]``)."""
        blk = self.layers[layer]
        mod = getattr(blk.self_attn, _ATTN[p]) if p in _ATTN else getattr(blk.mlp, _MLP[p])
        return module_weight(mod).to(device="cpu", dtype=torch.float64)  # the math is float64 on the CPU

    def act_fn(self, layer: int) -> Callable:
        return self.layers[layer].mlp.act_fn

    def read_gram_part(self, layer: int, part: str) -> torch.Tensor:
        """``[d, d]`` read Grams: ``q`` = W_qᵀW_q, ``kv`` = W_kᵀW_k + W_vᵀW_v, ``up``, ``gate``."""

        def build():
            if part == "kv":
                return linalg.gram(self.W(layer, "k"), transpose=True) + linalg.gram(self.W(layer, "v"), transpose=True)
            return linalg.gram(self.W(layer, part), transpose=True)

        return self.memo(("read", layer, part), build)

    def read_gram(self, layer: int) -> torch.Tensor:
        """W_qᵀW_q + W_kᵀW_k + W_vᵀW_v + W_upᵀW_up + W_gateᵀW_gate."""
        return self.memo(("read", layer, "all"), lambda: sum(self.read_gram_part(layer, p) for p in ("q", "kv", "up", "gate")))

    def write_gram_part(self, layer: int, part: str) -> torch.Tensor:
        """``W_oW_oᵀ`` (``o``) or ``W_downW_downᵀ`` (``down``), ``[d, d]``."""
        return self.memo(("write", layer, part), lambda: linalg.gram(self.W(layer, part)))

    def write_gram(self, layer: int) -> torch.Tensor:
        """Gram of ``write_cols = [W_o | W_down]``: ``W_oW_oᵀ + W_downW_downᵀ``."""
        return self.write_gram_part(layer, "o") + self.write_gram_part(layer, "down")

    # ------------------------------------------------------------------ the unembedding
    def lm_head(self) -> torch.Tensor:
        return module_weight(self.model.get_output_embeddings()).cpu()

    def lm_gram(self) -> torch.Tensor:
        """``lm_headᵀlm_head`` ``[d, d]`` in float64, accumulated over row chunks."""

        def build():
            U = self.lm_head()
            G = torch.zeros(self.d, self.d, dtype=torch.float64)
            for s in range(0, U.shape[0], 8192):
                G += linalg.gram(U[s : s + 8192], transpose=True)
            return G

        return self.memo("lm_gram", build)

    def lm_eig(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full eigendecomposition of the lm_head Gram, eigenvalues ASCENDING."""

        def build():
            return linalg.eigh(self.lm_gram())

        return self.memo("lm_eig", build)

    def lm_read(self, k: int) -> torch.Tensor:
        """Top-``k`` right singular vectors of lm_head (its top-k read space)."""

        def build():
            vals, vecs = self.lm_eig()
            vals, vecs = vals.flip(0), vecs.flip(1)
            keep = vals > (linalg.DEFAULT_RTOL**2) * max(float(vals[0]), 0.0)
            return linalg.sign_fix(vecs[:, keep][:, :k])

        return self.memo(("lm_read", k), build)

    def bos_embedding(self) -> torch.Tensor:
        """Input embedding of the BOS token (EOS if the model has no BOS), float64 ``[d]``."""
        cfg = self.model.config
        tid = getattr(cfg, "bos_token_id", None)
        if tid is None:
            tid = getattr(cfg, "eos_token_id", None)
        if isinstance(tid, (list, tuple)):
            tid = tid[0]
        if tid is None:
            raise ValueError("the model config names neither a BOS nor an EOS token")
        return module_weight(self.model.get_input_embeddings())[int(tid)].to(device="cpu", dtype=torch.float64)

    # ------------------------------------------------------------------ sums over layers
    def _layer_sum(self, gram: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``Σ_l gram(l)`` over every layer, each layer's intermediates freed once added."""
        acc = 0
        for l in range(self.L):
            acc = acc + gram(l)
            self.free_layers()
        return acc

    def global_read_gram(self) -> torch.Tensor:
        return self.memo("global_read_gram", lambda: self._layer_sum(self.read_gram) + self.lm_gram())

    def global_read(self, k: int) -> torch.Tensor:
        """Top-``k`` eigenvectors of Σ read Grams + lm_headᵀlm_head (``k ≤ k_broad``)."""
        kb = max(k, self.k_broad)
        top = self.memo(("global_read", kb), lambda: linalg.top_eigvecs(self.global_read_gram(), kb))
        return top[:, :k]

    def global_write_gram(self) -> torch.Tensor:
        return self.memo("global_write_gram", lambda: self._layer_sum(self.write_gram))

    def downstream_gram(self, layer: int) -> torch.Tensor:
        """lm_headᵀlm_head + the read Grams of all layers after ``layer``, ``[d, d]``: one running
        sum, added from the last layer down (cheapest when layers are asked for in descending
        order, as the build does; a later layer than the last one asked restarts it). The tensor
        returned is the running sum itself: valid until the next call."""
        if self._down is None or self._down[0] < layer:
            self._down = (self.L - 1, self.lm_gram().clone())
        m, acc = self._down
        while m > layer:
            acc += self.read_gram(m)
            self.free_layers()
            m -= 1
        self._down = (m, acc)
        return acc

    def downstream_read(self, layer: int) -> torch.Tensor:
        """Top-``k_broad`` eigenspace of :meth:`downstream_gram`."""
        return self.memo(("downstream_read", layer), lambda: linalg.top_eigvecs(self.downstream_gram(layer), self.k_broad))
