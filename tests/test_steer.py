"""weight_steer: θ + α·w inside the block, θ restored bit-exactly after it (also on errors)."""

from __future__ import annotations

import pytest
import torch

from ws.model.steer import check_w_fits, weight_steer


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
        with weight_steer(model, w, alpha=1.3):
            params = dict(model.named_parameters())
            k = next(iter(w))
            assert torch.allclose(params[k], snap[k] + 1.3 * w[k])
            steered = model(**batch).logits
        after = model(**batch).logits
    assert not torch.allclose(base, steered)
    _assert_same(model, snap)
    assert torch.equal(base, after)


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
