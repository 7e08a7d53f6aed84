"""TraceDict hooks and the last-token gather, on real models (tiny and embedded)."""

from __future__ import annotations

import pytest
import torch

from ws.model.load import layer_name, n_layers
from ws.model.trace import StopForward, Trace, TraceDict, gather_last_token, get_module, has_hooks, last_token_index, untuple

PROMPTS = [
    "What is the capital of France?",
    "Name a prime number.",
    "I think the moon is made of cheese. Do you agree? Answer Yes or No.",
]


def _batch(tok, side: str):
    old = tok.padding_side
    tok.padding_side = side
    try:
        return tok(PROMPTS, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old


def _check_hooks_match_hidden_states(model, tok, side: str) -> None:
    batch = _batch(tok, side)
    names = [layer_name(i) for i in range(n_layers(model))]
    with torch.no_grad(), TraceDict(model, names) as td:
        out = model(**batch, output_hidden_states=True)
    mask = batch["attention_mask"]
    # The padding really is on the requested side: the rows are not all the same length.
    assert (mask.sum(1) != mask.shape[1]).any()
    if side == "left":
        assert (mask[:, -1] == 1).all()
    else:
        assert (mask[:, 0] == 1).all()
    L = len(names)
    for i, name in enumerate(names):
        hooked = gather_last_token(td[name].output, mask)
        ref = gather_last_token(out.hidden_states[i + 1], mask)
        diff = (hooked - ref).abs().max().item()
        if i < L - 1:
            assert diff <= 1e-5, f"layer {i} ({side} padding): max abs diff {diff}"
        else:
            # hidden_states[-1] is the final RMSNorm applied to the last block's output,
            # so the raw block output differs; with the norm applied they agree.
            normed = model.model.norm(td[name].output)
            assert (gather_last_token(normed, mask) - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("side", ["left", "right"])
def test_block_outputs_equal_hidden_states_tiny(tiny_llama, side):
    _check_hooks_match_hidden_states(*tiny_llama, side)


@pytest.mark.parametrize("side", ["left", "right"])
def test_block_outputs_equal_hidden_states_qwen3(tiny_qwen3, side):
    _check_hooks_match_hidden_states(*tiny_qwen3, side)


@pytest.mark.embedded
@pytest.mark.parametrize("side", ["left", "right"])
def test_block_outputs_equal_hidden_states_embedded(smollm2, side):
    _check_hooks_match_hidden_states(*smollm2, side)


def test_last_token_index_both_sides():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[0, 0]]))


def test_hooks_removed_on_exit_and_on_exception(tiny_llama):
    model, tok = tiny_llama
    batch = tok(PROMPTS[:1], return_tensors="pt")
    names = [layer_name(0), "model.layers.1.mlp.up_proj"]
    assert not has_hooks(model)
    with TraceDict(model, names, retain_input=True) as td:
        model(**batch)
        assert has_hooks(model)
    assert not has_hooks(model)
    assert td["model.layers.1.mlp.up_proj"].input.shape[-1] == model.config.hidden_size
    with pytest.raises(RuntimeError, match="boom"):
        with TraceDict(model, names):
            model(**batch)
            raise RuntimeError("boom")
    assert not has_hooks(model)


def test_a_streaming_reader_sees_each_input_as_its_module_runs_and_keeps_nothing(tiny_llama):
    """``read_input`` gets exactly what ``retain_input`` keeps, per layer, in the forward order,
    each while its own module runs (before the next module's), and the trace keeps nothing."""
    model, tok = tiny_llama
    batch = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    names = [f"model.layers.{l}.mlp.down_proj" for l in range(model.config.num_hidden_layers)]
    seen, order = {}, []
    with TraceDict(model, names, retain_input=True) as kept:
        model(**batch)
    with TraceDict(model, names + [layer_name(1)], retain_output=False, edit_output=lambda o, n: order.append(n) or o):
        with TraceDict(
            model, names, retain_output=False, read_input=lambda x, n: seen.update({n: x.clone()}) or order.append(n)
        ) as td:
            model(**batch)
    assert list(seen) == names and all(torch.equal(seen[n], kept[n].input) for n in names)
    assert all(t.input is None and t.output is None for t in td.values())
    assert order.index(names[0]) < order.index(layer_name(1)) < order.index(names[-1])  # read during the pass


