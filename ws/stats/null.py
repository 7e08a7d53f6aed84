"""The random-subspace null: exact moments from two traces, Monte Carlo draws for labels
close to rank one, and :class:`LabelNull`, one label's null at every rank.

For a Haar-random rank-k projection ``P`` in dimension ``d`` and a symmetric PSD ``A``::

    E[tr(PA)]   = (k/d) · tr A
    Var[tr(PA)] = 2k(d−k) / (d(d−1)(d+2)) · (tr(A²) − (tr A)²/d)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from jaxtyping import Bool, Float
from scipy.stats import norm, shapiro
from scipy.stats import t as student_t
from torch import Tensor

from ws.core.caveats import NULL_FIT_ALPHA
from ws.core.linalg import f64, haar_frames

NAN = float("nan")

#: Label participation ratio below which a cell's p-value comes from the Monte Carlo null.
PR_THRESHOLD = 3.0

# z is undefined when the null has (numerically) no spread, e.g. k = d or A ∝ I
_STD_REL_FLOOR = 1e-12


def unit_rows(X: Float[Tensor, "n d"], zero_tol: float = 0.0) -> tuple[Float[Tensor, "n_valid d"], Bool[Tensor, " n"]]:
    """Rows of ``X`` (``[n, d]``) scaled to unit norm, and the mask ``[n]`` of rows kept
    (norm > ``zero_tol``). Returns ``(X̂ [n_valid, d], valid [n])``."""
    X = f64(X)
    nrm = X.norm(dim=1)
    valid = nrm > zero_tol
    return X[valid] / nrm[valid, None], valid


def act_traces(X: Float[Tensor, "n d"]) -> tuple[float, float, int]:
    """``(tr A, tr A², n_valid)`` for ``A = mean_i x̂_i x̂_iᵀ`` over the non-zero rows of
    X ``[n, d]``, from the ``n × n`` Gram ``X̂X̂ᵀ`` (no ``d × d`` matrix):
    ``tr A = 1`` and ``tr A² = ‖X̂X̂ᵀ‖²_F/n²``."""
    Xh, _ = unit_rows(X)
    n = Xh.shape[0]
    if n == 0:
        return NAN, NAN, 0
    K = Xh @ Xh.T
    return 1.0, float((K * K).sum()) / n**2, n


def weight_traces(M: Float[Tensor, "d m"]) -> tuple[float, float]:
    """``(tr A, tr A²)`` for ``A = MMᵀ/‖M‖²_F``: ``1`` and ``Σσ⁴/(Σσ²)²``, computed from
    the smaller of the two Grams of M ``[d, in]``."""
    M = f64(M)
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


def zscore(frac: float, mean: float, std: float) -> float:
    """``(frac − mean)/std``; NaN when the null has no spread or anything is NaN."""
    if not (math.isfinite(frac) and math.isfinite(mean) and math.isfinite(std)):
        return NAN
    if std <= _STD_REL_FLOOR * max(abs(mean), 1e-300):
        return NAN
    return (frac - mean) / std


def conc(frac: float, k: int, d: int) -> float:
    """Concentration ``frac/(k/d)`` (R_act or R_w); NaN for ``k ≤ 0``."""
    return frac / (k / d) if k > 0 and d > 0 and math.isfinite(frac) else NAN


def participation_ratio(tr_a: float, tr_a2: float) -> float:
    """Effective rank ``(tr A)²/tr(A²)`` (1 for rank one, d for ``A ∝ I``)."""
    return tr_a**2 / tr_a2 if tr_a2 > 0 and math.isfinite(tr_a2) else NAN


def p_gaussian(z: float) -> float:
    """One-sided upper p-value of z under N(0, 1)."""
    return float(norm.sf(z)) if math.isfinite(z) else NAN


def p_empirical(frac: float, draws: np.ndarray) -> float:
    """Monte Carlo upper p-value ``(1 + #{draw ≥ frac})/(1 + n)``."""
    if not math.isfinite(frac) or draws.size == 0:
        return NAN
    return (1.0 + float(np.count_nonzero(draws >= frac))) / (1.0 + draws.size)


@dataclass(frozen=True)
class NullTail:
    """One value's upper-tail p against a small sample of null draws (:func:`null_tail_p`).

    ``p``: the p used (``p_normal`` when ``method == "normal"``, ``p_empirical`` when
    ``"empirical"``; NaN and method ``""`` when there is no p); ``fit_p``: the Shapiro–Wilk p
    of the draws (NaN when it cannot be computed: fewer than 3 draws or no spread)."""

    p: float
    p_normal: float
    p_empirical: float
    fit_p: float
    method: str


def p_normal_predictive(value: float, draws: np.ndarray) -> float:
    """Upper p of ``value`` as one more draw of a normal law known only by ``draws`` ``[n]``:
    ``t = (value − mean)/(sd·√(1 + 1/n))`` (sd with ddof 1) against Student's t with ``n − 1``
    degrees of freedom. Exact when the draws and the value are i.i.d. normal (the predictive
    interval); no floor set by ``n``. NaN for ``n < 2``, no spread or a non-finite value."""
    x = np.asarray(draws, np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2 or not math.isfinite(value):
        return NAN
    sd = float(x.std(ddof=1))
    if not sd > _STD_REL_FLOOR * max(abs(float(x.mean())), 1e-300):
        return NAN
    t = (value - float(x.mean())) / (sd * math.sqrt(1.0 + 1.0 / x.size))
    return float(student_t.sf(t, x.size - 1))


def normal_fit_p(draws: np.ndarray) -> float:
    """Shapiro–Wilk p of ``draws`` ``[n]`` (finite ones) against normality; NaN for fewer
    than 3 draws or draws without spread."""
    x = np.asarray(draws, np.float64)
    x = x[np.isfinite(x)]
    if x.size < 3 or not float(x.std()) > _STD_REL_FLOOR * max(abs(float(x.mean())), 1e-300):
        return NAN
    return float(shapiro(x).pvalue)


def null_tail_p(value: float, draws: np.ndarray, fit_alpha: float = NULL_FIT_ALPHA) -> NullTail:
    """The upper p of ``value`` against null ``draws`` ``[n]`` (NaN draws dropped).

    The empirical p ``(1 + #{draw ≥ value})/(1 + n)`` can never go below ``1/(1 + n)``; the
    normal predictive p (:func:`p_normal_predictive`) has no such floor. The normal p is used
    when the draws pass a Shapiro–Wilk test of normality (``fit_p ≥ fit_alpha``); otherwise, or
    when it cannot be computed, the empirical p. Under a normal null the choice is exact: the
    Shapiro–Wilk statistic does not depend on the draws' mean and sd (it is ancillary), so
    conditioning on it leaves the predictive t's law unchanged."""
    x = np.asarray(draws, np.float64)
    x = x[np.isfinite(x)]
    if not math.isfinite(value) or x.size == 0:
        return NullTail(NAN, NAN, NAN, NAN, "")
    pe, pn, fit = p_empirical(value, x), p_normal_predictive(value, x), normal_fit_p(x)
    if math.isfinite(pn) and math.isfinite(fit) and fit >= fit_alpha:
        return NullTail(pn, pn, pe, fit, "normal")
    return NullTail(pe, pn, pe, fit, "empirical")


def p_with_draws(value: float, draws: np.ndarray, n: int, fit_alpha: float = NULL_FIT_ALPHA) -> float:
    """The p :func:`null_tail_p` would give ``value`` against ``n`` draws if the draws to come
    looked like these ``[n0]``: the same mean and sd (normal tail, ``n − 1`` degrees of freedom)
    or the same share of draws ≥ ``value`` (empirical p), by the method these draws choose. A
    sequential null asks it whether drawing up to ``n`` could change a decision. NaN where
    :func:`null_tail_p` gives none."""
    x = np.asarray(draws, np.float64)
    x = x[np.isfinite(x)]
    now = null_tail_p(value, x, fit_alpha)
    if now.method == "normal":
        t = (value - float(x.mean())) / (float(x.std(ddof=1)) * math.sqrt(1.0 + 1.0 / n))
        return float(student_t.sf(t, n - 1))
    if now.method == "empirical":
        return (1.0 + float((x >= value).sum()) * n / x.size) / (1.0 + n)
    return NAN


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
        Q = haar_frames(d, k, m, gen, dtype=torch.float32, sample_dtype=torch.float32)
        out[s : s + m] = (Q * Q).sum(dim=2).to(torch.float64).numpy()
    out.setflags(write=False)
    return out


def haar_null_draws(eigs: np.ndarray, d: int, k: int, n_draws: int, seed: int) -> np.ndarray:
    """``n_draws`` exact null draws ``[n_draws]`` of ``tr(PA)`` for a trace-one A with
    eigenvalues ``eigs`` (descending, at most d of them) in dimension d."""
    diag = _haar_proj_diag(int(d), int(k), int(n_draws), int(seed))
    return diag[:, : eigs.size] @ eigs


class LabelNull:
    """The null of one label: a trace-one matrix A in dimension d known by ``tr A²``, its
    eigenvalues computed only when needed (Monte Carlo p-values, best-at-rank).

    ``use_mc``: the label's participation ratio is below ``pr_threshold``, so the Gaussian
    tail is a poor approximation and p-values come from ``mc_draws`` seeded Haar draws.
    """

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
        """Eigenvalues of A, trace-normalised, descending (at most d)."""
        if self._ev is None:
            ev = np.clip(np.asarray(self._eig_fn(), dtype=np.float64), 0.0, None)
            tot = ev.sum()
            self._ev = np.sort(ev / tot)[::-1][: self.d].copy() if tot > 0 else np.array([])
        return self._ev

    def cumsum(self) -> np.ndarray:
        """``cumsum[r − 1]``: the largest energy fraction a rank-r subspace can reach."""
        if self._cum is None:
            self._cum = np.cumsum(self.eigs())
        return self._cum

    def null(self, k: int) -> tuple[float, float]:
        """Null mean and std of the energy fraction at rank k."""
        if k not in self._null:
            self._null[k] = null_mean_std_from_traces(1.0, self.tr_a2, self.d, k)
        return self._null[k]

    def score(self, frac: float, k: int, gaussian_p: bool = True) -> tuple[float, float, float, str]:
        """``(conc, z, p, null_method)`` of an energy fraction at rank k.

        ``gaussian_p=False`` leaves p NaN where the method is ``"gaussian"``, for a caller
        that computes every Gaussian tail of a column in one vectorised call."""
        if k <= 0 or not math.isfinite(frac):
            return NAN, NAN, NAN, ""
        mean, std = self.null(k)
        z = zscore(frac, mean, std)
        if self.use_mc and k < self.d:
            if k not in self._draws:
                self._draws[k] = haar_null_draws(self.eigs(), self.d, k, self.mc_draws, self.mc_seed)
            return conc(frac, k, self.d), z, p_empirical(frac, self._draws[k]), "monte_carlo"
        return conc(frac, k, self.d), z, (p_gaussian(z) if gaussian_p else NAN), "gaussian"


def act_label_null(X: torch.Tensor, valid: torch.Tensor, d: int, **kw) -> tuple[LabelNull | None, torch.Tensor]:
    """The null of activation rows ``X`` ``[n, d]`` (rows where ``valid``), and those rows at
    unit norm ``[n_valid, d]``; ``tr A²`` and the eigenvalues come from the ``n × n`` Gram.
    ``kw``: ``pr_threshold, mc_draws, mc_seed`` of :class:`LabelNull`."""
    Xh = X[valid] / X[valid].norm(dim=1, keepdim=True)
    n = Xh.shape[0]
    if n == 0:
        return None, Xh
    K = Xh @ Xh.T
    lab = LabelNull(d, float((K * K).sum()) / n**2, lambda: torch.linalg.eigvalsh(K).numpy() / n, **kw)
    return lab, Xh


def matrix_label_null(A: torch.Tensor, **kw) -> LabelNull:
    """The null of a trace-one symmetric ``A`` ``[d, d]`` (a weight label ``MMᵀ/‖M‖²_F``)."""
    return LabelNull(A.shape[0], float((A * A).sum()), lambda: torch.linalg.eigvalsh(A).numpy(), **kw)
