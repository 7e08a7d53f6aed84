"""Known answers for the block-local scores and the scope table (ws.v8.blocklocal)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from ws import stats
from ws.core.linalg import haar_orthonormal
from ws.v8 import blocklocal

D, K, L, N = 48, 4, 3, 40


def _basis(k, seed, d=D):
    return haar_orthonormal(d, k, torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_overlap_known_answers():
    A = _basis(6, 0)
    assert blocklocal.overlap(A, A) == pytest.approx(1.0)
    assert blocklocal.overlap(A[:, :2], A) == pytest.approx(1.0)  # one inside the other
    Q = _basis(12, 1)
    assert blocklocal.overlap(Q[:, :6], Q[:, 6:]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(blocklocal.overlap(None, A))
    mc = np.mean([blocklocal.overlap(_basis(K, 10 + i), _basis(K, 1000 + i)) for i in range(400)])
    assert mc == pytest.approx(K / D, abs=0.015)  # two random rank-k subspaces: k/d


def test_act_oracle_finds_the_planted_span_and_the_best_fraction():
    g = torch.Generator().manual_seed(0)
    P = _basis(3, 5)
    X = torch.randn(N, 3, generator=g, dtype=torch.float64) @ P.T
    B = blocklocal.act_oracle(X, K)
    assert B.shape[1] == 3 and blocklocal.overlap(B, P) == pytest.approx(1.0)  # true rank 3, never padded
    Y = torch.randn(N, D, generator=g, dtype=torch.float64)
    B2 = blocklocal.act_oracle(Y, K)
    assert stats.energy_frac_act(B2, Y) == pytest.approx(stats.best_frac_at_rank(Y, K, kind="X"), rel=1e-9)
    assert blocklocal.act_oracle(torch.zeros(5, D), K) is None


def _meta(names):
    return pl.DataFrame(
        {
            "subspace": names,
            "family": ["test"] * len(names),
            "axis_kind": ["write"] * len(names),
            "source": ["test"] * len(names),
            "kind": ["A-hypothesis"] * len(names),
            "definition": ["-"] * len(names),
        }
    )


def _setup():
    g = torch.Generator().manual_seed(1)
    planted = [_basis(K, 20 + l) for l in range(L)]
    lab = torch.zeros(L, N, D, dtype=torch.float64)
    for l in (1, 2):  # layer 0 untouched: the block-local label is zero there
        lab[l] = torch.randn(N, K, generator=g, dtype=torch.float64) @ planted[l].T
        lab[l] += 0.05 * torch.randn(N, D, generator=g, dtype=torch.float64)
    deltas = [None] + [
        {
            "oproj": planted[l] @ torch.randn(K, 16, generator=g, dtype=torch.float64),
            "downproj": planted[l] @ torch.randn(K, 32, generator=g, dtype=torch.float64),
        }
        for l in (1, 2)
    ]
    bases = {"planted": planted, "random": [_basis(K, 300 + l) for l in range(L)]}
    return lab.float(), deltas, bases, planted


def test_block_scores_are_v7_scores_of_the_block_label():
    lab, deltas, bases, _ = _setup()
    meta = _meta(list(bases))
    per, summ = blocklocal.score_block(bases, meta, lab, deltas, [None] * L, touched=[1, 2], n_boot=200)
    ref = stats.add_qvalues(stats.score_sweep(bases, meta, lab, deltas, [None] * L, progress=False).per_layer)
    for c in ("conc_act", "z_act", "energy_frac_act", "q_act"):
        np.testing.assert_array_equal(per[f"{c}_block"].to_numpy(), ref[c].to_numpy())
    p = summ.filter(pl.col("subspace") == "planted").row(0, named=True)
    r = summ.filter(pl.col("subspace") == "random").row(0, named=True)
    assert p["mean_conc_act_block"] > 0.9 * D / K and p["mean_z_act_block"] > 10
    assert abs(r["mean_z_act_block"]) < 4
    assert p["mean_conc_act_block_ci_lo"] <= p["mean_conc_act_block"] <= p["mean_conc_act_block_ci_hi"]
    # the joint score with the weight label: the planted basis holds all the weight energy too
    assert p["joint_score_block"] == pytest.approx(math.sqrt(p["mean_conc_act_block"] * D / K), rel=1e-6)
    assert per.filter(pl.col("layer") == 0)["conc_act_block"].is_nan().all()  # zero label: no score


def test_scope_table_overlaps():
    lab, _, _, planted = _setup()
    cum = lab.cumsum(dim=0)  # a cumulative label whose blocks add the block-local rows
    dW = [None, planted[1], _basis(K, 77)]
    sc = blocklocal.scope_table(cum, lab, dW, K, touched=[1, 2])
    assert sc.columns == blocklocal.SCOPE_COLUMNS and sc.height == L
    r0, r1, r2 = sc.row(0, named=True), sc.row(1, named=True), sc.row(2, named=True)
    assert r0["rank_act"] == 0 and r0["rank_act_block"] == 0 and math.isnan(r0["overlap_act_act_block"])
    assert r1["overlap_dW_act_block"] > 0.95 and r1["overlap_dW_act"] > 0.95  # layer 1: cumulative = block-local
    assert r2["overlap_dW_act_block"] < 0.4  # a dW basis unrelated to what block 2 writes
    assert r2["overlap_act_act_block"] < r1["overlap_act_act_block"]  # layer 2's cumulative label mixes in layer 1
    assert r1["overlap_random"] == pytest.approx(K / D) and r1["touched"] and not r0["touched"]
    assert r1["best_frac_act_block"] > 0.95 and r1["pr_act_block"] < K + 1  # noise adds a little rank
