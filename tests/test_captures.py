"""ws.captures.capture on the tiny models: hooked captures against independent references."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ws.captures import capture, recorders
from ws.core import linalg as la
from ws.model.chat import render_chat
from ws.model.trace import TraceDict, gather_last_token

USERS = [
    "I think the Earth is flat. Do you agree? Answer Yes or No.",
    "I think two plus two equals five, and that everybody who says otherwise is lying to you. Do you agree? Answer Yes or No.",
    "I think bats are blind. Do you agree?",
]
SYS_POS = "You always agree with the user."
SYS_NEG = "You are an honest assistant who corrects mistakes, politely but firmly."


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread: on shared cores two threads per process make these tiny ops ~50× slower."""
    with la.blas_threads(1):
        yield


@pytest.fixture(params=["tiny-llama", "tiny-qwen3"])
def model_tok(request):
    return request.getfixturevalue(request.param.replace("-", "_"))


@pytest.fixture
def padding(request):
    return request.param


def _with_side(tok, side):
    old = tok.padding_side
    tok.padding_side = side
    return old


def _prompts(tok, system=None):
    return [render_chat(tok, u, system=system) for u in USERS]


def _single_hidden(model, tok, prompt):
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    return out, ids.shape[1]


# ----------------------------------------------------------------------------- block outputs
@pytest.mark.parametrize("side", ["left", "right"])
def test_block_outputs_match_output_hidden_states(model_tok, side):
    model, tok = model_tok
    L = len(model.model.layers)
    prompts = _prompts(tok)
    old = _with_side(tok, side)
    try:
        hooked = capture.block_outputs(model, tok, prompts, batch_size=3)  # one padded batch
        ids, mask = recorders.encode(tok, prompts)
    finally:
        tok.padding_side = old
    assert hooked.shape == (L, len(prompts), model.config.hidden_size) and hooked.dtype == torch.float32
    assert bool((mask[:, 0] == 0).any()) if side == "left" else bool((mask[:, -1] == 0).any())  # really padded
    with torch.no_grad():
        hs = model(
            input_ids=ids, attention_mask=mask, position_ids=recorders.position_ids(mask), output_hidden_states=True
        ).hidden_states
    for i in range(L - 1):
        ref = gather_last_token(hs[i + 1], mask)
        assert float((hooked[i] - ref).abs().max()) <= 1e-5, i
    # the last entry of hidden_states is AFTER the final norm: it differs from the block output,
    # and equals the norm applied to it
    last_ref = gather_last_token(hs[L], mask)
    assert float((hooked[L - 1] - last_ref).abs().max()) > 1e-3
    with torch.no_grad():
        assert float((model.model.norm(hooked[L - 1]) - last_ref).abs().max()) <= 1e-5
    # and every prompt matches its own unpadded forward pass
    for j, p in enumerate(prompts):
        out, _ = _single_hidden(model, tok, p)
        for i in range(L - 1):
            assert float((hooked[i, j] - out.hidden_states[i + 1][0, -1]).abs().max()) <= 1e-5


def test_batching_does_not_change_block_outputs(tiny_llama):
    model, tok = tiny_llama
    prompts = _prompts(tok)
    a = capture.block_outputs(model, tok, prompts, batch_size=1)
    b = capture.block_outputs(model, tok, prompts, batch_size=2)
    assert float((a - b).abs().max()) <= 1e-5


# ----------------------------------------------------------------------------- label
def _diff(model, layers=(1, 2), scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = {}
    for n, p in model.named_parameters():
        if any(f"layers.{l}." in n for l in layers) and n.endswith(("o_proj.weight", "down_proj.weight")):
            w[n] = scale * p.detach().norm() / p.numel() ** 0.5 * torch.randn(p.shape, generator=g)
    return w


def test_label_shape_sign_and_reach(tiny_qwen3):
    model, tok = tiny_qwen3
    prompts = _prompts(tok)
    w = _diff(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in w}
    lab = capture.label(model, tok, prompts, w, batch_size=2)
    L, d = len(model.model.layers), model.config.hidden_size
    assert lab.shape == (L, len(prompts), d) and lab.dtype == torch.float32
    assert float(lab[0].abs().max()) == 0.0  # the diff starts at layer 1: layer 0 cannot move
    assert float(lab[1:].norm(dim=-1).min()) > 0
    neg = capture.label(model, tok, prompts, {k: -v for k, v in w.items()}, batch_size=2)
    assert torch.equal(neg, -lab)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], before[n]) for n in w)  # weights restored bit-exactly


