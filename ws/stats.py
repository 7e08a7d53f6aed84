"""Scores of candidate subspaces against the LoRA labels, and their statistics.

The question every score answers: how much of a label's energy lies inside a candidate
basis ``B`` (``[d, k]``, orthonormal columns), compared with a random rank-k subspace?

Labels (the "B side", built from the LoRA):

- activation label ``X`` (``[n, d]`` rows, one per EVAL probe): the energy fraction of
  row ``x_i`` is ``‖Bᵀx_i‖²/‖x_i‖²`` and ``energy_frac_act`` is the mean over rows;
- weight label ``M`` (``[d, in]``, rows in residual space):
  ``energy_frac_w = ‖BᵀM‖²_F/‖M‖²_F``; ``combined`` uses ``[M_o/‖M_o‖_F | M_down/‖M_down‖_F]``.

Both fractions are ``tr(P A)`` with ``P = BBᵀ`` and a trace-one PSD matrix ``A``:
``A = mean_i x̂_i x̂_iᵀ`` (activation, ``x̂ = x/‖x‖``) or ``A = MMᵀ/‖M‖²_F`` (weight). For a
Haar-random rank-k projection in dimension d the null moments are exact::

    E[tr(PA)]   = (k/d) · tr A
    Var[tr(PA)] = 2k(d−k) / (d(d−1)(d+2)) · (tr(A²) − (tr A)²/d)

so ``z = (frac − mean)/std`` needs only ``tr A`` and ``tr A²``. When the label is close to
rank one (participation ratio ``(tr A)²/tr(A²)`` below a threshold) the null is far from
Gaussian and the p-value comes from a seeded Monte Carlo of the exact null instead.

``conc = frac/(k/d)`` (1 = what a random subspace of the same rank gets).

Computation is in float64; public results are Python floats, numpy arrays or polars
Float64 columns.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import polars as pl
import torch
from scipy import special as _special
from tqdm.auto import tqdm

from ws.linalg import check_orthonormal, haar_frames
from ws.log import logger

__all__ = [
    "TENSORS",
    "CEILING_ACT",
    "CEILING_W",
    "PER_LAYER_COLUMNS",
    "SPECIFIC_COLUMNS",
    "SUMMARY_COLUMNS",
    "PCT_COLUMNS",
    "SUMMARY_PCT_COLUMNS",
    "SPECIFIC_SUMMARY_COLUMNS",
    "BOOTSTRAP_COLUMNS",
    "check_orthonormal",
    "check_finite",
    "energy_frac_act_rows",
    "energy_frac_act",
    "energy_frac_w",
    "combined_delta",
    "energy_frac_w_combined",
    "act_traces",
    "weight_traces",
    "null_mean_std_from_traces",
    "null_mean_std",
    "null_mean_std_act",
    "null_mean_std_w",
    "zscore",
    "conc",
    "participation_ratio",
    "p_gaussian",
    "p_empirical",
    "haar_orthonormal",
    "spectrum",
    "mc_null",
    "best_frac_at_rank",
    "specific_act_scores",
    "cos_principal",
    "SweepScores",
    "score_sweep",
    "summarize",
    "summary_pct",
    "summarize_specific",
    "bootstrap_summary_ci",
    "bh_qvalues",
    "add_qvalues",
]

NAN = float("nan")

#: weight-label tensors, in the order of the columns
TENSORS: tuple[str, ...] = ("oproj", "downproj", "combined")
#: the two ceilings (B side; scored, never ranked as hypotheses)
CEILING_ACT = "TaskDiff_lora_ceiling"
CEILING_W = "dW_left_basis_ceiling"

_META_COLUMNS = ["subspace", "family", "axis_kind", "source", "kind"]

#: the contract columns of the per-layer table (extra columns follow them)
PER_LAYER_COLUMNS: list[str] = [
    "layer", *_META_COLUMNS, "rank", "conc_act", "z_act", "energy_frac_act",
    "conc_w_oproj", "z_w_oproj", "energy_frac_w_oproj",
    "conc_w_downproj", "z_w_downproj", "energy_frac_w_downproj",
    "conc_w_combined", "z_w_combined", "energy_frac_w_combined",
    "cos_with_dW",
]
_PER_LAYER_EXTRA: list[str] = [
    "p_act", "null_method_act",
    "p_w_oproj", "null_method_w_oproj",
    "p_w_downproj", "null_method_w_downproj",
    "p_w_combined", "null_method_w_combined",
    "pct_act_matched_rank", "pct_w_combined_matched_rank",
    "pr_act", "pr_w_combined",
]
SPECIFIC_COLUMNS: list[str] = [
    "layer", "subspace", "family", "source", "kind",
    "specific_conc_act", "specific_z_act", "specific_energy_frac_act", "specific_rank",
]
_SPECIFIC_EXTRA: list[str] = ["specific_p_act", "specific_null_method_act"]
SUMMARY_COLUMNS: list[str] = [
    *_META_COLUMNS, "mean_conc_act", "mean_z_act", "mean_energy_frac_act",
    "mean_conc_w_oproj", "mean_conc_w_downproj", "mean_conc_w_combined",
    "mean_z_w_oproj", "mean_z_w_downproj", "mean_z_w_combined",
    "mean_cos_dW", "mean_rank", "joint_score", "act_w_gap_log2",
]
_SUMMARY_EXTRA: list[str] = [
    "mean_pct_act_matched_rank", "mean_pct_w_combined_matched_rank",
    "mean_energy_frac_w_oproj", "mean_energy_frac_w_downproj", "mean_energy_frac_w_combined",
    "n_layers_scored",
]
#: the four percentage columns :func:`summary_pct` adds
PCT_COLUMNS: list[str] = [
    "pct_act_ceiling", "pct_w_oracle_combined", "pct_w_oracle_oproj", "pct_w_oracle_downproj",
]
#: the contract columns of the summary_pct table (extra columns follow them)
SUMMARY_PCT_COLUMNS: list[str] = SUMMARY_COLUMNS + PCT_COLUMNS
SPECIFIC_SUMMARY_COLUMNS: list[str] = [
    "subspace", "family", "source", "kind", "mean_specific_conc_act", "mean_specific_z_act",
    "mean_specific_energy_frac_act", "mean_specific_rank",
]
BOOTSTRAP_COLUMNS: list[str] = [
    "subspace", "mean_conc_act_ci_lo", "mean_conc_act_ci_hi", "mean_energy_frac_act_ci_lo",
    "mean_energy_frac_act_ci_hi", "joint_score_ci_lo", "joint_score_ci_hi",
]

# z is undefined when the null has (numerically) no spread, e.g. k = d or A ∝ I
_STD_REL_FLOOR = 1e-12


# --------------------------------------------------------------------------- validation


def check_finite(t: torch.Tensor | None, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` if ``t`` holds NaN or Inf."""
    if t is None:
        return
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} contains {n_bad} NaN/Inf value(s); fix the capture or delta before scoring")


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


