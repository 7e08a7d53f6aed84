"""One-cell reference implementations: the scores of one basis against one label, written
as directly as the definitions. :func:`ws.stats.score_sweep` computes the same numbers for
every (layer, candidate) cell at once; the tests hold it to these.
"""

from __future__ import annotations

import numpy as np
import torch

from ws.core.linalg import f64
from ws.core.linalg import mean_principal_cosine as cos_principal  # noqa: F401  (the reference of cos_with_dW)
from ws.stats.null import (
    NAN,
    act_traces,
    conc,
    haar_null_draws,
    null_mean_std_from_traces,
    unit_rows,
    weight_traces,
    zscore,
)
from ws.stats.scoring import project_off, specific_basis

# ------------------------------------------------------------------------ energy fractions


def energy_frac_act_rows(B: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Per-row energy fraction ``‖Bᵀx_i‖²/‖x_i‖²``.

    B: ``[d, k]`` orthonormal; X: ``[n, d]``. Returns float64 ``[n]``; rows of zero norm
    give NaN (they carry no direction).
    """
    X = f64(X)
    B = f64(B)
    num = ((X @ B) ** 2).sum(dim=1)
    den = (X * X).sum(dim=1)
    out = torch.full_like(den, NAN)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def energy_frac_act(B: torch.Tensor, X: torch.Tensor) -> float:
    """Mean over rows (NaN rows excluded) of :func:`energy_frac_act_rows`; NaN if none."""
    r = energy_frac_act_rows(B, X)
    r = r[~torch.isnan(r)]
    return float(r.mean()) if r.numel() else NAN


def energy_frac_w(B: torch.Tensor, M: torch.Tensor) -> float:
    """``‖BᵀM‖²_F/‖M‖²_F`` for B ``[d, k]`` and M ``[d, in]``; NaN when ``M = 0``."""
    M = f64(M)
    den = float((M * M).sum())
    if not den > 0:
        return NAN
    return float(((f64(B).T @ M) ** 2).sum()) / den


def combined_delta(M_o: torch.Tensor | None, M_down: torch.Tensor | None) -> torch.Tensor | None:
    """``[M_o/‖M_o‖_F | M_down/‖M_down‖_F]`` (``[d, in_o + in_down]``, float64).

    A missing (None) or all-zero tensor is left out; None if nothing is left.
    """
    parts = []
    for M in (M_o, M_down):
        if M is None:
            continue
        M = f64(M)
        n = float(M.norm())
        if n > 0:
            parts.append(M / n)
    return torch.cat(parts, dim=1) if parts else None


def energy_frac_w_combined(B: torch.Tensor, M_o: torch.Tensor | None, M_down: torch.Tensor | None) -> float:
    """Weight energy fraction of B on the unit-normalised concatenation of both tensors."""
    Mc = combined_delta(M_o, M_down)
    return NAN if Mc is None else energy_frac_w(B, Mc)


# ------------------------------------------------------------------------------- the null


def null_mean_std(A: torch.Tensor, k: int) -> tuple[float, float]:
    """Null mean and std of ``tr(PA)`` for a symmetric PSD ``A`` (``[d, d]``)."""
    A = f64(A)
    return null_mean_std_from_traces(float(torch.trace(A)), float((A * A).sum()), A.shape[0], k)


def null_mean_std_act(X: torch.Tensor, k: int) -> tuple[float, float]:
    """Null mean and std of ``energy_frac_act`` for label rows X ``[n, d]`` and rank k."""
    tr_a, tr_a2, _ = act_traces(X)
    return null_mean_std_from_traces(tr_a, tr_a2, X.shape[1], k)


def null_mean_std_w(M: torch.Tensor, k: int) -> tuple[float, float]:
    """Null mean and std of ``energy_frac_w`` for a weight label M ``[d, in]`` and rank k."""
    tr_a, tr_a2 = weight_traces(M)
    return null_mean_std_from_traces(tr_a, tr_a2, M.shape[0], k)


def _guess_kind(T: torch.Tensor, kind: str) -> str:
    if kind != "auto":
        if kind not in ("A", "X", "M"):
            raise ValueError(f"kind must be 'auto', 'A', 'X' or 'M', got {kind!r}")
        return kind
    if T.ndim == 2 and T.shape[0] == T.shape[1] and bool(torch.allclose(T, T.T, atol=1e-10, rtol=1e-8)):
        return "A"
    return "X"


def spectrum(A_or_X: torch.Tensor, kind: str = "auto") -> tuple[np.ndarray, int]:
    """Eigenvalues (descending) of the trace-normalised label matrix and its ambient dim.

    kind: ``"A"`` a symmetric PSD ``[d, d]`` (normalised by its trace); ``"X"`` label rows
    ``[n, d]`` (A = mean x̂x̂ᵀ); ``"M"`` a weight ``[d, in]`` (A = MMᵀ/‖M‖²);
    ``"auto"`` = ``"A"`` for a square symmetric input, else ``"X"``.
    Only the non-trivial eigenvalues are returned (at most ``min(n, d)`` for X).
    """
    T = f64(A_or_X)
    kind = _guess_kind(T, kind)
    d = T.shape[1] if kind == "X" else T.shape[0]
    if kind == "A":
        ev = torch.linalg.eigvalsh(T)
    elif kind == "X":
        Xh, _ = unit_rows(T)
        if Xh.shape[0] == 0:
            return np.array([]), d
        ev = torch.linalg.eigvalsh(Xh @ Xh.T)
    else:
        G = T @ T.T if T.shape[0] <= T.shape[1] else T.T @ T
        ev = torch.linalg.eigvalsh(G)
    ev = ev.clamp(min=0.0)
    tot = float(ev.sum())
    if not tot > 0:
        return np.array([]), d
    # at most d eigenvalues can be non-zero (X with more rows than d)
    return np.sort((ev / tot).numpy())[::-1][:d].copy(), d


def mc_null(A_or_X: torch.Tensor, k: int, n_draws: int = 2000, seed: int = 0, kind: str = "auto") -> np.ndarray:
    """Monte Carlo draws ``[n_draws]`` of the energy fraction ``tr(PA)/tr(A)`` of a
    Haar-random rank-k subspace (see :func:`spectrum` for ``kind``). Exact in law: a
    Haar P enters only through its diagonal in A's eigenbasis, so the draws are
    ``Σ_j λ_j P_jj`` over seeded Haar frames (same seed → same draws).
    """
    ev, d = spectrum(A_or_X, kind)
    if k <= 0 or k > d or ev.size == 0:
        return np.full(n_draws, NAN)
    return haar_null_draws(ev, d, k, n_draws, seed)


def best_frac_at_rank(A_or_X: torch.Tensor, r: int, kind: str = "auto") -> float:
    """Largest energy fraction any rank-r subspace can reach: the share of the top-r
    eigenvalues of A (activation) or of the top-r σ² (weight, ``kind="M"``)."""
    ev, _d = spectrum(A_or_X, kind)
    if r <= 0 or ev.size == 0:
        return NAN
    return float(ev[: min(r, ev.size)].sum())


# ---------------------------------------------------------------------------- specificity


def specific_act_scores(B: torch.Tensor, X: torch.Tensor, C: torch.Tensor, sv_tol: float = 1e-6) -> dict[str, float]:
    """Activation score after removing the clean-residual PCs C (``[d, c]``, orthonormal).

    Label rows and basis are projected by ``I − CCᵀ``; the projected basis is
    re-orthonormalised (directions with singular value < ``sv_tol`` dropped → rank r) and
    scored in the complement, of dimension ``d − c``: ``frac``, ``conc = frac/(r/(d−c))``,
    ``z`` against a Haar subspace of the complement. Only the trace statistics of the
    projected label and inner products enter, so computing in ambient coordinates equals
    computing in an orthonormal basis of the complement.
    Returns ``{"frac", "conc", "z", "rank", "mean", "std"}``.
    """
    B, X, C = f64(B), f64(X), f64(C)
    dc = X.shape[1] - C.shape[1]
    W = specific_basis(B, C, sv_tol)
    r = W.shape[1]
    if r == 0:
        return {"frac": NAN, "conc": NAN, "z": NAN, "rank": 0, "mean": NAN, "std": NAN}
    Y = project_off(X, C)
    frac = energy_frac_act(W, Y)
    tr_a, tr_a2, _ = act_traces(Y)
    mean, std = null_mean_std_from_traces(tr_a, tr_a2, dc, r)
    return {"frac": frac, "conc": conc(frac, r, dc), "z": zscore(frac, mean, std), "rank": r, "mean": mean, "std": std}
