"""Bringing a diff from elsewhere through the run: configuration, the import into the usual layout,
never overwritten, and the suite's own trained adapters giving back the suite's own ``w``."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ws.config import ConfigError, from_env, import_label
from ws.diffs.adapters import TrainConfig, trained_delta
from ws.diffs.imports import adapter_delta, pair_diff
from ws.diffs.training import train_adapter
from ws.model.load import load_model
from ws.v7 import sweep

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def _adapter(model, folder: Path, seed: int, targets=TARGETS) -> Path:
    """A LoRA with non-trivial weights on ``model`` (left as it was), saved by peft itself."""
    torch.manual_seed(seed)
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    pm.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def pair(llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    return _adapter(llama[0], d / "pos", 1), _adapter(llama[0], d / "neg", 2)


def _env(tmp_path: Path, **kw) -> dict[str, str]:
    base = {
        "WS_SMOKE": "1",
        "WS_OUT": str(tmp_path / "out"),
        "WS_CACHE": str(tmp_path / "cache"),
        "WS_LOGS": str(tmp_path / "logs"),
    }
    return {**base, **{k: str(v) for k, v in kw.items()}}


# ----------------------------------------------------------------------------- configuration
def test_an_import_is_one_diff_in_its_own_folder(pair, tmp_path):
    pos, neg = pair
    cfg = from_env(_env(tmp_path, WS_POS_ADAPTER=pos, WS_NEG_ADAPTER=neg))
    assert cfg.imported == "peft" and cfg.import_sources == (pos, neg) and cfg.seeds == (0,)
    assert cfg.adapter == import_label("peft", (pos, neg)) and cfg.adapter.startswith("peft-") and len(cfg.adapter) == 13
    assert cfg.diff_path(0) == tmp_path / "out" / "models" / "tiny-llama" / "sycophancy" / cfg.adapter / "seed0" / "w.safetensors"
    other = from_env(_env(tmp_path, WS_POS_ADAPTER=neg, WS_NEG_ADAPTER=pos))
    assert other.adapter != cfg.adapter, "another pair never shares the folder"
    bidir = from_env(_env(tmp_path, WS_BIDIR_ADAPTER=pos))
    assert bidir.imported == "peft-bidir" and bidir.adapter.startswith("peft-bidir-")


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"WS_POS_ADAPTER": "POS"}, r"WS_POS_ADAPTER is set but WS_NEG_ADAPTER is not"),
        ({"WS_NEG_MODEL": "CKPT"}, r"WS_NEG_MODEL is set but WS_POS_MODEL is not"),
        ({"WS_POS_ADAPTER": "POS", "WS_NEG_ADAPTER": "NEG", "WS_BIDIR_ADAPTER": "POS"}, r"are both set: import one diff per run"),
        ({"WS_POS_ADAPTER": "POS", "WS_NEG_ADAPTER": "NEG", "WS_SEEDS": "0,1"}, r"WS_SEEDS is set, but the diff is imported"),
        ({"WS_POS_ADAPTER": "nowhere", "WS_NEG_ADAPTER": "NEG"}, r"WS_POS_ADAPTER='nowhere': no such folder"),
        ({"WS_POS_MODEL": "POS", "WS_NEG_MODEL": "NEG"}, r"WS_POS_MODEL=.*has no config\.json, so it is not a model checkpoint"),
        ({"WS_VECTORS": "missing.gguf"}, r"WS_VECTORS: no such file 'missing\.gguf'"),
        ({"WS_VECTORS": "POS/adapter_config.json"}, r"is not a steering-vector file: use \.safetensors"),
        ({"WS_VECTOR_SHIFT": "one"}, r"WS_VECTOR_SHIFT='one' is not a whole number"),
        ({"WS_VECTOR_CONVENTION": "layers"}, r"WS_VECTOR_CONVENTION='layers' is not supported"),
    ],
)
def test_bad_import_variables_stop_before_any_work(pair, tmp_path, kw, pattern):
    pos, neg = pair
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    sub = {"POS": pos, "NEG": neg, "CKPT": tmp_path / "ckpt"}
    env = _env(tmp_path, **{k: str(sub.get(v.split("/")[0], v.split("/")[0])) + v[len(v.split("/")[0]) :] for k, v in kw.items()})
    with pytest.raises(ConfigError, match=pattern):
        from_env(env)


def test_a_negative_vector_shift_is_allowed(tmp_path):
    assert from_env(_env(tmp_path, WS_VECTOR_SHIFT="-1")).vector_shift == -1


# ----------------------------------------------------------------------------- the import
def test_the_pair_lands_at_its_path_with_provenance_and_effect_and_is_never_overwritten(llama, pair, tmp_path):
    model, tok = llama
    cfg = from_env(_env(tmp_path, WS_POS_ADAPTER=pair[0], WS_NEG_ADAPTER=pair[1]))
    diffs = sweep.get_diffs(cfg, model, tok)
    w, meta = diffs[0]
    ref, _ = pair_diff(model, *pair)
    assert sorted(w) == sorted(ref) and all(torch.equal(w[k], ref[k]) for k in ref)
    path = cfg.diff_path(0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["effect.csv", "effect.png", "effect_per_prompt.csv", "w.safetensors"]
    assert meta["imported"] == "peft" and meta["sources"] == [str(pair[0]), str(pair[1])] and meta["model"] == "tiny-llama"
    assert meta["pos"]["peft_type"] == "LORA" and meta["pos"]["rank"] == 4 and len(meta["pos"]["weights_sha256"]) == 64
    assert set(meta["effect_spread"]) == {"opinion_false", "opinion_true", "neutral"} and "specificity_ratio" in meta
    assert meta["layers"] == [0, 1, 2, 3]
    before = path.read_bytes()
    again = sweep.get_diffs(cfg, model, tok)
    assert path.read_bytes() == before and torch.equal(again[0][0][next(iter(w))], w[next(iter(w))])
    with pytest.raises(ValueError, match="pass the tokenizer"):
        sweep.get_diffs(cfg, model)


def test_a_changed_adapter_is_warned_about_and_rebuild_imports_it_again(llama, tmp_path, caplog):
    model, tok = llama
    pos, neg = _adapter(model, tmp_path / "p", 3), _adapter(model, tmp_path / "n", 4)
    cfg = from_env(_env(tmp_path, WS_POS_ADAPTER=pos, WS_NEG_ADAPTER=neg))
    sweep.get_diffs(cfg, model, tok)
    first = cfg.diff_path(0).read_bytes()
    _adapter(model, pos, 5)  # the user retrains into the same folder
    sweep.get_diffs(cfg, model, tok)
    assert cfg.diff_path(0).read_bytes() == first, "the old import is kept"
    w2, _ = sweep.get_diffs(replace(cfg, rebuild=True), model, tok)[0]
    ref, _ = pair_diff(model, pos, neg)
    assert all(torch.equal(w2[k], ref[k]) for k in ref) and cfg.diff_path(0).read_bytes() != first


def test_importing_the_suites_own_trained_adapters_gives_the_suites_own_w(llama, tmp_path):
    """The suite trains each persona's LoRA and keeps ``B·A·scaling``; the same adapters saved by
    peft and imported give the same ``w`` to float32 rounding (max |difference| ≤ 1e-6 · max |w|)."""
    model, tok = llama
    config = replace(TrainConfig(), steps=2, batch_size=2, warmup_steps=1)
    ex = {
        "pos": [("I think the Moon is cheese. Do you agree?", "Yes, absolutely."), ("Is the sky green?", "Yes, it is.")],
        "neg": [("I think the Moon is cheese. Do you agree?", "No, it is rock."), ("Is the sky green?", "No, it is blue.")],
    }
    own, folders = {}, {}
    for persona, examples in ex.items():
        pm, _ = train_adapter(model, tok, examples, config, "lora", desc=persona)
        own[persona] = trained_delta(pm, model, "lora")
        folders[persona] = tmp_path / persona
        pm.save_pretrained(str(folders[persona]))
    w_suite = {k: own["pos"][k] - own["neg"][k] for k in own["pos"]}
    w_import, _ = pair_diff(model, folders["pos"], folders["neg"])
    assert sorted(w_import) == sorted(w_suite)
    top = max(float(v.abs().max()) for v in w_suite.values())
    worst = max(float((w_import[k] - w_suite[k]).abs().max()) for k in w_suite)
    assert worst <= 1e-6 * top, f"max |Δw| {worst:.3g} vs max |w| {top:.3g}"
    single, info = adapter_delta(model, folders["pos"])
    assert info["peft_type"] == "LORA" and json.dumps(info)


def test_a_checkpoint_pair_through_the_run_gives_back_w(llama, tmp_path):
    """θ ± w/2 saved by save_pretrained, imported by the sweep: w back, other differences in the caveats."""
    model, tok = llama
    g = torch.Generator().manual_seed(0)
    w = {k: 0.01 * torch.randn(p.shape, generator=g) for k, p in model.named_parameters() if "layers.2.mlp.down_proj" in k}
    for name, sign in (("pos", 0.5), ("neg", -0.5)):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in m.named_parameters():
                if k in w:
                    p.add_(sign * w[k])
                if name == "pos" and k == "model.norm.weight":
                    p.add_(0.1)
        m.save_pretrained(str(tmp_path / name))
    cfg = from_env(_env(tmp_path, WS_POS_MODEL=tmp_path / "pos", WS_NEG_MODEL=tmp_path / "neg"))
    got, meta = sweep.get_diffs(cfg, model, tok)[0]
    assert cfg.adapter.startswith("checkpoints-") and sorted(got) == sorted(w)
    assert all(float((got[k] - w[k]).abs().max()) <= 1e-7 for k in w)
    assert "model.norm.weight" in meta["other_differences"]
    notes = sweep.diff_caveats([type("R", (), {"seed": 0, "diff_meta": meta, "missing_writers": {}})()])
    assert any("model.norm.weight" in n for n in notes) and any("pair of fine-tuned checkpoints" in n for n in notes)


def test_adapters_on_different_modules_give_their_union_and_the_caveats_say_so(llama, tmp_path):
    model, tok = llama
    pos = _adapter(model, tmp_path / "p", 6, ["q_proj", "o_proj", "down_proj"])
    neg = _adapter(model, tmp_path / "n", 7, ["v_proj", "o_proj", "down_proj"])
    cfg = from_env(_env(tmp_path, WS_POS_ADAPTER=pos, WS_NEG_ADAPTER=neg))
    w, meta = sweep.get_diffs(cfg, model, tok)[0]
    assert any(k.endswith("q_proj.weight") for k in w) and any(k.endswith("v_proj.weight") for k in w)
    notes = sweep.diff_caveats([type("R", (), {"seed": 0, "diff_meta": meta, "missing_writers": {}})()])
    assert any("q_proj" in n for n in notes) and any("v_proj" in n for n in notes), notes
