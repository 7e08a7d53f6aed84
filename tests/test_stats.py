"""Known-answer tests for ws.stats: energy fractions, the closed-form null, the sweep,
summaries, bootstrap and FDR. Small dimensions throughout so the file runs in seconds."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats as sps

from ws import stats
from ws.core.linalg import blas_threads, haar_frames

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors on a shared 2-core machine: one thread avoids waiting on a busy core."""
    with blas_threads(1):
        yield


# ----------------------------------------------------------------------------- helpers


def orth(M: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of M (thin SVD, left factor)."""
    return torch.linalg.svd(M.to(F64), full_matrices=False)[0]


def complement(B: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``[d, d − k]`` of the orthogonal complement of span(B)."""
    Q, _ = torch.linalg.qr(B.to(F64), mode="complete")
    return Q[:, B.shape[1] :]


def act_A(X: torch.Tensor) -> torch.Tensor:
    Xh = X.to(F64) / X.to(F64).norm(dim=1, keepdim=True)
    return Xh.T @ Xh / Xh.shape[0]


def w_A(M: torch.Tensor) -> torch.Tensor:
    M = M.to(F64)
    return M @ M.T / (M * M).sum()


def aniso_rows(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Rows with a decaying spectrum (participation ratio well above 3)."""
    scale = torch.linspace(2.0, 0.2, d, dtype=F64)
    return torch.randn(n, d, generator=gen, dtype=F64) * scale


def aniso_weight(d: int, m: int, gen: torch.Generator) -> torch.Tensor:
    U = orth(torch.randn(d, d, generator=gen, dtype=F64))
    s = torch.logspace(0, -1.5, d, dtype=F64)
    return (U * s) @ torch.randn(d, m, generator=gen, dtype=F64)


def make_sweep_inputs(L=3, d=40, n_eval=20, n_hyp=6, seed=0, k=6, planted=4, delta_layers=None, in_o=None, in_d=None):
    """A synthetic sweep: per layer a planted span S_l that carries the label rows and part
    of the weight deltas; random hypotheses; the two ceilings built from the labels."""
    g = torch.Generator().manual_seed(seed)
    in_o = in_o or d
    in_d = in_d or 2 * d
    label = torch.zeros(L, n_eval, d)
    deltas, clean, spans = [], [], []
    for l in range(L):
        Sp = orth(torch.randn(d, planted, generator=g, dtype=F64))
        spans.append(Sp)
        coef = torch.randn(n_eval, planted, generator=g, dtype=F64) * torch.linspace(3.0, 1.0, planted, dtype=F64)
        label[l] = (coef @ Sp.T + 0.03 * torch.randn(n_eval, d, generator=g, dtype=F64)).float()
        if delta_layers is None or l in delta_layers:
            Lf = torch.cat([Sp, 0.02 * torch.randn(d, 3, generator=g, dtype=F64)], 1)
            deltas.append(
                {
                    "oproj": (Lf @ torch.randn(Lf.shape[1], in_o, generator=g, dtype=F64)).float(),
                    "downproj": (Lf @ torch.randn(Lf.shape[1], in_d, generator=g, dtype=F64)).float(),
                }
            )
        else:
            deltas.append(None)
        clean.append(orth(torch.randn(d, 8, generator=g, dtype=F64)).float())
    bases, rows = {}, []
    fams = [("W:write", "write"), ("act:persona", "mixed"), ("W:read", "read")]
    for i in range(n_hyp):
        kk = [k, k - 1, k + 2][i % 3]
        fam, ak = fams[i % 3]
        bases[f"hyp{i:02d}"] = [orth(torch.randn(d, kk, generator=g, dtype=F64)).float() for _ in range(L)]
        rows.append(
            dict(
                subspace=f"hyp{i:02d}",
                family=fam,
                axis_kind=ak,
                source="synthetic",
                kind="A-hypothesis",
                definition=f"random basis {i}",
            )
        )
    bases["planted"] = [s.float() for s in spans]
    rows.append(
        dict(
            subspace="planted",
            family="W:write",
            axis_kind="write",
            source="synthetic",
            kind="A-hypothesis",
            definition="the planted span",
        )
    )
    bases[stats.CEILING_ACT] = [torch.linalg.svd(label[l].to(F64), full_matrices=False)[2][:planted].T.float() for l in range(L)]
    bases[stats.CEILING_W] = [
        None if deltas[l] is None else orth(torch.cat([deltas[l]["oproj"], deltas[l]["downproj"]], 1))[:, :planted].float()
        for l in range(L)
    ]
    for nm in (stats.CEILING_ACT, stats.CEILING_W):
        rows.append(dict(subspace=nm, family="ceiling", axis_kind="ceiling", source="B", kind="ceiling", definition="ceiling"))
    return bases, pl.DataFrame(rows), label, deltas, clean, spans


def run(bases, meta, label, deltas, clean, **kw):
    return stats.score_sweep(bases, meta, label, deltas, clean, progress=False, **kw)


SCORE_COLS = [c for c in stats.PER_LAYER_COLUMNS if c not in ("layer", "subspace", "family", "axis_kind", "source", "kind")]


def moments_ok(vals: np.ndarray, mean: float, std: float, n_se: float = 3.0) -> bool:
    """Sample mean within n_se standard errors of ``mean`` and sample std within n_se
    standard errors of ``std`` (delta-method SE from the sample fourth moment; equal to
    std/√(2n) for Gaussian draws)."""
    n = vals.size
    m, s = vals.mean(), vals.std(ddof=1)
    se_mean = s / math.sqrt(n)
    m4 = np.mean((vals - m) ** 4)
    se_std = math.sqrt(max(m4 - s**4, 0.0) / (4 * n * s**2))
    return abs(m - mean) < n_se * se_mean and abs(s - std) < n_se * se_std


def haar_traces(A: torch.Tensor, k: int, n: int, seed: int) -> np.ndarray:
    """Brute-force tr(QᵀAQ) for n Haar frames (full QR, not the diagonal shortcut)."""
    Q = haar_frames(A.shape[0], k, n, torch.Generator().manual_seed(seed), sample_dtype=torch.float32)
    return ((A.to(F64) @ Q) * Q).sum(dim=(1, 2)).numpy()


# ------------------------------------------------------------------ the closed-form null

DK = [(16, 2), (40, 8), (64, 8)]


@pytest.mark.parametrize("d,k", DK)
def test_closed_form_null_matches_haar_monte_carlo(d, k):
    g = torch.Generator().manual_seed(d * 100 + k)
    X = aniso_rows(12, d, g)
    M = aniso_weight(d, 2 * d, g)
    for A, (mean, std) in ((act_A(X), stats.null_mean_std_act(X, k)), (w_A(M), stats.null_mean_std_w(M, k))):
        # the sufficient-statistics route equals the explicit d × d route
        m2, s2 = stats.null_mean_std(A, k)
        assert mean == pytest.approx(m2, rel=1e-10) and std == pytest.approx(s2, rel=1e-10)
        vals = haar_traces(A, k, 20000 if d <= 16 else 8000, seed=d + k)
        assert moments_ok(vals, mean, std), (d, k, vals.mean(), mean, vals.std(ddof=1), std)


def test_null_check_rejects_wrong_formulas():
    """The Monte Carlo check has the power to catch plausible slips in the variance."""
    d, k = 16, 2
    g = torch.Generator().manual_seed(7)
    A = act_A(aniso_rows(12, d, g))
    tr_a, tr_a2 = float(torch.trace(A)), float((A * A).sum())
    vals = haar_traces(A, k, 20000, seed=3)
    mean, std = stats.null_mean_std_from_traces(tr_a, tr_a2, d, k)
    assert moments_ok(vals, mean, std)
    no_centering = math.sqrt(2 * k * (d - k) / (d * (d - 1) * (d + 2)) * tr_a2)
    d_squared = math.sqrt(2 * k * (d - k) / (d * d * (d + 2)) * (tr_a2 - tr_a**2 / d))
    assert not moments_ok(vals, mean, no_centering)
    assert not moments_ok(vals, mean, d_squared)
    assert not moments_ok(vals, mean * 1.05, std)


def test_mc_null_matches_closed_form_and_is_seeded():
    d, k = 40, 8
    g = torch.Generator().manual_seed(11)
    X = aniso_rows(10, d, g)
    draws = stats.mc_null(X, k, n_draws=20000, seed=5)
    mean, std = stats.null_mean_std_act(X, k)
    assert moments_ok(draws, mean, std)
    assert np.array_equal(draws, stats.mc_null(X, k, n_draws=20000, seed=5))
    assert not np.array_equal(draws, stats.mc_null(X, k, n_draws=20000, seed=6))
    # the same null through A, through X and through M (weight-style) agree
    M = aniso_weight(d, 3 * d, g)
    a = stats.mc_null(w_A(M), k, n_draws=500, seed=1, kind="A")
    b = stats.mc_null(M, k, n_draws=500, seed=1, kind="M")
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_haar_frames_are_orthonormal_and_sign_fixed():
    n = 4000
    Q = haar_frames(12, 3, n, torch.Generator().manual_seed(0), sample_dtype=torch.float32)
    eye = torch.eye(3, dtype=F64)
    assert torch.allclose(Q.transpose(1, 2) @ Q, eye.expand(n, 3, 3), atol=1e-12)
    # Q spans the Gaussian draw G and R = QᵀG is upper triangular with a positive diagonal
    G = torch.randn(n, 12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(F64)
    R = Q.transpose(1, 2) @ G
    assert bool((torch.diagonal(R, dim1=-2, dim2=-1) > 0).all())
    assert torch.allclose(torch.tril(R, diagonal=-1), torch.zeros_like(R), atol=1e-10)
    # without the fix a QR convention fixes the sign of Q[0, 0]; Haar frames have mean 0
    q00 = Q[:, 0, 0].numpy()
    assert abs(q00.mean()) < 4 * q00.std() / math.sqrt(n)


def test_gaussian_p_matches_norm_sf():
    for z in (-2.0, 0.0, 1.3, 5.0):
        assert stats.p_gaussian(z) == pytest.approx(float(sps.norm.sf(z)), rel=1e-12)
    assert math.isnan(stats.p_gaussian(float("nan")))


# -------------------------------------------------------------------- energy fractions


def test_topk_left_singular_vectors_reach_max_weight_fraction():
    d, k = 30, 5
    g = torch.Generator().manual_seed(2)
    M = aniso_weight(d, 50, g)
    U, sv, _ = torch.linalg.svd(M, full_matrices=False)
    best = float((sv[:k] ** 2).sum() / (sv**2).sum())
    assert stats.energy_frac_w(U[:, :k], M) == pytest.approx(best, rel=1e-10)
    assert stats.best_frac_at_rank(M, k, kind="M") == pytest.approx(best, rel=1e-10)
    assert stats.best_frac_at_rank(w_A(M), k, kind="A") == pytest.approx(best, rel=1e-10)
    for seed in range(5):
        R = orth(torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=F64))
        assert stats.energy_frac_w(R, M) < best


def test_best_frac_at_rank_activation():
    d, k = 25, 3
    X = aniso_rows(15, d, torch.Generator().manual_seed(3))
    ev, V = torch.linalg.eigh(act_A(X))
    top = V[:, -k:]
    assert stats.energy_frac_act(top, X) == pytest.approx(float(ev[-k:].sum()), rel=1e-10)
    assert stats.best_frac_at_rank(X, k, kind="X") == pytest.approx(float(ev[-k:].sum()), rel=1e-10)


def test_energy_fraction_definitions():
    d = 10
    B = torch.eye(d, dtype=F64)[:, :2]
    X = torch.zeros(3, d, dtype=F64)
    X[0, 0] = 2.0  # fully inside
    X[1, 0], X[1, 5] = 1.0, 1.0  # half inside
    rows = stats.energy_frac_act_rows(B, X)  # row 2 is zero → NaN
    assert rows[0] == pytest.approx(1.0) and rows[1] == pytest.approx(0.5) and math.isnan(rows[2])
    assert stats.energy_frac_act(B, X) == pytest.approx(0.75)
    Mo = torch.zeros(d, 4, dtype=F64)
    Mo[0, 0] = 3.0
    Md = torch.zeros(d, 6, dtype=F64)
    Md[9, 1] = 100.0
    assert stats.energy_frac_w(B, Mo) == pytest.approx(1.0)
    assert stats.energy_frac_w(B, Md) == pytest.approx(0.0)
    # combined: each tensor at unit norm → the mean of the two fractions, whatever the scales
    assert stats.energy_frac_w_combined(B, Mo, Md) == pytest.approx(0.5)
    assert stats.conc(0.2, 2, 10) == pytest.approx(1.0)
    assert math.isnan(stats.conc(0.2, 0, 10))


def test_random_basis_scores_like_the_null():
    d, k, n = 200, 8, 30
    g = torch.Generator().manual_seed(4)
    X = aniso_rows(n, d, g)
    M = aniso_weight(d, 100, g)
    concs = []
    for _ in range(20):
        B = orth(torch.randn(d, k, generator=g, dtype=F64))
        f = stats.energy_frac_act(B, X)
        m, s = stats.null_mean_std_act(X, k)
        assert abs(stats.zscore(f, m, s)) < 4
        fw = stats.energy_frac_w(B, M)
        mw, sw = stats.null_mean_std_w(M, k)
        assert abs(stats.zscore(fw, mw, sw)) < 4
        concs.append(stats.conc(f, k, d))
    assert np.mean(concs) == pytest.approx(1.0, abs=0.05)


def test_cos_principal():
    d = 20
    B = orth(torch.randn(d, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert stats.cos_principal(B, B) == pytest.approx(1.0)
    assert stats.cos_principal(B, complement(B)[:, :4]) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------- sweep


@pytest.fixture(scope="module")
def sweep():
    inputs = make_sweep_inputs()
    return inputs, run(*inputs[:5])


def test_per_layer_columns_and_order(sweep):
    (bases, meta, label, *_), sc = sweep
    assert sc.per_layer.columns[: len(stats.PER_LAYER_COLUMNS)] == stats.PER_LAYER_COLUMNS
    assert sc.specific_per_layer.columns[: len(stats.SPECIFIC_COLUMNS)] == stats.SPECIFIC_COLUMNS
    names = meta["subspace"].to_list()
    L = label.shape[0]
    assert sc.per_layer["layer"].to_list() == [l for l in range(L) for _ in names]
    assert sc.per_layer["subspace"].to_list() == names * L
    assert sc.per_layer["conc_act"].dtype == pl.Float64
    assert set(sc.per_layer["null_method_act"].to_list()) <= {"gaussian", "monte_carlo"}
    assert len(sc.act_rows) == len(names) * L


def test_planted_subspace_reaches_ceiling_and_complement_does_not():
    d, L, planted = 32, 2, 4
    bases, meta, label, deltas, clean, spans = make_sweep_inputs(L=L, d=d, n_hyp=3, planted=planted)
    bases["planted_complement"] = [complement(s).float() for s in spans]
    meta = pl.concat(
        [
            meta,
            pl.DataFrame(
                [
                    dict(
                        subspace="planted_complement",
                        family="W:write",
                        axis_kind="write",
                        source="synthetic",
                        kind="A-hypothesis",
                        definition="⊥ planted",
                    )
                ]
            ),
        ]
    )
    sc = run(bases, meta, label, deltas, clean)
    summ = stats.summary_pct(stats.summarize(sc.per_layer, range(L)))
    row = {r["subspace"]: r for r in summ.iter_rows(named=True)}
    assert row["planted"]["pct_act_ceiling"] >= 95
    assert row["planted"]["pct_w_oracle_combined"] >= 95
    assert row["planted_complement"]["pct_act_ceiling"] <= 5
    assert row["planted_complement"]["pct_w_oracle_combined"] <= 5
    assert row["planted"]["mean_z_act"] > 10
    # and the ceilings score exactly 100 % of themselves
    assert row[stats.CEILING_ACT]["pct_act_ceiling"] == pytest.approx(100.0)
    for t in ("combined", "oproj", "downproj"):
        assert row[stats.CEILING_W][f"pct_w_oracle_{t}"] == pytest.approx(100.0)
    # the dW ceiling is the best rank-k basis for the (raw) concatenated delta → cos 1 with itself
    pl_rows = sc.per_layer.filter(pl.col("subspace") == stats.CEILING_W)
    assert np.allclose(pl_rows["cos_with_dW"].to_numpy(), 1.0)


def test_sign_flips_and_rotation_leave_scores_unchanged(sweep):
    (bases, meta, label, deltas, clean, _), sc = sweep
    g = torch.Generator().manual_seed(9)
    b2 = dict(bases)
    for n in ("hyp00", "hyp01", "planted"):
        new = []
        for B in bases[n]:
            k = B.shape[1]
            R = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=F64))[0]
            signs = torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0).to(F64)
            new.append(((B.to(F64) * signs) @ R).float())
        b2[n] = new
    sc2 = run(b2, meta, label, deltas, clean)
    cols = SCORE_COLS + ["p_act", "p_w_combined", "pct_act_matched_rank"]
    a = sc.per_layer.select(cols).to_numpy().astype(float)
    b = sc2.per_layer.select(cols).to_numpy().astype(float)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    sa = sc.specific_per_layer.select("specific_conc_act", "specific_z_act").to_numpy()
    sb = sc2.specific_per_layer.select("specific_conc_act", "specific_z_act").to_numpy()
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_non_orthonormal_basis_raises_with_name(sweep):
    (bases, meta, label, deltas, clean, _), _sc = sweep
    b2 = dict(bases)
    b2["hyp03"] = list(bases["hyp03"])
    b2["hyp03"][1] = b2["hyp03"][1] * 1.5
    with pytest.raises(ValueError, match=r"hyp03.*layer 1.*max\|BᵀB − I\|.*rthonormalise"):
        run(b2, meta, label, deltas, clean)


def test_nan_inputs_raise(sweep):
    (bases, meta, label, deltas, clean, _), _sc = sweep
    bad = label.clone()
    bad[0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="label"):
        run(bases, meta, bad, deltas, clean)
    d2 = list(deltas)
    d2[1] = {"oproj": deltas[1]["oproj"].clone(), "downproj": deltas[1]["downproj"]}
    d2[1]["oproj"][0, 0] = float("inf")
    with pytest.raises(ValueError, match="oproj.*layer 1"):
        run(bases, meta, label, d2, clean)


def test_untouched_layer_gives_nan_weight_cells_and_degenerate_bases_do_not_crash():
    bases, meta, label, deltas, clean, _ = make_sweep_inputs(L=3, n_hyp=3, delta_layers={0, 2})
    d = label.shape[2]
    bases["empty"] = [torch.zeros(d, 0)] * 3
    bases["partial"] = [None, orth(torch.randn(d, 3, dtype=F64)).float(), None]
    meta = pl.concat(
        [
            meta,
            pl.DataFrame(
                [
                    dict(subspace=n, family="compound", axis_kind="mixed", source="synthetic", kind="A-hypothesis", definition=n)
                    for n in ("empty", "partial")
                ]
            ),
        ]
    )
    sc = run(bases, meta, label, deltas, clean)
    pl1 = sc.per_layer.filter(pl.col("layer") == 1)
    for t in stats.TENSORS:
        for c in (f"conc_w_{t}", f"z_w_{t}", f"energy_frac_w_{t}"):
            assert pl1[c].is_nan().all(), c
    assert pl1.filter(pl.col("subspace") == "hyp00")["conc_act"].is_finite().all()
    assert sc.per_layer.filter(pl.col("layer") == 0)["conc_w_combined"].is_finite().sum() > 0
    empty = sc.per_layer.filter(pl.col("subspace") == "empty")
    assert empty["rank"].to_list() == [0, 0, 0] and empty["conc_act"].is_nan().all()
    part = sc.per_layer.filter(pl.col("subspace") == "partial")
    assert part["rank"].to_list() == [None, 3, None]
    assert part["conc_act"].is_nan().to_list() == [True, False, True]
    # summaries average the layers where scores exist (NaN-aware)
    summ = stats.summarize(sc.per_layer, [0, 1, 2]).filter(pl.col("subspace") == "partial")
    assert summ["mean_rank"][0] == 3.0 and math.isfinite(summ["mean_conc_act"][0])


def test_cos_with_dW_is_mean_principal_cosine():
    bases, meta, label, deltas, clean, _ = make_sweep_inputs(L=2, n_hyp=1, planted=4)
    half = []
    for D in bases[stats.CEILING_W]:
        D = D.to(F64)
        half.append(orth(torch.cat([D[:, :2], complement(D)[:, :2]], 1)).float())  # 2 shared + 2 orthogonal
    bases["half_dW"] = half
    meta = pl.concat(
        [
            meta,
            pl.DataFrame(
                [
                    dict(
                        subspace="half_dW",
                        family="compound",
                        axis_kind="mixed",
                        source="synthetic",
                        kind="A-hypothesis",
                        definition="half",
                    )
                ]
            ),
        ]
    )
    sc = run(bases, meta, label, deltas, clean)
    cos = sc.per_layer.filter(pl.col("subspace") == "half_dW")["cos_with_dW"].to_numpy()
    np.testing.assert_allclose(cos, 0.5, atol=1e-6)


def test_specificity_equals_explicit_complement_coordinates(sweep):
    (bases, meta, label, deltas, clean, _), sc = sweep
    l, name = 1, "planted"
    B, X, C = bases[name][l].to(F64), label[l].to(F64), clean[l].to(F64)
    U = complement(C)  # [d, d − 8] orthonormal basis of the complement
    Y = X @ U  # label rows in complement coordinates
    Bc = orth(U.T @ B)  # projected, re-orthonormalised basis
    dc = U.shape[1]
    frac = stats.energy_frac_act(Bc, Y)
    mean, std = stats.null_mean_std_act(Y, Bc.shape[1])
    row = sc.specific_per_layer.filter((pl.col("layer") == l) & (pl.col("subspace") == name)).row(0, named=True)
    assert row["specific_rank"] == Bc.shape[1]
    assert row["specific_energy_frac_act"] == pytest.approx(frac, rel=1e-9)
    assert row["specific_conc_act"] == pytest.approx(frac / (Bc.shape[1] / dc), rel=1e-9)
    assert row["specific_z_act"] == pytest.approx((frac - mean) / std, rel=1e-9)
    alone = stats.specific_act_scores(B, X, C)
    assert alone["z"] == pytest.approx(row["specific_z_act"], rel=1e-9)
    # a basis inside the clean PCs has no specific rank
    inside = stats.specific_act_scores(C[:, :3], X, C)
    assert inside["rank"] == 0 and math.isnan(inside["conc"])


def test_low_rank_label_switches_to_monte_carlo():
    d, n, k = 24, 10, 4
    g = torch.Generator().manual_seed(5)
    u = orth(torch.randn(d, 1, generator=g, dtype=F64))
    X = (torch.randn(n, 1, generator=g, dtype=F64).abs() + 1) @ u.T + 0.01 * torch.randn(n, d, generator=g, dtype=F64)
    label = X.float()[None]
    aligned = orth(torch.cat([u, torch.randn(d, k - 1, generator=g, dtype=F64)], 1)).float()
    rand = orth(torch.randn(d, k, generator=g, dtype=F64)).float()
    meta = pl.DataFrame(
        [
            dict(subspace=nm, family="f", axis_kind="mixed", source="s", kind="A-hypothesis", definition=nm)
            for nm in ("aligned", "random")
        ]
    )
    sc = run({"aligned": [aligned], "random": [rand]}, meta, label, [None], [None], mc_draws=999, mc_seed=3)
    r = {x["subspace"]: x for x in sc.per_layer.iter_rows(named=True)}
    assert r["aligned"]["null_method_act"] == "monte_carlo" and r["aligned"]["pr_act"] < 3
    assert r["aligned"]["p_act"] == pytest.approx(1 / 1000)
    assert r["random"]["p_act"] > 0.01
    assert math.isnan(r["aligned"]["p_w_combined"])
    sc2 = run({"aligned": [aligned], "random": [rand]}, meta, label, [None], [None], pr_threshold=0.5)
    assert set(sc2.per_layer["null_method_act"].to_list()) == {"gaussian"}


def test_pct_at_matched_rank():
    d, n, k = 30, 16, 3
    g = torch.Generator().manual_seed(8)
    X = aniso_rows(n, d, g)
    M = {"oproj": aniso_weight(d, d, g).float(), "downproj": aniso_weight(d, 2 * d, g).float()}
    top_act = torch.linalg.eigh(act_A(X))[1][:, -k:]
    Ac = (w_A(M["oproj"]) + w_A(M["downproj"])) / 2
    top_w = torch.linalg.eigh(Ac)[1][:, -k:]
    bases = {"top_act": [top_act.float()], "top_w": [top_w.float()]}
    meta = pl.DataFrame(
        [dict(subspace=nm, family="f", axis_kind="mixed", source="s", kind="A-hypothesis", definition=nm) for nm in bases]
    )
    sc = run(bases, meta, X.float()[None], [M], [None])
    r = {x["subspace"]: x for x in sc.per_layer.iter_rows(named=True)}
    assert r["top_act"]["pct_act_matched_rank"] == pytest.approx(100.0, rel=1e-5)
    assert r["top_w"]["pct_w_combined_matched_rank"] == pytest.approx(100.0, rel=1e-5)
    assert r["top_w"]["pct_act_matched_rank"] < 100 and r["top_act"]["pct_w_combined_matched_rank"] < 100


# ---------------------------------------------------------------------------- summaries


def test_summarize_columns_sort_and_determinism(sweep):
    inputs, sc = sweep
    summ = stats.summarize(sc.per_layer, [0, 1, 2])
    assert summ.columns[: len(stats.SUMMARY_COLUMNS)] == stats.SUMMARY_COLUMNS
    assert "mean_pct_act_matched_rank" in summ.columns and "mean_pct_w_combined_matched_rank" in summ.columns
    js = summ["joint_score"].to_numpy()
    fin = js[np.isfinite(js)]
    assert np.all(np.diff(fin) <= 0) and np.isfinite(js[: fin.size]).all()
    row = summ.row(0, named=True)
    assert row["joint_score"] == pytest.approx(math.sqrt(row["mean_conc_act"] * row["mean_conc_w_combined"]))
    assert row["act_w_gap_log2"] == pytest.approx(math.log2(row["mean_conc_act"] / row["mean_conc_w_combined"]))
    pct = stats.summary_pct(summ)
    assert pct.columns[: len(stats.SUMMARY_PCT_COLUMNS)] == stats.SUMMARY_PCT_COLUMNS
    assert sorted(pct.columns) == sorted(summ.columns + stats.PCT_COLUMNS)
    assert pct.select(summ.columns).equals(summ)
    spec = stats.summarize_specific(sc.specific_per_layer, [0, 1, 2])
    assert spec.columns == stats.SPECIFIC_SUMMARY_COLUMNS
    sc2 = run(*inputs[:5])
    assert sc2.per_layer.equals(sc.per_layer) and sc2.specific_per_layer.equals(sc.specific_per_layer)
    assert stats.summarize(sc2.per_layer, [0, 1, 2]).equals(summ)


def test_summarize_nan_last_and_ties_by_name():
    base = dict(
        family="f",
        axis_kind="write",
        source="s",
        kind="A-hypothesis",
        rank=2,
        z_act=0.0,
        energy_frac_act=0.1,
        conc_w_oproj=1.0,
        z_w_oproj=0.0,
        energy_frac_w_oproj=0.1,
        conc_w_downproj=1.0,
        z_w_downproj=0.0,
        energy_frac_w_downproj=0.1,
        z_w_combined=0.0,
        energy_frac_w_combined=0.1,
        cos_with_dW=0.5,
        pct_act_matched_rank=50.0,
        pct_w_combined_matched_rank=50.0,
    )
    rows = [
        dict(layer=0, subspace="b", conc_act=4.0, conc_w_combined=1.0, **base),
        dict(layer=0, subspace="nan", conc_act=float("nan"), conc_w_combined=1.0, **base),
        dict(layer=0, subspace="a", conc_act=1.0, conc_w_combined=4.0, **base),
        dict(layer=0, subspace="c", conc_act=9.0, conc_w_combined=1.0, **base),
    ]
    summ = stats.summarize(pl.DataFrame(rows), [0])
    assert summ["subspace"].to_list() == ["c", "a", "b", "nan"]


# --------------------------------------------------------------------- bootstrap and FDR


def test_bootstrap_ci_covers_planted_mean():
    n, d, k, mu = 40, 100, 4, 0.3
    rng = np.random.default_rng(0)
    meta_cols = dict(family="f", axis_kind="mixed", source="s", kind="A-hypothesis")
    covered_frac = covered_conc = 0
    reps = 200
    for rep in range(reps):
        rows = rng.beta(3.0, 7.0, size=n)  # mean 0.3
        frac = float(rows.mean())
        per_layer = pl.DataFrame(
            [dict(layer=0, subspace="x", rank=k, conc_act=frac / (k / d), energy_frac_act=frac, conc_w_combined=2.0, **meta_cols)]
        )
        sc = stats.SweepScores(per_layer, pl.DataFrame(), {("x", 0): rows}, d_model=d, n_eval=n)
        ci = stats.bootstrap_summary_ci(sc, [0], n_boot=500, seed=rep).row(0, named=True)
        covered_frac += ci["mean_energy_frac_act_ci_lo"] <= mu <= ci["mean_energy_frac_act_ci_hi"]
        covered_conc += ci["mean_conc_act_ci_lo"] <= mu / (k / d) <= ci["mean_conc_act_ci_hi"]
    assert 0.88 <= covered_frac / reps <= 0.99
    assert covered_conc == covered_frac


def test_bootstrap_on_sweep(sweep):
    _inputs, sc = sweep
    ci = stats.bootstrap_summary_ci(sc, [0, 1, 2], n_boot=300, seed=1)
    assert ci.columns == stats.BOOTSTRAP_COLUMNS
    summ = stats.summarize(sc.per_layer, [0, 1, 2])
    m = summ.join(ci, on="subspace")
    ok = m.filter(pl.col("mean_conc_act").is_finite())
    assert (ok["mean_conc_act_ci_lo"] <= ok["mean_conc_act"] * 1.0000001).all()
    assert (ok["mean_conc_act_ci_hi"] >= ok["mean_conc_act"] * 0.9999999).all()
    assert (ok["joint_score_ci_lo"] <= ok["joint_score_ci_hi"]).all()
    assert stats.bootstrap_summary_ci(sc, [0, 1, 2], n_boot=300, seed=1).equals(ci)


def test_bh_matches_scipy():
    rng = np.random.default_rng(1)
    for m in (1, 7, 200):
        p = rng.uniform(size=m) ** 3
        np.testing.assert_allclose(stats.bh_qvalues(p), sps.false_discovery_control(p, method="bh"), rtol=1e-12)
    p = np.array([0.01, np.nan, 0.04, 0.5, np.nan])
    q = stats.bh_qvalues(p)
    assert np.isnan(q[[1, 4]]).all()
    np.testing.assert_allclose(q[[0, 2, 3]], sps.false_discovery_control(p[[0, 2, 3]]), rtol=1e-12)


def test_add_qvalues_excludes_ceilings(sweep):
    _inputs, sc = sweep
    q = stats.add_qvalues(sc.per_layer)
    for c in ("q_act", "q_w_combined", "q_w_oproj", "q_w_downproj"):
        assert c in q.columns
    ceil = q.filter(pl.col("kind") == "ceiling")
    assert ceil["q_act"].is_nan().all()
    hyp = q.filter(pl.col("kind") == "A-hypothesis")
    np.testing.assert_allclose(hyp["q_act"].to_numpy(), sps.false_discovery_control(hyp["p_act"].to_numpy()), rtol=1e-12)


def test_ranked_keeps_write_mixed_hypotheses_best_first_nan_dropped_ties_by_name():
    rows = [
        ("w_b", "write", "A-hypothesis", 2.0),
        ("m_a", "mixed", "A-hypothesis", 2.0),
        ("w_nan", "write", "A-hypothesis", float("nan")),
        ("w_null", "write", "A-hypothesis", None),
        ("r_top", "read", "A-hypothesis", 9.0),
        ("ceil", "ceiling", "ceiling", 99.0),
        ("self", "self-test", "self-test", 50.0),
        ("w_c", "write", "A-hypothesis", 3.0),
    ]
    df = pl.DataFrame(
        [dict(subspace=n, axis_kind=a, kind=k, joint_score=j) for n, a, k, j in rows],
        schema={"subspace": pl.String, "axis_kind": pl.String, "kind": pl.String, "joint_score": pl.Float64},
    )
    assert stats.ranked(df)["subspace"].to_list() == ["w_c", "m_a", "w_b"]
    assert stats.ranked(df, axis_kinds=("read",))["subspace"].to_list() == ["r_top"]
    # the plain order keeps every row: NaN and null last, ties by name
    assert stats.by_score(df, "joint_score")["subspace"].to_list() == [
        "ceil",
        "self",
        "r_top",
        "w_c",
        "m_a",
        "w_b",
        "w_nan",
        "w_null",
    ]
