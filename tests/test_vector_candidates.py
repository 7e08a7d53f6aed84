"""A researcher's steering vectors as candidates: known answers on the smoke run's real diff.

The diff's own top write direction (the top eigenvector of the combined weight label, per
layer) is the best rank-1 subspace there is: it must score 100 % of the best possible weight
energy at its rank, whatever format it comes in (safetensors or a GGUF control vector). A
random direction must sit inside its null. v8's causal test always takes the vectors.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import save_file
from smoke_env import smoke_env

from ws.bases.registry import append_candidates
from ws.bases.vectors import is_vector, vector_candidates
from ws.config import Config
from ws.diffs.store import writer_deltas_by_layer
from ws.model.load import d_model, load_model, n_layers
from ws.model.vectors import read_vectors
from ws.v7 import sweep
from ws.v8.sweep import causal_candidates


@pytest.fixture(scope="module")
def run(smoke_sweeps, tmp_path_factory):
    """The smoke diff, its top write direction and a random one as files, and one v7 seed scored with them."""
    base = smoke_sweeps.base
    env = {k: v for k, v in smoke_env(base).items() if k.startswith("WS_")}
    cfg = Config.from_env(env)
    model, tok = load_model(cfg.model)
    w, meta = sweep.get_diffs(cfg, model, tok)[0]
    deltas = writer_deltas_by_layer(w, n_layers(model), partial=True)
    top = {}
    for l, dl in enumerate(deltas):
        if dl is None:
            continue
        A = sum((m.double() @ m.double().T) / float((m.double() ** 2).sum()) for m in dl.values()) / len(dl)
        top[l] = torch.linalg.eigh(A).eigenvectors[:, -1].float()
    d = tmp_path_factory.mktemp("vectors")
    save_file({f"direction.{l}": v.contiguous() for l, v in top.items()}, str(d / "top.safetensors"))
    gw = gguf.GGUFWriter(str(d / "topg.gguf"), "controlvector")
    gw.add_string("controlvector.model_hint", "llama")
    gw.add_uint32("controlvector.layer_count", len(top))
    for l, v in top.items():
        gw.add_tensor(f"direction.{l}", v.numpy().astype(np.float32))
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    g = torch.Generator().manual_seed(1)
    np.save(d / "rand.npy", torch.randn(n_layers(model), d_model(model), generator=g).numpy())
    files = (d / "top.safetensors", d / "topg.gguf", d / "rand.npy")
    cfg = replace(cfg, vectors=files, out_root=d / "out")
    probes = sweep.probe_prompts(cfg, tok)
    res = sweep.run_seed(cfg, model, tok, probes, 0, w, meta)
    return cfg, model, res, top, files


def _row(res, name: str) -> dict:
    return res.summary.filter(pl.col("subspace") == name).to_dicts()[0]


def test_the_diffs_top_write_direction_scores_the_best_possible_weight_energy(run):
    _, _, res, top, _ = run
    for name in ("vector:top", "vector:topg"):
        r = _row(res, name)
        assert r["family"] == "vector" and r["axis_kind"] == "mixed" and r["kind"] == "A-hypothesis"
        assert r["mean_pct_w_combined_matched_rank"] == pytest.approx(100.0, abs=1e-4), name  # percent
        assert r["mean_rank"] == 1 and r["n_layers_scored"] == len(top)
    a, b = _row(res, "vector:top"), _row(res, "vector:topg")
    assert a["mean_conc_w_combined"] == pytest.approx(b["mean_conc_w_combined"], rel=1e-6), "GGUF and safetensors agree"
    oracle = _row(res, "dW_left_basis_ceiling")
    assert a["mean_conc_w_combined"] >= oracle["mean_conc_w_combined"], "rank 1 at the top is at least as concentrated"


def test_a_random_direction_sits_inside_its_null(run):
    r = _row(run[2], "vector:rand")
    assert abs(r["mean_z_w_combined"]) < 3 and abs(r["mean_z_act"]) < 3
    assert r["mean_pct_w_combined_matched_rank"] < 50


def test_v8_takes_every_vector_whatever_its_rank(run):
    _, _, res, _, _ = run
    stab = sweep.seed_stability([res])
    names, ranking = causal_candidates(res.summary, stab.per_candidate, n=1)
    vecs = [n for n in names if is_vector(n)]
    assert sorted(vecs) == ["vector:rand", "vector:top", "vector:topg"]
    assert all(ranking[n][0] is None or ranking[n][0] == 1 for n in vecs)


def test_candidate_rows_and_refusals(run, tmp_path):
    cfg, model, res, top, files = run
    vecs = [read_vectors(f, n_layers(model), d_model(model)) for f in files]
    bases, meta = vector_candidates(vecs, n_layers(model), d_model(model))
    assert meta["subspace"].to_list() == ["vector:top", "vector:topg", "vector:rand"]
    for l, v in top.items():
        B = bases["vector:top"][l]
        assert B.shape == (d_model(model), 1) and abs(float((B[:, 0] @ v) ** 2) / float(v @ v) - 1) < 1e-5
    assert all(bases["vector:top"][l] is None for l in range(n_layers(model)) if l not in top)
    with pytest.raises(ValueError, match="two steering-vector files give the candidate name 'vector:top'"):
        vector_candidates([vecs[0], vecs[0]], n_layers(model), d_model(model))
    both, m2 = append_candidates({"a": [None]}, meta.head(0), (bases, meta), "steering-vector")
    assert list(both) == ["a", *bases] and m2["subspace"].to_list() == meta["subspace"].to_list()
    with pytest.raises(ValueError, match="steering-vector candidate 'vector:rand' has the name of a built-in"):
        append_candidates(bases, meta, (bases, meta), "steering-vector")


def test_a_vector_file_that_does_not_fit_the_model_stops_get_diffs(run, tmp_path):
    cfg, model, _, _, _ = run
    bad = tmp_path / "wide.npy"
    np.save(bad, np.ones((n_layers(model), d_model(model) + 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"wide\.npy.*width"):
        sweep.get_diffs(replace(cfg, vectors=(Path(bad),)), model)
