"""weight_steer: θ + α·w inside the block, θ restored bit-exactly after it (also on errors)."""

from __future__ import annotations

import pytest
import torch

from ws.model.load import load_model
from ws.model.steer import check_w_fits, steered_while_running, weight_steer


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def _assert_same(model, snap) -> None:
    now = dict(model.named_parameters())
    assert set(now) == set(snap)
    for k, v in snap.items():
        assert torch.equal(now[k].detach(), v), f"{k} was not restored bit-exactly"


def _random_w(model, seed=0, scale=0.37) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    keys = [k for k, _ in model.named_parameters() if "layers.1." in k or "layers.2." in k]
    params = dict(model.named_parameters())
    return {k: torch.randn(params[k].shape, generator=g) * scale for k in keys}


def _batch(tok):
    return tok(["I think the Moon is made of cheese.", "Hello"], return_tensors="pt", padding=True)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen3"])
def test_round_trip_bit_exact(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    w = _random_w(model)
    snap = _snapshot(model)
    batch = _batch(tok)
    with torch.no_grad():
        base = model(**batch).logits
        with weight_steer(model, w, alpha=1.3, in_place=True):
            params = dict(model.named_parameters())
            k = next(iter(w))
            assert torch.allclose(params[k], snap[k] + 1.3 * w[k])
            steered = model(**batch).logits
        after = model(**batch).logits
    assert not torch.allclose(base, steered)
    _assert_same(model, snap)
    assert torch.equal(base, after)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
def test_steering_while_each_module_runs_is_bit_identical_to_in_place(name, dtype):
    """The default swaps ``θ + α·Δ`` in only while the module runs: the parameters read outside
    a forward are the originals, and the logits equal the in-place path's bit for bit."""
    model, tok = load_model(name, dtype=dtype)
    w = _random_w(model, seed=5)
    snap = _snapshot(model)
    batch = _batch(tok)
    with torch.no_grad():
        base = model(**batch).logits
        with weight_steer(model, w, alpha=-0.7, in_place=True):
            held = model(**batch).logits
        with weight_steer(model, w, alpha=-0.7):
            _assert_same(model, snap)  # nothing steered outside a forward
            streamed = model(**batch).logits
            again = model(**batch).logits
        after = model(**batch).logits
    assert not torch.equal(base, held)
    assert torch.equal(held, streamed) and torch.equal(streamed, again)
    assert torch.equal(base, after)


def test_nested_steering_while_running_equals_nested_in_place(tiny_llama):
    model, tok = tiny_llama
    w1, w2 = _random_w(model, seed=6), _random_w(model, seed=7)
    snap = _snapshot(model)
    batch = _batch(tok)
    with torch.no_grad():
        with weight_steer(model, w1, 0.9, in_place=True), weight_steer(model, w2, -0.4, in_place=True):
            held = model(**batch).logits
        with weight_steer(model, w1, 0.9), weight_steer(model, w2, -0.4):
            streamed = model(**batch).logits
        with weight_steer(model, w1, 0.9, in_place=True), weight_steer(model, w2, -0.4):
            mixed = model(**batch).logits
    assert torch.equal(held, streamed) and torch.equal(held, mixed)
    _assert_same(model, snap)


def test_restored_when_a_steered_forward_raises(tiny_llama):
    """A module that raises mid-forward leaves its steered tensor in place until the block
    ends; the block's exit puts every original back."""
    model, tok = tiny_llama
    w = _random_w(model, seed=8)
    snap = _snapshot(model)
    key = next(iter(w))
    module = model.get_submodule(key.rpartition(".")[0])

    def boom(mod, args, output):
        raise RuntimeError("boom")

    h = module.register_forward_hook(boom)  # registered first: runs before the restoring hook
    try:
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), weight_steer(model, w, 1.0):
            model(**_batch(tok))
    finally:
        h.remove()
    _assert_same(model, snap)


def test_a_shared_parameter_is_steered_in_place():
    """Tied embeddings: the one tensor is held by the embedding and the lm_head; steering it
    while one module runs would miss the other, so it is steered in place for the block."""
    model, tok = load_model("tiny-llama")
    model.lm_head.weight = model.model.embed_tokens.weight
    snap = _snapshot(model)
    key = "model.embed_tokens.weight"
    w = {key: torch.randn(snap[key].shape, generator=torch.Generator().manual_seed(9)) * 0.2}
    batch = _batch(tok)
    with torch.no_grad():
        with weight_steer(model, w, 1.0, in_place=True):
            held = model(**batch).logits
        with weight_steer(model, w, 1.0):
            assert torch.equal(model.lm_head.weight, snap[key] + w[key])
            streamed = model(**batch).logits
        base = model(**batch).logits
    assert torch.equal(held, streamed) and not torch.equal(base, held)
    _assert_same(model, snap)


def test_restored_when_body_raises(tiny_llama):
    model, _ = tiny_llama
    w = _random_w(model, seed=1)
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with weight_steer(model, w, alpha=-2.0):
            raise RuntimeError("boom")
    _assert_same(model, snap)


def test_repeated_and_nested_round_trips(tiny_llama):
    model, _ = tiny_llama
    w1, w2 = _random_w(model, seed=2), _random_w(model, seed=3)
    snap = _snapshot(model)
    for a in (-2.0, -1.0, 0.5, 1.0, 2.0):
        with weight_steer(model, w1, a):
            with weight_steer(model, w2, -a):
                pass
    _assert_same(model, snap)


def test_alpha_zero_is_a_no_op(tiny_llama):
    model, tok = tiny_llama
    w = _random_w(model, seed=4)
    snap = _snapshot(model)
    with weight_steer(model, w, alpha=0.0):
        _assert_same(model, snap)
    _assert_same(model, snap)


def test_mismatched_w_refused_with_key_named(tiny_llama):
    model, _ = tiny_llama
    snap = _snapshot(model)
    bad = {
        "model.layers.1.self_attn.o_proj.weight": torch.zeros(3, 3),
        "model.layers.99.mlp.down_proj.weight": torch.zeros(64, 128),
    }
    with pytest.raises(ValueError) as e:
        with weight_steer(model, bad, alpha=1.0):
            pass
    msg = str(e.value)
    assert "model.layers.1.self_attn.o_proj.weight" in msg and "(3, 3)" in msg
    assert "model.layers.99.mlp.down_proj.weight" in msg
    _assert_same(model, snap)  # nothing was touched before the check
    with pytest.raises(ValueError):
        check_w_fits(model, bad)


def test_the_parameters_steered_while_running_are_named_until_the_block_ends(tiny_llama):
    """Outside a call a streamed parameter holds its original tensor, so guards that read the
    weights ask which parameters an open block steers; nested blocks count, in-place ones are
    visible in the weights themselves."""
    model, _ = tiny_llama
    w = _random_w(model, seed=10)
    assert steered_while_running(model) == []
    with weight_steer(model, w, 1.0):
        assert set(steered_while_running(model)) == set(w)
        with weight_steer(model, {k: w[k] for k in list(w)[:2]}, -1.0):
            assert set(steered_while_running(model)) == set(w)
        assert set(steered_while_running(model)) == set(w)
        with weight_steer(model, w, 1.0, in_place=True):
            assert set(steered_while_running(model)) == set(w)
    assert steered_while_running(model) == []
    with pytest.raises(RuntimeError, match="boom"), weight_steer(model, w, 1.0):
        raise RuntimeError("boom")
    assert steered_while_running(model) == []
