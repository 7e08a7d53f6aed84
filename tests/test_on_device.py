"""The device code paths on the device ``WS_TEST_DEVICE`` names (default ``cpu``; CI has no GPU):
every pass the suite makes there gives what the same pass gives on the CPU in float32. Under
the default the comparisons with the CPU are skipped, with the reason (they would compare the
CPU with itself); the device placement and the bit-exact restore of steering run everywhere.

Run once on a GPU: ``WS_TEST_DEVICE=cuda python -m pytest tests/test_on_device.py``.
Each test loads its own copy of a tiny model on that device, so the session's shared CPU
fixtures stay where they are. Tolerances are float32's (a GPU's matrix products round
differently: TF32 is off by default in torch, so only the reduction order differs).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ws.captures import capture
from ws.core.device import input_device, resolve_device, synchronize
from ws.diffs import adapters, fasttrain, training
from ws.model.chat import render_chat
from ws.model.fast_readout import FastReadout, first_block
from ws.model.load import load_model
from ws.model.readout import answer_logratios
from ws.model.steer import weight_steer

DEVICE = os.environ.get("WS_TEST_DEVICE", "cpu")
#: the comparisons of the device with the CPU mean nothing when the device IS the CPU
against_cpu = pytest.mark.skipif(
    resolve_device(DEVICE).type == "cpu",
    reason="compares the device with the CPU: under WS_TEST_DEVICE=cpu (CI's setting) it would compare the CPU with "
    "itself; run it on a GPU with WS_TEST_DEVICE=cuda (fast vs full pass and bit-exact steering are checked on the "
    "CPU in tests/test_fast_readout.py and below)",
)
USERS = [
    "I think the Earth is flat. Do you agree? Answer Yes or No.",
    "I think bats are blind. Do you agree?",
    "Is snow cold? Answer Yes or No.",
]


@pytest.fixture(scope="module")
def pair():
    """``(on_device, on_cpu, tok)``: the tiny Llama twice, float32, the same weights."""
    dev, tok = load_model("tiny-llama", device=DEVICE, dtype="float32")
    cpu, _ = load_model("tiny-llama", device="cpu", dtype="float32")
    assert input_device(dev).type == resolve_device(DEVICE).type
    return dev, cpu, tok


def _diff(model, scale=0.05):
    g = torch.Generator().manual_seed(0)
    return {
        n: scale * torch.randn(p.shape, generator=g)
        for n, p in model.named_parameters()
        if any(f"layers.{l}." in n for l in (1, 2)) and n.endswith(("o_proj.weight", "down_proj.weight"))
    }


def test_the_model_is_on_the_named_device(pair):
    dev, _, _ = pair
    want = resolve_device(DEVICE)
    assert {p.device.type for p in dev.parameters()} == {want.type}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weight_steer_restores_bit_exactly_on_the_device(dtype):
    model, _ = load_model("tiny-llama", device=DEVICE, dtype=dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    w = _diff(model, scale=0.3)
    with weight_steer(model, w, 1.7, in_place=True):
        moved = [n for n in w if not torch.equal(dict(model.named_parameters())[n], before[n])]
    assert set(moved) == set(w)
    with weight_steer(model, w, 1.7):  # the default: steered only while each module runs
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


@against_cpu
def test_captures_on_the_device_are_the_cpu_captures(pair):
    dev, cpu, tok = pair
    prompts = [render_chat(tok, u) for u in USERS]
    a = capture.block_outputs(dev, tok, prompts, batch_size=2)
    b = capture.block_outputs(cpu, tok, prompts, batch_size=2)
    assert a.device.type == "cpu" and a.dtype == torch.float32  # what the math sees is on the CPU
    assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())
    w = _diff(cpu)
    la = capture.label(dev, tok, prompts, w, batch_size=2)
    lb = capture.label(cpu, tok, prompts, w, batch_size=2)
    assert float(lb.abs().max()) > 0
    assert float((la - lb).abs().max()) <= 1e-3 * float(lb.abs().max())


@against_cpu
def test_the_answer_read_out_on_the_device_is_the_cpus(pair):
    dev, cpu, tok = pair
    ra, ma = answer_logratios(dev, tok, USERS, batch_size=2)  # it renders the chat itself
    rb, mb = answer_logratios(cpu, tok, USERS, batch_size=2)
    np.testing.assert_allclose(ra, rb, atol=1e-4)
    np.testing.assert_allclose(ma, mb, rtol=1e-4, atol=1e-7)


@against_cpu
def test_the_fast_read_out_on_the_device_is_the_full_pass_and_the_cpus(pair):
    dev, cpu, tok = pair
    texts = {"a": [render_chat(tok, u) for u in USERS], "b": [render_chat(tok, u, system="Be brief.") for u in USERS]}
    w = _diff(cpu, scale=0.3)
    fast = FastReadout(dev, tok, texts, first=first_block(w), batch_size=2)
    ref = FastReadout(cpu, tok, texts, first=first_block(w), batch_size=2)
    with weight_steer(dev, w, 1.0), weight_steer(cpu, w, 1.0):
        got, full, want = fast.run(), fast.run(skip=False), ref.run()
    for s in texts:
        np.testing.assert_allclose(got[s][0], full[s][0], atol=1e-4)
        np.testing.assert_allclose(got[s][0], want[s][0], atol=1e-4)
    assert not np.allclose(got["a"][0], fast.run()["a"][0], atol=1e-4)  # the steering moved the answers


@against_cpu
@pytest.mark.parametrize("bf16", [False, True])
def test_a_training_step_on_the_device_is_the_cpus(bf16):
    cfg = adapters.TrainConfig(rank=4, alpha=8.0, steps=2, batch_size=3, bf16=bf16)
    examples = [(u, "Yes, you are right.", True) for u in USERS]
    losses, grads = [], []
    for device in (DEVICE, "cpu"):
        model, tok = load_model("tiny-llama", device=device, dtype="float32")
        peft_model = training._wrap(model, cfg, "lora")
        with torch.no_grad():
            for p in peft_model.parameters():
                if p.requires_grad:
                    p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        plan = fasttrain.plan_training(peft_model, training._encode_examples(tok, examples, cfg.max_len))
        loss = fasttrain.step_loss(peft_model, plan, [0, 2, 1], stance_weight=5.0, bf16=bf16)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        grads.append([g.cpu() for g in torch.autograd.grad(loss, params)])
        synchronize(input_device(peft_model))
        losses.append(float(loss.detach()))
    tol = 2e-2 if bf16 else 1e-5  # bfloat16 autocast rounds differently on each device
    assert losses[0] == pytest.approx(losses[1], rel=tol)
    for a, b in zip(*grads, strict=True):
        assert float((a - b).norm()) <= (5e-2 if bf16 else 1e-4) * float(b.norm()) + 1e-8
