"""Devices and dtypes: the device code paths on the CPU (CI has no GPU), bf16 against float32,
and a model dispatched with part of its layers offloaded to disk."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from ws.captures import capture
from ws.config import from_env
from ws.core.device import input_device, module_weight, real_parameters, resolve_device, resolve_dtype
from ws.model.load import load_model
from ws.model.steer import weight_steer
from ws.v7 import sweep


def _w(model, scale: float, layers=(1, 2), seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = dict(model.named_parameters())
    return {
        k: torch.randn(p[k].shape, generator=g) * scale
        for k in p
        if k.startswith(tuple(f"model.layers.{i}." for i in layers)) and k.endswith("proj.weight")
    }


def test_resolution_known_answers():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="choose one of"):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_weight_steer_restores_bit_exactly_in_every_dtype(dtype):
    model, tok = load_model("tiny-llama", device="cpu", dtype=dtype)
    assert next(model.parameters()).dtype == getattr(torch, dtype) and input_device(model).type == "cpu"
    before = {k: v.clone() for k, v in model.named_parameters()}
    batch = tok(["Is snow cold?"], return_tensors="pt").to(input_device(model))
    with torch.no_grad():
        base = model(**batch).logits
        with weight_steer(model, _w(model, 0.3), 1.5):
            steered = model(**batch).logits
        after = model(**batch).logits
    assert not torch.equal(base, steered) and torch.equal(base, after)
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k]), k


def test_bf16_and_float32_give_the_same_tables_within_the_stated_tolerance():
    """The tolerance docs/gpu.md states: bf16 weights vs float32 on the tiny Llama (label from a
    diff of per-tensor scale 0.2): R_w within 5 %, Kendall τ of the joint-score ranking ≥ 0.85,
    at least 8 of the top 10 A-hypotheses shared."""
    cfg = replace(from_env({"WS_SMOKE": "1"}), cache=False, n_boot=50)
    out = {}
    for dt in ("float32", "bfloat16"):
        model, tok = load_model("tiny-llama", dtype=dt)
        out[dt] = sweep.run_seed(cfg, model, tok, sweep.probe_prompts(cfg, tok), 0, _w(model, 0.2), {}).summary
    j = out["float32"].join(out["bfloat16"], on="subspace", suffix="_bf16")
    x, y = j["mean_conc_w_combined"].to_numpy(), j["mean_conc_w_combined_bf16"].to_numpy()
    m = np.isfinite(x) & np.isfinite(y)
    assert np.max(np.abs(x[m] - y[m]) / np.abs(x[m])) <= 0.05
    x, y = j["joint_score"].to_numpy(), j["joint_score_bf16"].to_numpy()
    m = np.isfinite(x) & np.isfinite(y)
    assert kendalltau(x[m], y[m]).statistic >= 0.85
    a = j.filter(j["kind"] == "A-hypothesis")
    top = lambda c: set(a.sort(c, descending=True, nulls_last=True)["subspace"].head(10).to_list())  # noqa: E731
    assert len(top("joint_score") & top("joint_score_bf16")) >= 8


def _dispatched(tmp_path):
    """The tiny Llama with layers 1 and 3 offloaded to disk (no second device here)."""
    from accelerate import dispatch_model

    model, tok = load_model("tiny-llama")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "cpu",
        "model.layers.3": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    dispatched = dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path / "offload"))
    return dispatched, tok


def test_hooks_steering_and_captures_work_on_a_dispatched_model(tmp_path):
    plain, tok = load_model("tiny-llama")
    model, _ = _dispatched(tmp_path)
    assert model.model.layers[1].mlp.down_proj.weight.device.type == "meta", "layer 1 is offloaded"
    assert torch.equal(module_weight(model.model.layers[1].mlp.down_proj), plain.model.layers[1].mlp.down_proj.weight)
    assert all(torch.equal(v, dict(plain.named_parameters())[k]) for k, v in real_parameters(model).items())
    prompts = ["I think the moon is cheese. Do you agree?", "Is water wet?"]
    # block outputs through the TraceDict hooks
    assert torch.allclose(capture.block_outputs(model, tok, prompts, 2), capture.block_outputs(plain, tok, prompts, 2), atol=1e-5)
    # the label: steering both the in-memory (layer 2) and the offloaded (layer 1) writers
    w = _w(plain, 0.1, layers=(1, 2))
    n_hooks = sum(len(m._forward_hooks) for m in model.modules())
    lab_d = capture.label(model, tok, prompts, w, 2)
    lab_p = capture.label(plain, tok, prompts, w, 2)
    assert lab_p.abs().max() > 1e-3
    assert torch.allclose(lab_d, lab_p, atol=1e-4, rtol=1e-4)
    # after steering the dispatched model is exactly as before
    assert torch.equal(capture.block_outputs(model, tok, prompts, 2), capture.block_outputs(model, tok, prompts, 2))
    assert sum(len(m._forward_hooks) for m in model.modules()) == n_hooks, "a steering hook was left behind"
    assert torch.allclose(capture.block_outputs(model, tok, prompts, 2), capture.block_outputs(plain, tok, prompts, 2), atol=1e-5)


def test_bf16_is_used_only_where_the_device_has_bf16_units():
    from pathlib import Path

    from ws.core.device import bf16_available, use_bf16

    cpu = torch.device("cpu")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if flags:  # the CPU's own flags decide: avx512_bf16 or AMX
        assert bf16_available(cpu) == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert use_bf16(True, cpu) == bf16_available(cpu) and use_bf16(False, cpu) is False
    assert bf16_available(torch.device("meta")) is False
