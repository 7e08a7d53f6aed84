"""Subspace algebra for the sweep: bases, unions, intersections, projections, angles.

Conventions shared by every function here:

- A *basis* is a ``[d, k]`` matrix with orthonormal columns. ``k`` may be 0 (``[d, 0]``):
  an empty subspace is a valid answer (e.g. two subspaces that do not intersect).
- Work is done in float64; results come back in the dtype of the (first) input. The heavy
  factorisations (:func:`gram`, the eigensolvers behind :func:`top_eigvecs` and
  :func:`left_svd_basis`, :func:`svd`) can run elsewhere inside :func:`compute_on` (the model's
  GPU; float32): their results still come back as float64 CPU tensors.
- Ranks are *true* ranks: directions whose singular value is at most ``rtol`` times the
  largest one are dropped, never padded with arbitrary directions. So a request for
  ``k`` directions can return fewer.
- Sign convention: every column of an SVD / eigen / PCA output is flipped so that its
  largest-magnitude entry is positive (ties: the first such entry), so results are
  deterministic across runs and LAPACK drivers.
- Large Gram matrices (``d × d`` with ``d`` ≤ a few thousand) are eigendecomposed with a
  symmetric solver; for a top-``k`` subset with ``k ≪ d`` only those eigenpairs are
  computed (LAPACK's relatively robust representation driver), which is several times
  faster than a full decomposition.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import scipy.linalg  # noqa: F401  (load scipy's BLAS so that its threads are limited too)
import torch
from scipy.linalg import blas, subspace_angles
from threadpoolctl import threadpool_limits

from ws.core.caveats import ORTH_TOL

__all__ = [
    "DEFAULT_RTOL",
    "sign_fix",
    "top_eigvecs",
    "bottom_eigvecs",
    "left_svd_basis",
    "right_svd_basis",
    "pca",
    "unit_row_basis",
    "orthonormalize",
    "union",
    "intersection",
    "bisector_intersection",
    "complement",
    "project_away",
    "project_gram",
    "principal_angles",
    "mean_principal_cosine",
    "effective_rank",
    "is_orthonormal",
    "check_orthonormal",
    "orthonormality_error",
    "expand_kv",
    "psd_sqrt",
    "haar_orthonormal",
    "haar_frames",
    "kmeans",
    "blas_threads",
    "gram",
    "svd",
    "eigh",
    "f64",
    "compute_on",
    "compute_in",
    "compute_mode",
    "LINALG_MODES",
    "rank_floor",
]

#: relative singular-value tolerance below which a direction counts as absent
DEFAULT_RTOL = 1e-6


def f64(x: torch.Tensor) -> torch.Tensor:
    """A detached float64 CPU copy (or view, when it already is one) of ``x``."""
    return x.detach().to(device="cpu", dtype=torch.float64)


def _empty(d: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(d, 0, dtype=dtype)


# ----------------------------------------------------------------------------- where the work runs
#: the (device, dtype) of the heavy factorisations, innermost :func:`compute_on` block last;
#: empty: the CPU in float64
_COMPUTE: list[tuple[torch.device, torch.dtype]] = []


@contextmanager
def compute_on(device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> Iterator[None]:
    """Inside the block, :func:`gram`, the symmetric eigensolvers and :func:`svd` run on ``device``
    (None: the CPU) in ``dtype`` (float64 or float32); what they return is still float64 on the CPU.

    Args:
        device: where the factorisations run (the model's device, typically a GPU).
        dtype: ``torch.float64`` (results equal the CPU's to float64 rounding) or ``torch.float32``
            (faster, notably on GPUs with slow float64; directions below the float32 noise floor
            count as absent, :func:`rank_floor`).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_on: dtype must be float32 or float64, not {dtype}")
    _COMPUTE.append((torch.device(device if device is not None else "cpu"), dtype))
    try:
        yield
    finally:
        _COMPUTE.pop()


def _where() -> tuple[torch.device, torch.dtype]:
    """The innermost :func:`compute_on` block's ``(device, dtype)``; the CPU in float64 outside any."""
    return _COMPUTE[-1] if _COMPUTE else (torch.device("cpu"), torch.float64)


def _offload() -> tuple[torch.device, torch.dtype] | None:
    """:func:`_where`, or None on the default path (the CPU in float64, through LAPACK / BLAS as always)."""
    dev, dt = _where()
    return None if dev.type == "cpu" and dt == torch.float64 else (dev, dt)


#: the choices of ``WS_LINALG``: float64 on the host (the reference), float64 on the model's device,
#: float32 on the model's device
LINALG_MODES = ("cpu", "device", "device-float32")


def compute_in(mode: str, device: torch.device | str | None):
    """The :func:`compute_on` block of ``WS_LINALG``'s ``mode`` for a model on ``device`` (a model
    whose first weights are offloaded, on ``meta``, computes on the CPU)."""
    if mode not in LINALG_MODES:
        raise ValueError(f"unknown linalg mode {mode!r}: one of {', '.join(LINALG_MODES)}")
    if device is not None and torch.device(device).type == "meta":
        device = None
    if mode == "cpu":
        return compute_on(None, torch.float64)
    return compute_on(device, torch.float32 if mode == "device-float32" else torch.float64)


def compute_mode() -> tuple[str, torch.dtype]:
    """``(device, dtype)`` of the heavy factorisations here (``("cpu", torch.float64)`` outside any
    :func:`compute_on` block); what a cache of their results keys on."""
    dev, dt = _where()
    return str(dev), dt


def rank_floor(rtol: float, n: int) -> float:
    """The eigenvalue share (of the largest) at or below which a Gram's direction counts as absent:
    ``rtol²``, raised in float32 work to its rounding noise ``n·eps₃₂`` (``n``: the Gram's size;
    about 1e-4 at n = 1024, so singular values below about 1 % of the largest are dropped there)."""
    c = _offload()
    if c is None or c[1] == torch.float64:
        return rtol**2
    return max(rtol**2, n * torch.finfo(torch.float32).eps)


# ----------------------------------------------------------------------------- threads
@contextmanager
def blas_threads(n: int | None = 1) -> Iterator[None]:
    """Limit torch's and the BLAS/LAPACK/OpenMP libraries' threads to ``n`` inside the block
    (None: no change); restored on exit.

    The eigensolvers of ``d × d`` matrices (d ≈ 600) gain little from a second thread and
    slow down by orders of magnitude when the cores are shared with other processes (the
    threads wait on each other); one thread is the robust choice for the many small solves.
    """
    if n is None:
        yield
        return

    old_torch = torch.get_num_threads()
    # torch links its math library statically, out of threadpoolctl's sight: set it directly
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        torch.set_num_threads(old_torch)


def sign_fix(B: torch.Tensor) -> torch.Tensor:
    """Flip columns so that each column's largest-|entry| is positive."""
    if B.ndim != 2 or B.shape[1] == 0:
        return B
    idx = B.abs().argmax(dim=0)
    s = torch.sign(B[idx, torch.arange(B.shape[1])])
    s[s == 0] = 1
    return B * s


# ----------------------------------------------------------------------------- eigen / SVD
def gram(M: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``MMᵀ`` (or ``MᵀM`` with ``transpose``) in float64, exactly symmetric.

    Uses the BLAS symmetric rank-k update (half the multiplications of a general product)
    on the float64 copy of ``M``; inside :func:`compute_on`, a product on its device and dtype,
    symmetrised, returned as float64 on the CPU.
    """
    if (c := _offload()) is not None:
        A = M.detach().to(*c)
        C = A.T @ A if transpose else A @ A.T
        return (0.5 * (C + C.T)).to("cpu", torch.float64)
    A = np.ascontiguousarray(f64(M).numpy())  # C order: A.T is a Fortran-order view
    if A.shape[0] == 0 or A.shape[1] == 0:
        n = A.shape[1] if transpose else A.shape[0]
        return torch.zeros(n, n, dtype=torch.float64)
    # Fortran-order At = Mᵀ: syrk(trans=0) gives At·Atᵀ = MᵀM, syrk(trans=1) gives Atᵀ·At = MMᵀ
    C = blas.dsyrk(1.0, A.T, trans=0 if transpose else 1, lower=0)
    U = np.triu(C)
    return torch.from_numpy(U + np.triu(U, 1).T)


def _eigh_desc(G: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of a symmetric float64 matrix, eigenvalues descending (float64, CPU)."""
    n = G.shape[0]
    G = 0.5 * (G + G.T)
    c = _offload()
    subset = k is not None and 0 < k <= n // 3 and n >= 128
    if c is not None and not (subset and c[0].type == "cpu"):  # a GPU's solver, whole
        vals, vecs = torch.linalg.eigh(G.to(*c))
        vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
        return vals.to("cpu", torch.float64), vecs.to("cpu", torch.float64)
    if subset:  # LAPACK's subset driver, in float32 inside a float32 block on the CPU
        A = G.numpy() if c is None else G.to(torch.float32).numpy()
        vals, vecs = scipy.linalg.eigh(A, subset_by_index=[n - k, n - 1], driver="evr", check_finite=False)
        vals, vecs = vals.astype(np.float64), vecs.astype(np.float64)
        vals = torch.from_numpy(np.ascontiguousarray(vals[::-1]))
        vecs = torch.from_numpy(np.ascontiguousarray(vecs[:, ::-1]))
        return vals, vecs
    vals, vecs = torch.linalg.eigh(G)
    vals, vecs = vals.flip(0), vecs.flip(1)
    if k is not None:
        vals, vecs = vals[:k], vecs[:, :k]
    return vals, vecs


def top_eigvecs(G: torch.Tensor, k: int | None = None, rtol: float = DEFAULT_RTOL) -> torch.Tensor:
    """Orthonormal top-``k`` eigenvectors of a PSD Gram ``G`` (``[d, d]``) -> ``[d, r]``.

    ``rtol`` is on the singular-value scale (``√λ``): eigenvalues ``λ ≤ rtol² · λ_max`` (or
    ``≤ 0``) are dropped, so ``r ≤ k`` is the true rank. ``k=None``: all of them.
    """
    dtype = G.dtype if G.is_floating_point() else torch.float32
    d = G.shape[0]
    if d == 0 or (k is not None and k <= 0):
        return _empty(d, dtype)
    vals, vecs = _eigh_desc(f64(G), k)
    lam_max = float(vals[0]) if vals.numel() else 0.0
    if not lam_max > 0:
        return _empty(d, dtype)
    keep = vals > rank_floor(rtol, d) * lam_max
    return sign_fix(vecs[:, keep]).to(dtype)


def eigh(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every eigenpair of the symmetric part of ``G``, eigenvalues ASCENDING, float64 on the CPU
    (computed on :func:`compute_on`'s device and dtype inside its block)."""
    G = f64(G)
    vals, vecs = torch.linalg.eigh((0.5 * (G + G.T)).to(*_where()))
    return vals.to("cpu", torch.float64), vecs.to("cpu", torch.float64)


def bottom_eigvecs(G: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` eigenvectors of a symmetric ``G`` with the SMALLEST eigenvalues, ascending."""
    dtype = G.dtype
    vals, vecs = eigh(G)
    return sign_fix(vecs[:, :k]).to(dtype)


def left_svd_basis(M: torch.Tensor, k: int | None = None, rtol: float = DEFAULT_RTOL) -> torch.Tensor:
    """Top-``k`` left singular vectors (column space) of ``M [d, m]`` -> ``[d, r]``, ``r ≤ k``.

    Computed through the smaller Gram: ``MMᵀ`` (``d × d``) when ``m ≥ d``; ``MᵀM``
    (``m × m``, then ``U = MV/σ``) when ``64 < m < d``; a thin SVD when ``m ≤ 64``.
    All three give the same subspace; the Grams are much cheaper for large matrices.
    """
    dtype = M.dtype if M.is_floating_point() else torch.float32
    d, m = M.shape
    if d == 0 or m == 0 or (k is not None and k <= 0):
        return _empty(d, dtype)
    M = f64(M)
    if m >= d:
        return top_eigvecs(gram(M), k, rtol).to(dtype)
    if m > 64:
        vals, V = _eigh_desc(gram(M, transpose=True), k)
        lam_max = float(vals[0]) if vals.numel() else 0.0
        if not lam_max > 0:
            return _empty(d, dtype)
        keep = vals > rank_floor(rtol, m) * lam_max
        U = (M @ V[:, keep]) / vals[keep].sqrt()
        U, _ = torch.linalg.qr(U)  # polish: columns orthonormal to rounding
        return sign_fix(U).to(dtype)
    U, S, _ = torch.linalg.svd(M, full_matrices=False)
    if not float(S[0]) > 0:
        return _empty(d, dtype)
    keep = S > rtol * S[0]
    U = U[:, keep]
    if k is not None:
        U = U[:, :k]
    return sign_fix(U).to(dtype)


def svd(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reduced SVD ``(U, S, Vh)`` of ``M`` in float64 on the CPU; inside :func:`compute_on`,
    computed on its device and dtype and returned as float64 on the CPU."""
    U, S, Vh = torch.linalg.svd(M.detach().to(*_where()), full_matrices=False)
    return tuple(x.to("cpu", torch.float64) for x in (U, S, Vh))


def right_svd_basis(M: torch.Tensor, k: int | None = None, rtol: float = DEFAULT_RTOL) -> torch.Tensor:
    """Top-``k`` right singular vectors (row space) of ``M [m, d]`` -> ``[d, r]``."""
    return left_svd_basis(M.T, k, rtol)


def pca(X: torch.Tensor, k: int | None, rtol: float = DEFAULT_RTOL) -> torch.Tensor:
    """Top-``k`` principal directions of the rows of ``X [n, d]`` (mean-centred) -> ``[d, r]``.

    ``r ≤ min(k, n − 1)``: ``n`` centred rows span at most ``n − 1`` dimensions.
    """
    dtype = X.dtype if X.is_floating_point() else torch.float32
    if X.ndim != 2:
        raise ValueError(f"pca expects rows [n, d], got shape {tuple(X.shape)}")
    if X.shape[0] < 2:
        return _empty(X.shape[1], dtype)
    X = f64(X)
    Xc = X - X.mean(dim=0, keepdim=True)
    return right_svd_basis(Xc, k, rtol).to(dtype)


def unit_row_basis(X: torch.Tensor, k: int | None, rtol: float = DEFAULT_RTOL) -> torch.Tensor:
    """The rank-``k`` subspace holding the largest mean share of the rows of ``X [n, d]`` at
    unit norm: top-``k`` right singular vectors of the unit rows, NOT mean-centred -> ``[d, r]``.

    This is the maximiser of what ``R_act`` scores (the mean of ``‖x̂ᵀB‖²`` over rows), so a
    direction every row shares stays in it (a mean-centred :func:`pca` drops it). Zero rows
    (norm ≤ ``rtol`` × the largest) are left out; all-zero ``X`` gives rank 0.
    """
    dtype = X.dtype if X.is_floating_point() else torch.float32
    if X.ndim != 2:
        raise ValueError(f"unit_row_basis expects rows [n, d], got shape {tuple(X.shape)}")
    X = f64(X)
    norms = X.norm(dim=1)
    top = float(norms.max()) if norms.numel() else 0.0
    if not top > 0:
        return _empty(X.shape[1], dtype)
    keep = norms > rtol * top
    return right_svd_basis(X[keep] / norms[keep, None], k, rtol).to(dtype)


def orthonormalize(M: torch.Tensor, tol: float = DEFAULT_RTOL) -> torch.Tensor:
    """Orthonormal basis ``[d, r]`` of the column span of ``M [d, m]``, rank-revealing.

    Directions with singular value ≤ ``tol`` × the largest are dropped; the columns come
    ordered by singular value (the most strongly represented direction first).
    """
    return left_svd_basis(M, None, tol)


def union(*bases: torch.Tensor, k: int | None = None, tol: float = DEFAULT_RTOL) -> torch.Tensor:
    """Orthonormal basis of the sum of the spans of ``bases`` (each ``[d, k_i]``).

    Shared directions are not double-counted (true rank). ``k``: keep the ``k`` most
    shared directions (largest singular values of ``[B_1 | B_2 | …]``).
    """
    if not bases:
        raise ValueError("union needs at least one basis")
    d = bases[0].shape[0]
    dtype = bases[0].dtype
    parts = [f64(B) for B in bases if B is not None and B.shape[1] > 0]
    if not parts:
        return _empty(d, dtype)
    return left_svd_basis(torch.cat(parts, dim=1), k, tol).to(dtype)


def _principal_pairs(A: torch.Tensor, B: torch.Tensor):
    """Principal vectors of span(A), span(B): (a [d,r], b [d,r], cosines [r]) ascending angle.

    Hand-written: the intersection needs the vectors, and the library gives the angles only."""
    A, B = f64(A), f64(B)
    U, S, Vh = torch.linalg.svd(A.T @ B, full_matrices=False)
    r = S.shape[0]
    a = A @ U[:, :r]
    b = B @ Vh[:r].T
    return a, b, S.clamp(-1.0, 1.0)


def _pair_average(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Unit ``(a_i + b_i)/‖a_i + b_i‖``; columns are mutually orthogonal for principal pairs."""
    s = a + b
    n = s.norm(dim=0, keepdim=True)
    ok = n.squeeze(0) > 1e-12
    return s[:, ok] / n[:, ok]


def intersection(A: torch.Tensor, B: torch.Tensor, max_angle_deg: float = 30.0) -> torch.Tensor:
    """True intersection of ``span(A)`` and ``span(B)`` by principal angles -> ``[d, r]``.

    Every principal pair ``(a_i, b_i)`` whose principal angle is below ``max_angle_deg``
    contributes the unit average ``(a_i + b_i)/‖a_i + b_i‖`` (the bisector of a pair of
    nearly equal directions). Pairs further apart than the threshold do not count as
    shared, so the result may have rank 0 (``[d, 0]``): two generic low-dimensional
    subspaces of a large space do not intersect. The averaged directions of distinct
    pairs are exactly orthogonal (``a_iᵀb_j = 0`` for ``i ≠ j``).
    """
    d = A.shape[0]
    dtype = A.dtype
    if A.shape[1] == 0 or B.shape[1] == 0:
        return _empty(d, dtype)
    a, b, cos = _principal_pairs(A, B)
    keep = torch.arccos(cos) < math.radians(max_angle_deg)
    if not bool(keep.any()):
        return _empty(d, dtype)
    return sign_fix(_pair_average(a[:, keep], b[:, keep])).to(dtype)


def bisector_intersection(A: torch.Tensor, B: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` closest principal pairs' normalised sums, whatever their angle -> ``[d, ≤k]``.

    This is the older "intersection" behaviour kept as a named option: it always returns
    ``min(k, rank A, rank B)`` directions, even when the two subspaces are orthogonal.
    """
    d = A.shape[0]
    dtype = A.dtype
    if A.shape[1] == 0 or B.shape[1] == 0 or k <= 0:
        return _empty(d, dtype)
    a, b, _ = _principal_pairs(A, B)
    return sign_fix(_pair_average(a[:, :k], b[:, :k])).to(dtype)


def complement(B: torch.Tensor, d: int | None = None) -> torch.Tensor:
    """Orthonormal basis ``[d, d − r]`` of the orthogonal complement of ``span(B)``."""
    if d is not None and B.shape[0] != d:
        raise ValueError(f"basis has {B.shape[0]} rows, expected d={d}")
    d = B.shape[0]
    dtype = B.dtype
    if B.shape[1] == 0:
        return torch.eye(d, dtype=dtype)
    Q = orthonormalize(f64(B))
    Qc, _ = torch.linalg.qr(Q, mode="complete")
    return sign_fix(Qc[:, Q.shape[1] :]).to(dtype)


def project_away(M: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``M − B(BᵀM)``: the columns of ``M [d, m]`` with their ``span(B)`` part removed."""
    if B.shape[1] == 0:
        return M
    Mf, Bf = f64(M), f64(B)
    return (Mf - Bf @ (Bf.T @ Mf)).to(M.dtype)


def project_gram(G: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``(I − QQᵀ) G (I − QQᵀ)`` for an orthonormal ``Q [d, q]`` in ``O(d² q)``.

    If ``G = MMᵀ`` this is the Gram of ``project_away(M, Q)``.
    """
    if Q.shape[1] == 0:
        return G
    G, Q = f64(G), f64(Q)
    A = G @ Q  # [d, q]
    QtA = Q.T @ A  # [q, q]
    return G - Q @ A.T - A @ Q.T + Q @ QtA @ Q.T


# ----------------------------------------------------------------------------- angles / rank
def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between ``span(A)`` and ``span(B)``.

    ``A`` and ``B`` must have orthonormal columns; ``min(k_A, k_B)`` angles. Small angles
    are accurate too (the library takes them from sines, not from cosines near 1).
    """
    if A.shape[1] == 0 or B.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)

    return torch.from_numpy(subspace_angles(f64(A).numpy(), f64(B).numpy())[::-1].copy())


def mean_principal_cosine(A: torch.Tensor, B: torch.Tensor) -> float:
    """Mean cosine of the principal angles (1 = one contains the other; NaN if either is empty)."""
    if A.shape[1] == 0 or B.shape[1] == 0:
        return float("nan")
    return float(torch.cos(principal_angles(A, B)).mean())


def effective_rank(x: torch.Tensor) -> float:
    """Participation ratio ``(Σλ)² / Σλ²`` of the eigenvalues ``λ = s²``.

    ``x``: a 1-D tensor of singular values, or a 2-D matrix (its singular values, uncentred).
    A flat spectrum of ``r`` equal values gives ``r``; all zeros gives 0.
    """
    x = f64(x)
    s = x if x.ndim == 1 else torch.linalg.svdvals(x)
    lam = s**2
    den = float((lam**2).sum())
    if den <= 0:
        return 0.0
    return float(lam.sum() ** 2 / den)


def orthonormality_error(B: torch.Tensor) -> float:
    """``max |BᵀB − I|`` (0 for an empty basis; inf if not finite)."""
    if B.shape[1] == 0:
        return 0.0
    Bf = f64(B)
    if not bool(torch.isfinite(Bf).all()):
        return float("inf")
    return float((Bf.T @ Bf - torch.eye(Bf.shape[1], dtype=torch.float64)).abs().max())


def is_orthonormal(B: torch.Tensor, tol: float = ORTH_TOL) -> bool:
    return B.ndim == 2 and orthonormality_error(B) <= tol


def check_orthonormal(B: torch.Tensor, name: str = "basis", layer: int | None = None, tol: float = ORTH_TOL) -> float:
    """Raise ``ValueError`` unless ``B`` (``[d, k]``) has orthonormal columns; return ``max|BᵀB − I|``.

    The message names the candidate, the layer and the measured error and says how to fix
    it. ``k = 0`` passes.
    """
    where = f"candidate {name!r}" + (f" at layer {layer}" if layer is not None else "")
    if not isinstance(B, torch.Tensor) or B.ndim != 2:
        raise ValueError(
            f"{where}: a basis must be a 2-D [d_model, k] tensor, got {type(B).__name__} "
            f"{tuple(B.shape) if isinstance(B, torch.Tensor) else ''}"
        )
    if not bool(torch.isfinite(B).all()):
        raise ValueError(f"{where}: basis contains NaN or Inf; rebuild it from finite inputs")
    err = orthonormality_error(B)
    if not err <= tol:
        raise ValueError(
            f"{where}: basis columns are not orthonormal: max|BᵀB − I| = {err:.3g} > tol {tol:g}. "
            f"Orthonormalise it before scoring (e.g. keep the left factor U of a thin SVD, "
            f"dropping directions with tiny singular values)."
        )
    return err


# ----------------------------------------------------------------------------- model helpers
def expand_kv(W: torch.Tensor, n_heads: int, n_kv: int) -> torch.Tensor:
    """GQA: ``[n_kv·hd, d]`` key/value rows -> ``[n_heads·hd, d]``, head j using kv head j // (n_heads/n_kv)."""
    if n_heads % n_kv:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv={n_kv}")
    rows, d = W.shape
    if rows % n_kv:
        raise ValueError(f"{rows} rows do not split into {n_kv} kv heads")
    hd = rows // n_kv
    rep = n_heads // n_kv
    return W.reshape(n_kv, hd, d).repeat_interleave(rep, dim=0).reshape(n_heads * hd, d)


def psd_sqrt(C: torch.Tensor, eps_rel: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Damped square root of a PSD matrix: ``(C_ε^{1/2}, C_ε^{-1/2}, ε)``, ``C_ε = C + εI``.

    ``ε = eps_rel · tr(C)/n`` (relative to the mean eigenvalue), so ``C_ε`` is invertible
    for ``eps_rel > 0`` and ``W·C_ε^{1/2}·C_ε^{-1/2} = W``. Negative rounding eigenvalues
    are clipped to 0 before damping.
    """
    C = f64(C)
    n = C.shape[0]
    eps = eps_rel * float(torch.trace(C)) / max(n, 1)
    vals, vecs = eigh(C)
    vals = vals.clamp(min=0.0) + eps
    half = (vecs * vals.sqrt()) @ vecs.T
    inv_half = (vecs * vals.rsqrt()) @ vecs.T  # inf entries if eps = 0 and C is singular
    return half, inv_half, eps


def haar_frames(
    d: int,
    k: int,
    n_draws: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    sample_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``n_draws`` Haar-random orthonormal ``[d, k]`` frames, ``[n_draws, d, k]``.

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (without the fix
    the QR convention biases the frame; with it the law is exactly uniform). The Gaussian
    entries are drawn in ``sample_dtype`` (float32 draws are faster and any Gaussian matrix
    gives a Haar frame); the QR runs in ``dtype``.
    """
    G = torch.randn(n_draws, d, k, generator=generator, dtype=sample_dtype).to(dtype)
    Q, R = torch.linalg.qr(G)
    s = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    s[s == 0] = 1.0
    return Q * s[:, None, :]


def haar_orthonormal(d: int, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One Haar-random ``[d, k]`` orthonormal basis (see :func:`haar_frames`)."""
    return haar_frames(d, k, 1, generator)[0].to(dtype)


def kmeans(
    X: torch.Tensor,
    n_clusters: int,
    seed: int = 0,
    n_init: int = 4,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Seeded k-means (k-means++ start, Lloyd iterations, best of ``n_init``).

    Returns ``(centroids [c, d], labels [n], inertia)`` in float64. A cluster that empties
    is re-seeded at the point farthest from its centroid. ``c = min(n_clusters, n)``.
    """
    X = f64(X)
    n = X.shape[0]
    c = min(n_clusters, n)
    if c <= 0:
        raise ValueError("kmeans needs at least one point and one cluster")
    g = torch.Generator().manual_seed(int(seed))
    x2 = (X * X).sum(dim=1)

    def sqdist(C: torch.Tensor) -> torch.Tensor:  # [n, c]
        return (x2[:, None] - 2.0 * X @ C.T + (C * C).sum(dim=1)[None, :]).clamp(min=0.0)

    best = None
    for _ in range(max(1, n_init)):
        # k-means++ seeding
        idx = [int(torch.randint(n, (1,), generator=g))]
        D = sqdist(X[idx])[:, 0]
        for _j in range(1, c):
            tot = float(D.sum())
            if tot <= 0:
                nxt = int(torch.randint(n, (1,), generator=g))
            else:
                nxt = int(torch.multinomial(D / tot, 1, generator=g))
            idx.append(nxt)
            D = torch.minimum(D, sqdist(X[nxt : nxt + 1])[:, 0])
        C = X[idx].clone()
        prev = float("inf")
        for _it in range(max_iter):
            Dm = sqdist(C)
            lab = Dm.argmin(dim=1)
            inertia = float(Dm.gather(1, lab[:, None]).sum())
            counts = torch.bincount(lab, minlength=c)
            newC = torch.zeros_like(C).index_add_(0, lab, X) / counts.clamp(min=1)[:, None].to(X.dtype)
            for j in torch.nonzero(counts == 0).flatten().tolist():
                far = int(Dm.gather(1, lab[:, None]).squeeze(1).argmax())
                newC[j] = X[far]
            C = newC
            if prev - inertia <= tol * max(prev, 1e-300) and _it > 0:
                break
            prev = inertia
        Dm = sqdist(C)
        lab = Dm.argmin(dim=1)
        inertia = float(Dm.gather(1, lab[:, None]).sum())
        if best is None or inertia < best[2] - 1e-12 * abs(best[2]):
            best = (C, lab, inertia)
    return best