# ------------------------------------------------------------------------ energy fractions


def _unit_rows(X: torch.Tensor, zero_tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``X`` (``[n, d]``) scaled to unit norm, and the mask ``[n]`` of rows kept
    (norm > ``zero_tol``). Returns ``(X̂ [n_valid, d], valid [n])``."""
    X = _f64(X)
    nrm = X.norm(dim=1)
    valid = nrm > zero_tol
    return X[valid] / nrm[valid, None], valid


def energy_frac_act_rows(B: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Per-row energy fraction ``‖Bᵀx_i‖²/‖x_i‖²``.

    B: ``[d, k]`` orthonormal; X: ``[n, d]``. Returns float64 ``[n]``; rows of zero norm
    give NaN (they carry no direction).
    """
    X = _f64(X)
    B = _f64(B)
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
    M = _f64(M)
    den = float((M * M).sum())
    if not den > 0:
        return NAN
    return float(((_f64(B).T @ M) ** 2).sum()) / den


def combined_delta(M_o: torch.Tensor | None, M_down: torch.Tensor | None) -> torch.Tensor | None:
    """``[M_o/‖M_o‖_F | M_down/‖M_down‖_F]`` (``[d, in_o + in_down]``, float64).

    A missing (None) or all-zero tensor is left out; None if nothing is left.
    """
    parts = []
    for M in (M_o, M_down):
        if M is None:
            continue
        M = _f64(M)
        n = float(M.norm())
        if n > 0:
            parts.append(M / n)
    return torch.cat(parts, dim=1) if parts else None


def energy_frac_w_combined(B: torch.Tensor, M_o: torch.Tensor | None, M_down: torch.Tensor | None) -> float:
    """Weight energy fraction of B on the unit-normalised concatenation of both tensors."""
    Mc = combined_delta(M_o, M_down)
    return NAN if Mc is None else energy_frac_w(B, Mc)


# ------------------------------------------------------------------------------- the null


def act_traces(X: torch.Tensor) -> tuple[float, float, int]:
    """``(tr A, tr A², n_valid)`` for ``A = mean_i x̂_i x̂_iᵀ`` over the non-zero rows of
    X ``[n, d]``, from the ``n × n`` Gram ``X̂X̂ᵀ`` (no ``d × d`` matrix):
    ``tr A = 1`` and ``tr A² = ‖X̂X̂ᵀ‖²_F/n²``."""
    Xh, _ = _unit_rows(X)
    n = Xh.shape[0]
    if n == 0:
        return NAN, NAN, 0
    K = Xh @ Xh.T
    return 1.0, float((K * K).sum()) / n**2, n


def weight_traces(M: torch.Tensor) -> tuple[float, float]:
    """``(tr A, tr A²)`` for ``A = MMᵀ/‖M‖²_F``: ``1`` and ``Σσ⁴/(Σσ²)²``, computed from
    the smaller of the two Grams of M ``[d, in]``."""
    M = _f64(M)
    G = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
    tr = float(torch.trace(G))
    if not tr > 0:
        return NAN, NAN
    return 1.0, float((G * G).sum()) / tr**2


def null_mean_std_from_traces(tr_a: float, tr_a2: float, d: int, k: int) -> tuple[float, float]:
    """Exact mean and std of ``tr(PA)`` for a Haar-random rank-k projection P in dimension
    d, from ``tr A`` and ``tr A²``. NaN for ``k ≤ 0``, ``k > d`` or non-finite input."""
    if k <= 0 or k > d or d < 2 or not (math.isfinite(tr_a) and math.isfinite(tr_a2)):
        return NAN, NAN
    mean = k / d * tr_a
    var = 2.0 * k * (d - k) / (d * (d - 1) * (d + 2)) * (tr_a2 - tr_a**2 / d)
    return mean, math.sqrt(max(var, 0.0))


def null_mean_std(A: torch.Tensor, k: int) -> tuple[float, float]:
    """Null mean and std of ``tr(PA)`` for a symmetric PSD ``A`` (``[d, d]``)."""
    A = _f64(A)
    return null_mean_std_from_traces(float(torch.trace(A)), float((A * A).sum()), A.shape[0], k)


def null_mean_std_act(X: torch.Tensor, k: int) -> tuple[float, float]:
    """Null mean and std of ``energy_frac_act`` for label rows X ``[n, d]`` and rank k."""
    tr_a, tr_a2, _ = act_traces(X)
    return null_mean_std_from_traces(tr_a, tr_a2, X.shape[1], k)


def null_mean_std_w(M: torch.Tensor, k: int) -> tuple[float, float]:
    """Null mean and std of ``energy_frac_w`` for a weight label M ``[d, in]`` and rank k."""
    tr_a, tr_a2 = weight_traces(M)
    return null_mean_std_from_traces(tr_a, tr_a2, M.shape[0], k)


def zscore(frac: float, mean: float, std: float) -> float:
    """``(frac − mean)/std``; NaN when the null has no spread or anything is NaN."""
    if not (math.isfinite(frac) and math.isfinite(mean) and math.isfinite(std)):
        return NAN
    if std <= _STD_REL_FLOOR * max(abs(mean), 1e-300):
        return NAN
    return (frac - mean) / std


def conc(frac: float, k: int, d: int) -> float:
    """Concentration ``frac/(k/d)``; NaN for ``k ≤ 0``."""
    return frac / (k / d) if k > 0 and d > 0 and math.isfinite(frac) else NAN


def participation_ratio(tr_a: float, tr_a2: float) -> float:
    """Effective rank ``(tr A)²/tr(A²)`` (1 for rank one, d for ``A ∝ I``)."""
    return tr_a**2 / tr_a2 if tr_a2 > 0 and math.isfinite(tr_a2) else NAN


def p_gaussian(z: float) -> float:
    """One-sided upper p-value of z under N(0, 1) (the same as ``scipy.stats.norm.sf``)."""
    return float(_special.ndtr(-z)) if math.isfinite(z) else NAN


def p_empirical(frac: float, draws: np.ndarray) -> float:
    """Monte Carlo upper p-value ``(1 + #{draw ≥ frac})/(1 + n)``."""
    if not math.isfinite(frac) or draws.size == 0:
        return NAN
    return (1.0 + float(np.count_nonzero(draws >= frac))) / (1.0 + draws.size)


def haar_orthonormal(d: int, k: int, n_draws: int, generator: torch.Generator,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n_draws`` Haar frames ``[n_draws, d, k]`` (Gaussian entries drawn in float32)."""
    return haar_frames(d, k, n_draws, generator, dtype=dtype, sample_dtype=torch.float32)


@lru_cache(maxsize=64)
def _haar_proj_diag(d: int, k: int, n_draws: int, seed: int) -> np.ndarray:
    """Diagonals of ``n_draws`` Haar rank-k projections in dimension d, ``[n_draws, d]``.

    ``tr(PA)`` with ``A = VΛVᵀ`` has the law of ``Σ_j λ_j P_jj`` (VᵀPV is again Haar), so
    these diagonals give exact null draws for ANY A from its eigenvalues alone.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = np.empty((n_draws, d))
    chunk = max(1, min(n_draws, int(1e7 // max(d * k, 1))))
    for s in range(0, n_draws, chunk):
        m = min(chunk, n_draws - s)
        # float32 frames: P_jj is good to ~1e-7, far below Monte Carlo resolution
        Q = haar_orthonormal(d, k, m, gen, dtype=torch.float32)
        out[s : s + m] = (Q * Q).sum(dim=2).to(torch.float64).numpy()
    out.setflags(write=False)
    return out


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
    T = _f64(A_or_X)
    kind = _guess_kind(T, kind)
    d = T.shape[1] if kind == "X" else T.shape[0]
    if kind == "A":
        ev = torch.linalg.eigvalsh(T)
    elif kind == "X":
        Xh, _ = _unit_rows(T)
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


def mc_null(A_or_X: torch.Tensor, k: int, n_draws: int = 2000, seed: int = 0,
            kind: str = "auto") -> np.ndarray:
    """Monte Carlo draws ``[n_draws]`` of the energy fraction ``tr(PA)/tr(A)`` of a
    Haar-random rank-k subspace (see :func:`spectrum` for ``kind``). Exact in law: a
    Haar P enters only through its diagonal in A's eigenbasis, so the draws are
    ``Σ_j λ_j P_jj`` over frames from :func:`haar_orthonormal`.

    Seeded with an explicit ``torch.Generator`` (same seed → same draws).
    """
    ev, d = spectrum(A_or_X, kind)
    if k <= 0 or k > d or ev.size == 0:
        return np.full(n_draws, NAN)
    diag = _haar_proj_diag(d, int(k), int(n_draws), int(seed))
    return diag[:, : ev.size] @ ev


def best_frac_at_rank(A_or_X: torch.Tensor, r: int, kind: str = "auto") -> float:
    """Largest energy fraction any rank-r subspace can reach: the share of the top-r
    eigenvalues of A (activation) or of the top-r σ² (weight, ``kind="M"``)."""
    ev, d = spectrum(A_or_X, kind)
    return _best_from_eigs(ev, r)


def _best_from_eigs(ev: np.ndarray, r: int) -> float:
    if r <= 0 or ev.size == 0:
        return NAN
    return float(ev[: min(r, ev.size)].sum())


def _pct_matched(frac: float, ev_cumsum: np.ndarray | None, r: int) -> float:
    if ev_cumsum is None or ev_cumsum.size == 0 or r <= 0 or not math.isfinite(frac):
        return NAN
    best = float(ev_cumsum[min(r, ev_cumsum.size) - 1])
    return 100.0 * frac / best if best > 0 else NAN


def cos_principal(B: torch.Tensor, D: torch.Tensor) -> float:
    """Mean cosine of the principal angles between span(B) and span(D) (both orthonormal
    ``[d, k]``, ``[d, k_D]``): the mean singular value of ``BᵀD`` (``min(k, k_D)`` of them)."""
    if B.shape[1] == 0 or D.shape[1] == 0:
        return NAN
    s = torch.linalg.svdvals(_f64(B).T @ _f64(D)).clamp(max=1.0)
    return float(s.mean())


def specific_act_scores(B: torch.Tensor, X: torch.Tensor, C: torch.Tensor,
                        sv_tol: float = 1e-6) -> dict[str, float]:
    """Activation score after removing the clean-residual PCs C (``[d, c]``, orthonormal).

    Label rows and basis are projected by ``I − CCᵀ``; the projected basis is
    re-orthonormalised (directions with singular value < ``sv_tol`` dropped → rank r) and
    scored in the complement, of dimension ``d − c``: ``frac``, ``conc = frac/(r/(d−c))``,
    ``z`` against a Haar subspace of the complement. Only the trace statistics of the
    projected label and inner products enter, so computing in ambient coordinates equals
    computing in an orthonormal basis of the complement.
    Returns ``{"frac", "conc", "z", "rank", "mean", "std"}``.
    """
    B, X, C = _f64(B), _f64(X), _f64(C)
    d, c = X.shape[1], C.shape[1]
    dc = d - c
    Y = X - (X @ C) @ C.T
    Bp = B - C @ (C.T @ B)
    U, S, _ = torch.linalg.svd(Bp, full_matrices=False)
    keep = S > sv_tol
    r = int(keep.sum())
    W = U[:, keep]
    if r == 0:
        return {"frac": NAN, "conc": NAN, "z": NAN, "rank": 0, "mean": NAN, "std": NAN}
    frac = energy_frac_act(W, Y)
    tr_a, tr_a2, _ = act_traces(Y)
    mean, std = null_mean_std_from_traces(tr_a, tr_a2, dc, r)
    return {"frac": frac, "conc": conc(frac, r, dc), "z": zscore(frac, mean, std), "rank": r,
            "mean": mean, "std": std}


# --------------------------------------------------------------------------------- sweep


@dataclass
class SweepScores:
    """Everything :func:`score_sweep` measured.

    per_layer: one row per (layer, candidate), columns :data:`PER_LAYER_COLUMNS` + extras.
    specific_per_layer: :data:`SPECIFIC_COLUMNS` + extras.
    act_rows: ``(subspace, layer) -> [n_eval]`` per-row activation energy fractions (NaN for
        zero-norm label rows or undefined cells), for the bootstrap.
    d_model, n_eval: dimensions of the label.
    settings: parameters of the run (MC seed, draws, thresholds).
    """

    per_layer: pl.DataFrame
    specific_per_layer: pl.DataFrame
    act_rows: dict[tuple[str, int], np.ndarray]
    d_model: int
    n_eval: int
    settings: dict = field(default_factory=dict)


class _Label:
    """A trace-one label matrix A in dimension d known by its traces, with lazily
    computed eigenvalues (for Monte Carlo p-values and best-at-rank)."""

    def __init__(self, d: int, tr_a2: float, eig_fn, pr_threshold: float, mc_draws: int, mc_seed: int):
        self.d = d
        self.tr_a2 = tr_a2
        self._eig_fn = eig_fn
        self._ev: np.ndarray | None = None
        self._cum: np.ndarray | None = None
        self.pr = participation_ratio(1.0, tr_a2)
        self.use_mc = math.isfinite(self.pr) and self.pr < pr_threshold
        self.mc_draws = mc_draws
        self.mc_seed = mc_seed
        self._draws: dict[int, np.ndarray] = {}
        self._null: dict[int, tuple[float, float]] = {}

    def eigs(self) -> np.ndarray:
        if self._ev is None:
            ev = np.clip(np.asarray(self._eig_fn(), dtype=np.float64), 0.0, None)
            tot = ev.sum()
            self._ev = np.sort(ev / tot)[::-1][: self.d].copy() if tot > 0 else np.array([])
        return self._ev

    def cumsum(self) -> np.ndarray:
        if self._cum is None:
            self._cum = np.cumsum(self.eigs())
        return self._cum

    def null(self, k: int) -> tuple[float, float]:
        if k not in self._null:
            self._null[k] = null_mean_std_from_traces(1.0, self.tr_a2, self.d, k)
        return self._null[k]

    def score(self, frac: float, k: int) -> tuple[float, float, float, str]:
        """``(conc, z, p, null_method)`` of an energy fraction at rank k."""
        if k <= 0 or not math.isfinite(frac):
            return NAN, NAN, NAN, ""
        mean, std = self.null(k)
        z = zscore(frac, mean, std)
        if self.use_mc and k < self.d:
            if k not in self._draws:
                ev = self.eigs()
                diag = _haar_proj_diag(self.d, k, self.mc_draws, self.mc_seed)
                self._draws[k] = diag[:, : ev.size] @ ev
            return conc(frac, k, self.d), z, p_empirical(frac, self._draws[k]), "monte_carlo"
        return conc(frac, k, self.d), z, p_gaussian(z), "gaussian"


def _act_label(X: torch.Tensor, valid: torch.Tensor, d: int, **kw) -> tuple[_Label | None, torch.Tensor]:
    """Label object and unit rows ``[n_valid, d]`` for activation rows ``X`` ``[n, d]``."""
    Xh = X[valid] / X[valid].norm(dim=1, keepdim=True)
    n = Xh.shape[0]
    if n == 0:
        return None, Xh
    K = Xh @ Xh.T
    lab = _Label(d, float((K * K).sum()) / n**2, lambda: torch.linalg.eigvalsh(K).numpy() / n, **kw)
    return lab, Xh


def _meta_rows(meta: pl.DataFrame) -> list[dict]:
    missing = [c for c in [*_META_COLUMNS, "definition"] if c not in meta.columns]
    if missing:
        raise ValueError(f"meta is missing column(s) {missing}; expected {[*_META_COLUMNS, 'definition']}")
    names = meta["subspace"].to_list()
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"meta lists candidate(s) more than once: {dup}")
    return meta.select(_META_COLUMNS).to_dicts()


#: Label participation ratio below which a cell's p-value comes from the Monte Carlo null.
PR_THRESHOLD = 3.0


def score_sweep(
    bases: Mapping[str, Sequence[torch.Tensor | None]],
    meta: pl.DataFrame,
    label: torch.Tensor,
    deltas: Sequence[Mapping[str, torch.Tensor | None] | None],
    clean_pcs: Sequence[torch.Tensor | None],
    layers: Sequence[int] | None = None,
    *,
    pr_threshold: float = PR_THRESHOLD,
    mc_draws: int = 2000,
    mc_seed: int = 0,
    zero_row_rel_tol: float = 1e-7,
    sv_tol: float = 1e-6,
    orth_tol: float = 1e-3,
    progress: bool = True,
    num_threads: int | None = 1,
) -> SweepScores:
    """Score every candidate basis on every layer against both labels.

    bases: name -> per-layer list (index = layer) of ``[d, k]`` orthonormal float tensors or
        None (candidate undefined there; its row carries NaN scores and a null rank).
    meta: columns ``subspace, family, axis_kind, source, kind, definition``; row order sets
        the output order within a layer.
    label: activation label ``[L, n_eval, d]`` (hs_diff_B).
    deltas: per layer ``{"oproj": [d, in_o], "downproj": [d, in_down]}`` or None (layer not
        touched by the LoRA → NaN weight scores).
    clean_pcs: per layer ``[d, c]`` orthonormal clean-residual PCs (c = 8) or None.
    layers: which layers to score (default all ``L``).
    pr_threshold: label participation ratio below which p-values come from a Monte Carlo
        null of ``mc_draws`` Haar draws seeded by ``mc_seed`` instead of the Gaussian.
    zero_row_rel_tol: label rows with norm ≤ this × the largest row norm of the whole label
        count as zero (layers the steering cannot reach) and are left out.

    num_threads: torch intra-op threads while scoring (restored afterwards; None leaves the
        setting alone). The work is many small factorisations, and on a busy 2-core machine
        two threads waiting on each other made it ~10× slower than one.

    Null moments are computed once per (layer, label, k), not per candidate; all bases of a
    layer are scored with one matrix product per label.
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        return _score_sweep(bases, meta, label, deltas, clean_pcs, layers, pr_threshold=pr_threshold,
                            mc_draws=mc_draws, mc_seed=mc_seed, zero_row_rel_tol=zero_row_rel_tol,
                            sv_tol=sv_tol, orth_tol=orth_tol, progress=progress)
    finally:
        torch.set_num_threads(old_threads)


def _score_sweep(bases, meta, label, deltas, clean_pcs, layers, *, pr_threshold, mc_draws, mc_seed,
                 zero_row_rel_tol, sv_tol, orth_tol, progress) -> SweepScores:
    t0 = time.perf_counter()
    if label.ndim != 3:
        raise ValueError(f"label must be [layers, n_eval, d_model], got shape {tuple(label.shape)}")
    check_finite(label, "activation label (hs_diff_B)")
    L, n_eval, d = label.shape
    if len(deltas) != L:
        raise ValueError(f"deltas has {len(deltas)} entries but the label has {L} layers")
    if len(clean_pcs) != L:
        raise ValueError(f"clean_pcs has {len(clean_pcs)} entries but the label has {L} layers")
    meta_rows = _meta_rows(meta)
    names = [m["subspace"] for m in meta_rows]
    absent = [n for n in names if n not in bases]
    if absent:
        raise ValueError(f"meta lists candidate(s) with no bases: {absent}")
    extra = [n for n in bases if n not in names]
    if extra:
        logger.warning(f"bases without a meta row are not scored: {extra}")
    for n in names:
        if len(bases[n]) != L:
            raise ValueError(f"candidate {n!r} has {len(bases[n])} per-layer entries, expected {L}")
    layers = list(range(L)) if layers is None else [int(l) for l in layers]
    for l in layers:
        if not 0 <= l < L:
            raise ValueError(f"layer {l} outside 0..{L - 1}")
    for l in layers:
        dl = deltas[l]
        if dl is None:
            continue
        for t in ("oproj", "downproj"):
            M = dl.get(t)
            check_finite(M, f"weight delta {t!r} at layer {l}")
            if M is not None and (M.ndim != 2 or M.shape[0] != d):
                raise ValueError(f"weight delta {t!r} at layer {l} must be [d_model={d}, in], got {tuple(M.shape)}")
    for l in layers:
        if clean_pcs[l] is not None:
            check_finite(clean_pcs[l], f"clean_pcs at layer {l}")
        # every basis is checked before any scoring, so a bad one fails fast
        for n in names:
            B = bases[n][l]
            if B is None:
                continue
            if B.ndim != 2 or B.shape[0] != d:
                raise ValueError(f"candidate {n!r} at layer {l}: basis must be [d_model={d}, k], got {tuple(B.shape)}")
            check_orthonormal(B, n, l, orth_tol)
    lab_kw = dict(pr_threshold=pr_threshold, mc_draws=mc_draws, mc_seed=mc_seed)

    X_all = _f64(label)
    row_norm = X_all.norm(dim=2)  # [L, n]
    zero_thr = zero_row_rel_tol * float(row_norm.max()) if row_norm.numel() else 0.0

    recs: list[dict] = []
    srecs: list[dict] = []
    act_rows: dict[tuple[str, int], np.ndarray] = {}
    n_mc: dict[str, int] = {}
    it = tqdm(layers, desc="score layers", disable=not progress, leave=False)
    for l in it:
        # ---- candidate bases of this layer, side by side: Ball [d, Σk]
        cols, spans, ranks = [], {}, {}
        off = 0
        for n in names:
            B = bases[n][l]
            if B is None:
                continue
            k = B.shape[1]
            ranks[n] = k
            spans[n] = (off, off + k)
            off += k
            if k:
                cols.append(_f64(B))
        Ball = torch.cat(cols, dim=1) if cols else torch.zeros(d, 0, dtype=torch.float64)

        # ---- activation label
        X = X_all[l]
        valid = row_norm[l] > zero_thr
        lab_act, Xh = _act_label(X, valid, d, **lab_kw)
        P_act = (Xh @ Ball) ** 2  # [n_valid, Σk]
        if lab_act is not None and lab_act.use_mc:
            n_mc["act"] = n_mc.get("act", 0) + 1

        # ---- weight labels: A_t = MMᵀ/‖M‖², per-column energies bᵀA_t b
        w_lab: dict[str, _Label | None] = {t: None for t in TENSORS}
        w_col: dict[str, torch.Tensor | None] = {t: None for t in TENSORS}
        dl = deltas[l]
        A_parts = []
        if dl is not None:
            for t in ("oproj", "downproj"):
                M = dl.get(t)
                if M is None:
                    continue
                M = _f64(M)
                G = M @ M.T
                tr = float(torch.trace(G))
                if not tr > 0:
                    continue
                A = G / tr
                A_parts.append(A)
                w_lab[t] = _Label(d, float((A * A).sum()), lambda A=A: torch.linalg.eigvalsh(A).numpy(), **lab_kw)
                w_col[t] = (Ball * (A @ Ball)).sum(dim=0)
            if A_parts:
                Ac = sum(A_parts) / len(A_parts)
                w_lab["combined"] = _Label(d, float((Ac * Ac).sum()), lambda A=Ac: torch.linalg.eigvalsh(A).numpy(), **lab_kw)
                w_col["combined"] = sum(w_col[t] for t in ("oproj", "downproj") if w_col[t] is not None) / len(A_parts)
        for t in TENSORS:
            if w_lab[t] is not None and w_lab[t].use_mc:
                n_mc[f"w_{t}"] = n_mc.get(f"w_{t}", 0) + 1

        # ---- specificity: rows and bases projected off the clean PCs
        C = clean_pcs[l]
        lab_spec = None
        if C is not None:
            C = _f64(C)
            if C.ndim != 2 or C.shape[0] != d:
                raise ValueError(f"clean_pcs at layer {l} must be [d_model={d}, c], got {tuple(C.shape)}")
            check_orthonormal(C, "clean_pcs", l, orth_tol)
            dc = d - C.shape[1]
            Y = X - (X @ C) @ C.T
            y_valid = Y.norm(dim=1) > zero_thr
            lab_spec, Yh = _act_label(Y, y_valid, dc, **lab_kw)
            CB = C.T @ Ball
        # ---- principal angles with the dW basis
        D = bases[CEILING_W][l] if CEILING_W in bases and CEILING_W in names else None
        DB = _f64(D).T @ Ball if D is not None and D.shape[1] > 0 else None

        for m in meta_rows:
            n = m["subspace"]
            rec = {"layer": l, **m}
            k = ranks.get(n)
            rec["rank"] = k
            rows_full = np.full(n_eval, NAN)
            if k is None or k == 0 or lab_act is None:
                rec.update(conc_act=NAN, z_act=NAN, energy_frac_act=NAN, p_act=NAN, null_method_act="",
                           pct_act_matched_rank=NAN)
            else:
                s, e = spans[n]
                rows = P_act[:, s:e].sum(dim=1).numpy()
                rows_full[valid.numpy()] = rows
                frac = float(rows.mean())
                c_, z_, p_, meth = lab_act.score(frac, k)
                rec.update(conc_act=c_, z_act=z_, energy_frac_act=frac, p_act=p_, null_method_act=meth,
                           pct_act_matched_rank=_pct_matched(frac, lab_act.cumsum(), k))
            rec["pr_act"] = lab_act.pr if lab_act is not None else NAN
            act_rows[(n, l)] = rows_full
            for t in TENSORS:
                lab = w_lab[t]
                if k is None or k == 0 or lab is None:
                    frac = NAN
                    c_, z_, p_, meth = NAN, NAN, NAN, ""
                else:
                    s, e = spans[n]
                    frac = float(w_col[t][s:e].sum())
                    c_, z_, p_, meth = lab.score(frac, k)
                rec.update({f"conc_w_{t}": c_, f"z_w_{t}": z_, f"energy_frac_w_{t}": frac,
                            f"p_w_{t}": p_, f"null_method_w_{t}": meth})
            labc = w_lab["combined"]
            rec["pct_w_combined_matched_rank"] = (
                _pct_matched(rec["energy_frac_w_combined"], labc.cumsum(), k) if labc is not None and k else NAN)
            rec["pr_w_combined"] = labc.pr if labc is not None else NAN
            if DB is None or not k:
                rec["cos_with_dW"] = NAN
            else:
                s, e = spans[n]
                rec["cos_with_dW"] = float(torch.linalg.svdvals(DB[:, s:e]).clamp(max=1.0).mean())
            recs.append(rec)

            # specificity
            srec = {"layer": l, **{c: m[c] for c in ("subspace", "family", "source", "kind")}}
            if C is None or k is None:
                srec.update(specific_conc_act=NAN, specific_z_act=NAN, specific_energy_frac_act=NAN,
                            specific_rank=None, specific_p_act=NAN, specific_null_method_act="")
            else:
                r, frac = 0, NAN
                if k:
                    s, e = spans[n]
                    Bp = Ball[:, s:e] - C @ CB[:, s:e]
                    U, S, _ = torch.linalg.svd(Bp, full_matrices=False)
                    keep = S > sv_tol
                    r = int(keep.sum())
                    if r and lab_spec is not None:
                        frac = float(((Yh @ U[:, keep]) ** 2).sum(dim=1).mean())
                if r and lab_spec is not None:
                    c_, z_, p_, meth = lab_spec.score(frac, r)
                else:
                    c_, z_, p_, meth = NAN, NAN, NAN, ""
                srec.update(specific_conc_act=c_, specific_z_act=z_, specific_energy_frac_act=frac,
                            specific_rank=r, specific_p_act=p_, specific_null_method_act=meth)
            srecs.append(srec)

    per_layer = _frame(recs, PER_LAYER_COLUMNS + _PER_LAYER_EXTRA)
    specific = _frame(srecs, SPECIFIC_COLUMNS + _SPECIFIC_EXTRA)
    dt = time.perf_counter() - t0
    logger.info(f"scored {len(names)} candidates × {len(layers)} layers in {dt:.2f} s")
    if n_mc:
        logger.info(f"low-rank labels (participation ratio < {pr_threshold:g}) → Monte Carlo p-values "
                    f"({mc_draws} draws, seed {mc_seed}): {n_mc} layer(s)")
    settings = dict(pr_threshold=pr_threshold, mc_draws=mc_draws, mc_seed=mc_seed,
                    zero_row_rel_tol=zero_row_rel_tol, sv_tol=sv_tol, layers=layers, seconds=dt)
    return SweepScores(per_layer, specific, act_rows, d, n_eval, settings)


_INT_COLS = {"layer", "rank", "specific_rank", "n_layers_scored"}
_STR_COLS = {*_META_COLUMNS, "definition", "null_method_act", "null_method_w_oproj", "null_method_w_downproj",
             "null_method_w_combined", "specific_null_method_act"}


def _dtype(c: str) -> pl.DataType:
    if c in _INT_COLS:
        return pl.Int64
    if c in _STR_COLS:
        return pl.String
    return pl.Float64


def _frame(recs: list[dict], columns: list[str]) -> pl.DataFrame:
    schema = {c: _dtype(c) for c in columns}
    if not recs:
        return pl.DataFrame(schema=schema)
    data = {c: [r.get(c) for r in recs] for c in columns}
    return pl.DataFrame(data, schema=schema)


# ----------------------------------------------------------------------------- summaries


def _nanmean(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64).fill_nan(None).mean().fill_null(NAN)


def _sort_desc(df: pl.DataFrame, key: str) -> pl.DataFrame:
    """Sort by ``key`` descending with NaN/null last, ties by subspace name."""
    return (df.with_columns(pl.col(key).fill_nan(None).alias("__key"))
              .sort(["__key", "subspace"], descending=[True, False], nulls_last=True)
              .drop("__key"))


def _select_layers(df: pl.DataFrame, layers: Sequence[int] | None) -> pl.DataFrame:
    if layers is None:
        return df
    layers = [int(l) for l in layers]
    present = set(df["layer"].unique().to_list())
    miss = [l for l in layers if l not in present]
    if miss:
        logger.warning(f"summary layers not in the per-layer table: {miss}")
    return df.filter(pl.col("layer").is_in(layers))


def summarize(per_layer: pl.DataFrame, layers: Sequence[int] | None) -> pl.DataFrame:
    """Per-candidate means over ``layers`` (NaN-aware), columns :data:`SUMMARY_COLUMNS`
    then extras; ``joint_score = sqrt(mean_conc_act · mean_conc_w_combined)``,
    ``act_w_gap_log2 = log2(mean_conc_act / mean_conc_w_combined)`` (NaN unless both > 0);
    sorted by joint_score descending, NaN last, ties by name."""
    df = _select_layers(per_layer, layers)
    means = {
        "mean_conc_act": "conc_act", "mean_z_act": "z_act", "mean_energy_frac_act": "energy_frac_act",
        "mean_conc_w_oproj": "conc_w_oproj", "mean_conc_w_downproj": "conc_w_downproj",
        "mean_conc_w_combined": "conc_w_combined", "mean_z_w_oproj": "z_w_oproj",
        "mean_z_w_downproj": "z_w_downproj", "mean_z_w_combined": "z_w_combined",
        "mean_cos_dW": "cos_with_dW", "mean_rank": "rank",
        "mean_pct_act_matched_rank": "pct_act_matched_rank",
        "mean_pct_w_combined_matched_rank": "pct_w_combined_matched_rank",
        "mean_energy_frac_w_oproj": "energy_frac_w_oproj", "mean_energy_frac_w_downproj": "energy_frac_w_downproj",
        "mean_energy_frac_w_combined": "energy_frac_w_combined",
    }
    aggs = [pl.col(c).first() for c in _META_COLUMNS[1:]]
    aggs += [_nanmean(src).alias(dst) for dst, src in means.items() if src in df.columns]
    aggs.append(pl.col("conc_act").fill_nan(None).is_not_null().sum().cast(pl.Int64).alias("n_layers_scored"))
    out = df.group_by("subspace", maintain_order=True).agg(aggs)
    for dst, src in means.items():
        if dst not in out.columns:
            out = out.with_columns(pl.lit(NAN, dtype=pl.Float64).alias(dst))
    a = out["mean_conc_act"].to_numpy().astype(np.float64)
    w = out["mean_conc_w_combined"].to_numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        joint = np.where((a >= 0) & (w >= 0), np.sqrt(np.abs(a * w)), np.nan)
        gap = np.where((a > 0) & (w > 0), np.log2(a / w), np.nan)
    out = out.with_columns(pl.Series("joint_score", joint, dtype=pl.Float64),
                           pl.Series("act_w_gap_log2", gap, dtype=pl.Float64))
    out = out.select(SUMMARY_COLUMNS + _SUMMARY_EXTRA)
    return _sort_desc(out, "joint_score")


def _ceiling_value(summary: pl.DataFrame, name: str, col: str) -> float:
    row = summary.filter(pl.col("subspace") == name)
    if row.height == 0:
        logger.warning(f"summary has no {name!r} row: {col} percentages are NaN")
        return NAN
    v = row[col][0]
    return float(v) if v is not None else NAN


def summary_pct(summary: pl.DataFrame) -> pl.DataFrame:
    """The summary plus ``pct_act_ceiling`` (100·mean_conc_act / the activation ceiling's)
    and ``pct_w_oracle_{combined,oproj,downproj}`` (100·mean_conc_w_<t> / the dW ceiling's).

    Columns: :data:`SUMMARY_PCT_COLUMNS` (the summary's contract columns, then the four
    percentages), then any other columns of ``summary`` in their order; rows unchanged."""
    def pct(col: str, ref: float) -> pl.Expr:
        if not (math.isfinite(ref) and ref != 0):
            return pl.lit(NAN, dtype=pl.Float64)
        return (100.0 * pl.col(col) / ref).cast(pl.Float64)

    ca = _ceiling_value(summary, CEILING_ACT, "mean_conc_act")
    exprs = [pct("mean_conc_act", ca).alias("pct_act_ceiling")]
    for t in ("combined", "oproj", "downproj"):
        exprs.append(pct(f"mean_conc_w_{t}", _ceiling_value(summary, CEILING_W, f"mean_conc_w_{t}"))
                     .alias(f"pct_w_oracle_{t}"))
    out = summary.with_columns(exprs)
    first = [c for c in SUMMARY_PCT_COLUMNS if c in out.columns]
    return out.select(first + [c for c in out.columns if c not in first])


def summarize_specific(specific_per_layer: pl.DataFrame, layers: Sequence[int] | None) -> pl.DataFrame:
    """Per-candidate means of the specificity scores over ``layers``, columns
    :data:`SPECIFIC_SUMMARY_COLUMNS`, sorted by mean_specific_conc_act (NaN last)."""
    df = _select_layers(specific_per_layer, layers)
    out = df.group_by("subspace", maintain_order=True).agg(
        [pl.col(c).first() for c in ("family", "source", "kind")]
        + [_nanmean(c).alias(f"mean_{c}") for c in
           ("specific_conc_act", "specific_z_act", "specific_energy_frac_act", "specific_rank")]
    ).select(SPECIFIC_SUMMARY_COLUMNS)
    return _sort_desc(out, "mean_specific_conc_act")


# ---------------------------------------------------------------------- bootstrap and FDR


def bootstrap_summary_ci(scores: SweepScores, layers: Sequence[int] | None, n_boot: int = 2000,
                         seed: int = 0, level: float = 0.95) -> pl.DataFrame:
    """Percentile bootstrap CIs of ``mean_conc_act``, ``mean_energy_frac_act`` and
    ``joint_score`` per candidate, resampling the EVAL label rows.

    One draw resamples row indices once and applies them to every layer and candidate
    (rows are probes, shared by layers). The weight side has no rows and stays fixed.
    Vectorised: each draw is a row-count vector, so all layer means come from one matrix
    product ``counts [n_boot, n] @ rows [n, cells]``. Columns :data:`BOOTSTRAP_COLUMNS`,
    candidates in the order of the per-layer table.
    """
    pl_df = _select_layers(scores.per_layer, layers)
    names = pl_df["subspace"].unique(maintain_order=True).to_list()
    lays = sorted(set(pl_df["layer"].to_list()))
    n, d = scores.n_eval, scores.d_model
    nC, nL = len(names), len(lays)
    rank = {(r["subspace"], r["layer"]): r["rank"] for r in pl_df.select("subspace", "layer", "rank").iter_rows(named=True)}
    R = np.full((nC * nL, n), np.nan)
    kd = np.full(nC * nL, np.nan)
    for i, nm in enumerate(names):
        for j, l in enumerate(lays):
            rows = scores.act_rows.get((nm, l))
            k = rank.get((nm, l))
            if rows is not None and k:
                R[i * nL + j] = rows
                kd[i * nL + j] = k / d
    valid = ~np.isnan(R)
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    num = counts @ np.where(valid, R, 0.0).T  # [n_boot, cells]
    den = counts @ valid.T.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(den > 0, num / den, np.nan).reshape(n_boot, nC, nL)
        cnc = frac / kd.reshape(1, nC, nL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m_frac = np.nanmean(frac, axis=2)  # [n_boot, nC]
        m_conc = np.nanmean(cnc, axis=2)
        summ = summarize(scores.per_layer, lays)
        wmap = dict(zip(summ["subspace"].to_list(), summ["mean_conc_w_combined"].to_list()))
        w = np.array([wmap.get(nm, np.nan) for nm in names], dtype=np.float64)
        joint = np.where((m_conc >= 0) & (w[None] >= 0), np.sqrt(np.abs(m_conc * w[None])), np.nan)
        lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2

        def q(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.nanquantile(a, lo_q, axis=0), np.nanquantile(a, hi_q, axis=0)

        c_lo, c_hi = q(m_conc)
        f_lo, f_hi = q(m_frac)
        j_lo, j_hi = q(joint)
    return pl.DataFrame({
        "subspace": names,
        "mean_conc_act_ci_lo": c_lo, "mean_conc_act_ci_hi": c_hi,
        "mean_energy_frac_act_ci_lo": f_lo, "mean_energy_frac_act_ci_hi": f_hi,
        "joint_score_ci_lo": j_lo, "joint_score_ci_hi": j_hi,
    }, schema={c: (pl.String if c == "subspace" else pl.Float64) for c in BOOTSTRAP_COLUMNS})


def bh_qvalues(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values); NaN entries stay NaN and do not
    count towards the number of tests."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(ranked, 0.0, 1.0)
    q[ok] = out
    return q


def add_qvalues(per_layer: pl.DataFrame) -> pl.DataFrame:
    """Add ``q_act, q_w_combined, q_w_oproj, q_w_downproj``: BH over all A-hypothesis ×
    layer cells with a p-value (ceilings excluded and NaN)."""
    is_hyp = (per_layer["kind"] == "A-hypothesis").to_numpy()
    new = []
    for q_col, p_col in (("q_act", "p_act"), ("q_w_combined", "p_w_combined"),
                         ("q_w_oproj", "p_w_oproj"), ("q_w_downproj", "p_w_downproj")):
        p = per_layer[p_col].cast(pl.Float64).fill_null(NAN).to_numpy().copy()
        p[~is_hyp] = np.nan
        new.append(pl.Series(q_col, bh_qvalues(p), dtype=pl.Float64))
    return per_layer.with_columns(new)
