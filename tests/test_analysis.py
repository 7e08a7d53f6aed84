"""``ws.analysis.analyse``: one call from a researcher's notebook, the same path as the notebooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ws.analysis import analyse, analysis_config, as_diffs
from ws.config import ConfigError
from ws.diffs.store import diff_path, load_diff
from ws.model.load import d_model, load_model, n_layers

#: the smoke run's sizes (ws.config smoke defaults), given as keyword options instead of WS_* variables
SMOKE = dict(k_broad=16, n_fit=12, n_eval=8, n_boot=300, n_causal=3, n_causal_null=5)


@pytest.fixture(scope="module")
def smoke_diff(smoke_sweeps):
    model, tok = load_model("tiny-llama")
    path = diff_path("sycophancy", "lora", 0, smoke_sweeps.base / "out", model="tiny-llama")
    return model, tok, path, smoke_sweeps.base


def _v7(base: Path, adapter: str = "lora") -> Path:
    return base / "out" / "models" / "tiny-llama" / "sycophancy" / adapter / "v7"


def test_the_call_gives_the_notebooks_tables_byte_for_byte(smoke_diff, tmp_path):
    """The smoke notebook (WS_* variables) and this call (keyword options) on the same diff."""
    model, tok, path, base = smoke_diff
    a = analyse(model, tok, path, behavior="sycophancy", out=tmp_path / "out", label="lora", **SMOKE)
    mine = _v7(tmp_path)
    assert {p.name for p in a.files} >= {"v7_per_layer.csv", "v7_summary.tsv", "v7_conclusion.md"}
    for name in ("v7_per_layer.csv", "v7_summary.tsv", "v7_summary_pct.tsv", "v7_specific_per_layer.csv"):
        assert (mine / name).read_bytes() == (_v7(base) / name).read_bytes(), name
    assert a.conclusion == (mine / "v7_conclusion.md").read_text()
    assert a.tables["v7_per_layer.csv"].height > 0 and isinstance(a.tables["v7_summary.tsv"], pl.DataFrame)


#: WS_LINALG=device-float32 against the float64 reference on the smoke run (docs/gpu.md states them;
#: measured on the 2-core EPYC: R relative ≤ 6e-5, z ≤ 1.2e-4, lens shares ≤ 1e-6, τ = 1)
FLOAT32_R_REL, FLOAT32_Z_ABS, FLOAT32_LENS_ABS, FLOAT32_TAU = 1e-3, 2e-3, 1e-5, 0.98


def test_float32_factorisations_keep_the_tables_within_the_stated_tolerance(smoke_diff, tmp_path):
    """The candidate build's and the lens's Grams, eigensolvers and SVDs in float32 on the model's
    device (here the CPU) against the notebook's float64 run on the same diff: every R within
    ``FLOAT32_R_REL`` of it (relative), every z within ``FLOAT32_Z_ABS``, the lens's shares within
    ``FLOAT32_LENS_ABS``, the joint-score ranking at Kendall τ ≥ ``FLOAT32_TAU``; not byte-identical
    (the factorisations did run in float32)."""
    from scipy.stats import kendalltau

    model, tok, path, base = smoke_diff
    a = analyse(model, tok, path, behavior="sycophancy", out=tmp_path / "out", label="lora", linalg="device-float32", **SMOKE)
    ref, got = _v7(base), _v7(tmp_path)
    assert a.tables["v7_per_layer.csv"].height > 0
    assert (ref / "v7_per_layer.csv").read_bytes() != (got / "v7_per_layer.csv").read_bytes()
    x, y = (pl.read_csv(f / "v7_per_layer.csv") for f in (ref, got))
    assert x.select("subspace", "layer").equals(y.select("subspace", "layer"))
    for col in [c for c in x.columns if c.startswith(("conc_", "z_"))]:
        u, v = x[col].to_numpy(), y[col].to_numpy()
        assert np.array_equal(np.isfinite(u), np.isfinite(v)), col
        u, v = u[np.isfinite(u)], v[np.isfinite(v)]
        if col.startswith("conc_"):
            assert np.all(np.abs(u - v) <= FLOAT32_R_REL * np.abs(u)), col
        else:
            assert np.all(np.abs(u - v) <= FLOAT32_Z_ABS), col
    sa, sb = (pl.read_csv(f / "v7_summary.tsv", separator="\t") for f in (ref, got))
    both = sa.select("subspace", "joint_score").join(sb.select("subspace", "joint_score"), on="subspace", suffix="_f32")
    assert both.height == sa.height
    tau = kendalltau(both["joint_score"].to_numpy(), both["joint_score_f32"].to_numpy(), nan_policy="omit").statistic
    assert tau >= FLOAT32_TAU
    la, lb = (pl.read_csv(f / "v7_sspace_lens.tsv", separator="\t") for f in (ref, got))
    for col in ("frac_diag", "frac_top_block", "frac_top_rows"):
        assert float((la[col] - lb[col]).abs().max()) <= FLOAT32_LENS_ABS, col


def test_without_out_nothing_is_written_and_a_plain_dict_gets_its_effect_measured(smoke_diff, tmp_path, monkeypatch):
    model, tok, path, _ = smoke_diff
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WS_RUN_DIR", str(tmp_path))
    w, _ = load_diff(path, model)
    a = analyse(model, tok, {k: v.clone() for k, v in w.items()}, **SMOKE)
    assert a.files == [] and list(tmp_path.iterdir()) == []
    meta = a.results[0].diff_meta
    assert set(meta["effect_spread"]) == {"opinion_false", "opinion_true", "neutral"}
    assert a.conclusion.startswith("# v7 hypothesis sweep — sycophancy/analysed on `tiny-llama`")


def test_both_stages_and_a_vector_file(smoke_diff, tmp_path):
    model, tok, path, _ = smoke_diff
    vec = tmp_path / "mine.npy"
    np.save(vec, np.random.default_rng(0).standard_normal((n_layers(model), d_model(model))).astype(np.float32))
    a = analyse(model, tok, path, vectors=[vec], stages=("v7", "v8"), **SMOKE)
    assert "vector:mine" in a.causal.table["subspace"].to_list()
    assert "your vector `vector:mine` keeps" in a.texts["v8_conclusion.md"]
    assert "## Your steering vectors" in a.texts["v7_conclusion.md"] and a.conclusion == a.texts["v8_conclusion.md"]


def test_bad_calls_are_refused_before_any_work(smoke_diff):
    model, tok, path, _ = smoke_diff
    with pytest.raises(ConfigError, match="unknown option\\(s\\) n_seeds"):
        analysis_config(model, n_seeds=3)
    with pytest.raises(ConfigError, match="no such steering-vector file"):
        analyse(model, tok, path, vectors=["nowhere.gguf"])
    with pytest.raises(TypeError, match="diff must be a dict of tensors"):
        as_diffs([1, 2], model)
    with pytest.raises(ValueError, match="stages must name some of"):
        analyse(model, tok, path, stages=("v9",))
    bad = {"model.layers.0.mlp.down_proj.weight": torch.ones(3, 3)}
    with pytest.raises(ValueError, match="does not fit the model"):
        as_diffs(bad, model)
