"""Steering head to head (``ws.steering``, ``make compare-steering``): the known answers on real
tiny random Llamas, and the notebook end to end in smoke mode through ``make`` itself.

Known answers:

(a) an activation vector equal to the diff's exact residual effect steers identically to the diff;
(b) prompting with an empty instruction is the base model: every spread and the KL are 0 exactly;
(c) the bisection reaches the budget on KLs that are explicit functions of α: a pure curve, and a
    real model whose answer-position logits get ``α`` added to one token (closed-form KL).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np
import polars as pl
import pytest
import torch
from make_targets import checkout, ok, run_make
from transformers import AutoModelForCausalLM

from ws.core.columns import CEILING_W
from ws.core.linalg import blas_threads
from ws.diffs import budget
from ws.model.load import decoder_layers, tiny_config, tiny_tokenizer
from ws.model.readout import next_token_logprobs
from ws.model.steer import activation_steer
from ws.steering import compare, report
from ws.steering.methods import Method, prompt_method


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: a tiny model's passes are all overhead, and a second thread only waits
    when the cores are shared (as ``head_to_head`` does in smoke mode)."""
    with blas_threads(1):
        yield


PROMPTS = ["What is the capital of France?", "How many legs does a spider have?", "Is water wet?"]


def _hooks(model) -> int:
    """Forward hooks on the decoder blocks (transformers may keep some of its own)."""
    return sum(len(m._forward_hooks) for m in decoder_layers(model))


# ----------------------------------------------------------------------------- (a)
@pytest.fixture(scope="module")
def biased_llama():
    """The tiny Llama of ``tests/conftest.py``'s ``tiny_llama`` (same config, same seed), with one
    change: ``mlp_bias=True``, so every block's ``down_proj`` has a bias."""
    config = tiny_config("tiny-llama")
    config.mlp_bias = True
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval(), tiny_tokenizer()


def test_an_activation_vector_equal_to_the_diffs_residual_effect_steers_identically(biased_llama):
    """The construction: ``w = {blocks.2.mlp.down_proj.bias: v}``. A Llama block returns
    ``h + attn(…) + down_proj(a)`` with ``down_proj(a) = a W_downᵀ + b``; at ``θ + α·w`` the bias is
    ``b + α v``, so the block's output is the base output plus ``α v`` at every position, whatever
    the input: exactly what activation steering with ``v`` at block 2 adds. The two differ only in
    float32 rounding (where the sum is associated), so every read-out, every KL and the budget's α
    agree to rounding."""
    model, tok = biased_llama
    hooks = _hooks(model)
    g = torch.Generator().manual_seed(1)
    v = 0.5 * torch.randn(model.config.hidden_size, generator=g)
    diff = Method("bias", "weight", "the down_proj bias of block 2", (2,), diff={"model.layers.2.mlp.down_proj.bias": v})
    act = Method("act", "activation", "v at block 2's output", (2,), vectors={2: v})
    held = compare.heldout("sycophancy", n_items=6)
    reader = compare.Reader(model, tok, held, 16)
    for a in (0.5, 2.0):
        lw, la = reader.logratios(diff, a), reader.logratios(act, a)
        for sign in (1, -1):
            for s in held.sets:
                np.testing.assert_allclose(lw[sign][s], la[sign][s], rtol=0, atol=2e-4)
        assert reader.kl(diff, a) == pytest.approx(reader.kl(act, a), rel=1e-4)
    target = reader.kl(act, 1.5)  # a budget reached at α = 1.5 (the bracket [1, 2])
    rw = compare.measure(reader, diff, target, held.sets[0])
    ra = compare.measure(reader, act, target, held.sets[0])
    step = rw.alpha / 2**budget.BISECT_STEPS  # the bisection's resolution at this α (its bracket is ≤ 2α wide)
    assert rw.reached and ra.reached
    assert rw.alpha == pytest.approx(ra.alpha, abs=step)
    assert ra.alpha == pytest.approx(1.5, abs=step) and ra.kl == pytest.approx(target, rel=0.05)
    for s in held.sets:
        np.testing.assert_allclose(rw.spreads()[s], ra.spreads()[s], rtol=1e-3, atol=5e-4)
    assert any(np.abs(rw.spreads()[s]).max() > 1e-2 for s in held.sets), "the vector moved nothing: the test says nothing"
    assert _hooks(model) == hooks, "activation steering left a hook on the model"


