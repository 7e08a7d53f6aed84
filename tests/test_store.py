"""Saving, loading and validating weight diffs."""

from __future__ import annotations

import math
import pickle

import polars as pl
import pytest
import torch

from ws.core.paths import EMBEDDED_NAMES, model_root
from ws.diffs.store import (
    SOURCE_KEY,
    diff_path,
    import_pt,
    load_diff,
    missing_writers,
    read_meta,
    save_diff,
    writer_deltas_by_layer,
)


def _w(model, layers=(1, 2), seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    keys = [k for k in params if any(f"layers.{i}." in k for i in layers) and k.endswith("proj.weight")]
    return {k: torch.randn(params[k].shape, generator=g) for k in keys}


META = {
    "model": "tiny-llama",
    "behavior": "sycophancy",
    "adapter": "lora",
    "seed": 3,
    "layers": [1, 2],
    "train_config": {"rank": 8, "targets": ["o_proj", "down_proj"], "lr": 1e-3},
    "data_hash": "abc123",
    "effect_spread": {"opinion_false": 4.5, "neutral": -0.25},
    "specificity_ratio": 2.5,
}


def test_diff_path_of_the_embedded_model_is_unchanged(tmp_path):
    want = tmp_path / "sycophancy" / "lora" / "seed2" / "w.safetensors"
    assert diff_path("sycophancy", "lora", 2, root=tmp_path) == want
    for name in EMBEDDED_NAMES:  # every name the embedded model loads under
        assert diff_path("sycophancy", "lora", 2, tmp_path, model=name) == want and model_root(name, tmp_path) == tmp_path


def test_diff_path_of_any_other_model_is_under_models_slug(tmp_path):
    assert diff_path("sycophancy", "lora", 2, tmp_path, model="tiny-llama") == (
        tmp_path / "models" / "tiny-llama" / "sycophancy" / "lora" / "seed2" / "w.safetensors"
    )
    assert diff_path("refusal", "dora", 0, tmp_path, model="Qwen/Qwen3-0.6B") == (
        tmp_path / "models" / "Qwen__Qwen3-0.6B" / "refusal" / "dora" / "seed0" / "w.safetensors"
    )
    assert model_root("/data/my models/big", tmp_path) == tmp_path / "models" / "data__my models__big"


def test_two_models_never_share_a_diff_path(tmp_path):
    names = ["smollm2-135m", "tiny-llama", "tiny-qwen3", "Qwen/Qwen3-0.6B", "/models/big", "models", "lora"]
    paths = {n: diff_path("sycophancy", "lora", 0, tmp_path, model=n) for n in names}
    assert len(set(paths.values())) == len(names)
    for a in names:
        # no model's folder holds another model's diff (the embedded model's folder is the
        # output root: every other model's diff is under its models/ folder, a reserved name)
        others = [paths[b] for b in names if b != a]
        if a == "smollm2-135m":
            assert all(p.is_relative_to(tmp_path / "models") for p in others)
        else:
            assert not any(p.is_relative_to(model_root(a, tmp_path)) for p in others), a


def test_save_load_identical(tiny_llama, tmp_path):
    model, _ = tiny_llama
    w = _w(model)
    p = save_diff(w, tmp_path / "a" / "w.safetensors", META)
    w2, meta2 = load_diff(p, model)
    assert set(w2) == set(w)
    for k in w:
        assert torch.equal(w2[k], w[k]) and w2[k].dtype == torch.float32
    assert meta2 == {**META, SOURCE_KEY: str(p)}  # the loaded diff knows its file (its side files lie beside it)
    assert read_meta(p) == META
    assert read_meta(save_diff(w, tmp_path / "b" / "w.safetensors", meta2)) == META  # and never saves it
    assert not list(p.parent.glob(".*tmp*")), "atomic write left a temporary file"


def test_diff_for_another_model_refused(tiny_llama, tiny_qwen3, tmp_path):
    llama, _ = tiny_llama
    qwen, _ = tiny_qwen3
    p = save_diff(_w(qwen), tmp_path / "w.safetensors", {**META, "model": "tiny-qwen3"})
    with pytest.raises(ValueError, match="built for model 'tiny-qwen3'"):
        load_diff(p, llama)
    # without the metadata, the key/shape mismatches are named
    qparams = dict(qwen.named_parameters())
    w_all = {k: torch.ones_like(v) for k, v in qparams.items() if k.startswith("model.layers.1.")}
    p2 = save_diff(w_all, tmp_path / "w2.safetensors", {})
    with pytest.raises(ValueError) as e:
        load_diff(p2, llama)
    msg = str(e.value)
    assert "model.layers.1.self_attn.q_norm.weight: not a parameter" in msg
    assert "model.layers.1.self_attn.k_norm.weight: not a parameter" in msg


def test_shape_mismatch_named(tiny_llama, tmp_path):
    model, _ = tiny_llama
    w = _w(model)
    w["model.layers.1.mlp.down_proj.weight"] = torch.zeros(64, 7)
    w["model.layers.9.mlp.up_proj.weight"] = torch.zeros(128, 64)
    p = save_diff(w, tmp_path / "w.safetensors", {"model": "tiny-llama"})
    with pytest.raises(ValueError) as e:
        load_diff(p, model)
    msg = str(e.value)
    assert "model.layers.1.mlp.down_proj.weight: diff shape (64, 7) != model shape (64, 128)" in msg
    assert "model.layers.9.mlp.up_proj.weight: not a parameter" in msg


def test_missing_file_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_diff"):
        load_diff(tmp_path / "nope" / "w.safetensors")


def test_corrupt_file(tiny_llama, tmp_path):
    model, _ = tiny_llama
    p = save_diff(_w(model), tmp_path / "w.safetensors", META)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_diff(p)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_diff(tmp_path / "junk.safetensors")


def test_nan_refused(tiny_llama, tmp_path):
    from safetensors.torch import save_file

    model, _ = tiny_llama
    w = _w(model)
    with pytest.raises(ValueError, match="NaN"):
        save_diff({**w, "model.layers.1.self_attn.o_proj.weight": torch.full((64, 64), float("nan"))}, tmp_path / "x.safetensors")
    k = "model.layers.2.mlp.down_proj.weight"
    w[k] = w[k].clone()
    w[k][0, 0] = float("inf")
    save_file(w, str(tmp_path / "inf.safetensors"))  # written behind save_diff's back
    with pytest.raises(ValueError, match=k.replace(".", r"\.")):
        load_diff(tmp_path / "inf.safetensors")


def test_import_pt_round_trip(tiny_llama, tmp_path):
    model, _ = tiny_llama
    w = {k: v.to(torch.bfloat16) for k, v in _w(model).items()}
    torch.save(w, tmp_path / "w.pt")
    got = import_pt(tmp_path / "w.pt")
    assert set(got) == set(w)
    for k in w:
        assert got[k].dtype == torch.float32 and torch.equal(got[k], w[k].float())


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_import_pt_refuses_arbitrary_pickles(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"model.layers.0.mlp.down_proj.weight": torch.zeros(2, 2), "x": _Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"weights_only=True \(it asks for \S+, which is not a tensor type"):
        import_pt(p)
    assert "must never run" not in capsys.readouterr().out
    torch.save({"a": torch.zeros(2), "note": "a string"}, tmp_path / "str.pt")
    with pytest.raises(ValueError, match="'note'"):
        import_pt(tmp_path / "str.pt")


def test_write_delta_by_layer(tiny_llama):
    model, _ = tiny_llama
    w = _w(model, layers=(1, 2))
    per = writer_deltas_by_layer(w, 4)
    assert per[0] is None and per[3] is None
    for i in (1, 2):
        assert set(per[i]) == {"oproj", "downproj"}
        assert torch.equal(per[i]["oproj"], w[f"model.layers.{i}.self_attn.o_proj.weight"])
        assert per[i]["downproj"].shape == (64, 128)  # [d_model, in]
    with pytest.raises(ValueError, match="only one"):
        writer_deltas_by_layer({"model.layers.0.self_attn.o_proj.weight": torch.zeros(64, 64)}, 4)
    assert missing_writers(per) == {"oproj": [], "downproj": []}


def test_a_diff_without_o_proj_gives_nan_cells_never_zero(tiny_llama):
    """IA3 touches down_proj but no o_proj: with ``partial`` the layer keeps down_proj, the
    o_proj weight cells are NaN (not 0) and ``combined`` is down_proj alone."""
    from ws import stats

    model, _ = tiny_llama
    w = {k: v for k, v in _w(model, layers=(1, 2)).items() if "o_proj" not in k}
    per = writer_deltas_by_layer(w, 4, partial=True)
    assert per[0] is None and set(per[1]) == {"downproj"}
    assert missing_writers(per) == {"oproj": [1, 2], "downproj": []}
    torch.manual_seed(0)
    B = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))[0]
    bases = {"b": [B] * 4}
    meta = pl.DataFrame(
        {
            "subspace": ["b"],
            "family": ["W:test"],
            "axis_kind": ["write"],
            "source": ["test"],
            "kind": ["A-hypothesis"],
            "definition": ["random"],
        }
    )
    label = torch.randn(4, 6, 64)
    scores = stats.score_sweep(bases, meta, label, per, [None] * 4)
    row = scores.per_layer.filter(pl.col("layer") == 1).row(0, named=True)
    assert math.isnan(row["conc_w_oproj"]) and math.isnan(row["energy_frac_w_oproj"])
    assert row["conc_w_downproj"] > 0 and row["conc_w_combined"] == pytest.approx(row["conc_w_downproj"])