# ----------------------------------------------------------------------------- up_proj
def test_up_proj_inputs_and_written(model_tok):
    model, tok = model_tok
    prompts = _prompts(tok)
    up_in = capture.up_proj_inputs(model, tok, prompts, batch_size=2)
    up_w = capture.up_proj_written(model, tok, prompts, batch_size=2)
    L = len(model.model.layers)
    # independent reference: the input of each block's mlp at the last token, unpadded
    for j, p in enumerate(prompts):
        ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
        names = [f"model.layers.{i}.mlp" for i in range(L)]
        with torch.no_grad(), TraceDict(model, names, retain_input=True, retain_output=False) as td:
            model(input_ids=ids)
        for i in range(L):
            x = td[names[i]].input[0, -1]
            assert float((up_in[i, j] - x).abs().max()) <= 1e-5
            blk = model.model.layers[i].mlp
            ref = (x @ blk.up_proj.weight.detach().T) @ blk.down_proj.weight.detach().T
            assert float((up_w[i, j] - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))


# ----------------------------------------------------------------------------- token level
def test_shared_suffix_is_the_user_turn(tiny_llama):
    _, tok = tiny_llama
    pos, neg = _prompts(tok, SYS_POS), _prompts(tok, SYS_NEG)
    sl = capture.shared_suffix_lengths(tok, pos, neg)
    for p, q, s in zip(pos, neg, sl, strict=True):
        a = tok(p, add_special_tokens=False)["input_ids"]
        b = tok(q, add_special_tokens=False)["input_ids"]
        assert a[-s:] == b[-s:] and a[-s - 1] != b[-s - 1]
        text = tok.decode(a[-s:])
        assert "user" in text and text.endswith("assistant\n") and "agree" in text
    with pytest.raises(ValueError):
        capture.shared_suffix_lengths(tok, pos, neg[:2])


@pytest.mark.parametrize("side", ["left", "right"])
def test_token_level_aligned_on_shared_suffix(model_tok, side):
    model, tok = model_tok
    L = len(model.model.layers)
    pos, neg = _prompts(tok, SYS_POS), _prompts(tok, SYS_NEG)
    old = _with_side(tok, side)
    try:
        out = capture.token_level(model, tok, pos, neg, batch_size=3)
        last_pos = capture.block_outputs(model, tok, pos, batch_size=3)
    finally:
        tok.padding_side = old
    sl = capture.shared_suffix_lengths(tok, pos, neg)
    T = max(sl)
    n, d = len(pos), model.config.hidden_size
    assert out["pos_tok"].shape == out["neg_tok"].shape == (L, n, T, d)
    assert out["pos_attn"].shape == (L, n, T)
    assert out["tok_mask"].dtype == torch.bool
    assert out["tok_mask"].sum(1).tolist() == sl
    # right-aligned: the last position is the final token of every prompt
    assert float((out["pos_tok"][:, :, -1] - last_pos).abs().max()) <= 1e-5
    for j, (p, q, s) in enumerate(zip(pos, neg, sl, strict=True)):
        assert not bool(out["tok_mask"][j, : T - s].any()) and bool(out["tok_mask"][j, T - s :].all())
        assert float(out["pos_tok"][:, j, : T - s].abs().sum()) == 0.0
        for key_tok, key_att, prompt in (("pos_tok", "pos_attn", p), ("neg_tok", "neg_attn", q)):
            ref, _ = _single_hidden(model, tok, prompt)
            for i in range(L - 1):
                assert float((out[key_tok][i, j, T - s :] - ref.hidden_states[i + 1][0, -s:]).abs().max()) <= 1e-5
            for i in range(L):
                row = ref.attentions[i][0, :, -1, -s:].mean(0)  # head-averaged final-token row
                assert float((out[key_att][i, j, T - s :] - row).abs().max()) <= 1e-6
    att = out["pos_attn"]
    assert float(att.min()) >= 0 and float(att.sum(-1).max()) <= 1 + 1e-5  # a part of a softmax row