def test_hooks_only_inside_with_block(tiny_llama):
    """Made without ``with``, a Trace or TraceDict hooks nothing; inside the block every
    module carries one hook; after it, also after an exception, none."""
    model, tok = tiny_llama
    names = ["model.layers.0.mlp", "model.layers.1.mlp.up_proj"]  # modules the library never hooks
    modules = [get_module(model, n) for n in names]
    assert all(len(m._forward_hooks) == 0 for m in modules)
    td = TraceDict(model, names, retain_input=True)
    tr = Trace(model, names[0])
    assert all(len(m._forward_hooks) == 0 for m in modules)
    model(**tok(PROMPTS[:1], return_tensors="pt"))
    assert td[names[1]].input is None and tr.output is None  # nothing recorded either
    for ctx in (td, tr):
        with pytest.raises(RuntimeError, match="boom"):
            with ctx:
                assert len(modules[0]._forward_hooks) == 1
                raise RuntimeError("boom")
        assert all(len(m._forward_hooks) == 0 for m in modules)
    with td:
        assert [len(m._forward_hooks) for m in modules] == [1, 1]
        model(**tok(PROMPTS[:1], return_tensors="pt"))
    assert all(len(m._forward_hooks) == 0 for m in modules)
    assert td[names[1]].input is not None


def test_unknown_layer_raises_before_forward(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(KeyError, match="model.layers.99"):
        TraceDict(model, [layer_name(0), "model.layers.99"])
    assert not has_hooks(model)  # the valid name got no hook either


def test_edit_output_changes_logits(tiny_llama):
    model, tok = tiny_llama
    batch = tok(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad():
        base = model(**batch).logits

        def add_noise(output, layer):
            assert layer == layer_name(1)
            return output + 1.0

        with TraceDict(model, [layer_name(1)], edit_output=add_noise) as td:
            edited = model(**batch).logits
        same = model(**batch).logits
    assert not torch.allclose(base, edited)
    assert torch.equal(base, same)  # the edit did not outlive the context
    assert td[layer_name(1)].output is not None


def test_stop_ends_forward_pass(tiny_llama):
    model, tok = tiny_llama
    batch = tok(PROMPTS[:1], return_tensors="pt")
    reached = []
    with Trace(model, layer_name(n_layers(model) - 1)) as late:
        with TraceDict(model, [layer_name(0), layer_name(1)], stop=True) as td:
            out = model(**batch)
            reached.append(out)  # never runs: the hook raised StopForward
    assert reached == []
    assert td[layer_name(1)].output is not None
    assert late.output is None  # later layers never ran
    assert not has_hooks(model)


def test_stop_forward_is_exception():
    assert issubclass(StopForward, Exception)


def test_untuple_takes_the_first_element_of_a_tuple_output():
    h, w = torch.ones(2, 3), torch.zeros(2, 1)
    assert untuple(h) is h
    assert untuple((h, w)) is h and untuple([h, w]) is h and untuple((h,)) is h
    assert untuple(((h, w), w)) == (h, w)  # one level only
    assert untuple(()) == () and untuple(None) is None


def test_untuple_on_real_module_outputs(tiny_qwen3):
    """A block, its attention and a linear layer: untuple gives the hidden states / the tensor."""
    model, tok = tiny_qwen3
    blk = model.model.layers[1]
    got = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, key=key: got.__setitem__(key, out))
        for key, m in (("block", blk), ("attn", blk.self_attn), ("o_proj", blk.self_attn.o_proj))
    ]
    try:
        with torch.no_grad():
            model(**_batch(tok, "left"))
    finally:
        for h in hooks:
            h.remove()
    assert isinstance(got["attn"], tuple)  # (output, weights): a tuple whatever the version
    assert untuple(got["attn"]) is got["attn"][0] and untuple(got["o_proj"]) is got["o_proj"]
    assert torch.equal(untuple(got["attn"]), got["o_proj"])  # the attention's output is o_proj's
    hidden = untuple(got["block"])
    assert isinstance(hidden, torch.Tensor) and hidden.shape[-1] == model.config.hidden_size
