"""Scoring every (layer, candidate) cell against both labels: :func:`score_sweep`.

One layer at a time, in named steps: stack the layer's candidate bases side by side
(:func:`_stack_bases`), build the labels' nulls and the per-column energies with one
matrix product per label (:func:`_activation_label`, :func:`_weight_labels`,
:func:`_specific_label`, :func:`_dW_overlap`), then read each candidate's cells off them
(:meth:`_Layer.act_cells`, :meth:`_Layer.weight_cells`, :meth:`_Layer.cos_with_dW`,
:meth:`_Layer.specific_cells`). The Gaussian p-values of a whole column come from one
vectorised call at the end (:func:`_fill_gaussian_p`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from jaxtyping import Float
from scipy.stats import norm
from torch import Tensor
from tqdm.auto import tqdm

from ws.core.caveats import ORTH_TOL
from ws.core.columns import (
    CANDIDATE_COLUMNS,
    CEILING_W,
    META_COLUMNS,
    PER_LAYER_COLUMNS,
    PER_LAYER_EXTRA,
    SPECIFIC_COLUMNS,
    SPECIFIC_EXTRA,
    TENSORS,
    WRITER_TAGS,
    frame,
)
from ws.core.linalg import blas_threads, check_orthonormal, f64
from ws.core.log import logger
from ws.stats.null import NAN, PR_THRESHOLD, LabelNull, act_label_null, matrix_label_null


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


# ---------------------------------------------------------------------------- validation


def check_finite(t: torch.Tensor | None, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` if ``t`` holds NaN or Inf."""
    if t is None:
        return
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} contains {n_bad} NaN/Inf value(s); fix the capture or delta before scoring")


def _meta_rows(meta: pl.DataFrame) -> list[dict]:
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise ValueError(f"meta is missing column(s) {missing}; expected {META_COLUMNS}")
    names = meta["subspace"].to_list()
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"meta lists candidate(s) more than once: {dup}")
    return meta.select(CANDIDATE_COLUMNS).to_dicts()


def _check_candidates(bases: Mapping, names: list[str], L: int) -> None:
    absent = [n for n in names if n not in bases]
    if absent:
        raise ValueError(f"meta lists candidate(s) with no bases: {absent}")
    extra = [n for n in bases if n not in names]
    if extra:
        logger.warning(f"bases without a meta row are not scored: {extra}")
    for n in names:
        if len(bases[n]) != L:
            raise ValueError(f"candidate {n!r} has {len(bases[n])} per-layer entries, expected {L}")


def _check_layer(bases: Mapping, names: list[str], delta, C, l: int, d: int, orth_tol: float) -> None:
    """Shapes, finiteness and orthonormality of everything scored on layer ``l``."""
    for t in WRITER_TAGS:
        M = None if delta is None else delta.get(t)
        check_finite(M, f"weight delta {t!r} at layer {l}")
        if M is not None and (M.ndim != 2 or M.shape[0] != d):
            raise ValueError(f"weight delta {t!r} at layer {l} must be [d_model={d}, in], got {tuple(M.shape)}")
    if C is not None:
        check_finite(C, f"clean_pcs at layer {l}")
        if C.ndim != 2 or C.shape[0] != d:
            raise ValueError(f"clean_pcs at layer {l} must be [d_model={d}, c], got {tuple(C.shape)}")
        check_orthonormal(C, "clean_pcs", l, orth_tol)
    for n in names:
        B = bases[n][l]
        if B is None:
            continue
        if B.ndim != 2 or B.shape[0] != d:
            raise ValueError(f"candidate {n!r} at layer {l}: basis must be [d_model={d}, k], got {tuple(B.shape)}")
        check_orthonormal(B, n, l, orth_tol)