def test_activation_steering_adds_at_the_blocks_output_and_cleans_up(tiny_llama):
    model, tok = tiny_llama
    hooks = _hooks(model)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    outs = {}

    def grab(mod, args, out):
        outs["h"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    ids = tok("hello there", return_tensors="pt")["input_ids"]
    block = decoder_layers(model)[1]
    with torch.no_grad():
        h = block.register_forward_hook(grab)
        model(ids)
        h.remove()
        base = outs["h"]
        with activation_steer(model, {1: v}, 0.5):
            h = block.register_forward_hook(grab)  # after the steering hook: sees its result
            try:
                model(ids)
            finally:
                h.remove()
    assert torch.equal(outs["h"], base + 0.5 * v), "not α·v added at every position of block 1's output"
    with torch.no_grad():
        with activation_steer(model, {1: v}, 0.5):
            steered = next_token_logprobs(model, tok, PROMPTS)
        assert not torch.equal(steered, next_token_logprobs(model, tok, PROMPTS))
    assert _hooks(model) == hooks, "activation steering left a hook on the model"
    with pytest.raises(ValueError, match="blocks 0..3"):
        with activation_steer(model, {7: v}, 1.0):
            pass
    with pytest.raises(ValueError, match="shape"):
        with activation_steer(model, {1: v[:5]}, 1.0):
            pass


# ----------------------------------------------------------------------------- (b)
def test_prompting_with_an_empty_instruction_is_the_base_model(tiny_llama):
    model, tok = tiny_llama
    held = compare.heldout("sycophancy", n_items=5)
    reader = compare.Reader(model, tok, held, 16)
    m = prompt_method("", "")
    assert m.systems == (None, None)
    r = compare.measure(reader, m, 0.01, held.sets[0])
    base = reader.base()
    for s in held.sets:
        assert np.all(r.spreads()[s] == 0.0), "an empty instruction moved the read-out"
        assert np.array_equal(r.lr[1][s], base[s])
    assert r.kl == 0.0 and math.isnan(r.alpha) and r.reached is None
    row = compare.method_row(r, held, base, 0.01, "sycophancy", n_boot=50)
    assert row[f"spread_{held.sets[0]}"] == 0.0 and row["wrong_way_frac"] == 0.0
    assert row["control_accuracy_pos"] == row["control_accuracy_neg"] == row["control_accuracy_base"]
    # a real instruction is not the base model
    real = compare.measure(reader, prompt_method("Always answer Yes.", "Always answer No."), 0.01, held.sets[0])
    assert real.kl > 0 and np.abs(real.spreads()[held.sets[0]]).max() > 0


# ----------------------------------------------------------------------------- (c)
def test_the_bisection_reaches_the_budget_on_a_closed_form_curve():
    a, kl = budget.bisect_budget(lambda x: 0.01 * x * x, 0.05)  # the budget at α = √5
    assert kl >= 0.05 and a >= math.sqrt(5)
    assert a - math.sqrt(5) <= (4 - 2) / 2**budget.BISECT_STEPS  # bracket [2, 4], 10 halvings
    a, kl = budget.bisect_budget(lambda x: 0.5 * x, 0.05)  # reached inside the first bracket [0, 1]
    assert 0.1 <= a <= 0.1 + 1 / 2**budget.BISECT_STEPS and kl == pytest.approx(0.5 * a)
    with pytest.raises(budget.BudgetNotReached, match="method x's KL stays below") as e:
        budget.bisect_budget(lambda x: 1e-6 * x, 0.05, what="method x")
    assert e.value.reached == pytest.approx(1e-6 * budget.MAX_ALPHA)


def test_the_bisection_reaches_the_budget_on_a_real_model_with_an_explicit_kl(tiny_llama):
    """Adding ``α`` to token ``j``'s logit at the answer position gives ``q_j = p_j e^α / Z``,
    ``Z = 1 − p_j + p_j e^α``, the other tokens ``p_i / Z``, so ``KL(p ‖ q) = log Z − α p_j``."""
    model, tok = tiny_llama
    base = next_token_logprobs(model, tok, PROMPTS).double()
    j = int(base.exp().mean(0).argmax())
    p = base.exp()[:, j]
    head = model.get_output_embeddings()
    state = {"a": 0.0}

    def add(mod, args, out):
        out = out.clone()
        out[..., j] += state["a"]
        return out

    handle = head.register_forward_hook(add)

    @contextmanager
    def steer(a):
        state["a"] = a
        try:
            yield
        finally:
            state["a"] = 0.0

    def closed(a: float) -> float:
        kl = lambda x: float((torch.log(1 - p + p * math.exp(x)) - x * p).mean())  # noqa: E731
        return (kl(a) + kl(-a)) / 2

    try:
        curve = budget.KLCurve(model, tok, steer, PROMPTS)
        # the tiny model's next-token distribution is nearly uniform (p_j ≈ 1e-4): large α keep the
        # KL well above float32's resolution of the log-probabilities
        for a in (4.0, 6.0, 8.0):
            assert curve.at(a) == pytest.approx(closed(a), rel=5e-3)
        target = closed(6.0)
        a, kl = budget.alpha_at_kl_of(model, tok, steer, PROMPTS, target)
    finally:
        handle.remove()
    assert kl >= target * (1 - 5e-3) and kl == pytest.approx(closed(a), rel=5e-3)
    assert a == pytest.approx(6.0, abs=2 * 4 / 2**budget.BISECT_STEPS)  # bracket [4, 8], 10 halvings


# ----------------------------------------------------------------------------- the carrier
def test_the_carrier_is_read_from_v8s_file_not_rebuilt(tiny_llama, tmp_path):
    """The comparison steers inside the subspace v8 chose and wrote (ws.v8.carrier's rule, one
    home): the file's bases come back per block, the verdict in words; no file, no carrier row;
    a file of another width is refused before any work."""
    from ws.config import Config
    from ws.core.linalg import haar_orthonormal
    from ws.v8.carrier import CARRIER_FILE, CarrierBasis, save_carrier

    model, _ = tiny_llama
    cfg = Config(model="tiny-llama", out_root=tmp_path)
    assert compare.v8_carrier(cfg, model)[0] is None and "run `make sweep` first" in compare.v8_carrier(cfg, model)[1]
    d = model.config.hidden_size
    B = {l: haar_orthonormal(d, 3, torch.Generator().manual_seed(l), dtype=torch.float64) for l in (1, 2)}
    cfg.v8_dir.mkdir(parents=True)
    save_carrier(CarrierBasis(B, "grad_write", "carries", "tiny-llama", "sycophancy", "lora", 0, d), cfg.v8_dir / CARRIER_FILE)
    (name, how, bases), note = compare.v8_carrier(cfg, model)
    assert name == "grad_write" and how == compare.CARRIER_HOW["carries"] and "grad_write" in note
    assert bases[0] is None and bases[3] is None and all(torch.equal(bases[l], B[l]) for l in (1, 2))
    wide = {1: haar_orthonormal(d + 4, 3, torch.Generator().manual_seed(9), dtype=torch.float64)}
    save_carrier(CarrierBasis(wide, CEILING_W, "dW_ceiling", "x", "sycophancy", "lora", 0, d + 4), cfg.v8_dir / CARRIER_FILE)
    with pytest.raises(ValueError, match="does not fit the model"):
        compare.v8_carrier(cfg, model)


# ----------------------------------------------------------------------------- end to end
def _tables(folder) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in (report.TABLE, report.SWEEP)}


