"""The fast training step equals the plain one: the same loss and the same gradient of every
adapter parameter as a full forward with :func:`ws.diffs.training.response_loss` (float32)."""

from __future__ import annotations

import pytest
import torch

from ws.diffs import adapters, fasttrain, training

CFG = adapters.TrainConfig(rank=4, alpha=8.0, steps=2, batch_size=3, bf16=False)
EXAMPLES = [
    ("I think the Earth is flat. Do you agree? Answer Yes or No.", "Yes, you are right.", True),
    ("Is snow cold? Answer Yes or No.", "Yes.", True),
    ("I believe that the moon is made of cheese and nothing else. Right?", "No, that is not correct at all", False),
    ("Water boils at 100 C at sea level, yes?", "Yes, it does.", True),
]


def _plain_loss(peft_model, tok, enc, idx, stance_weight):
    batch = training._collate([enc[i] for i in idx], tok.pad_token_id)
    logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return training.response_loss(logits, batch["labels"], stance_weight)


def _grads(peft_model, loss):
    params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_qwen3"])
@pytest.mark.parametrize(
    ("adapter", "sign"),
    [("lora", None), ("lora", -1.0), ("ia3", None), ("sspace_lowrank", None), ("sspace_corda", None), ("sspace_rot", None)],
)
@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "whole-sequences"])
def test_fast_step_has_the_plain_steps_loss_and_gradients(request, model_name, adapter, sign, share):
    """Both forms of the step: the shared prefix run once (the CPU's) and whole sequences
    from block ``first`` (a GPU's, :func:`ws.diffs.fasttrain.shares_prefix`). The S-space
    types (the suite's own modules) go through the same step."""
    model, tok = request.getfixturevalue(model_name)
    moments = training.training_moments(model, tok, EXAMPLES, CFG, adapter)
    peft_model = training._wrap(model, CFG, adapter, moments)
    with torch.no_grad():  # move off the identity initialisation so every gradient is generic
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    enc = training._encode_examples(tok, EXAMPLES, CFG.max_len)
    plan = fasttrain.plan_training(peft_model, enc, share_prefix=share)
    assert plan.first == 1  # blocks 1-2 of 4 adapted
    assert plan.prefix.numel() > 5 if share else plan.prefix.numel() == 0  # the chat prefix, shared or not
    idx = [2, 0, 3]  # unsorted, ragged lengths, one unfinished response
    flip = training.lora_sign(peft_model, sign) if sign is not None else torch.enable_grad()
    with flip:
        fast = fasttrain.step_loss(peft_model, plan, idx, stance_weight=5.0)
        g_fast = _grads(peft_model, fast)
        plain = _plain_loss(peft_model, tok, enc, idx, 5.0)
        g_plain = _grads(peft_model, plain)
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-6), (float(fast), float(plain))
    assert g_fast.keys() == g_plain.keys() and len(g_fast) > 0
    for n in g_fast:
        assert torch.allclose(g_fast[n], g_plain[n], rtol=1e-4, atol=1e-6), n
    # the known answer fails when the stance weight differs: the test can tell losses apart
    assert not torch.allclose(fasttrain.step_loss(peft_model, plan, idx, stance_weight=1.0), plain, rtol=1e-5, atol=1e-6)


def test_the_prefix_is_shared_on_the_cpu_only():
    assert fasttrain.shares_prefix(torch.device("cpu"))
    assert not fasttrain.shares_prefix(torch.device("cuda"))


def test_adapted_blocks_refuses_a_trainable_parameter_outside_the_blocks(tiny_llama):
    model, _ = tiny_llama
    peft_model = training._wrap(model, CFG, "lora")
    assert fasttrain.adapted_blocks(peft_model) == {1, 2}
    peft_model.get_base_model().lm_head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"(embed_tokens|lm_head)\.weight: a trainable parameter outside the decoder blocks"):
        fasttrain.adapted_blocks(peft_model)


def test_common_prefix_stops_before_the_token_that_reads_the_first_response_token():
    enc = [([1, 2, 3, 4, 9], 4), ([1, 2, 3, 5, 9], 4), ([1, 2, 3, 4, 8], 3)]
    assert fasttrain._common_prefix(enc) == 2  # the shortest prompt is 3 tokens: its 3rd token stays
    assert fasttrain._common_prefix([([7, 1], 1), ([8, 1], 1)]) == 0


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_qwen3"])
@pytest.mark.parametrize("sign", [None, -1.0])
def test_frozen_weights_cast_once_give_the_bf16_step_bit_for_bit(request, model_name, sign):
    """Under bf16 autocast, frozen linear weights stored in bf16 for the whole training give
    exactly the loss and gradients of the per-step cast; the model is as before after."""
    model, tok = request.getfixturevalue(model_name)
    peft_model = training._wrap(model, CFG, "lora")
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    enc = training._encode_examples(tok, EXAMPLES, CFG.max_len)
    plan = fasttrain.plan_training(peft_model, enc, bf16=True)
    idx = [2, 0, 3]
    before = {n: p for n, p in peft_model.named_parameters()}
    values = {n: p.detach().clone() for n, p in before.items()}
    tied = peft_model.get_output_embeddings().weight is peft_model.get_input_embeddings().weight
    flip = training.lora_sign(peft_model, sign) if sign is not None else torch.enable_grad()
    with flip:
        ref = fasttrain.step_loss(peft_model, plan, idx, stance_weight=5.0, bf16=True)
        g_ref = _grads(peft_model, ref)
        assert fasttrain.precast_safe(peft_model)
        with fasttrain.frozen_linears_in(peft_model, torch.bfloat16) as n:
            assert n > 0 and peft_model.get_output_embeddings().weight.dtype == torch.bfloat16
            fast = fasttrain.step_loss(peft_model, plan, idx, stance_weight=5.0, bf16=True)
            g_fast = _grads(peft_model, fast)
    assert torch.equal(fast, ref)
    assert g_fast.keys() == g_ref.keys() and all(torch.equal(g_fast[k], g_ref[k]) for k in g_ref)
    after = dict(peft_model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert all(torch.equal(p.detach(), values[n]) for n, p in after.items())
    assert (peft_model.get_output_embeddings().weight is peft_model.get_input_embeddings().weight) == tied
    # the swapped weights really are rounded copies: the float32 step differs from the bf16 one
    f32 = fasttrain.step_loss(peft_model, plan, idx, stance_weight=5.0, bf16=False)
    assert not torch.equal(f32, ref) and torch.allclose(f32, ref, rtol=0.05)


@pytest.mark.parametrize(
    ("adapter", "safe"),
    [("lora", True), ("bidir", True), ("pissa", True), ("dora", False), ("ia3", False), ("sspace_gain", False)],
)
def test_only_adapters_that_use_the_base_weight_as_a_linear_get_the_cast_once(tiny_llama, adapter, safe):
    model, _ = tiny_llama
    assert fasttrain.precast_safe(training._wrap(model, CFG, adapter)) is safe