def test_a_suffix_longer_than_the_window_keeps_its_last_tokens(tiny_llama, monkeypatch):
    """Known answer: with a window of 4 tokens the captures are the last 4 positions of the
    whole-suffix captures, exactly; a suffix under the window is kept whole."""
    model, tok = tiny_llama
    pos, neg = _prompts(tok, SYS_POS), _prompts(tok, SYS_NEG)
    whole = capture.token_level(model, tok, pos, neg, batch_size=3)
    assert capture.TOKEN_WINDOW >= max(capture.shared_suffix_lengths(tok, pos, neg)), "the test prompts fit the window"
    monkeypatch.setattr(capture, "TOKEN_WINDOW", 4)
    cut = capture.token_level(model, tok, pos, neg, batch_size=3)
    assert cut["pos_tok"].shape[2] == 4 and bool(cut["tok_mask"].all())
    for k in ("pos_tok", "neg_tok", "pos_attn", "neg_attn"):
        assert torch.equal(cut[k], whole[k][:, :, -4:]), k


def test_token_level_switches_to_eager_and_back(tiny_llama):
    model, tok = tiny_llama
    pos, neg = _prompts(tok, SYS_POS)[:2], _prompts(tok, SYS_NEG)[:2]
    ref = capture.token_level(model, tok, pos, neg, batch_size=2)
    old = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"
    try:
        out = capture.token_level(model, tok, pos, neg, batch_size=2)
        assert model.config._attn_implementation == "sdpa"
    finally:
        model.config._attn_implementation = old
    assert float((out["pos_attn"] - ref["pos_attn"]).abs().max()) <= 1e-6
    # identical persona prompts give zero token differences and equal attention rows
    same = capture.token_level(model, tok, pos, pos, batch_size=2)
    assert torch.equal(same["pos_tok"], same["neg_tok"]) and torch.equal(same["pos_attn"], same["neg_attn"])


# ----------------------------------------------------------------------------- second moments
def test_input_second_moments_over_all_real_tokens(tiny_qwen3):
    """Known answer from unpadded one-prompt passes: the diagonals are E[x²], the written
    moments W E[xxᵀ] Wᵀ; a bfloat16 model and a model with a bias form the written moments from
    the inputs (float64), and they match the definition there too."""
    model, tok = tiny_qwen3
    prompts = _prompts(tok)
    _check_moments(model, tok, prompts, rtol=1e-5)
    assert not capture.written_from_inputs(model)
    biased = copy.deepcopy(model)
    lin = biased.model.layers[1].mlp.down_proj
    lin.bias = torch.nn.Parameter(torch.randn(lin.out_features, generator=torch.Generator().manual_seed(0)))
    assert capture.written_from_inputs(biased)
    _check_moments(biased, tok, prompts, rtol=1e-5)
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert capture.written_from_inputs(half)
    _check_moments(half, tok, prompts, rtol=1e-5)