def _check_inputs(bases, meta, label, deltas, clean_pcs, layers, orth_tol) -> tuple[list[dict], list[int]]:
    """Every input checked before any scoring, so a bad one fails fast; returns the meta
    rows and the layers to score."""
    if label.ndim != 3:
        raise ValueError(f"label must be [layers, n_eval, d_model], got shape {tuple(label.shape)}")
    check_finite(label, "activation label (hs_diff_B)")
    L, _n, d = label.shape
    if len(deltas) != L:
        raise ValueError(f"deltas has {len(deltas)} entries but the label has {L} layers")
    if len(clean_pcs) != L:
        raise ValueError(f"clean_pcs has {len(clean_pcs)} entries but the label has {L} layers")
    meta_rows = _meta_rows(meta)
    names = [m["subspace"] for m in meta_rows]
    _check_candidates(bases, names, L)
    layers = list(range(L)) if layers is None else [int(l) for l in layers]
    for l in layers:
        if not 0 <= l < L:
            raise ValueError(f"layer {l} outside 0..{L - 1}")
    for l in layers:
        _check_layer(bases, names, deltas[l], clean_pcs[l], l, d, orth_tol)
    return meta_rows, layers


# ---------------------------------------------------------------------- one layer's labels


def project_off(X: Float[Tensor, "n d"], C: Float[Tensor, "d c"]) -> Float[Tensor, "n d"]:
    """Rows of ``X`` ``[n, d]`` with their part in ``span(C)`` removed (C orthonormal)."""
    return X - (X @ C) @ C.T


def specific_basis(
    B: Float[Tensor, "d k"], C: Float[Tensor, "d c"], sv_tol: float, CB: Float[Tensor, "c k"] | None = None
) -> Float[Tensor, "d r"]:
    """``B`` projected off ``span(C)`` and re-orthonormalised: ``[d, r]``, the directions with
    singular value ≤ ``sv_tol`` dropped. ``CB``: ``CᵀB`` when already computed."""
    Bp = B - C @ (C.T @ B if CB is None else CB)
    U, S, _ = torch.linalg.svd(Bp, full_matrices=False)
    return U[:, S > sv_tol]


def _stack_bases(bases: Mapping, names: list[str], l: int, d: int):
    """The layer's bases side by side, ``Ball [d, Σk]``, with each candidate's column span
    and rank (candidates undefined on the layer have neither)."""
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
            cols.append(f64(B))
    Ball = torch.cat(cols, dim=1) if cols else torch.zeros(d, 0, dtype=torch.float64)
    return Ball, spans, ranks


def _activation_label(X, valid, d, Ball, nulls):
    """The activation label's null and every column's per-row energy ``(x̂ᵀb)²``
    (``[n_valid, Σk]``)."""
    lab, Xh = act_label_null(X, valid, d, **nulls)
    return lab, (Xh @ Ball) ** 2


def _weight_labels(delta, d, Ball, nulls):
    """Per tensor (and ``combined``, the mean of the two trace-one A's) the null of
    ``A_t = MMᵀ/‖M‖²_F`` and every column's energy ``bᵀA_t b``; None where the layer has
    no such delta."""
    labs: dict[str, LabelNull | None] = {t: None for t in TENSORS}
    cols: dict[str, torch.Tensor | None] = {t: None for t in TENSORS}
    A_parts = []
    for t in WRITER_TAGS if delta is not None else ():
        M = delta.get(t)
        if M is None:
            continue
        M = f64(M)
        G = M @ M.T
        tr = float(torch.trace(G))
        if not tr > 0:
            continue
        A = G / tr
        A_parts.append(A)
        labs[t] = matrix_label_null(A, **nulls)
        cols[t] = (Ball * (A @ Ball)).sum(dim=0)
    if A_parts:
        Ac = sum(A_parts) / len(A_parts)
        labs["combined"] = matrix_label_null(Ac, **nulls)
        cols["combined"] = sum(cols[t] for t in WRITER_TAGS if cols[t] is not None) / len(A_parts)
    return labs, cols


def _specific_label(X, C, zero_thr, d, Ball, nulls):
    """Label rows projected off the clean PCs ``C``: their null in the complement (dimension
    ``d − c``), the unit rows, and ``CᵀBall``. All None without clean PCs."""
    if C is None:
        return None, None, None, None
    C = f64(C)
    Y = project_off(X, C)
    lab, Yh = act_label_null(Y, Y.norm(dim=1) > zero_thr, d - C.shape[1], **nulls)
    return lab, Yh, C, C.T @ Ball


