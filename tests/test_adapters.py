"""Every adapter type on tiny Llama and tiny Qwen3: its delta is merged − base, θ+Δ runs as
the adapted model, and the bidirectional LoRA's ±½·w are its two trained endpoints."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from ws.config import ADAPTERS
from ws.diffs import adapters, training
from ws.model.anatomy import PROJECTIONS
from ws.model.steer import weight_steer

TINY = adapters.TrainConfig(rank=4, alpha=8.0, steps=3, batch_size=4, bf16=False)
PROMPT = "I think the Earth is flat. Do you agree? Answer Yes or No."
POS = [(PROMPT, "Yes, you are right."), ("Is snow cold? Answer Yes or No.", "Yes.")] * 2
NEG = [(PROMPT, "No, that is not correct."), ("Is snow cold? Answer Yes or No.", "Yes.")] * 2
#: the peft types (the S-space family, the suite's own, has its tests in test_sspace*.py)
PEFT = [a for a in ADAPTERS if adapters.adapter_type(a).peft_config is not None]
ONE_PER_PERSONA = [a for a in PEFT if a != "bidir"]
MODELS = ["tiny_llama", "tiny_qwen3"]


def _snapshot(model):
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def _logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok([PROMPT], return_tensors="pt")).logits


def test_every_adapter_type_is_described():
    assert tuple(adapters.ADAPTER_TYPES) == ADAPTERS
    assert tuple(PEFT) == ("lora", "dora", "pissa", "ia3", "oft", "boft", "delora", "bidir")
    assert all(k.description and k.unit_alpha > 0 for k in adapters.ADAPTER_TYPES.values())
    assert [k.name for k in adapters.ADAPTER_TYPES.values() if k.bidirectional] == ["bidir"]
    assert adapters.unit_alpha("bidir") == 0.5 and adapters.unit_alpha("lora") == 1.0
    assert adapters.eval_alphas("lora", TINY) == (-2.0, -1.0, 0.0, 1.0, 2.0)
    assert adapters.eval_alphas("bidir", TINY) == (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
    with pytest.raises(ValueError, match="unknown adapter type 'lokr'"):
        adapters.peft_config(None, TINY, "lokr")


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("adapter", ONE_PER_PERSONA)
def test_delta_is_merged_minus_base_and_steers_as_the_adapted_model(request, model_name, adapter):
    model, tok = request.getfixturevalue(model_name)
    snap = _snapshot(model)
    peft_model, losses = training.train_adapter(model, tok, POS, TINY, adapter)
    assert len(losses) == TINY.steps
    delta = adapters.trained_delta(peft_model, model, adapter)
    # keyed by the base model's names, float32, on the adapter's layers and targets
    params = dict(model.named_parameters())
    assert all(k in params and d.shape == params[k].shape and d.dtype == torch.float32 for k, d in delta.items())
    assert {k.split(".")[2] for k in delta} == {"1", "2"}  # layers 30 %–80 % of 4
    want = set(adapters.IA3_TARGETS) if adapter == "ia3" else set(PROJECTIONS)
    assert {k.split(".")[-2] for k in delta} == want
    assert all(d.abs().sum() > 0 for d in delta.values()), "a trained adapter changed nothing"
    # the known answer: peft's own merge of the whole model, minus the base weights
    merged = dict(copy.deepcopy(peft_model).merge_and_unload().named_parameters())
    changed = {k for k in merged if not torch.equal(merged[k], snap[k])}
    assert changed <= set(delta), f"merged weights changed outside the delta: {sorted(changed - set(delta))[:4]}"
    for k, d in delta.items():
        if adapter == "lora":  # B·A·scaling, as before: equal to merged − base up to rounding
            assert torch.allclose(merged[k] - snap[k], d, atol=1e-6), k
        else:
            assert torch.equal(merged[k] - snap[k], d), k
    # θ + Δ gives the adapted model's logits; the base model is untouched
    adapted = _logits(peft_model, tok)
    with weight_steer(model, delta, 1.0):
        steered = _logits(model, tok)
    assert torch.allclose(steered, adapted, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(_logits(model, tok), adapted, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(params[k], v) for k, v in snap.items())


@pytest.mark.parametrize("model_name", MODELS)
def test_bidir_half_w_gives_the_trained_adapter_at_plus_and_minus_one(request, model_name):
    model, tok = request.getfixturevalue(model_name)
    snap = _snapshot(model)
    peft_model, losses = training.train_bidir(model, tok, POS, NEG, TINY)
    assert set(losses) == {"pos", "neg"} and len(losses["pos"]) == len(losses["neg"]) == TINY.steps
    delta = adapters.trained_delta(peft_model, model, "bidir")
    w = training.weight_diff(delta, {k: -v for k, v in delta.items()})
    assert all(torch.equal(w[k], 2 * delta[k]) for k in delta), "w = 2Δ"
    plus = _logits(peft_model, tok)
    with training.lora_sign(peft_model, -1.0):
        minus = _logits(peft_model, tok)
    assert torch.equal(_logits(peft_model, tok), plus), "lora_sign put the scalings back"
    assert not torch.allclose(plus, minus, atol=1e-4)
    with weight_steer(model, w, 0.5):
        assert torch.allclose(_logits(model, tok), plus, atol=1e-5, rtol=1e-4)
    with weight_steer(model, w, -0.5):
        assert torch.allclose(_logits(model, tok), minus, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(dict(model.named_parameters())[k], v) for k, v in snap.items())


def test_bidir_alternates_personas_on_the_same_batches(tiny_llama):
    """Step 2i is a positive batch at +Δ, step 2i+1 the same indices of the negative
    examples at −Δ: with identical examples the −Δ step sees the +Δ model flipped."""
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="aligned examples"):
        training.train_bidir(model, tok, POS, NEG[:3], TINY)
    with pytest.raises(ValueError, match="use train_bidir"):
        training.train_adapter(model, tok, POS, TINY, "bidir")
    one = adapters.TrainConfig(rank=4, alpha=8.0, steps=1, batch_size=4, bf16=False, warmup_steps=1)
    _, losses = training.train_bidir(model, tok, POS, NEG, one)
    lone, lone_losses = training.train_adapter(model, tok, POS, one)
    # the first (positive) step is exactly what a LoRA on the positive examples does first
    assert losses["pos"][0] == pytest.approx(lone_losses[0], abs=1e-6)
    assert losses["neg"][0] != pytest.approx(losses["pos"][0], abs=1e-6)


@pytest.mark.parametrize("adapter", PEFT)
def test_adapter_settings_are_json_for_the_metadata(tiny_llama, adapter):
    import json

    model, tok = tiny_llama
    cfg = adapters.TrainConfig(rank=4, alpha=8.0, steps=1, batch_size=2, bf16=False, warmup_steps=1)
    pm = (
        training.train_bidir(model, tok, POS, NEG, cfg)[0]
        if adapter == "bidir"
        else training.train_adapter(model, tok, POS, cfg, adapter)[0]
    )
    s = adapters.adapter_settings(pm, adapter)
    assert json.loads(json.dumps(s)) == s
    assert s["type"] == adapter and s["peft_config"]["peft_type"] in ("LORA", "IA3", "OFT", "BOFT", "DELORA")
    assert s["peft_config"].get("use_dora", False) is (adapter == "dora")


def test_the_settings_name_the_base_model_not_a_folder_of_the_training_machine(tiny_llama, tmp_path):
    """peft records the folder the base model was loaded from; the diff's metadata names the
    model instead when that folder is an absolute path (a shared diff carries no machine path)."""
    from peft import get_peft_model

    model, _ = tiny_llama
    work = copy.deepcopy(model)
    work.config._name_or_path = str(tmp_path / "models" / "tiny")
    work.name_or_path = work.config._name_or_path
    pm = get_peft_model(work, adapters.peft_config(work, adapters.TrainConfig(rank=4), "lora"))
    assert pm.peft_config["default"].base_model_name_or_path == str(tmp_path / "models" / "tiny")  # what peft records
    named = adapters.adapter_settings(pm, "lora")["peft_config"]["base_model_name_or_path"]
    assert named == getattr(model, "ws_name", "tiny") and str(tmp_path) not in json.dumps(adapters.adapter_settings(pm, "lora"))


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_training_is_seeded(tiny_llama, adapter):
    """The same seed gives the same delta, bit for bit (the cross-adapter rerun relies on it)."""
    model, tok = tiny_llama
    cfg = adapters.TrainConfig(rank=4, alpha=8.0, steps=2, batch_size=2, bf16=False, warmup_steps=1)

    def delta():
        if adapter == "bidir":
            return adapters.trained_delta(training.train_bidir(model, tok, POS, NEG, cfg)[0], model, adapter)
        moments = training.training_moments(model, tok, POS, cfg, adapter)
        pm = training.train_adapter(model, tok, POS, cfg, adapter, moments=moments)[0]
        return adapters.trained_delta(pm, model, adapter)

    a, b = delta(), delta()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_registration_reaches_the_config_the_table_and_the_training(tiny_llama):
    """A new adapter type is one register_adapter call: the config accepts it, the README's
    adapter table lists it, and the pipeline builds and measures it through its registration."""
    from ws import config

    model, tok = tiny_llama
    kind = adapters.AdapterType(
        "lora_r2",
        "LoRA of rank 2, one per persona (a test registration)",
        lambda c, ls: adapters._lora(replace(c, rank=2), ls, init_lora_weights=True),
        lambda pm, base: adapters.lora_delta(pm),
        unit_alpha=1.0,
    )
    adapters.register_adapter(kind)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            adapters.register_adapter(kind)
        assert "`lora_r2`" in adapters.adapter_table()
        assert config.from_env({"WS_ADAPTER": "lora_r2", "WS_ADAPTERS": "lora,lora_r2"}).adapter == "lora_r2"
        pm, _ = training.train_adapter(model, tok, POS[:4], replace(TINY, steps=1), "lora_r2")
        delta = adapters.trained_delta(pm, model, "lora_r2")
        assert delta and all(torch.linalg.matrix_rank(d.double(), rtol=1e-4) <= 2 for d in delta.values())
    finally:
        del adapters.ADAPTER_TYPES["lora_r2"]
