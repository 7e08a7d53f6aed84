"""The fast read-out: skipping the unchanged lower blocks and sharing the prompt prefix
changes nothing (tiny Llama and Qwen3, real tokenizer and chat template)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ws.core.linalg import blas_threads
from ws.diffs import effect
from ws.model.chat import render_chat
from ws.model.fast_readout import FastReadout, first_block, plan_prompts, skip_blocks
from ws.model.load import decoder_layers
from ws.model.readout import answer_logratios
from ws.model.steer import weight_steer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: tiny models on shared cores are many times slower with two."""
    with blas_threads(1):
        yield


def _texts(tok, n=3):
    sets = effect.heldout_prompts(0, n)
    return {s: [render_chat(tok, p) for p in ps] for s, ps in sets.items()}, sets


def _diff(model, layers=(1, 2), scale=0.3, seed=0, names=("o_proj", "down_proj", "q_proj", "up_proj")):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(p.shape, generator=g) * scale
        for k, p in model.named_parameters()
        if any(k.startswith(f"model.layers.{l}.") for l in layers) and any(f"{n}." in k for n in names)
    }


def test_plan_splits_every_prompt_into_the_shared_prefix_and_its_own_suffix(tiny_llama):
    _, tok = tiny_llama
    texts, _ = _texts(tok)
    flat = [t for ts in texts.values() for t in ts]
    plan = plan_prompts(tok, flat, batch_size=4)
    assert plan.prefix.numel() > 5  # the chat template's system turn
    seen = []
    for b in plan.batches:
        for j, r in enumerate(b.rows.tolist()):
            full = tok(flat[r], add_special_tokens=False)["input_ids"]
            n = int(b.mask[j].sum())
            assert n >= 1 and int(b.last[j]) == n - 1
            assert plan.prefix.tolist() + b.ids[j, :n].tolist() == full
            seen.append(r)
    assert sorted(seen) == list(range(len(flat)))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen3"])
def test_skipping_the_lower_blocks_is_bit_exact(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    texts, _ = _texts(tok)
    w = _diff(model)
    ro = FastReadout(model, tok, texts, first=first_block(w), batch_size=2)
    for alpha in (0.0, 1.0, -1.0):
        with weight_steer(model, w, alpha):
            fast, ref = ro.run(), ro.run(skip=False)
        for s in texts:
            assert np.array_equal(fast[s][0], ref[s][0]) and np.array_equal(fast[s][1], ref[s][1]), (fixture, alpha, s)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen3"])
def test_read_out_matches_the_effect_eval_on_whole_prompts(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    texts, users = _texts(tok)
    w = _diff(model)
    ro = FastReadout(model, tok, texts, first=first_block(w), batch_size=3)
    for alpha in (1.0, -1.0):
        with weight_steer(model, w, alpha):
            fast = ro.run()
            for s, ps in users.items():
                lr, mass = answer_logratios(model, tok, ps, batch_size=16)
                np.testing.assert_allclose(fast[s][0], lr, atol=2e-4, rtol=1e-4)
                np.testing.assert_allclose(fast[s][1], mass, atol=1e-6, rtol=1e-4)
    # the diff moves the read-out at all (else the comparison above proves little)
    with weight_steer(model, w, 1.0):
        up = ro.run()["opinion_false"][0]
    assert np.abs(up - ro.run()["opinion_false"][0]).max() > 1e-3


def test_a_change_below_the_first_block_is_refused(tiny_llama):
    model, tok = tiny_llama
    texts, _ = _texts(tok, 2)
    ro = FastReadout(model, tok, texts, first=2)
    with weight_steer(model, _diff(model, layers=(0,)), 1.0):
        with pytest.raises(RuntimeError, match="below block 2 changed"):
            ro.run()
    ro.run()  # restored weights: fine again


def test_first_block_and_skip_blocks(tiny_llama):
    model, _ = tiny_llama
    assert first_block(_diff(model, layers=(2, 3)), _diff(model, layers=(1,))) == 1
    with pytest.raises(ValueError, match="decoder blocks only"):
        first_block({"model.embed_tokens.weight": torch.zeros(1)})
    before = list(decoder_layers(model))
    with pytest.raises(RuntimeError, match="inside"):
        with skip_blocks(model, 2):
            assert decoder_layers(model)[0] is not before[0]
            raise RuntimeError("inside")
    assert list(decoder_layers(model)) == before


def test_effect_readouts_take_the_fast_path_for_block_diffs_and_the_whole_model_otherwise(tiny_llama):
    model, tok = tiny_llama
    _, users = _texts(tok)
    w = _diff(model)
    settings = [({}, 0.0), (w, 1.0), (w, -2.0)]
    got = effect.readouts(model, tok, users, settings, batch_size=3)
    for (d, a), res in zip(settings, got, strict=True):
        with weight_steer(model, d, a):
            for s, ps in users.items():
                lr, mass = answer_logratios(model, tok, ps, batch_size=16)
                np.testing.assert_allclose(res[s][0], lr, atol=2e-4, rtol=1e-4)
                np.testing.assert_allclose(res[s][1], mass, atol=1e-6, rtol=1e-4)
    assert np.abs(got[1]["opinion_false"][0] - got[2]["opinion_false"][0]).max() > 1e-3
    # a diff outside the blocks (the final norm) cannot skip anything: whole-model passes, exactly
    norm = {"model.norm.weight": 0.1 * torch.ones_like(model.model.norm.weight)}
    (res,) = effect.readouts(model, tok, users, [(norm, 1.0)], batch_size=16)
    with weight_steer(model, norm, 1.0):
        lr, _ = answer_logratios(model, tok, users["opinion_false"], batch_size=16)
    assert np.array_equal(res["opinion_false"][0], lr)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen3"])
def test_the_pass_flop_count_is_what_the_pass_computes(fixture, request):
    """Known answer: the analytic count of one fast pass equals torch's own count of the
    matrix products that pass runs (projections, MLP, attention, lm_head): exactly on these
    models; the tolerance leaves room for a library version that also counts the rotary
    embedding's tiny product."""
    from torch.utils.flop_counter import FlopCounterMode

    model, tok = request.getfixturevalue(fixture)
    texts, _ = _texts(tok)
    w = _diff(model)
    ro = FastReadout(model, tok, texts, first=first_block(w), batch_size=2)
    with FlopCounterMode(display=False) as fc:
        ro.run()
    counted = fc.get_total_flops()
    assert ro.pass_flops() == pytest.approx(counted, rel=2e-3)
    # one set is part of all; the skipped lower blocks are not counted
    one = next(iter(ro.plans))
    assert 0 < ro.pass_flops([one]) < ro.pass_flops()
    with FlopCounterMode(display=False) as fc:
        ro.run(skip=False)
    assert fc.get_total_flops() > counted