def _dW_overlap(bases: Mapping, names: list[str], l: int, Ball):
    """``DᵀBall`` for the dW ceiling's basis D of the layer (principal angles), or None."""
    D = bases[CEILING_W][l] if CEILING_W in bases and CEILING_W in names else None
    return f64(D).T @ Ball if D is not None and D.shape[1] > 0 else None


def _pct_matched(frac: float, ev_cumsum: np.ndarray | None, r: int) -> float:
    """``frac`` in % of the best a rank-r subspace can reach on the same label."""
    if ev_cumsum is None or ev_cumsum.size == 0 or r <= 0 or not math.isfinite(frac):
        return NAN
    best = float(ev_cumsum[min(r, ev_cumsum.size) - 1])
    return 100.0 * frac / best if best > 0 else NAN


@dataclass
class _Layer:
    """One layer's labels, nulls and per-column energies; its methods read one candidate's
    cells off them."""

    l: int
    Ball: torch.Tensor
    spans: dict
    ranks: dict
    act: LabelNull | None
    valid: torch.Tensor
    P_act: torch.Tensor
    w: dict
    w_col: dict
    spec: LabelNull | None
    Yh: torch.Tensor | None
    C: torch.Tensor | None
    CB: torch.Tensor | None
    DB: torch.Tensor | None

    @classmethod
    def build(cls, l, bases, names, X, valid, zero_thr, delta, C, d, nulls) -> _Layer:
        Ball, spans, ranks = _stack_bases(bases, names, l, d)
        act, P_act = _activation_label(X, valid, d, Ball, nulls)
        w, w_col = _weight_labels(delta, d, Ball, nulls)
        spec, Yh, C, CB = _specific_label(X, C, zero_thr, d, Ball, nulls)
        return cls(l, Ball, spans, ranks, act, valid, P_act, w, w_col, spec, Yh, C, CB, _dW_overlap(bases, names, l, Ball))

    def count_monte_carlo(self, n_mc: dict[str, int]) -> None:
        """Add this layer's labels that use the Monte Carlo null to ``n_mc``."""
        for key, lab in (("act", self.act), *((f"w_{t}", self.w[t]) for t in TENSORS)):
            if lab is not None and lab.use_mc:
                n_mc[key] = n_mc.get(key, 0) + 1

    def act_cells(self, n: str, k: int | None, n_eval: int) -> tuple[dict, np.ndarray]:
        """R_act (``conc_act``) and its z, p, % at matched rank; the per-row fractions
        ``[n_eval]`` (NaN where the row is zero or the cell undefined)."""
        rows_full = np.full(n_eval, NAN)
        lab = self.act
        if k is None or k == 0 or lab is None:
            rec = dict(conc_act=NAN, z_act=NAN, energy_frac_act=NAN, p_act=NAN, null_method_act="", pct_act_matched_rank=NAN)
        else:
            s, e = self.spans[n]
            rows = self.P_act[:, s:e].sum(dim=1).numpy()
            rows_full[self.valid.numpy()] = rows
            frac = float(rows.mean())
            c_, z_, p_, meth = lab.score(frac, k, gaussian_p=False)  # c_ = R_act = frac/(k/d)
            rec = dict(
                conc_act=c_,
                z_act=z_,
                energy_frac_act=frac,
                p_act=p_,
                null_method_act=meth,
                pct_act_matched_rank=_pct_matched(frac, lab.cumsum(), k),
            )
        rec["pr_act"] = lab.pr if lab is not None else NAN
        return rec, rows_full

    def weight_cells(self, n: str, k: int | None) -> dict:
        """R_w per tensor (``conc_w_<t>``: R_w of ``oproj``, ``downproj``, ``combined``) with
        z, p and the energy fraction; % at matched rank for ``combined``."""
        rec = {}
        for t in TENSORS:
            lab = self.w[t]
            if k is None or k == 0 or lab is None:
                frac = NAN
                c_, z_, p_, meth = NAN, NAN, NAN, ""
            else:
                s, e = self.spans[n]
                frac = float(self.w_col[t][s:e].sum())
                c_, z_, p_, meth = lab.score(frac, k, gaussian_p=False)  # c_ = R_w of tensor t = frac/(k/d)
            rec.update(
                {f"conc_w_{t}": c_, f"z_w_{t}": z_, f"energy_frac_w_{t}": frac, f"p_w_{t}": p_, f"null_method_w_{t}": meth}
            )
        labc = self.w["combined"]
        rec["pct_w_combined_matched_rank"] = (
            _pct_matched(rec["energy_frac_w_combined"], labc.cumsum(), k) if labc is not None and k else NAN
        )
        rec["pr_w_combined"] = labc.pr if labc is not None else NAN
        return rec

    def cos_with_dW(self, n: str, k: int | None) -> float:
        """Mean cosine of the principal angles with the dW basis: the singular values of
        ``DᵀB``, a column slice of the layer's one product (hand-written: a library call per
        cell would re-orthonormalise both bases)."""
        if self.DB is None or not k:
            return NAN
        s, e = self.spans[n]
        return float(torch.linalg.svdvals(self.DB[:, s:e]).clamp(max=1.0).mean())

    def specific_cells(self, m: dict, k: int | None, sv_tol: float) -> dict:
        """The activation score with label and basis projected off the clean PCs."""
        srec = {"layer": self.l, **{c: m[c] for c in ("subspace", "family", "source", "kind")}}
        if self.C is None or k is None:
            srec.update(
                specific_conc_act=NAN,
                specific_z_act=NAN,
                specific_energy_frac_act=NAN,
                specific_rank=None,
                specific_p_act=NAN,
                specific_null_method_act="",
            )
            return srec
        r, frac = 0, NAN
        if k:
            s, e = self.spans[m["subspace"]]
            W = specific_basis(self.Ball[:, s:e], self.C, sv_tol, CB=self.CB[:, s:e])
            r = W.shape[1]
            if r and self.spec is not None:
                frac = float(((self.Yh @ W) ** 2).sum(dim=1).mean())
        if r and self.spec is not None:
            c_, z_, p_, meth = self.spec.score(frac, r, gaussian_p=False)
        else:
            c_, z_, p_, meth = NAN, NAN, NAN, ""
        srec.update(
            specific_conc_act=c_,
            specific_z_act=z_,
            specific_energy_frac_act=frac,
            specific_rank=r,
            specific_p_act=p_,
            specific_null_method_act=meth,
        )
        return srec


