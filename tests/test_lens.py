"""The base-W S-space lens: known answers (a gain diff is all diagonal, a random diff spreads
as the closed forms say, checked against a Monte Carlo), and the table and figure on a real diff."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from ws.diffs import sspace
from ws.stats import lens


def _linear(d_out: int, d_in: int, seed: int = 0) -> nn.Linear:
    lin = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed)))
    return lin


@pytest.mark.parametrize(("d_out", "d_in"), [(24, 24), (40, 16), (16, 40)])
def test_a_gain_diff_is_all_diagonal_and_inside_the_top_block(d_out, d_in):
    lin = _linear(d_out, d_in)
    layer = sspace.SSpaceLinear(lin, "sspace_gain", r=6)
    with torch.no_grad():
        layer.g.copy_(torch.randn(6, generator=torch.Generator().manual_seed(1)))
    sh, prof = lens.shares(lin.weight, layer.delta(), r=6)
    assert sh["frac_diag"] == pytest.approx(1.0, abs=1e-10)
    assert sh["frac_top_block"] == pytest.approx(1.0, abs=1e-10)
    assert sh["frac_top_rows"] == pytest.approx(1.0, abs=1e-10) and sh["frac_top_cols"] == pytest.approx(1.0, abs=1e-10)
    assert prof.shape == (min(d_out, d_in),) and prof[6:].sum() < 1e-10
    # a lowrank core inside the same coordinates is in the block but not diagonal
    low = sspace.SSpaceLinear(lin, "sspace_lowrank", r=6)
    with torch.no_grad():
        low.B.copy_(torch.randn(6, low.k, generator=torch.Generator().manual_seed(2)))
    sh2, _ = lens.shares(lin.weight, low.delta(), r=6)
    assert sh2["frac_top_block"] == pytest.approx(1.0, abs=1e-10) and sh2["frac_diag"] < 0.6


@pytest.mark.parametrize(("d_out", "d_in"), [(24, 24), (40, 16), (16, 40)])
def test_a_random_diff_spreads_as_the_closed_forms_say(d_out, d_in):
    """Monte Carlo over Gaussian diffs (rotation invariant): each share's mean is its null."""
    W = _linear(d_out, d_in).weight
    g = torch.Generator().manual_seed(3)
    draws = [lens.shares(W, torch.randn(d_out, d_in, generator=g, dtype=torch.float64), r=4)[0] for _ in range(400)]
    for name in ("diag", "top_block", "top_rows", "top_cols"):
        x = np.array([d[f"frac_{name}"] for d in draws])
        null = draws[0][f"null_{name}"]
        assert abs(x.mean() - null) < 5 * x.std(ddof=1) / np.sqrt(x.size) + 1e-12, (name, x.mean(), null)
    # and a diff that is not random moves them: the test can fail
    assert lens.shares(W, W.double(), r=4)[0]["frac_diag"] == pytest.approx(1.0, abs=1e-10)


def test_a_zero_diff_is_refused():
    W = _linear(8, 8).weight
    with pytest.raises(ValueError, match="is zero"):
        lens.shares(W, torch.zeros(8, 8), name="model.layers.0.mlp.up_proj.weight")


def test_table_profile_and_figure_on_a_trained_diff(tiny_llama, tmp_path):
    model, _ = tiny_llama
    names = sspace.target_names([1, 2], ["o_proj", "up_proj"])
    wrapped = sspace.wrap_sspace(model, "sspace_gain", [1, 2], ["o_proj", "up_proj"], r=4)
    with torch.no_grad():
        for m in wrapped.sspace_layers().values():
            m.g.copy_(torch.randn(m.r, generator=torch.Generator().manual_seed(4)))
    w = sspace.sspace_delta(wrapped)
    table, rows = lens.sspace_lens(model, w, r=4)
    assert table.columns == list(lens.LENS_COLUMNS) and table.height == len(names)
    assert table["layer"].to_list() == [1, 1, 2, 2] and set(table["tensor"]) == {"o_proj", "up_proj"}
    assert np.allclose(table["frac_diag"].to_numpy(), 1.0, atol=1e-6)
    prof = lens.lens_profile(rows, table)
    for _t, p in prof.group_by("tensor"):
        assert p["cum_share"][-1] == pytest.approx(1.0, abs=1e-6) and p["cum_share"][3] == pytest.approx(1.0, abs=1e-6)
    up = prof.filter(pl.col("tensor") == "up_proj")
    assert up["null"][-1] == pytest.approx(64 / 128)  # min(d) of d_out = 128 directions span W's columns
    lens.plot_lens(prof, tmp_path / "lens.png")
    assert (tmp_path / "lens.png").stat().st_size > 5000


def test_the_diagonal_equals_the_full_product_and_the_cache_stays_within_its_budget(monkeypatch):
    """The diagonal share read without the [m, m] product equals the product's diagonal; with a
    cache budget of one weight's factors, a second weight is computed per use, never cached,
    and gives the same shares each time."""
    a, b = _linear(40, 16, seed=5), _linear(16, 40, seed=6)
    g = torch.Generator().manual_seed(7)
    for lin in (a, b):
        D = torch.randn(lin.weight.shape, generator=g, dtype=torch.float64)
        U, Vh = lens.base_svd(lin.weight)
        full = float((torch.diagonal((U.T @ D) @ Vh.T) ** 2).sum()) / float((D**2).sum())
        assert lens.shares(lin.weight, D)[0]["frac_diag"] == pytest.approx(full, rel=1e-12)
    monkeypatch.setattr(lens, "_SVD", {})
    one = sum(t.nbytes for t in lens.base_svd(a.weight))
    monkeypatch.setattr(lens, "SVD_CACHE_BYTES", one)
    D = torch.randn(16, 40, generator=g, dtype=torch.float64)
    first = lens.shares(b.weight, D)[0]
    assert id(b.weight) not in lens._SVD and lens._cached_bytes() == one <= lens.SVD_CACHE_BYTES
    assert lens.shares(b.weight, D)[0] == first
    del a
    assert lens._cached_bytes() == 0, "the entry of a weight that is gone is dropped"
    lens.base_svd(b.weight.T.contiguous()[:, :16])  # a weight that fits the budget
    c = _linear(16, 40, seed=8)
    before = lens.shares(c.weight, D)[0]
    assert lens.clear_svd_cache() > 0 and lens._SVD == {} and lens._cached_bytes() == 0
    assert lens.shares(c.weight, D)[0] == before, "made again after the clear: the same shares"


def test_the_lens_caches_the_svds_only_when_every_touched_weight_fits(tiny_llama, monkeypatch):
    """All of them fit the budget: every SVD is kept for the next call (the next seed). One byte
    fewer: none is kept (a partial cache would sit through the next candidate build for a
    fraction of the SVDs); the table is the same either way."""
    model, _ = tiny_llama
    params, g = dict(model.named_parameters()), torch.Generator().manual_seed(12)
    keys = [k for k in params if ".layers.1." in k and k.endswith("proj.weight")]
    w = {k: torch.randn(params[k].shape, generator=g) for k in keys}
    total = sum(lens.svd_bytes(params[k].shape) for k in keys)
    for budget, kept in ((total, total), (total - 1, 0)):
        monkeypatch.setattr(lens, "_SVD", {})
        monkeypatch.setattr(lens, "SVD_CACHE_BYTES", budget)
        table, _ = lens.sspace_lens(model, w)
        assert lens._cached_bytes() == kept and table.height == len(keys)
        if kept:
            reference = table
    assert table.equals(reference)