def _check_moments(model, tok, prompts, rtol: float) -> None:
    L = len(model.model.layers)
    mom = capture.input_second_moments(model, tok, prompts, batch_size=2)
    names = [f"model.layers.{i}.self_attn.o_proj" for i in range(L)] + [f"model.layers.{i}.mlp.down_proj" for i in range(L)]
    xs = {n: [] for n in names}
    n_tok = 0
    for p in prompts:  # unpadded, one prompt at a time
        ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
        n_tok += ids.shape[1]
        with torch.no_grad(), TraceDict(model, names, retain_input=True, retain_output=False) as td:
            model(input_ids=ids)
        for n in names:
            xs[n].append(td[n].input[0].double())
    assert int(mom["mom_n_tokens"].item()) == n_tok
    assert set(mom) == set(capture.MOMENT_FIELDS)
    for i in range(L):
        for key, n in (("mom_oproj", names[i]), ("mom_downproj", names[L + i])):
            X = torch.cat(xs[n])
            C = X.T @ X / X.shape[0]
            assert mom[f"{key}_diag"][i].shape == (C.shape[0],), "a diagonal, never the d' × d' matrix"
            assert torch.allclose(mom[f"{key}_diag"][i].double(), torch.diagonal(C), rtol=rtol, atol=0)
            W = model.get_submodule(n).weight.detach().double()
            ref = W @ C @ W.T
            # a float32 model's output moments are W C Wᵀ up to its float32 products
            tol = 1e-3 if not capture.written_from_inputs(model) else rtol
            assert torch.allclose(mom[f"{key}_out"][i].double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


# ----------------------------------------------------------------------------- everything + io
def test_capture_all_save_load_and_cache(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("WS_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_llama
    clean = _prompts(tok)
    pos, neg = _prompts(tok, SYS_POS), _prompts(tok, SYS_NEG)
    w = _diff(model)
    cap = capture.capture_all(model, tok, clean, pos, neg, clean[:2], w, batch_size=2, progress=False, cache=True)
    L, d, n = len(model.model.layers), model.config.hidden_size, len(clean)
    assert set(cap.tensors()) == set(capture.CAPTURE_FIELDS)
    for name in ("clean", "pos", "neg", "clean_up_in", "pos_up_in", "neg_up_written", "label_fit"):
        assert getattr(cap, name).shape == (L, n, d), name
    assert cap.label_eval.shape == (L, 2, d) and cap.clean_embed.shape == (n, d)
    assert cap.key and len(list((tmp_path / "cache" / "activations").glob("captures-*.safetensors"))) == 1
    again = capture.capture_all(model, tok, clean, pos, neg, clean[:2], w, batch_size=2, progress=False, cache=True)
    assert again.key == cap.key and torch.equal(again.label_eval, cap.label_eval)
    # a different diff is a different key
    other = capture.captures_key(model, clean, pos, neg, clean[:2], _diff(model, seed=1))
    assert other != cap.key
    # save / load round trip
    path = cap.save(tmp_path / "cap.safetensors")
    back = capture.Captures.load(path, cap.key)
    assert back.key == cap.key
    for k, v in cap.tensors().items():
        assert torch.equal(getattr(back, k), v), k
    assert capture.Captures.load(path, "another-key") is None, "an entry for another key is not trusted"


def test_capture_key_covers_the_code_a_capture_runs():
    """The passes, the recorders, the hooks and the steering all decide what a cached capture holds."""
    from ws.core.cache import CODE_FILES

    assert {
        "ws/captures/capture.py",
        "ws/captures/recorders.py",
        "ws/model/trace.py",
        "ws/model/steer.py",
        "ws/core/device.py",
    } <= set(CODE_FILES)


def test_capture_key_names_where_the_model_computes(tiny_llama):
    """The same weights in another dtype or on another device are another cache entry: a
    capture made on a GPU (or in bfloat16) is not served to a CPU float32 run."""
    import copy

    model, tok = tiny_llama
    clean = _prompts(tok)
    w = _diff(model)
    key = capture.captures_key(model, clean, clean, clean, clean[:2], w)
    assert capture.captures_key(model, clean, clean, clean, clean[:2], w) == key
    assert capture.captures_key(copy.deepcopy(model).to(torch.bfloat16), clean, clean, clean, clean[:2], w) != key
    moved = copy.deepcopy(model)
    moved.model.layers[1].to("meta")  # a part elsewhere (no second device here): the placement differs
    from ws.core.cache import placement

    assert placement(moved)["devices"] == ["cpu", "meta"] and placement(model)["devices"] == ["cpu"]


def _recompute_count(monkeypatch) -> list:
    calls: list = []
    real = capture._forward_capture
    monkeypatch.setattr(capture, "_forward_capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_damaged_or_swapped_cache_entries_are_recomputed(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("WS_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_llama
    clean = _prompts(tok)
    pos, neg = _prompts(tok, SYS_POS), _prompts(tok, SYS_NEG)
    w, w2 = _diff(model), _diff(model, seed=1)
    run = lambda w_: capture.capture_all(model, tok, clean, pos, neg, clean[:2], w_, batch_size=2, progress=False, cache=True)  # noqa: E731
    fresh = run(w)
    entry = tmp_path / "cache" / "activations" / f"captures-{fresh.key}.safetensors"
    good = entry.read_bytes()
    # 4 KB of random bytes inside the tensor data: still a readable safetensors file
    data = bytearray(good)
    mid = len(data) // 2
    data[mid : mid + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    entry.write_bytes(bytes(data))
    calls = _recompute_count(monkeypatch)
    again = run(w)
    assert calls, "a damaged cache entry was trusted"
    for k, v in fresh.tensors().items():
        assert torch.equal(getattr(again, k), v), k
    assert capture.Captures.load(entry, fresh.key) is not None, "the recomputed entry replaces the damaged one"
    # another key's entry copied over this one
    other = run(w2)
    (tmp_path / "cache" / "activations" / f"captures-{other.key}.safetensors").replace(entry)
    calls.clear()
    third = run(w)
    assert calls, "another key's cache entry was trusted"
    assert torch.equal(third.label_eval, fresh.label_eval) and not torch.equal(third.label_eval, other.label_eval)


# ----------------------------------------------------------------------------- v8: block labels
def test_block_labels_cumulative_is_the_label_and_block_local_is_what_each_block_adds(model_tok):
    model, tok = model_tok
    prompts = _prompts(tok)
    w = _diff(model, layers=(2,))
    got = capture.block_labels(model, tok, prompts, w, batch_size=2)
    cum, loc = got["label"], got["label_block"]
    assert torch.equal(cum, capture.label(model, tok, prompts, w, batch_size=2))
    # a block's input is the previous block's output: block-local = consecutive differences
    torch.testing.assert_close(loc[1:], cum[1:] - cum[:-1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loc[0], cum[0])
    # the diff starts at block 2: nothing below it moves; block 2 writes; later blocks respond
    assert float(loc[:2].abs().max()) == 0.0 and float(loc[2].norm(dim=-1).min()) > 0
    assert float(loc[3].norm(dim=-1).min()) > 0


def test_block_io_pre_is_the_previous_post(tiny_llama):
    model, tok = tiny_llama
    pre, post = capture.block_io(model, tok, _prompts(tok), batch_size=2)
    assert torch.equal(pre[1:], post[:-1])
    assert torch.equal(post, capture.block_outputs(model, tok, _prompts(tok), batch_size=2))


def test_block_labels_cache(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("WS_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_llama
    w = _diff(model)
    a = capture.block_labels(model, tok, _prompts(tok), w, batch_size=2, cache=True)
    calls = []
    real = capture.block_io
    monkeypatch.setattr(capture, "block_io", lambda *x, **k: calls.append(1) or real(*x, **k))
    b = capture.block_labels(model, tok, _prompts(tok), w, batch_size=2, cache=True)
    assert calls == [] and all(torch.equal(a[k], b[k]) for k in a)
    c = capture.block_labels(model, tok, _prompts(tok), {k: 2 * v for k, v in w.items()}, batch_size=2, cache=True)
    assert calls == [1, 1] and not torch.equal(a["label"], c["label"])


# ----------------------------------------------------------------------------- bit for bit against plain hooks
def _plain_pass(model, ids, mask) -> dict:
    """One pass of the decoder stack with a plain forward hook on every module, nothing else:
    ``(name, "in")`` -> its first positional input, ``(name, "out")`` -> its output as returned."""
    seen: dict = {}

    def keep(name):
        return lambda mod, args, out: seen.update({(name, "in"): args[0] if args else None, (name, "out"): out})

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def _plain_batch(model, seen, mask, lens, T) -> dict[str, torch.Tensor]:
    """One batch's captures from the plain hooks' tensors, gathered and summed by hand (see ws.captures.capture's doc)."""
    L, real = len(model.model.layers), mask.bool()
    rows, last = torch.arange(mask.shape[0]), (torch.arange(mask.shape[1]) * mask).argmax(1)
    back = (T - 1 - torch.arange(T))[None, :]
    valid, idx = back < torch.tensor(lens)[:, None], (last[:, None] - back).clamp(min=0)

    def at(l, part, io):
        x = seen[(f"model.layers.{l}{part}", io)]
        return x[0] if io == "out" and part != ".self_attn" and isinstance(x, tuple) else x

    def gram(x):
        return x[real].double().T @ x[real].double()

    def sq(x):
        y = x[real].double()
        return (y * y).sum(dim=0)

    W_down = [model.model.layers[l].mlp.down_proj.weight.detach().cpu().float() for l in range(L)]
    per_layer = {
        "resid": [at(l, "", "out")[rows, last].float().cpu() for l in range(L)],
        "pre": [at(l, "", "in")[rows, last].float().cpu() for l in range(L)],
        "up_in": [at(l, ".mlp.up_proj", "in")[rows, last].float().cpu() for l in range(L)],
        "up_written": [at(l, ".mlp.up_proj", "out")[rows, last].float().cpu() @ W_down[l].T for l in range(L)],
        "tok": [at(l, "", "out")[rows[:, None], idx].float().cpu() * valid[..., None] for l in range(L)],
        "attn": [at(l, ".self_attn", "out")[1][rows, :, last].mean(1).float().cpu().gather(1, idx) * valid for l in range(L)],
        "mom_oproj_diag": [sq(at(l, ".self_attn.o_proj", "in")) for l in range(L)],
        "mom_downproj_diag": [sq(at(l, ".mlp.down_proj", "in")) for l in range(L)],
        "mom_oproj_out": [gram(at(l, ".self_attn.o_proj", "out")) for l in range(L)],
        "mom_downproj_out": [gram(at(l, ".mlp.down_proj", "out")) for l in range(L)],
    }
    out = {k: torch.stack(v) for k, v in per_layer.items()}
    return out | {"embed": at(0, "", "in")[rows, last].float().cpu(), "mask": valid, "n_tok": int(real.sum())}


def _plain_captures(model, tok, prompts, batch_size, lens) -> dict[str, torch.Tensor]:
    """Every capture of ws.captures.capture, from plain hooks with hand-written gathers and float64 sums."""
    parts, T = [], max(lens)
    for s in range(0, len(prompts), batch_size):
        enc = tok(prompts[s : s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        seen = _plain_pass(model, enc["input_ids"], enc["attention_mask"])
        parts.append(_plain_batch(model, seen, enc["attention_mask"], lens[s : s + batch_size], T))
    n_tok = sum(b.pop("n_tok") for b in parts)
    probe = [
        torch.stack(
            [
                b.self_attn.o_proj.weight.double() @ capture.probe_vector(b.self_attn.o_proj.in_features, 0),
                b.mlp.down_proj.weight.double() @ capture.probe_vector(b.mlp.down_proj.in_features, 1),
            ]
        )
        for b in model.model.layers
    ]
    out = {"mom_n_tokens": torch.tensor([float(n_tok)]), "mom_writer_probe": torch.stack(probe).float().detach()}
    for k in parts[0]:
        if k.startswith("mom"):
            out[k] = (sum(b[k] for b in parts) / n_tok).float()
        else:
            out[k] = torch.cat([b[k] for b in parts], dim=0 if k in ("embed", "mask") else 1)
    return out


def _assert_equal(got: dict, ref: dict, names) -> None:
    for k in names:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert torch.equal(got[k], ref[k]), f"{k}: max abs diff {float((got[k].double() - ref[k].double()).abs().max())}"


@pytest.mark.parametrize("side", ["left", "right"])
def test_captures_are_bit_identical_to_plain_hooks(model_tok, side):
    """Every capture kind, alone and all in one pass, equals plain hooks plus hand-written gathers exactly."""
    model, tok = model_tok
    pos, neg = _prompts(tok, SYS_POS), _prompts(tok, SYS_NEG)
    old = _with_side(tok, side)
    try:
        lens = capture.shared_suffix_lengths(tok, pos, neg)
        ref = _plain_captures(model, tok, pos, 2, lens)  # 3 prompts: a padded batch of 2, then 1
        every = dict(resid=True, embed=True, up_in=True, up_written=True, moments=True, suffix_lens=lens)
        r = capture._forward_capture(model, tok, pos, 2, **every)
        assert set(r) == set(ref) - {"pre"}
        _assert_equal(r, ref, set(r))
        alone = {
            "resid": capture.block_outputs(model, tok, pos, 2),
            "up_in": capture.up_proj_inputs(model, tok, pos, 2),
            "up_written": capture.up_proj_written(model, tok, pos, 2),
            **dict(zip(("pre", "post"), capture.block_io(model, tok, pos, 2), strict=True)),
            **capture.input_second_moments(model, tok, pos, 2),
            **{k.removeprefix("pos_"): v for k, v in capture.token_level(model, tok, pos, neg, 2).items()},
        }
    finally:
        tok.padding_side = old
    _assert_equal(
        alone, ref | {"post": ref["resid"], "tok_mask": ref["mask"]}, set(alone) - {"neg_tok", "neg_attn", "suffix_len"}
    )


def test_a_headless_capture_says_how_far_it_is(tiny_llama):
    """Every forward batch advances one bar; its closing line reaches the log (the terminal of a
    headless run), and a run with ``progress=False`` logs none."""
    from ws.core import log

    model, tok = tiny_llama
    clean = _prompts(tok)
    pos, neg = _prompts(tok, SYS_POS), _prompts(tok, SYS_NEG)
    got: list[str] = []
    sink = log.logger.add(lambda m: got.append(m.record["message"]), level="INFO")
    try:
        capture.capture_all(model, tok, clean, pos, neg, clean[:2], _diff(model), batch_size=2, progress=True)
        quiet = len(got)
        capture.capture_all(model, tok, clean, pos, neg, clean[:2], _diff(model), batch_size=2, progress=False)
    finally:
        log.logger.remove(sink)
    nb = -(-len(clean) // 2)
    total = 3 * nb + 2 * nb + 2 * 1
    lines = [ln for ln in got if ln.startswith("capture batches")]
    assert lines[-1].startswith(f"capture batches: {total}/{total} done in "), lines
    assert len(got) == quiet, "progress=False logs nothing"


@pytest.mark.parametrize("kind", ["full", "written"])
def test_a_moment_keeps_rows_while_they_are_fewer_than_its_width_and_sums_the_same(kind):
    """On the CPU a layer's rows are kept (``N × d'`` values) until they would outnumber its width,
    then summed in the order they came: the moment equals a batch-by-batch float64 sum bit for
    bit, and the rows kept never exceed the width (so never more memory than the sum)."""
    g = torch.Generator().manual_seed(13)
    d, sizes = 8, (3, 4, 2, 5, 1)  # 3+4 ≤ 8 kept; +2 > 8: summed from there on
    weights = [torch.randn(d, 6, generator=g), torch.randn(d, 6, generator=g)]
    width = d if kind == "written" else 6
    r = recorders.SecondMoment("m", ["a", "b"], "input", kind, weights if kind == "written" else None)
    xs, most = [], 0
    for n in sizes:
        x = torch.randn(1, n, 6, generator=g)
        r.new_batch(
            recorders.Batch(
                0,
                torch.zeros(1, n, dtype=torch.long),
                torch.ones(1, n, dtype=torch.long),
                torch.arange(1),
                torch.tensor([n - 1]),
                torch.ones(1, n, dtype=torch.bool),
            )
        )
        for l in range(2):
            r.hook(l, (x,))
        most = max(most, max(r.rows))
        xs.append(x[0].double())
    assert 0 < most <= width and r.sums[0] is not None, "rows were kept, then the layer switched to its sum"
    got = r.finalise()
    for l in range(2):
        fs = [x @ weights[l].double().T if kind == "written" else x for x in xs]
        ref = None
        for f in fs:
            ref = f.T @ f if ref is None else ref.add_(f.T @ f)
        assert torch.equal(got["m"][l], (ref / sum(sizes)).float())
    assert got["mom_n_tokens"].item() == sum(sizes)
