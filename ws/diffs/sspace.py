"""S-space adapters: frozen-basis adapters that train only inside a fixed singular subspace.

For a target linear layer ``W`` (``d_out × d_in``, ``y = x Wᵀ``) the float64 SVD
``W = U S Vh`` (each pair's sign fixed: the largest-magnitude entry of ``u_j`` is positive)
and an index set ``I`` of ``r`` directions (default: the top ``r`` by ``S``) give frozen
buffers ``U_r`` (``d_out × r``), ``S_r`` (``r``) and ``P`` (``r × d_in``, here ``Vh_r``). The
layer's weight is replaced by ``W_res = W − U_r diag(S_r) P`` and

    y = x W_resᵀ + x Pᵀ (diag(S_r) + D)ᵀ U_rᵀ          ΔW = U_r D P

where the ``r × r`` core ``D`` is the only thing that trains. ``κ`` (``kappa``) scales the
adapter: 1 when training, 0 is the identity. ELU is torch's (``ELU(0) = 0``, ``ELU > −1``).

| kind               | trainable (init)                                            | D (ΔW = U_r D P)                       |
|--------------------|-------------------------------------------------------------|----------------------------------------|
| ``sspace_gain``    | ``g`` ∈ ℝ^r (0)                                             | ``diag(S_r ⊙ ELU(κg))``                |
| ``sspace_lowrank`` | ``g`` (0), ``A`` ∈ ℝ^{k×r} (N(0, 1/r), seeded), ``B`` (0)   | ``diag(S_r ⊙ ELU(κg)) + κ B A``        |
| ``sspace_ablate``  | ``c`` ∈ ℝ^{r×k} (seeded normal), ``alpha`` ∈ ℝ^k (0)        | ``−κ Ĉ diag(α) Ĉᵀ diag(S_r)``          |
| ``sspace_corda``   | ``g`` (0)                                                   | as gain, on the SVD of ``W C^{1/2}``   |
| ``sspace_asvd``    | ``g`` (0)                                                   | as gain, on the SVD of ``W diag(c)^½`` |
| ``sspace_rot``     | ``theta`` (0, one per in-block pair), ``shift`` ∈ ℝ^r (0)   | ``diag(S_r + κ·shift) R − diag(S_r)``  |

``B`` is ``r × k``; ``k = 8`` by default.

- **corda / asvd**: ``C = E[x xᵀ]`` of the layer's input over calibration tokens
  (:func:`calibration_moments`: uncentred, padding masked), damped to
  ``C + ε·tr(C)/d_in·I`` (ε = 1e-3); asvd uses ``c = E[x_i²]`` damped to ``c + ε·mean(c)``.
  ``SVD(W C^{1/2}) = Ũ S̃ Ṽᵀ``; ``U_r = Ũ_r``, ``S_r = S̃_r``, ``P = Ṽ_rᵀ C^{−1/2}`` (so
  ``W = Ũ S̃ Ṽᵀ C^{−1/2}``; ``Ũ_r`` is orthonormal, the rows of ``P`` are not).
- **ablate**: ``Ĉ = QR(c).Q`` (orthonormal columns), ``α = clamp(alpha, 0, 1)``.
  ``M = I − κ Ĉ diag(α) Ĉᵀ`` is the map on the top-r output coordinates (the
  merged layer is ``U_r M diag(S_r) P`` there); its eigenvalues are ``1 − κα_j`` and 1, all in
  [0, 1] for κ ∈ [0, 1]: a contraction. ``alpha`` starts at 0, so ablate is the identity at
  init. The clamp is straight-through (its gradient passes unchanged), so an ``alpha``
  sitting on the boundary, as every one does at init, is never dead; outside [0, 1] the raw
  value may drift while the loss pushes outward, the forward always sees the clamped one.
  ``k`` is capped at ``r``.
- **rot**: ``R`` is block-diagonal over consecutive coordinate blocks of 4 (the last one
  smaller when 4 does not divide ``r``), each the Cayley map ``(I − A)⁻¹(I + A)`` of a skew
  ``A`` with entries ``κ·b·tanh(theta)``, ``b = tan(θmax/2)/√(pairs in the block)``. A real
  skew matrix's plane rates ``σ`` satisfy ``Σσ² = Σ a_ij²``, so ``σ ≤ tan(θmax/2)`` and each
  plane's rotation angle ``2·atan(σ) ≤ θmax = 0.5 rad`` for κ ∈ [0, 1]. ``R = I`` at init.

Rules (each tested in ``tests/test_sspace.py``):

1. Identity at init and at κ = 0: ``W_res + U_r diag(S_r) P`` reconstructs ``W`` (exact in
   float64, to rounding in float32) and the wrapped layer's output is the base layer's.
2. The basis is a deterministic function of ``(W, I)`` and, for corda/asvd, of the moments
   passed in: both persona adapters wrapped with the same moments get identical buffers
   (and, with the same seed, identical initial parameters).
3. :meth:`SSpaceLinear.delta` is the formula ``U_r D P`` in float64, not merged − base.
4. :meth:`SSpaceLinear.reselect` moves every parameter attached to a direction that stays
   selected with it and zero-initialises new ones (lowrank: new ``B`` rows and ``A``
   columns; ablate: ``Ĉ diag(α) Ĉᵀ`` restricted to the kept coordinates, re-factored; rot: a
   rotation block survives only when its set of directions survives as one block, else it
   is reset to ``I``). Reselecting replaces the parameter tensors: build the optimizer after.
5. ablate's operator ``M`` has its spectrum in [0, 1] whatever the raw parameters.
6. :func:`default_rank`: 16, clipped to [8, 32], and at most ``min(d_in, d_out) // 2`` (at
   least 1). The embedded model's layers (576, 192, 1536) all get 16; the tiny models' (64,
   32, 128) get 16 too.

Buffers ``U_r``, ``S_r``, ``P`` are float64 (exact bases for the analysis); ``W_res`` and the
bias keep the base weight's dtype; parameters are float32 (float64 for a float64 base). The
original weight is kept as a non-persistent buffer ``W0`` for :meth:`~SSpaceLinear.reselect`.

    moments = calibration_moments(model, tok, texts, ["model.layers.3.self_attn.o_proj"])
    plus = wrap_sspace(model, "sspace_corda", [3], ["o_proj"], moments=moments)
    minus = wrap_sspace(model, "sspace_corda", [3], ["o_proj"], moments=moments)  # same basis
    ...train plus / minus (only adapter parameters have requires_grad)...
    w = {k: sspace_delta(plus)[k] - sspace_delta(minus)[k] for k in sspace_delta(plus)}
    bases = sspace_bases(plus)  # {"model.layers.3.self_attn.o_proj.weight": U_r [d_out, r]}
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ws.core.device import input_device, module_weight
from ws.model.anatomy import ATTN_PROJ, MLP_PROJ
from ws.model.load import padding_side

KINDS = ("sspace_gain", "sspace_lowrank", "sspace_ablate", "sspace_corda", "sspace_asvd", "sspace_rot")
#: Kinds whose basis is the plain SVD of W (their ΔW also lies in the row space of Vh_r).
SVD_KINDS = ("sspace_gain", "sspace_lowrank", "sspace_ablate", "sspace_rot")
#: Kinds whose basis is the SVD of W oriented by the input's second moment.
ORIENTED_KINDS = ("sspace_corda", "sspace_asvd")
GAIN_KINDS = ("sspace_gain", "sspace_lowrank", "sspace_corda", "sspace_asvd")

#: what each kind's frozen basis is computed from (the diff's metadata records it)
BASIS_SOURCE = {
    **{k: "top-r singular vectors of each target's base weight W (float64 SVD)" for k in SVD_KINDS},
    "sspace_corda": "top-r singular vectors of W·C^½, C = E[x xᵀ] of the target's input over the training prompts "
    "without a persona (damped)",
    "sspace_asvd": "top-r singular vectors of W·diag(c)^½, c = E[x²] of the target's input over the training prompts "
    "without a persona (damped)",
}
#: the candidate names of :func:`planted`
PLANTED = "sspace_planted"
PLAIN_SVD = "sspace_plain_svd"
DEFAULT_RANK = 16
RANK_RANGE = (8, 32)
DEFAULT_K = 8
DEFAULT_EPS = 1e-3
ROT_BLOCK = 4
ROT_MAX_ANGLE = 0.5  # radians, per rotation plane of a block, for κ ≤ 1


# ----------------------------------------------------------------------------- rank, moments
def default_rank(d_in: int, d_out: int, base: int = DEFAULT_RANK) -> int:
    """``base`` clipped to :data:`RANK_RANGE`, then at most ``min(d_in, d_out) // 2`` (≥ 1)."""
    r = min(max(base, RANK_RANGE[0]), RANK_RANGE[1])
    return max(1, min(r, min(d_in, d_out) // 2))


def calibration_moments(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    module_names: Sequence[str],
    batch_size: int = 8,
    diagonal: bool = False,
) -> dict[str, Tensor]:
    """``{name: E[x xᵀ]}`` (float64 ``[d_in, d_in]``, or ``E[x²]`` ``[d_in]`` when ``diagonal``)
    of each named linear's input over every real token of ``texts``.

    ``texts`` are rendered strings (tokenised without added special tokens), padded on the
    right; padding positions are masked out through the attention mask. Uncentred.
    """
    if not texts:
        raise ValueError("calibration_moments needs at least one text")
    modules = _named_modules(model, module_names)
    sums: dict[str, Tensor] = {}
    state: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            xs = args[0][state["mask"].to(args[0].device)].double()
            add = (xs * xs).sum(0) if diagonal else xs.T @ xs
            sums[name] = add if name not in sums else sums[name] + add

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in modules.items()]
    n_tokens = 0
    try:
        with torch.inference_mode(), padding_side(tokenizer, "right"):
            for s in range(0, len(texts), batch_size):
                enc = tokenizer(list(texts[s : s + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False)
                enc = enc.to(input_device(model))
                state["mask"] = enc["attention_mask"].bool()
                n_tokens += int(state["mask"].sum())
                model(**enc, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if n_tokens == 0:
        raise ValueError("calibration_moments: the texts hold no tokens")
    return {n: (sums[n] / n_tokens).cpu() for n in modules}


def _named_modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    out = {}
    for n in names:
        try:
            out[n] = model.get_submodule(n)
        except AttributeError as e:
            raise ValueError(f"the model has no module {n!r}") from e
    return out


def damped(moment: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``C + ε·tr(C)/d·I`` for a full moment ``[d, d]``, ``c + ε·mean(c)`` for a diagonal ``[d]`` (float64)."""
    m = moment.to(dtype=torch.float64, device="cpu")
    scale = float(m.diagonal().mean() if m.ndim == 2 else m.mean())
    if not scale > 0:
        raise ValueError("the calibration moment is zero (or not positive): no tokens reached this module?")
    if m.ndim == 1:
        return m + eps * scale
    m = (m + m.T) / 2
    return m + eps * scale * torch.eye(m.shape[0], dtype=m.dtype)


def _check_moment(kind: str, moment: Tensor | None, d_in: int, name: str = "layer") -> Tensor | None:
    """The moment a kind uses, as float64 on the CPU (None for the plain-SVD kinds)."""
    if kind not in ORIENTED_KINDS:
        return None
    if moment is None:
        raise ValueError(f"{kind} needs calibration moments for {name} (see calibration_moments)")
    m = moment.detach().to(dtype=torch.float64, device="cpu")
    if kind == "sspace_asvd" and m.shape == (d_in, d_in):
        return m.diagonal().clone()
    want = (d_in, d_in) if kind == "sspace_corda" else (d_in,)
    if tuple(m.shape) != want:
        hint = " (sspace_corda needs diagonal=False moments)" if kind == "sspace_corda" else ""
        raise ValueError(f"{kind}: the moment of {name} has shape {tuple(m.shape)}, expected {want}{hint}")
    return m


# ----------------------------------------------------------------------------- bases
def _canonical_signs(U: Tensor, Vh: Tensor) -> tuple[Tensor, Tensor]:
    """Flip each singular pair so that the largest-magnitude entry of ``u_j`` is positive."""
    cols = torch.arange(U.shape[1])
    s = torch.sign(U[U.abs().argmax(dim=0), cols])
    s[s == 0] = 1
    return U * s, Vh * s[:, None]


def _svd(M: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    U, Vh = _canonical_signs(U, Vh)
    return U, S, Vh


def oriented_svd(W: Tensor, moment: Tensor | None = None, eps: float = DEFAULT_EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Full thin factors ``(U [d_out, m], S [m], P [m, d_in])`` with ``W = U diag(S) P``, float64 CPU.

    ``moment`` None: the SVD of ``W`` (``P = Vh``). A full moment ``C``: the SVD of ``W C^{1/2}``
    with ``P = Ṽᵀ C^{−1/2}``; a diagonal one ``c``: the same with ``diag(c)``. Both damped.
    """
    W = W.detach().to(dtype=torch.float64, device="cpu")
    if moment is None:
        return _svd(W)
    m = damped(moment, eps)
    if m.ndim == 1:
        root = m.sqrt()
        U, S, Vh = _svd(W * root)
        return U, S, Vh / root
    lam, Q = torch.linalg.eigh(m)
    root = (Q * lam.sqrt()) @ Q.T
    inv_root = (Q * lam.rsqrt()) @ Q.T
    U, S, Vh = _svd(W @ root)
    return U, S, Vh @ inv_root


# ----------------------------------------------------------------------------- rot layout
def rot_blocks(r: int, block: int = ROT_BLOCK) -> list[tuple[int, ...]]:
    """The coordinate blocks of ``sspace_rot``: ``(0..3), (4..7), …``, the last one smaller."""
    return [tuple(range(s, min(s + block, r))) for s in range(0, r, block)]


def rot_pairs(r: int) -> tuple[list[tuple[int, int]], Tensor]:
    """``(pairs, bound)``: the in-block coordinate pairs ``(a < b)`` that ``theta`` indexes, and
    each pair's entry bound ``tan(θmax/2)/√(pairs in its block)`` (float64)."""
    pairs: list[tuple[int, int]] = []
    bound: list[float] = []
    for blk in rot_blocks(r):
        n = len(blk) * (len(blk) - 1) // 2
        for i, a in enumerate(blk):
            for b in blk[i + 1 :]:
                pairs.append((a, b))
                bound.append(math.tan(ROT_MAX_ANGLE / 2) / math.sqrt(n))
    return pairs, torch.tensor(bound, dtype=torch.float64)


class _ClampST(torch.autograd.Function):
    """``clamp(x, 0, 1)`` forward, identity gradient (straight-through)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def _gather(t: Tensor, src: Tensor, dim: int) -> Tensor:
    """``t`` re-indexed along ``dim``: slot ``p`` takes ``t[src[p]]``, or zeros where ``src[p] < 0``."""
    vals = t.index_select(dim, src.clamp(min=0))
    shape = [1] * t.ndim
    shape[dim] = -1
    return torch.where((src >= 0).view(shape), vals, torch.zeros_like(vals))


# ----------------------------------------------------------------------------- the layer
class SSpaceLinear(nn.Module):
    """A linear layer whose update lives in a frozen singular subspace (see the module docstring).

    ``base``: the ``nn.Linear`` it replaces (its weight is kept, not copied, as ``W0``).
    ``r``: how many directions (default :func:`default_rank`); ``indices``: which ones, into
    the full SVD sorted by singular value (default ``0 … r−1``, the top ``r``).
    ``moments``: the calibration moment of this layer's input (corda: ``[d_in, d_in]``;
    asvd: ``[d_in]`` or a full one, whose diagonal is used). ``k``: lowrank's inner rank and
    ablate's number of ablated directions (capped at ``r``). ``seed``: the random inits.
    """

    def __init__(
        self,
        base: nn.Linear,
        kind: str,
        r: int | None = None,
        *,
        moments: Tensor | None = None,
        k: int = DEFAULT_K,
        eps: float = DEFAULT_EPS,
        seed: int = 0,
        kappa: float = 1.0,
        indices: Sequence[int] | None = None,
        name: str = "layer",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown S-space kind {kind!r}; choose one of {KINDS}")
        W = module_weight(base)
        self.kind, self.k, self.eps, self.seed, self.kappa = kind, k, eps, seed, kappa
        self.out_features, self.in_features = W.shape
        self.param_dtype = W.dtype if W.dtype in (torch.float32, torch.float64) else torch.float32
        self._moment = _check_moment(kind, moments, self.in_features, name)
        self.register_buffer("W0", W, persistent=False)
        self.register_buffer("bias", None if base.bias is None else base.bias.detach())
        if indices is None:
            indices = range(r if r is not None else default_rank(self.in_features, self.out_features))
        self._set_basis(indices)
        self._init_params()

    # -- basis
    @property
    def r(self) -> int:
        return int(self.indices.numel())

    def _set_basis(self, indices: Iterable[int]) -> None:
        U, S, P = oriented_svd(self.W0, self._moment, self.eps)
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        if idx.numel() == 0 or idx.unique().numel() != idx.numel() or idx.min() < 0 or idx.max() >= S.numel():
            raise ValueError(f"indices must be distinct, non-empty and in [0, {S.numel()}): got {idx.tolist()}")
        U_r, S_r, P_r = U[:, idx], S[idx], P[idx]
        W_res = self.W0.detach().to(dtype=torch.float64, device="cpu") - (U_r * S_r) @ P_r
        dev = self.W0.device
        self.register_buffer("indices", idx.to(dev))
        self.register_buffer("U_r", U_r.contiguous().to(dev))
        self.register_buffer("S_r", S_r.to(dev))
        self.register_buffer("P", P_r.contiguous().to(dev))
        self.register_buffer("W_res", W_res.to(dtype=self.W0.dtype, device=dev))

    def _param(self, t: Tensor) -> nn.Parameter:
        return nn.Parameter(t.to(dtype=self.param_dtype, device=self.W0.device).contiguous())

    def _init_params(self) -> None:
        r, gen = self.r, torch.Generator().manual_seed(self.seed)
        if self.kind in GAIN_KINDS:
            self.g = self._param(torch.zeros(r))
        if self.kind == "sspace_lowrank":
            self.A = self._param(torch.randn(self.k, r, generator=gen, dtype=torch.float64) / math.sqrt(r))
            self.B = self._param(torch.zeros(r, self.k))
        if self.kind == "sspace_ablate":
            k = min(self.k, r)
            self.c = self._param(torch.randn(r, k, generator=gen, dtype=torch.float64))
            self.alpha = self._param(torch.zeros(k))
        if self.kind == "sspace_rot":
            self.theta = self._param(torch.zeros(len(rot_pairs(r)[0])))
            self.shift = self._param(torch.zeros(r))

    # -- the core
    def ablation(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``Ĉ diag(α) Ĉᵀ`` ``[r, r]`` (ablate): ``Ĉ`` the orthonormalised ``c``, ``α`` clamped to [0, 1]."""
        C = torch.linalg.qr(self.c.to(dtype)).Q
        return (C * _ClampST.apply(self.alpha.to(dtype))) @ C.T

    def ablate_operator(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``M = I − κ Ĉ diag(α) Ĉᵀ`` ``[r, r]``: the ablate map on the top-r output coordinates."""
        return torch.eye(self.r, dtype=dtype, device=self.c.device) - self.kappa * self.ablation(dtype)

    def rotation(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``R`` ``[r, r]`` (rot): block-diagonal Cayley rotation, every plane's angle ≤ θmax for κ ≤ 1."""
        pairs, bound = rot_pairs(self.r)
        eye = torch.eye(self.r, dtype=dtype, device=self.theta.device)
        if not pairs:
            return eye
        rows = torch.tensor([a for a, _ in pairs], device=eye.device)
        cols = torch.tensor([b for _, b in pairs], device=eye.device)
        vals = self.kappa * bound.to(dtype=dtype, device=eye.device) * torch.tanh(self.theta.to(dtype))
        A = torch.zeros_like(eye).index_put((rows, cols), vals)
        A = A - A.T
        return torch.linalg.solve(eye - A, eye + A)

    def core(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``D`` ``[r, r]`` with ``ΔW = U_r D P``, from the parameters by the kind's formula."""
        S = self.S_r.to(dtype)
        kap = self.kappa
        if self.kind == "sspace_ablate":
            return -kap * self.ablation(dtype) * S[None, :]
        if self.kind == "sspace_rot":
            return (S + kap * self.shift.to(dtype))[:, None] * self.rotation(dtype) - torch.diag(S)
        D = torch.diag(S * F.elu(kap * self.g.to(dtype)))
        if self.kind == "sspace_lowrank":
            D = D + kap * (self.B.to(dtype) @ self.A.to(dtype))
        return D

    def delta(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``ΔW = U_r D P`` ``[d_out, d_in]`` by the formula (computed in float64, then cast)."""
        return (self.U_r @ self.core(torch.float64) @ self.P).to(dtype)

    def left_basis(self) -> Tensor:
        """``U_r`` ``[d_out, r]`` float64, orthonormal: every ΔW's column space lies in its span."""
        return self.U_r.detach().clone()

    def right_basis(self) -> Tensor:
        """An orthonormal basis ``[d_in, r]`` float64 of the row space of ``P`` (``Vh_rᵀ`` itself for
        the plain-SVD kinds): every ΔW's row space lies in its span."""
        if self.kind in SVD_KINDS:
            return self.P.T.detach().clone()
        return torch.linalg.qr(self.P.T.detach()).Q

    # -- forward
    def forward(self, x: Tensor) -> Tensor:
        dt = x.dtype
        cdt = torch.promote_types(dt, self.param_dtype)
        core = (torch.diag(self.S_r.to(cdt)) + self.core(cdt)).to(dt)
        bias = None if self.bias is None else self.bias.to(dt)
        y = F.linear(x, self.W_res.to(dt), bias)
        z = F.linear(F.linear(x, self.P.to(dt)), core)
        return y + F.linear(z, self.U_r.to(dt))

    def extra_repr(self) -> str:
        return f"{self.kind}, in={self.in_features}, out={self.out_features}, r={self.r}, kappa={self.kappa}"

    # -- re-selection
    def reselect(self, indices: Sequence[int]) -> None:
        """Use the directions ``indices`` (into the full SVD) from now on.

        A parameter attached to a direction that stays selected moves with it; new
        directions start at zero (see rule 4 in the module docstring). New parameter tensors
        replace the old ones: build the optimizer afterwards.
        """
        old = [int(i) for i in self.indices.tolist()]
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in self.named_parameters(recurse=False)}
            ablation = self.ablation() if self.kind == "sspace_ablate" else None
            self._set_basis(indices)
            pos = {i: p for p, i in enumerate(old)}
            src = torch.tensor([pos.get(int(i), -1) for i in self.indices.tolist()], device=self.W0.device)
            self._reindex(saved, src, old, ablation)

    def _reindex(self, saved: dict[str, Tensor], src: Tensor, old: list[int], ablation: Tensor | None) -> None:
        if "g" in saved:
            self.g = self._param(_gather(saved["g"], src, 0))
        if self.kind == "sspace_lowrank":
            self.A = self._param(_gather(saved["A"], src, 1))
            self.B = self._param(_gather(saved["B"], src, 0))
        if self.kind == "sspace_ablate":
            self._refactor_ablation(_gather(_gather(ablation, src, 0), src, 1))
        if self.kind == "sspace_rot":
            self.shift = self._param(_gather(saved["shift"], src, 0))
            self.theta = self._param(_moved_theta(saved["theta"], src.tolist(), len(old), self.r))

    def _refactor_ablation(self, N: Tensor) -> None:
        """Set ``c``, ``alpha`` so that ``Ĉ diag(α) Ĉᵀ = N`` (``N`` PSD, rank ≤ k, spectrum in [0, 1])."""
        k = min(self.k, self.r)
        lam, Q = torch.linalg.eigh((N + N.T) / 2)
        top = torch.argsort(lam, descending=True)[:k]
        self.c = self._param(Q[:, top])
        self.alpha = self._param(lam[top].clamp(0.0, 1.0))


def _moved_theta(theta: Tensor, src: list[int], r_old: int, r_new: int) -> Tensor:
    """rot's generator after a reselect: a new block whose directions were exactly one old
    block (in any order) takes that block's generator, permuted; every other block is reset."""
    old_pairs, _ = rot_pairs(r_old)
    old_index = {p: n for n, p in enumerate(old_pairs)}
    old_blocks = {frozenset(b) for b in rot_blocks(r_old)}
    new_pairs, _ = rot_pairs(r_new)
    out = torch.zeros(len(new_pairs), dtype=theta.dtype, device=theta.device)
    kept = {p for blk in rot_blocks(r_new) if frozenset(src[q] for q in blk) in old_blocks for p in blk}
    for n, (a, b) in enumerate(new_pairs):
        if a in kept:
            pa, pb = src[a], src[b]
            out[n] = theta[old_index[(pa, pb)]] if pa < pb else -theta[old_index[(pb, pa)]]
    return out


# ----------------------------------------------------------------------------- the model
def target_names(layers: Sequence[int], targets: Sequence[str]) -> list[str]:
    """``model.layers.{i}.self_attn.<t>`` / ``model.layers.{i}.mlp.<t>`` for every layer and target."""
    out = []
    for i in layers:
        for t in targets:
            if t in ATTN_PROJ:
                out.append(f"model.layers.{i}.self_attn.{t}")
            elif t in MLP_PROJ:
                out.append(f"model.layers.{i}.mlp.{t}")
            else:
                raise ValueError(f"unknown target {t!r}; choose among {ATTN_PROJ + MLP_PROJ}")
    return out


def _layer_seed(seed: int, name: str) -> int:
    """A per-layer seed: the same for the same (seed, module name) in every wrap."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


class SSpaceModel(nn.Module):
    """A deep copy of a causal LM with the named linears replaced by :class:`SSpaceLinear`.

    Every base weight is frozen; only the adapter parameters have ``requires_grad``. Names
    keep the block index (``base_model.model.layers.3.self_attn.o_proj.g``).
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        names: Sequence[str],
        r: int | None = None,
        *,
        moments: Mapping[str, Tensor] | None = None,
        seed: int = 0,
        k: int = DEFAULT_K,
        eps: float = DEFAULT_EPS,
        kappa: float = 1.0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.base_model = copy.deepcopy(model)
        self.base_model.requires_grad_(False)
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name)
            base = getattr(parent, child)
            if not isinstance(base, nn.Linear):
                raise ValueError(f"{name} is a {type(base).__name__}, not an nn.Linear")
            m = None if moments is None else moments.get(name)
            layer = SSpaceLinear(base, kind, r, moments=m, k=k, eps=eps, seed=_layer_seed(seed, name), kappa=kappa, name=name)
            setattr(parent, child, layer)
        self.targets = tuple(names)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.base_model.get_output_embeddings()

    @property
    def config(self):
        return self.base_model.config

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    def sspace_layers(self) -> dict[str, SSpaceLinear]:
        """``{base module name: layer}`` (``model.layers.3.self_attn.o_proj``)."""
        return {n: m for n, m in self.base_model.named_modules() if isinstance(m, SSpaceLinear)}

    def set_kappa(self, kappa: float) -> None:
        for m in self.sspace_layers().values():
            m.kappa = kappa


def wrap_sspace(
    model: nn.Module,
    kind: str,
    layers: Sequence[int],
    targets: Sequence[str],
    r: int | None = None,
    *,
    moments: Mapping[str, Tensor] | None = None,
    seed: int = 0,
    k: int = DEFAULT_K,
    eps: float = DEFAULT_EPS,
    kappa: float = 1.0,
) -> SSpaceModel:
    """An :class:`SSpaceModel` of ``kind`` on ``targets`` of blocks ``layers`` (``model`` untouched).

    corda/asvd need ``moments`` keyed by base module name (:func:`calibration_moments`).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown S-space kind {kind!r}; choose one of {KINDS}")
    names = target_names(layers, targets)
    if kind in ORIENTED_KINDS:
        missing = [n for n in names if moments is None or n not in moments]
        if missing:
            raise ValueError(f"{kind} needs calibration moments for {', '.join(missing)} (see calibration_moments)")
    return SSpaceModel(model, kind, names, r, moments=moments, seed=seed, k=k, eps=eps, kappa=kappa)


def sspace_delta(wrapped: SSpaceModel) -> dict[str, Tensor]:
    """``{base parameter name: ΔW}`` (float32, contiguous, CPU) from the formula (float64, then cast)."""
    return {f"{n}.weight": m.delta().to(torch.float32).cpu().contiguous() for n, m in wrapped.sspace_layers().items()}


def sspace_bases(wrapped: SSpaceModel) -> dict[str, Tensor]:
    """``{base parameter name: U_r}`` (float64 ``[d_out, r]``, CPU): the span every ΔW lies in."""
    return {f"{n}.weight": m.left_basis().cpu() for n, m in wrapped.sspace_layers().items()}


def plain_left_basis(layer: SSpaceLinear) -> Tensor:
    """The top-``r`` left singular vectors of the layer's base weight ``W`` (float64 ``[d_out, r]``),
    whatever the kind's orientation: the basis a corda/asvd diff must NOT be confined to."""
    U, _, _ = oriented_svd(layer.W0, None)
    return U[:, : layer.r].cpu()


def planted(wrapped: SSpaceModel) -> dict[str, dict[str, Tensor]]:
    """The known answer of an S-space diff: ``{PLANTED: {base parameter name: U_r}}`` (the
    basis every ΔW lies in) and, for corda/asvd, ``{PLAIN_SVD: {…: W's own top-r U}}``
    beside it (the plain SVD basis, which those diffs are not confined to)."""
    out = {PLANTED: sspace_bases(wrapped)}
    if wrapped.kind in ORIENTED_KINDS:
        out[PLAIN_SVD] = {f"{n}.weight": plain_left_basis(m) for n, m in wrapped.sspace_layers().items()}
    return out
