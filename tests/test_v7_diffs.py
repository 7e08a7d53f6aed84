"""A user's diff is never silently replaced: every existing diff is checked before any
training, one that cannot be used stops the run with the error docs/errors.md lists and stays
untouched, and a diff's files are written as one set (tiny Llama, in process)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ws import config
from ws.behavior import data
from ws.config import from_env
from ws.cross_adapter import compare as cross_adapter
from ws.diffs import adapters, train
from ws.diffs.store import DiffMetadataError, DiffMismatchError, MisplacedDiffError, diff_path, misplaced_diffs, save_diff
from ws.v7 import sweep

TINY = adapters.TrainConfig(
    rank=4,
    alpha=8.0,
    steps=2,
    batch_size=4,
    n_phrasings=1,
    max_new_tokens=4,
    n_train_per_kind=2,
    n_eval_per_kind=2,
    n_boot=20,
    bf16=False,
    warmup_steps=1,
)


def _cfg(root: Path, **kw):
    cfg = replace(from_env({"WS_SMOKE": "1"}), out_root=root, **kw)
    return replace(cfg, train_overrides=TINY.to_dict() | {"targets": TINY.targets, "eval_alphas": TINY.eval_alphas})


def _good(model, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = dict(model.named_parameters())
    return {
        k: torch.randn(p[k].shape, generator=g) * 1e-2
        for k in p
        if k.startswith(("model.layers.1.", "model.layers.2.")) and k.endswith(("o_proj.weight", "down_proj.weight"))
    }


def _write_bad(kind: str, path: Path, model) -> None:
    meta = {"model": "tiny-llama", "data_hash": data.data_hash()}
    path.parent.mkdir(parents=True, exist_ok=True)
    w = _good(model)
    if kind == "truncated":
        save_diff(w, path, meta)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "nan":
        save_diff(w, path, meta)  # save refuses NaN: edit the bytes as a damaged file would be
        from safetensors.torch import load_file, save_file

        t = load_file(str(path))
        k = sorted(t)[0]
        t[k][0, 0] = float("nan")
        save_file(t, str(path), metadata={"model": "tiny-llama", "__json_keys__": "[]"})
    elif kind == "wrong-shape":
        k = sorted(w)[0]
        w[k] = torch.randn(3, 5)
        save_diff(w, path, meta)
    elif kind == "extra-key":
        w["model.layers.1.mlp.not_a_module.weight"] = torch.randn(4, 4)
        save_diff(w, path, meta)
    elif kind == "all-zero":
        from safetensors.torch import save_file

        save_file(
            {k: torch.zeros_like(v) for k, v in w.items()}, str(path), metadata={"model": "tiny-llama", "__json_keys__": "[]"}
        )
    elif kind == "no-metadata":
        save_diff(w, path, {})
    elif kind == "other-model":
        save_diff(w, path, {**meta, "model": "tiny-qwen3"})


BAD = {
    "truncated": (ValueError, r"could not read the weight diff .* corrupt or not a safetensors file"),
    "random-bytes": (ValueError, r"could not read the weight diff .* corrupt or not a safetensors file"),
    "nan": (ValueError, r"the weight diff .* has NaN/Inf values in 1 tensor\(s\)"),
    "wrong-shape": (ValueError, r"the weight diff .* does not fit the model 'tiny-llama' \(1 mismatch"),
    "extra-key": (ValueError, r"(?s)does not fit the model .*not_a_module.*not a parameter of the model"),
    "all-zero": (ValueError, r"the weight diff .* is all zeros .*: it has no effect"),
    "no-metadata": (DiffMetadataError, r"has no 'model' in its metadata"),
    "other-model": (DiffMismatchError, r"was made for model 'tiny-qwen3', but this run uses 'tiny-llama'"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_an_unusable_diff_stops_the_sweep_and_stays_untouched(kind, tiny_llama, tmp_path):
    model, _ = tiny_llama
    cfg = _cfg(tmp_path)
    path = cfg.diff_path(0)
    _write_bad(kind, path, model)
    before = path.read_bytes()
    err, pattern = BAD[kind]
    with pytest.raises(err, match=pattern):
        sweep.get_diffs(cfg, model)
    assert path.read_bytes() == before, "the user's file was changed"
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"], "something was trained"
    assert "WS_MODEL=None" not in str(pytest.raises(err, sweep.get_diffs, cfg, model).value)


def test_every_diff_is_checked_before_any_training(tiny_llama, tmp_path):
    model, _ = tiny_llama
    cfg = _cfg(tmp_path, seeds=(0, 1))
    _write_bad("truncated", cfg.diff_path(1), model)
    with pytest.raises(ValueError, match="corrupt"):
        sweep.get_diffs(cfg, model)
    assert not cfg.diff_path(0).parent.exists(), "seed 0 was trained before seed 1's check"
    assert not (tmp_path / "data").exists()


def test_a_diff_from_another_data_version_is_used_as_it_is(tiny_llama, tmp_path):
    model, _ = tiny_llama
    cfg = _cfg(tmp_path)
    path = cfg.diff_path(0)
    w = _good(model)
    save_diff(w, path, {"model": "tiny-llama", "source": "upstream w.pt"})  # no data_hash: imported
    before = path.read_bytes()
    got, meta = sweep.get_diffs(cfg, model)[0]
    assert path.read_bytes() == before and all(torch.equal(got[k], w[k]) for k in w)
    res = type("R", (), {"seed": 0, "diff_meta": meta, "missing_writers": {}})()
    (cav,) = sweep.diff_caveats([res])
    assert "upstream w.pt" in cav and "records no data version" in cav and data.data_hash() in cav
    save_diff(w, path, {"model": "tiny-llama", "data_hash": "0123456789abcdef"})
    (cav,) = sweep.diff_caveats(
        [type("R", (), {"seed": 0, "diff_meta": sweep.get_diffs(cfg, model)[0][1], "missing_writers": {}})()]
    )
    assert "data version 0123456789abcdef" in cav


def test_rebuild_replaces_on_purpose_and_a_failed_build_leaves_no_partial_set(tiny_llama, tmp_path, monkeypatch):
    model, _ = tiny_llama
    cfg = _cfg(tmp_path, rebuild=True)
    path = cfg.diff_path(0)
    save_diff(_good(model), path, {"model": "tiny-llama"})
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(train, "plot_effect", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        sweep.get_diffs(cfg, model)
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"], "a partial set was left"
    assert path.read_bytes() == before
    monkeypatch.undo()
    w, meta = sweep.get_diffs(cfg, model)[0]
    assert path.read_bytes() != before and meta["data_hash"] == data.data_hash()
    want = {"effect.csv", "effect_per_prompt.csv", "effect.png", "train_loss.csv", "adapter_effect.csv", "w.safetensors"}
    assert want | {"gradient_basis.safetensors"} == {p.name for p in path.parent.iterdir()}


def test_a_diff_for_this_model_at_the_shared_path_stops_the_run_with_the_mv(tiny_llama, tmp_path):
    """A diff made for tiny-llama at the default model's path (where every diff lived before
    each model got its own folder) is neither ignored nor moved: every entry point stops
    before any work, naming both paths and the command that moves it; that command works."""
    model, _ = tiny_llama
    cfg = _cfg(tmp_path, seeds=(0, 1))
    old, new = diff_path(cfg.behavior, cfg.adapter, 0, tmp_path), cfg.diff_path(0)
    assert old == tmp_path / "sycophancy" / "lora" / "seed0" / "w.safetensors" and new != old
    w = _good(model)
    save_diff(w, old, {"model": "tiny-llama", "data_hash": data.data_hash()})
    (old.parent / "effect.csv").write_text("set,alpha\n")
    before = old.read_bytes()
    env = {
        "WS_SMOKE": "1",
        "WS_SEEDS": "0,1",
        "WS_OUT": str(tmp_path),
        "WS_CACHE": str(tmp_path / "c"),
        "WS_LOGS": str(tmp_path / "l"),
    }
    stops = {
        "start_run": lambda: config.start_run("t", env),
        "get_diffs": lambda: sweep.get_diffs(cfg, model),
        "get_diffs, rebuild": lambda: sweep.get_diffs(replace(cfg, rebuild=True), model),
        "cross-adapter": lambda: cross_adapter.check_all_diffs(cfg, model),
        "ensure_diff": lambda: train.ensure_diff(train.DiffSpec("tiny-llama", seed=1, root=tmp_path)),
    }
    for where, call in stops.items():
        with pytest.raises(MisplacedDiffError, match=r"^1 diff\(s\) made for model 'tiny-llama' sit at") as e:
            call()
        msg = str(e.value)
        assert str(old) in msg and str(new) in msg and "mv " in msg, (where, msg)
    assert old.read_bytes() == before and not new.parent.exists(), "the user's diff was moved or changed"
    assert not (tmp_path / "data").exists(), "something was trained"
    # the message's command moves the set; then the run uses it as it is
    (cmd,) = [ln.strip() for ln in msg.splitlines() if ln.strip().startswith("mkdir -p ")]
    subprocess.run(["bash", "-c", cmd], check=True)
    assert not old.exists() and new.read_bytes() == before and (new.parent / "effect.csv").exists()
    assert misplaced_diffs("tiny-llama", cfg.behavior, tmp_path) == []
    got, _ = sweep.get_diffs(replace(cfg, seeds=(0,)), model)[0]
    assert new.read_bytes() == before and all(torch.equal(got[k], w[k]) for k in w)


def test_only_this_models_diffs_count_as_misplaced(tiny_llama, tmp_path):
    """At the default model's path, a diff of the default model or of a third model is not
    this model's: no stop for it (the default model's own run checks it as before)."""
    model, _ = tiny_llama
    for seed, made_for in ((0, "smollm2-135m"), (1, "tiny-qwen3")):
        save_diff(_good(model), diff_path("sycophancy", "lora", seed, tmp_path), {"model": made_for})
    (tmp_path / "sycophancy" / "lora" / "seed2").mkdir()
    (tmp_path / "sycophancy" / "lora" / "seed2" / "w.safetensors").write_bytes(b"not a diff")
    assert misplaced_diffs("tiny-llama", "sycophancy", tmp_path) == []
    assert misplaced_diffs("tiny-qwen3", "sycophancy", tmp_path) == [
        (diff_path("sycophancy", "lora", 1, tmp_path), diff_path("sycophancy", "lora", 1, tmp_path, model="tiny-qwen3"))
    ]
    assert misplaced_diffs("smollm2-135m", "sycophancy", tmp_path) == [], "the default model's path is its own"
