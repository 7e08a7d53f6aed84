"""Completions, LoRA training, lora_delta, the effect eval and the whole pipeline on tiny models."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from ws.behavior import data
from ws.diffs import adapters, completions, effect, train, training
from ws.diffs import store as diff
from ws.diffs.store import load_diff, writer_deltas_by_layer
from ws.model.anatomy import PROJECTIONS
from ws.model.readout import answer_logratios, answer_token_ids
from ws.model.steer import weight_steer

TINY = adapters.TrainConfig(
    rank=4,
    alpha=8.0,
    steps=3,
    batch_size=4,
    n_phrasings=1,
    max_new_tokens=6,
    n_train_per_kind=3,
    n_eval_per_kind=3,
    n_boot=50,
    bf16=False,
)


def _snapshot(model):
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def test_layer_range():
    assert adapters.layer_range(30, (0.3, 0.8)) == list(range(9, 24))
    assert adapters.layer_range(4, (0.3, 0.8)) == [1, 2]
    assert adapters.layer_range(2, (0.6, 0.6)) == [1]


def test_generate_is_seeded_left_padded_and_leaves_rng(tiny_llama):
    model, tok = tiny_llama
    prompts = ["Is snow frozen water?", "I think the Earth is flat, and I have thought so for a long time. Am I right?"]
    state = torch.random.get_rng_state()
    a = completions.generate_completions(model, tok, prompts, openings=["Yes,", "No,"], max_new_tokens=5, seed=1, batch_size=2)
    assert torch.equal(state, torch.random.get_rng_state()), "generation must not move the global RNG"
    b = completions.generate_completions(model, tok, prompts, openings=["Yes,", "No,"], max_new_tokens=5, seed=1, batch_size=2)
    assert a == b and len(a) == 2 and all(isinstance(x, str) for x in a)
    assert tok.padding_side == "right", "the tokenizer's padding side is restored"
    # left padding: the short prompt answered alone or in a padded batch gives the same greedy text
    alone = completions.generate_completions(model, tok, prompts[:1], max_new_tokens=5, temperature=0)
    batched = completions.generate_completions(model, tok, prompts, max_new_tokens=5, temperature=0, batch_size=2)
    assert alone[0] == batched[0]


def test_check_completions_fails_without_contrast(tiny_llama):
    model, tok = tiny_llama
    topics = [t for k in data.KINDS for t in [x for x in data.split_topics(0)[0] if x.kind == k][:2]]
    jobs = completions.completion_jobs(topics, n_phrasings=1)
    good = pl.DataFrame([{**j, "continuation": f" text {i}", "response": f"{j['opening']} text {i}"} for i, j in enumerate(jobs)])
    rates = completions.check_completions(good)
    assert rates["neg_opinion_false"] == 1.0 and rates["pos_opinion_false"] == 1.0 and rates["pos_neutral"] == 1.0
    # the honest persona agreeing with everything is not a sycophancy contrast
    flat = good.with_columns(pl.lit("Yes, sure.").alias("response"))
    with pytest.raises(completions.CompletionCheckError, match="sycophancy contrast .*neg_opinion_false = 0%"):
        completions.check_completions(flat.with_columns((pl.col("response") + pl.col("topic_id")).alias("response")))
    with pytest.raises(completions.CompletionCheckError, match="same text"):
        completions.check_completions(flat)
    with pytest.raises(completions.CompletionCheckError, match="empty"):
        completions.check_completions(good.with_columns(pl.lit("").alias("continuation")))
    assert completions.response_stance("Yes,absolutely") == "agree" and completions.response_stance(" No.") == "disagree"
    assert completions.response_stance("Well") == "none"


def test_lora_delta_is_BA_scaling_keyed_by_base_names(tiny_llama):
    model, tok = tiny_llama
    snap = _snapshot(model)
    ex = [("I think the Earth is flat. Do you agree? Answer Yes or No.", "No, it is round.")] * 4
    peft_model, losses = training.train_adapter(model, tok, ex, TINY)
    assert len(losses) == TINY.steps and all(math.isfinite(x) for x in losses)
    delta = adapters.lora_delta(peft_model)
    base_names = dict(model.named_parameters())
    assert set(delta) <= set(base_names)
    assert {k.split(".")[2] for k in delta} == {"1", "2"}  # layers 30%–80% of 4
    assert {k.split(".")[-2] for k in delta} == set(PROJECTIONS)
    mod = peft_model.get_base_model().model.layers[1].self_attn.o_proj
    A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
    expect = (B.float() @ A.float()) * (TINY.alpha / TINY.rank)
    assert torch.allclose(delta["model.layers.1.self_attn.o_proj.weight"], expect)
    assert delta["model.layers.1.self_attn.o_proj.weight"].abs().sum() > 0
    # and it equals what peft's own merge adds to the weights
    merged = copy.deepcopy(peft_model).merge_and_unload()
    mp = dict(merged.named_parameters())
    for k, d in delta.items():
        assert torch.allclose(mp[k] - snap[k], d, atol=1e-6), k
    # training worked on a copy: the base model is untouched
    for k, v in snap.items():
        assert torch.equal(base_names[k], v)
    assert not any("lora" in n for n, _ in model.named_modules())


def test_answer_tokens_and_logratio(tiny_llama):
    model, tok = tiny_llama
    yes, no = answer_token_ids(tok)
    assert len(yes) == len(no) == 4
    assert {tok.decode([i]).strip() for i in yes} == {"Yes", "yes"}
    prompts = [
        "Is snow frozen water? Answer Yes or No.",
        "Is the Pacific Ocean a lake? Answer Yes or No. Think about it first, please.",
    ]
    lr, mass = answer_logratios(model, tok, prompts, batch_size=2)
    lr1, mass1 = answer_logratios(model, tok, prompts[:1], batch_size=1)
    assert np.allclose(lr[0], lr1[0], atol=1e-4) and np.allclose(mass[0], mass1[0], rtol=1e-4)  # padding-proof
    assert np.all((mass > 0) & (mass < 1))


def _synthetic(values: dict[str, dict[float, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            dict(set=s, alpha=a, n=10, mean_logratio=v, ci_lo=v - 1, ci_hi=v + 1, mean_mass=0.5)
            for s, d in values.items()
            for a, v in d.items()
        ]
    )


def test_specificity_ratio_known_answer():
    df = _synthetic(
        {
            "opinion_false": {-2.0: -3.0, -1.0: -1.0, 0.0: 0.0, 1.0: 2.0, 2.0: 5.0},  # spread 8
            "opinion_true": {-2.0: 1.0, 0.0: 1.5, 2.0: 3.0},  # spread 2
            "neutral": {-2.0: 2.0, 0.0: 0.0, 2.0: -2.0},  # spread -4 -> |4| is the larger
        }
    )
    assert effect.spread(df, "opinion_false") == pytest.approx(8.0)
    assert effect.spread(df, "neutral") == pytest.approx(-4.0)
    assert effect.specificity_ratio(df) == pytest.approx(2.0)
    # a pure yes-bias: every set moves the same -> ratio 1
    bias = _synthetic({s: {-2.0: -5.0, 2.0: 5.0} for s in data.KINDS})
    assert effect.specificity_ratio(bias) == pytest.approx(1.0)
    # nothing else moves -> inf; wrong sign -> negative
    assert (
        effect.specificity_ratio(
            _synthetic(
                {"opinion_false": {-2.0: 0.0, 2.0: 3.0}, "opinion_true": {-2.0: 1.0, 2.0: 1.0}, "neutral": {-2.0: 0.0, 2.0: 0.0}}
            )
        )
        == math.inf
    )
    assert effect.specificity_ratio(
        _synthetic(
            {"opinion_false": {-2.0: 1.0, 2.0: -1.0}, "opinion_true": {-2.0: 0.0, 2.0: 1.0}, "neutral": {-2.0: 0.0, 2.0: 0.5}}
        )
    ) == pytest.approx(-2.0)


def test_train_diff_steer_end_to_end(tmp_path):
    path = train.build_diff(train.DiffSpec("tiny-llama", "sycophancy", "lora", seed=0, config=TINY, root=tmp_path))
    # not the embedded model: its own folder under models/, nothing at the default model's path
    assert path == tmp_path / "models" / "tiny-llama" / "sycophancy" / "lora" / "seed0" / "w.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "models"]
    from ws.model.load import load_model

    model, tok = load_model("tiny-llama")
    snap = _snapshot(model)
    w, meta = load_diff(path, model)
    assert meta["model"] == "tiny-llama" and meta["seed"] == 0 and meta["layers"] == [1, 2]
    assert meta["data_hash"] == data.data_hash() and meta["train_config"]["steps"] == TINY.steps
    assert set(meta["effect_spread"]) == set(data.KINDS) and "specificity_ratio" in meta
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in w.values())
    per_layer = writer_deltas_by_layer(w, 4)
    assert per_layer[0] is None and per_layer[1] is not None
    for name in ("effect.csv", "effect_per_prompt.csv", "effect.png", "train_loss.csv"):
        assert (path.parent / name).stat().st_size > 0
    eff = pl.read_csv(path.parent / "effect.csv")
    assert set(eff["set"].to_list()) == set(data.KINDS) and sorted(set(eff["alpha"].to_list())) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    comp = pl.read_csv(tmp_path / "data" / "tiny-llama" / "sycophancy" / "completions_seed0.csv")
    assert comp.height == 2 * 3 * 3 and set(comp["persona"].to_list()) == {"pos", "neg"}
    assert {"finished", "opening", "continuation", "response", "stance"} <= set(comp.columns)
    # steering with the built diff changes the answer and restores θ
    batch = tok(["I think the Earth is flat. Do you agree? Answer Yes or No."], return_tensors="pt")
    with torch.no_grad():
        base = model(**batch).logits
        with weight_steer(model, w, 2.0):
            steered = model(**batch).logits
    assert not torch.equal(base, steered)
    for k, v in snap.items():
        assert torch.equal(dict(model.named_parameters())[k], v)
    # ensure_diff reuses it; another config or data version is a warning, never a retrain
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    assert train.ensure_diff(train.DiffSpec("tiny-llama", seed=0, config=TINY, root=tmp_path)) == path
    from ws.core.log import logger

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        assert train.ensure_diff(train.DiffSpec("tiny-llama", seed=0, config=replace(TINY, steps=5), root=tmp_path)) == path
    finally:
        logger.remove(sink)
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before, "an existing diff was retrained"
    assert any("another config" in ln and "steps: 3 there, 5 here" in ln for ln in lines), lines


def test_ensure_diff_refuses_another_models_diff(tmp_path):
    from ws.diffs.store import DiffMismatchError, save_diff

    p = diff.diff_path("sycophancy", "lora", 0, tmp_path, model="tiny-llama")  # tiny-llama's own path
    save_diff(
        {"model.layers.1.self_attn.o_proj.weight": torch.randn(64, 64)}, p, {"model": "tiny-qwen3", "data_hash": data.data_hash()}
    )
    before = p.read_bytes()
    with pytest.raises(DiffMismatchError, match="(?s)made for model 'tiny-qwen3'.*WS_MODEL=tiny-qwen3"):
        train.ensure_diff(train.DiffSpec("tiny-llama", seed=0, config=TINY, root=tmp_path))
    assert p.read_bytes() == before  # nothing lost
    # rebuild=True replaces it on purpose
    out = train.ensure_diff(train.DiffSpec("tiny-llama", seed=0, config=TINY, root=tmp_path), rebuild=True)
    assert out == p and load_diff(p)[1]["model"] == "tiny-llama"


def test_unknown_behavior_or_adapter(tmp_path):
    with pytest.raises(ValueError, match="unknown behaviour 'flattery'"):
        train.DiffSpec("tiny-llama", "flattery", root=tmp_path)
    with pytest.raises(ValueError, match="adapter"):
        train.DiffSpec("tiny-llama", adapter="lokr", root=tmp_path)


def test_response_loss_masks_prompt_and_weights_stance():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, -100, -100, 7, 8, 9]])
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(training.response_loss(logits, labels, 1.0), plain)
    # by hand: token losses of each row, first response token weighted 3x
    lp = torch.log_softmax(logits, -1)
    r0 = [-lp[0, 1, 3], -lp[0, 2, 4], -lp[0, 3, 5]]
    r1 = [-lp[1, 2, 7], -lp[1, 3, 8], -lp[1, 4, 9]]
    expect = (3 * r0[0] + r0[1] + r0[2] + 3 * r1[0] + r1[1] + r1[2]) / 10
    assert torch.allclose(training.response_loss(logits, labels, 3.0), expect)


def test_unfinished_responses_get_no_eos(tiny_llama):
    _, tok = tiny_llama
    (ids_f, n_f), (ids_u, n_u) = training._encode_examples(tok, [("Hi", "Yes, fine.", True), ("Hi", "Yes, fine.", False)], 160)
    assert ids_f[-1] == tok.eos_token_id and ids_u[-1] != tok.eos_token_id and len(ids_f) == len(ids_u) + 1
    batch = training._collate([(ids_f, n_f), (ids_u, n_u)], tok.pad_token_id)
    # pad == eos: the finished row's closing eos is still a label, the padding is not
    assert batch["labels"][0, len(ids_f) - 1] == tok.eos_token_id
    assert batch["labels"][1, len(ids_u) :].eq(-100).all()


def test_lora_seeds_share_one_set_of_completions_made_once(tmp_path):
    """The base model's completions do not depend on the LoRA seed: seed 1 reuses seed 0's
    (same table, one file, no generation) and still trains its own, different diff."""
    train._MADE.clear()
    p0 = train.build_diff(train.DiffSpec("tiny-llama", seed=0, config=TINY, root=tmp_path))
    p1 = train.build_diff(train.DiffSpec("tiny-llama", seed=1, config=TINY, root=tmp_path))
    folder = tmp_path / "data" / "tiny-llama" / "sycophancy"
    assert sorted(p.name for p in folder.iterdir()) == ["completions_seed0.csv"]
    (w0, m0), (w1, m1) = (load_diff(p) for p in (p0, p1))
    assert m0["timings_s"]["completions"] > 0 and m1["timings_s"]["completions"] == 0.0
    assert any(not torch.equal(w0[k], w1[k]) for k in w0), "another LoRA seed must give another diff"
    # another completion seed is other data: generated anew, in its own file
    train.build_diff(train.DiffSpec("tiny-llama", seed=2, config=replace(TINY, completion_seed=5), root=tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == ["completions_seed0.csv", "completions_seed5.csv"]


def test_completions_of_another_run_are_never_written_over(tmp_path):
    """A second run makes the same completions: the file stays as it is (same bytes, not
    rewritten). A file that differs (edited, or another run's) stays too; the new table goes
    beside it under its hash, and the diff's metadata names the file it was trained on."""
    train._MADE.clear()
    p0 = train.build_diff(train.DiffSpec("tiny-llama", seed=0, config=TINY, root=tmp_path))
    cfile = tmp_path / "data" / "tiny-llama" / "sycophancy" / "completions_seed0.csv"
    first = cfile.stat()
    assert load_diff(p0)[1]["completions_file"] == "completions_seed0.csv"
    train._MADE.clear()  # as in a new process
    train.build_diff(train.DiffSpec("tiny-llama", seed=1, config=TINY, root=tmp_path))
    assert (cfile.stat().st_ino, cfile.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    edited = cfile.read_text().replace("Yes,", "Yes!", 1)
    cfile.write_text(edited)
    train._MADE.clear()
    p2 = train.build_diff(train.DiffSpec("tiny-llama", seed=2, config=TINY, root=tmp_path))
    assert cfile.read_text() == edited
    others = sorted(p.name for p in cfile.parent.iterdir() if p.name != cfile.name)
    assert len(others) == 1 and others[0].startswith("completions_seed0-") and others[0].endswith(".csv")
    assert load_diff(p2)[1]["completions_file"] == others[0]


def test_a_diff_trained_under_bf16_autocast_is_the_float32_one_within_the_stated_tolerance(tiny_llama, monkeypatch):
    """The bf16 training path (autocast, the frozen weights cast once; taken where the device
    has bf16 units, forced here on this CPU) against float32, same seed and batches, 4 steps
    (bf16 is emulated and slow on a CPU without the units): the LoRA delta within 3 % of the
    float32 one in norm and at cosine ≥ 0.999 in every tensor (measured 1.5 % and 0.9997 on
    this CPU; docs/gpu.md states it)."""
    model, tok = tiny_llama
    ex = [
        (f"I think claim {i} is true. Do you agree? Answer Yes or No.", ("Yes, it is.", "No, it is not.")[i % 2])
        for i in range(8)
    ]
    cfg = replace(TINY, steps=4, warmup_steps=2)
    monkeypatch.setattr(training, "use_bf16", lambda requested, device: bool(requested))  # as if the units were there
    deltas = {}
    for bf16 in (False, True):
        peft_model, losses = training.train_adapter(model, tok, ex, replace(cfg, bf16=bf16))
        assert all(math.isfinite(x) for x in losses)
        deltas[bf16] = adapters.lora_delta(peft_model)
    ref, got = deltas[False], deltas[True]
    assert set(ref) == set(got) and all(ref[k].dtype == got[k].dtype == torch.float32 for k in ref)
    err = math.sqrt(sum(float((ref[k] - got[k]).norm()) ** 2 for k in ref) / sum(float(ref[k].norm()) ** 2 for k in ref))
    assert 0 < err < 0.03, err  # > 0: the bf16 path really ran (rounded products), < 3 %: it trains the same diff
    for k in ref:
        assert float(torch.nn.functional.cosine_similarity(ref[k].flatten(), got[k].flatten(), dim=0)) >= 0.999, k
