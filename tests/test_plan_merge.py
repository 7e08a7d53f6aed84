"""ws.v7.plan_merge: the rows built differently from upstream v7, with this run's figures.

Known answers on a small synthetic run: a label that lies along one direction per layer and
churn bases that hold it at chosen layers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import polars as pl
import pytest
import torch

from ws.bases import REGISTRY, meta_frame
from ws.bases.activations import procrustes_skew_basis
from ws.v7 import plan_merge as upstream

L, D, N = 4, 10, 6


def _e(i: int) -> torch.Tensor:
    return torch.eye(D, dtype=torch.float64)[:, i : i + 1]


def _run() -> SimpleNamespace:
    """Layers 1 and 2 touched; the label at layer l lies along e_l; churn at layer l is e_(l−1),
    so churn of the NEXT block holds the label exactly and churn of the block itself not at all."""
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(L, N, D, dtype=torch.float64)
    for l in range(L):
        label[l, :, l] = torch.randn(N, generator=g, dtype=torch.float64).abs() + 0.5
    churn = [None] + [_e(l - 1) for l in range(1, L)]
    pos = torch.randn(L, 2 * N, D, generator=g, dtype=torch.float64)
    neg = pos + 3.0 * torch.eye(D, dtype=torch.float64)[0]
    names = list(REGISTRY)
    summary = pl.DataFrame(
        {"subspace": names, "mean_conc_act": [float(i) for i in range(len(names))], "mean_conc_w_combined": [0.5] * len(names)}
    )
    meta = meta_frame(names, {"chars_clusters": [7, 8, 8, 8], "qk_x_chars_clusters": [0, 0, 0, 0]}, k=2)
    return SimpleNamespace(
        seed=3,
        summary=summary,
        meta=meta,
        bases={"churn": churn},
        layers_touched=[1, 2],
        captures=SimpleNamespace(label_eval=label, pos=pos, neg=neg),
    )


def test_mean_r_act_known_answers():
    res = _run()
    label = res.captures.label_eval
    # a basis along the label's own direction holds all of it: R_act = d / 1
    assert upstream.mean_r_act([_e(l) for l in range(L)], label, [1, 2]) == pytest.approx(D)
    assert upstream.mean_r_act(res.bases["churn"], label, [1, 2]) == pytest.approx(0.0)
    assert math.isnan(upstream.mean_r_act([None] * L, label, [1, 2]))  # no basis anywhere


def test_churn_upstream_pairing_scores_the_next_blocks_basis():
    res = _run()
    r, n = upstream.churn_upstream_pairing_r_act(res)
    assert (r, n) == (pytest.approx(D), 2)  # churn[l + 1] = e_l holds the label at l exactly
    res.layers_touched = [2, 3]  # the last layer has no next block: left out
    assert upstream.churn_upstream_pairing_r_act(res) == (pytest.approx(D), 1)


def test_rotation_joint_centring_rebuilds_the_old_construction():
    res = _run()
    k = 2
    want = upstream.mean_r_act(
        [
            procrustes_skew_basis(res.captures.pos[l], res.captures.neg[l], k, centre="joint") if l in (1, 2) else None
            for l in range(L)
        ],
        res.captures.label_eval,
        [1, 2],
    )
    assert upstream.rotation_joint_centring_r_act(res, k) == pytest.approx(want)


def test_every_difference_is_listed_with_upstream_here_why_and_this_runs_scores():
    res = _run()
    lines = upstream.difference_lines(res)
    assert len(lines) == len(upstream.DIFFERENCES)
    text = "\n".join(lines)
    for name in (
        "attn_ov_write",
        "qk_circuit",
        "churn",
        "rotation_contrast",
        "input_super_not_lm_read",
        "chars_clusters",
        "qk_x_chars_clusters",
        "attn_min_taskdiff",
        "attn_min_x_diffnorm_taskdiff",
    ):
        assert f"`{name}`" in text, name
        assert name in REGISTRY
    for line in lines:
        assert "upstream " in line and "Here: " in line and "Why: " in line and "This run (seed 3" in line
    gqa = next(l for l in lines if l.startswith("`attn_ov_write`"))
    assert "Earlier comparison: mean R_act of `attn_ov_write` 1.67 with upstream's pairing, 2.50 with this one" in gqa
    i = list(REGISTRY).index("attn_ov_write")
    assert f"`attn_ov_write` R_act {i}, R_w combined 0.5" in gqa  # this run's own score, from its summary
    churn = next(l for l in lines if l.startswith("`churn`"))
    assert f"R_act {D} over the 2 touched layers that have a next block" in churn
    chars = next(l for l in lines if l.startswith("`chars_clusters`"))
    assert "true rank 7–8 over the layers (expected 2)" in chars
    assert "true rank 0 over the layers" in next(l for l in lines if l.startswith("`qk_x_chars_clusters`"))