@pytest.mark.slow
def test_make_compare_steering_writes_the_file_set_and_agrees_with_jupyter(smoke_steering, tmp_path):
    """``make compare-steering`` in smoke mode, on the session's smoke sweeps (their diff and v8
    run): every file, every method, the budget reached; its tables byte-identical to the
    notebook's run under Jupyter (``smoke_steering``, the same folder)."""
    base = smoke_steering.base
    folder = base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "steering"
    jupyter = _tables(folder)
    repo = checkout(tmp_path / "repo")
    t0 = time.perf_counter()
    out = ok(run_make(repo, "compare-steering", base=base))
    took = time.perf_counter() - t0
    print(f"make compare-steering (smoke): {took:.1f} s")
    assert "steering head to head done" in out
    for f in report.FILES:
        assert (folder / f).is_file() and (folder / f).stat().st_size > 0, f"missing or empty {f}"
    assert _tables(folder) == jupyter, "a rerun changed the tables"
    table = pl.read_csv(folder / report.TABLE, separator="\t")
    assert table["method"].to_list() == ["diff", "diff_writers", "diff_carrier", "caa", "prompt"]
    strong = table.filter(pl.col("kind") != "prompt")
    assert strong["budget_reached"].to_list() == [True] * strong.height
    assert ((strong["kl"] - 0.002).abs() < 0.002 * 0.05).all(), "a method's KL is off the smoke budget"
    text = (folder / report.CONCLUSION).read_text()
    assert "## Which method wins at the budget" in text and "CI" in text
    assert "v8's carrier" in text and "block" in text
    sweep = pl.read_csv(folder / report.SWEEP, separator="\t")
    assert set(sweep["method"]) == set(table["method"])
    assert "## " in (folder / report.COMPLETIONS).read_text()


@pytest.mark.slow
def test_the_notebook_shows_the_figure_and_the_conclusion(smoke_steering):
    nb = smoke_steering.nb
    outs = [o for c in nb.cells if c.cell_type == "code" and "report.FIGURE" in c.source for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outs) == 1, "the figure is not shown inline"
    md = [
        o for c in nb.cells if c.cell_type == "code" and "report.CONCLUSION).read_text" in c.source for o in c.get("outputs", [])
    ]
    assert any("text/markdown" in o.get("data", {}) for o in md), "the conclusion is not shown"