def _fill_gaussian_p(df: pl.DataFrame, cols: Sequence[tuple[str, str, str]]) -> pl.DataFrame:
    """Fill ``p`` from ``z`` by the Gaussian upper tail where ``method`` is ``gaussian``, one
    vectorised call per ``(p, z, method)`` column triple."""
    new = []
    for p_col, z_col, m_col in cols:
        z = df[z_col].cast(pl.Float64).fill_null(NAN).to_numpy()
        p = df[p_col].cast(pl.Float64).fill_null(NAN).to_numpy()
        gauss = (df[m_col] == "gaussian").fill_null(False).to_numpy()
        new.append(pl.Series(p_col, np.where(gauss, norm.sf(z), p), dtype=pl.Float64))
    return df.with_columns(new)


_P_COLUMNS = [("p_act", "z_act", "null_method_act"), *((f"p_w_{t}", f"z_w_{t}", f"null_method_w_{t}") for t in TENSORS)]
_SPECIFIC_P_COLUMNS = [("specific_p_act", "specific_z_act", "specific_null_method_act")]


# --------------------------------------------------------------------------------- sweep


def score_sweep(
    bases: Mapping[str, Sequence[Float[Tensor, "d k"] | None]],
    meta: pl.DataFrame,
    label: Float[Tensor, "L n d"],
    deltas: Sequence[Mapping[str, Float[Tensor, "d m"] | None] | None],
    clean_pcs: Sequence[Float[Tensor, "d c"] | None],
    layers: Sequence[int] | None = None,
    *,
    pr_threshold: float = PR_THRESHOLD,
    mc_draws: int = 2000,
    mc_seed: int = 0,
    zero_row_rel_tol: float = 1e-7,
    sv_tol: float = 1e-6,
    orth_tol: float = ORTH_TOL,
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

    num_threads: torch and BLAS threads while scoring (:func:`ws.core.linalg.blas_threads`,
        restored afterwards; None leaves the settings alone). The work is many small
        factorisations, and on a busy 2-core machine two threads waiting on each other made
        it ~10× slower than one.

    Null moments are computed once per (layer, label, k), not per candidate; all bases of a
    layer are scored with one matrix product per label.
    """
    with blas_threads(num_threads):
        t0 = time.perf_counter()
        meta_rows, layers = _check_inputs(bases, meta, label, deltas, clean_pcs, layers, orth_tol)
        recs, srecs, act_rows, n_mc = _score_layers(
            bases,
            meta_rows,
            label,
            deltas,
            clean_pcs,
            layers,
            sv_tol,
            zero_row_rel_tol,
            progress,
            dict(pr_threshold=pr_threshold, mc_draws=mc_draws, mc_seed=mc_seed),
        )
        per_layer = _fill_gaussian_p(frame(recs, PER_LAYER_COLUMNS + PER_LAYER_EXTRA), _P_COLUMNS)
        specific = _fill_gaussian_p(frame(srecs, SPECIFIC_COLUMNS + SPECIFIC_EXTRA), _SPECIFIC_P_COLUMNS)
    dt = time.perf_counter() - t0
    logger.info(f"scored {len(meta_rows)} candidates × {len(layers)} layers in {dt:.2f} s")
    if n_mc:
        logger.info(
            f"low-rank labels (participation ratio < {pr_threshold:g}) → Monte Carlo p-values "
            f"({mc_draws} draws, seed {mc_seed}): {n_mc} layer(s)"
        )
    settings = dict(
        pr_threshold=pr_threshold,
        mc_draws=mc_draws,
        mc_seed=mc_seed,
        zero_row_rel_tol=zero_row_rel_tol,
        sv_tol=sv_tol,
        layers=layers,
        seconds=dt,
    )
    return SweepScores(per_layer, specific, act_rows, label.shape[2], label.shape[1], settings)


def _score_layers(bases, meta_rows, label, deltas, clean_pcs, layers, sv_tol, zero_row_rel_tol, progress, nulls):
    """The records of both tables, the per-row activation fractions and the count of labels
    on the Monte Carlo null, layer by layer."""
    _L, n_eval, d = label.shape
    names = [m["subspace"] for m in meta_rows]
    X_all = f64(label)
    row_norm = X_all.norm(dim=2)  # [L, n]
    zero_thr = zero_row_rel_tol * float(row_norm.max()) if row_norm.numel() else 0.0
    recs: list[dict] = []
    srecs: list[dict] = []
    act_rows: dict[tuple[str, int], np.ndarray] = {}
    n_mc: dict[str, int] = {}
    for l in tqdm(layers, desc="score layers", disable=not progress, leave=False):
        lay = _Layer.build(l, bases, names, X_all[l], row_norm[l] > zero_thr, zero_thr, deltas[l], clean_pcs[l], d, nulls)
        lay.count_monte_carlo(n_mc)
        for m in meta_rows:
            n = m["subspace"]
            k = lay.ranks.get(n)
            act, act_rows[(n, l)] = lay.act_cells(n, k, n_eval)
            recs.append({"layer": l, **m, "rank": k, **act, **lay.weight_cells(n, k), "cos_with_dW": lay.cos_with_dW(n, k)})
            srecs.append(lay.specific_cells(m, k, sv_tol))
    return recs, srecs, act_rows, n_mc
