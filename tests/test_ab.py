"""A/B datasets become behaviours; the read-out reads a behaviour's own answers, oriented per item."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ws.behavior import data
from ws.behavior import files as behavior
from ws.behavior.files import BehaviorError
from ws.config import ConfigError, from_env
from ws.diffs import completions, effect, training
from ws.model.chat import render_chat
from ws.model.fast_readout import FastReadout
from ws.model.readout import ReadoutError, answer_logratios, answer_token_ids, check_answers, orient
from ws.model.steer import weight_steer

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "behaviors" / "ab" / "sycophancy-ab.jsonl"


def _ab_items(n: int = 10) -> list[dict]:
    out = []
    for i in range(n):
        m = "A" if i % 3 else "B"
        o = "B" if m == "A" else "A"
        q = f"Claim {i}: the sky is green. Right?\n\nChoices:\n (A) Yes, right.\n (B) No."
        out.append({"question": q, "answer_matching_behavior": f" ({m})", "answer_not_matching_behavior": f" ({o})"})
    return out


def _write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- conversion
def test_the_shipped_ab_file_converts_with_its_options_kept_and_items_oriented():
    b = behavior.load(SHIPPED)
    raw = [json.loads(line) for line in SHIPPED.read_text().splitlines()]
    assert b.name == "sycophancy-ab" and b.readout == ("A", "B") and b.controls == () and b.direction == 1
    assert len(b.items) == len(raw) == 60
    for t, x in zip(b.items, raw, strict=True):
        assert t.question == x["question"].strip()  # the prompt's own options are kept
        assert b.answer("pos", t) == x["answer_matching_behavior"].strip(" ()")
        assert b.answer("neg", t) == x["answer_not_matching_behavior"].strip(" ()")
        assert t.sign == (1 if b.answer("pos", t) == "A" else -1)
    assert 0 < sum(t.flip for t in b.items) < 60, "both orders occur in the shipped file"
    assert data.probe_prompt(b.items[0], b).endswith("\n\nAnswer with A or B.")


def test_json_list_jsonl_and_the_prompt_corrects_format(tmp_path):
    items = _ab_items()
    a = behavior.load(_write_jsonl(tmp_path / "x.jsonl", items))
    (tmp_path / "y.json").write_text(json.dumps(items))
    b = behavior.load(tmp_path / "y.json")
    assert [t.question for t in a.items] == [t.question for t in b.items] and a.readout == b.readout == ("A", "B")
    mc = [{"prompt": f"What is {i}+{i}?", "corrects": [str(2 * i)], "incorrects": [str(2 * i + 1), "7"]} for i in range(6)]
    c = behavior.load(_write_jsonl(tmp_path / "mc.jsonl", mc))
    for i, t in enumerate(c.items):
        good = f"({c.answer('pos', t)}) {2 * i}"
        assert good in t.question and f"({c.answer('neg', t)}) {2 * i + 1}" in t.question
    assert [t.flip for t in c.items] == [i % 2 == 1 for i in range(6)]


@pytest.mark.parametrize(
    "items, pattern",
    [
        (
            [{**x, "answer_matching_behavior": " (C)"} for x in _ab_items(4)],
            r"the items use 3 option labels \(A, B, C\)",
        ),
        (
            [{**x, "answer_matching_behavior": "I agree with you"} for x in _ab_items(4)],
            r"item 0, field 'answer_matching_behavior': 'I agree with you' is not an option label",
        ),
        ([{**x, "answer_not_matching_behavior": x["answer_matching_behavior"]} for x in _ab_items(4)], r"item 0: .* same option"),
        ([{**x, "question": ""} for x in _ab_items(4)], r"item 0, field 'question': '' is not a non-empty string"),
    ],
)
def test_bad_ab_items_are_refused_with_the_item_and_field(tmp_path, items, pattern):
    p = _write_jsonl(tmp_path / "bad.jsonl", items)
    with pytest.raises(BehaviorError, match=pattern):
        behavior.load(p)
    with pytest.raises(ConfigError, match=pattern):
        from_env({"WS_BEHAVIOR": str(p)})


def test_a_broken_jsonl_line_and_a_list_of_other_things_are_named(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text(json.dumps(_ab_items(1)[0]) + "\n{not json\n")
    with pytest.raises(BehaviorError, match=r"broken\.jsonl: line 2 is not valid JSON"):
        behavior.load(p)
    q = tmp_path / "list.json"
    q.write_text(json.dumps([{"q": 1}]))
    with pytest.raises(BehaviorError, match=r"a list, but not of A/B items \(each needs question, answer_matching_behavior"):
        behavior.load(q)


def test_the_converter_prints_a_behaviour_file_that_loads_as_the_same_behaviour(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ws.behavior.ab", str(SHIPPED)], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    doc["name"] = "mine-ab"
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(doc))
    a, b = behavior.load(SHIPPED), behavior.load(p)
    assert a.items == b.items and a.readout == b.readout and a.prompts == b.prompts


# ----------------------------------------------------------------------------- read-out
def test_default_answer_ids_are_the_yes_no_forms(tiny_llama):
    _, tok = tiny_llama
    one = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    pairs = [
        (y, n)
        for y, n in zip(("Yes", " Yes", "yes", " yes"), ("No", " No", "no", " no"), strict=True)
        if len(one(y)) == len(one(n)) == 1
    ]
    assert pairs, "the embedded tokenizer has single-token Yes / No forms"
    assert answer_token_ids(tok) == (sorted({one(y)[0] for y, _ in pairs}), sorted({one(n)[0] for _, n in pairs}))


def test_letter_answers_and_a_refusal_that_shows_the_tokenisation(tiny_llama):
    _, tok = tiny_llama
    a, b = answer_token_ids(tok, ("A", "B"))
    assert tok.convert_ids_to_tokens(a) == ["A", "ĠA"] and tok.convert_ids_to_tokens(b) == ["B", "ĠB"]
    with pytest.raises(
        ReadoutError, match=r"'Absolutely' / 'Nope' have no form that is a single token .*'Nope' → \['N', 'ope'\]"
    ):
        check_answers(tok, ("Absolutely", "Nope"))


def test_orient_flips_only_the_prompts_signed_minus_one():
    res = {"t": (np.array([1.0, 2.0, -3.0]), np.array([0.5, 0.5, 0.5]))}
    lr, mass = orient(res, {"t": [1, -1, -1]})["t"]
    assert lr.tolist() == [1.0, -2.0, 3.0] and mass.tolist() == [0.5, 0.5, 0.5]
    assert orient(res, None)["t"][0].tolist() == [1.0, 2.0, -3.0]
    with pytest.raises(ValueError, match="2 read-out signs for 3 prompts"):
        orient(res, {"t": [1, 1]})


def test_the_fast_readout_reads_the_behaviours_answers_with_each_items_sign(tiny_llama):
    model, tok = tiny_llama
    b = behavior.load(SHIPPED)
    prompts = [data.probe_prompt(t, b) for t in b.items[:6]]
    signs = [t.sign for t in b.items[:6]]
    ref, mass = answer_logratios(model, tok, prompts, answers=b.readout)
    texts = [render_chat(tok, p) for p in prompts]
    ro = FastReadout(model, tok, {"ab": texts}, first=1, answers=b.readout, signs_by_set={"ab": signs})
    lr, m = ro.run()["ab"]
    np.testing.assert_allclose(lr, ref * np.array(signs), atol=1e-5)
    np.testing.assert_allclose(m, mass, atol=1e-6)


def test_an_ab_dataset_probed_gives_the_spreads_of_the_equivalent_hand_written_file(tiny_llama, tmp_path):
    """The converted A/B file and a hand-written behaviour file with the same items, answers
    and orders give the same effect table under the same diff; and every target item's
    log-ratio is the matching answer's over the other's."""
    model, tok = tiny_llama
    items = _ab_items(10)
    conv = behavior.load(_write_jsonl(tmp_path / "conv.jsonl", items))
    hand = {
        "name": "hand",
        "readout": ["A", "B"],
        "sets": [{"name": "ab", "role": "target", "prompts": "ab", "answers": {"pos": "yes", "neg": "no"}}],
        "prompts": {"ab": {"probe": "{question}\n\nAnswer with A or B.", "train": ["{question}"]}},
        "persona_pairs": [{"pos": "p", "neg": "n"}],
        "items": [
            {
                "id": f"ab-{i:04d}",
                "set": "ab",
                "question": x["question"],
                "readout": [x["answer_matching_behavior"].strip(" ()"), x["answer_not_matching_behavior"].strip(" ()")],
            }
            for i, x in enumerate(items)
        ],
    }
    (tmp_path / "hand.json").write_text(json.dumps(hand))
    hand_b = behavior.load(tmp_path / "hand.json")
    g = torch.Generator().manual_seed(0)
    w = {k: 0.02 * torch.randn(p.shape, generator=g) for k, p in model.named_parameters() if ".layers.2.mlp.down_proj" in k}
    tables = []
    for b in (conv, hand_b):
        prompts = effect.heldout_prompts(0, behavior=b)
        tables.append(effect.effect_per_prompt(model, tok, w, prompts, (-1.0, 1.0), readout=effect.readout_of(b)))
    assert tables[0].equals(tables[1])
    held = data.heldout_sets(0, behavior=conv)["ab"]
    base = tables[0].filter(tables[0]["alpha"] == -1.0)["logratio"].to_numpy()
    with torch.no_grad(), weight_steer(model, w, -1.0):
        raw, _ = answer_logratios(model, tok, [data.probe_prompt(t, conv) for t in held], answers=("A", "B"))
    np.testing.assert_allclose(base, raw * np.array([t.sign for t in held]), atol=1e-5)


def test_completion_stances_read_the_items_own_answers():
    b = behavior.load(SHIPPED)
    t = next(x for x in b.items if x.flip)
    assert t.answers(b.readout) == ("B", "A")
    assert completions.response_stance("B, because", t.answers(b.readout)) == "agree"
    assert completions.response_stance("A.", t.answers(b.readout)) == "disagree"
    assert completions.response_stance("Maybe", t.answers(b.readout)) == "none"
    jobs = completions.completion_jobs([t], 1, behavior=b)
    assert {j["persona"]: j["opening"] for j in jobs} == {"pos": "B,", "neg": "A,"}


# ----------------------------------------------------------------------------- hostile files (tracker issue 33)
_BIO = (
    "Hello, my name is {name}. I am a {age}-year-old researcher from {city} who has spent most of my career "
    "studying the history of science, the philosophy of language and the economics of small farms. In my free time "
    "I enjoy hiking in the mountains, playing the violin in a local orchestra, reading long novels about the sea, "
    "and cooking elaborate dinners for my friends and family on the weekends. "
)


def _persona_items(n: int, repeats: int) -> list[dict]:
    """Model-written-evaluation items: a long persona bio (``repeats`` sentences of it), a claim, options (A) / (B)."""
    out = []
    for i in range(n):
        bio = "".join(_BIO.format(name=f"Person {i}", age=30 + i, city=f"City {i}") for _ in range(repeats))
        q = f"{bio}I believe claim number {i} is true. Do you agree with me?\n\nChoices:\n (A) Yes, I agree.\n (B) No."
        m, o = ("A", "B") if i % 2 else ("B", "A")
        out.append({"question": q, "answer_matching_behavior": f" ({m})", "answer_not_matching_behavior": f" ({o})"})
    return out


def test_long_prompts_get_a_training_length_that_fits_them_and_the_built_ins_keep_160(tiny_llama, tmp_path):
    from ws.diffs import adapters, train

    _, tok = tiny_llama
    p = _write_jsonl(tmp_path / "persona-ab.jsonl", _persona_items(10, 4))
    spec = train.DiffSpec("tiny-llama", str(p), root=tmp_path)
    cfg = adapters.TrainConfig()
    b = behavior.load(p)
    users = [u for t in data.split_topics(0, behavior=b)[0] for u in data.training_prompts(t, cfg.n_phrasings, behavior=b)]
    longest = max(training.prompt_tokens(tok, users))
    assert 300 < longest < 500, longest  # like the public files' longest items (340 tokens)
    fitted = train.fit_length(spec, tok, cfg)
    assert fitted.max_len == longest + cfg.max_new_tokens + training.RESPONSE_EXTRA
    assert fitted == replace(cfg, max_len=fitted.max_len)
    response = " ".join(["word"] * cfg.max_new_tokens)
    enc = training._encode_examples(tok, [(u, "A, " + response) for u in users], fitted.max_len)
    for (ids, n_prompt), u in zip(enc, users, strict=True):
        assert n_prompt == training.prompt_tokens(tok, [u])[0] and len(ids) < fitted.max_len  # nothing cut
    with pytest.raises(ValueError, match=r"prompt alone fills max_len=160"):
        training._encode_examples(tok, [(users[0], "A")], cfg.max_len)  # what the old fixed length did at training
    for name in ("sycophancy", "refusal"):  # the built-ins: 160, as before (their tables stay byte-identical)
        assert train.fit_length(train.DiffSpec("tiny-llama", name, root=tmp_path), tok, cfg) == cfg
    assert from_env({"WS_MAX_LEN": "2048"}).train_config().max_len == 2048
    assert from_env({}).train_config() is None
    with pytest.raises(ConfigError, match=r"WS_MAX_LEN='0' is too small"):
        from_env({"WS_MAX_LEN": "0"})
    for side in ("pos", "neg"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "adapter_config.json").write_text("{}")
    env = {"WS_POS_ADAPTER": str(tmp_path / "pos"), "WS_NEG_ADAPTER": str(tmp_path / "neg"), "WS_MAX_LEN": "512"}
    with pytest.raises(ConfigError, match=r"WS_MAX_LEN is set, but the diff is imported"):
        from_env(env)


def test_a_prompt_past_the_cap_is_refused_before_any_completion_naming_the_items_and_ws_max_len(tiny_llama, tmp_path):
    from ws.diffs import adapters, train

    _, tok = tiny_llama
    items = _persona_items(8, 2)
    for i in (2, 5):
        items[i] = {**items[i], "question": _BIO.format(name="X", age=40, city="Y") * 14 + items[i]["question"]}
    p = _write_jsonl(tmp_path / "huge-ab.jsonl", items)
    cfg = replace(adapters.TrainConfig(), n_train_per_kind=None, steps=1)
    spec = train.DiffSpec("tiny-llama", str(p), config=cfg, root=tmp_path / "out")
    b = behavior.load(p)
    train_ids = {t.id for t in data.split_topics(0, behavior=b)[0]}
    assert {"ab-0002", "ab-0005"} & train_ids, "a long item is in the training half"
    with pytest.raises(training.TrainingLengthError) as e:
        train.build_diff(spec)
    msg = str(e.value)
    assert "behaviour 'huge-ab'" in msg and "WS_MAX_LEN=" in msg and "do not fit the training length of 1024 tokens" in msg
    for iid in {"ab-0002", "ab-0005"} & train_ids:
        assert re.search(rf"'{iid}' \d{{4}} tokens", msg), msg
    assert not (tmp_path / "out").exists(), "refused before any completion was generated or written"
    need = int(re.search(r"WS_MAX_LEN=(\d+)", msg).group(1))
    assert train.fit_length(spec, tok, replace(cfg, max_len=need)).max_len == need  # the variable it names lets it through


def test_long_prompt_examples_train_at_the_fitted_length_where_160_refused_them(tiny_llama, tmp_path):
    """What used to fail at training (after every completion was made) now trains."""
    import math

    from ws.diffs import adapters, train

    model, tok = tiny_llama
    p = _write_jsonl(tmp_path / "bios-ab.jsonl", _persona_items(6, 4))
    cfg = adapters.TrainConfig(rank=2, steps=2, batch_size=2, bf16=False)
    fitted = train.fit_length(train.DiffSpec("tiny-llama", str(p), root=tmp_path), tok, cfg)
    b = behavior.load(p)
    examples = [(data.training_prompts(t, 1, behavior=b)[0], "A, I agree with you.", True) for t in b.items[:4]]
    with pytest.raises(ValueError, match=r"prompt alone fills max_len=160; raise max_len \(WS_MAX_LEN\)"):
        training.train_adapter(model, tok, examples, cfg)
    _, losses = training.train_adapter(model, tok, examples, fitted)
    assert fitted.max_len > 300 and len(losses) == 2 and all(math.isfinite(x) for x in losses)


def _warned(fn):
    """``(fn(), the warnings logged while it ran)``."""
    from ws.core.log import logger

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        return fn(), lines
    finally:
        logger.remove(sink)


def test_repeated_questions_are_kept_once_with_a_warning_and_never_straddle_the_split(tmp_path):
    items = _ab_items(30)
    doubled = [items[i] for i in (1, 4, 9, 16, 25)]  # 5 repeats
    rows = items + doubled + [items[7]] * 59  # and item 7 appears 60 times
    rng = np.random.default_rng(0)
    rows = [rows[0]] + [rows[i] for i in 1 + rng.permutation(len(rows) - 1)]
    p = _write_jsonl(tmp_path / "repeats.jsonl", rows)
    b, lines = _warned(lambda: behavior.load(p))
    assert len(b.items) == 30 and len({t.question for t in b.items}) == 30
    assert any("64 repeated item(s) removed, 30 distinct questions kept of 94 items" in ln for ln in lines), lines
    assert any("appears 60 times" in ln for ln in lines), lines
    train_half, held = data.split_topics(0, behavior=b)
    assert not {t.question for t in train_half} & {t.question for t in held}
    other = {**items[3], "answer_matching_behavior": items[3]["answer_not_matching_behavior"]}
    other["answer_not_matching_behavior"] = items[3]["answer_matching_behavior"]
    q = _write_jsonl(tmp_path / "conflict.jsonl", [*items[:6], other])
    with pytest.raises(
        BehaviorError, match=r"conflict\.jsonl, line 7, item 6: repeats the question of line 4, item 3 with other"
    ):
        behavior.load(q)


def test_invalid_utf8_and_deep_nesting_are_named_not_raised_raw(tmp_path):
    good = "".join(json.dumps(x) + "\n" for x in _ab_items(4)).encode()
    bad = good + b'{"question": "caf\xe9?", "answer_matching_behavior": " (A)"}\n'
    (tmp_path / "latin1.jsonl").write_bytes(bad)
    offset = bad.index(b"\xe9")
    with pytest.raises(BehaviorError, match=rf"latin1\.jsonl: not UTF-8 text: byte {offset} \(line 5\)"):
        behavior.load(tmp_path / "latin1.jsonl")
    (tmp_path / "latin1.json").write_bytes(b'{"name": "x",\n "description": "\xff"}')
    with pytest.raises(BehaviorError, match=r"latin1\.json: not UTF-8 text: byte 31 \(line 2\)"):
        behavior.load(tmp_path / "latin1.json")
    deep = {
        "list.json": "[" * 100_000 + "]" * 100_000,
        "dict.json": '{"a": ' * 100_000 + "1" + "}" * 100_000,
        "line.jsonl": good.decode() + "[" * 100_000 + "]" * 100_000 + "\n",
        "deep.yaml": "[" * 100_000 + "]" * 100_000,
    }
    for name, text in deep.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BehaviorError, match=rf"behaviour file .*{re.escape(name)}: not readable: .*nested"):
            behavior.load(tmp_path / name)
        with pytest.raises(ConfigError, match=rf"{re.escape(name)}: not readable"):
            from_env({"WS_BEHAVIOR": str(tmp_path / name)})


def test_an_items_missing_key_a_list_line_and_a_third_label_are_named_by_line(tmp_path):
    items = _ab_items(8)
    del items[4]["answer_not_matching_behavior"]
    p = tmp_path / "missing.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in items[:2]) + "\n\n" + "\n".join(json.dumps(x) for x in items[2:]) + "\n")
    with pytest.raises(BehaviorError, match=r"missing\.jsonl, line 6, item 4, field 'answer_not_matching_behavior': missing"):
        behavior.load(p)
    listed = [*_ab_items(8)[:3], ["(A)", "(B)"], *_ab_items(8)[4:]]
    with pytest.raises(BehaviorError, match=r"listed\.jsonl, line 4, item 3: an array, not an A/B item"):
        behavior.load(_write_jsonl(tmp_path / "listed.jsonl", listed))
    three = _ab_items(8)
    three[6] = {**three[6], "answer_matching_behavior": " (C)", "answer_not_matching_behavior": " (B)"}
    with pytest.raises(BehaviorError, match=r"3 option labels \(A, B, C\).*: line 7, item 6 chooses between C and B"):
        behavior.load(_write_jsonl(tmp_path / "three.jsonl", three))
    for f in ("missing.jsonl", "listed.jsonl", "three.jsonl", "absent.jsonl"):
        r = subprocess.run([sys.executable, "-m", "ws.behavior.ab", str(tmp_path / f)], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"error: behaviour file {tmp_path / f}") and r.stderr.count("\n") == 1, r.stderr


# ----------------------------------------------------------------------------- large datasets
def test_a_large_set_is_cut_to_ws_max_items_whole_groups_seeded_and_the_built_ins_are_not(tmp_path):
    syc = behavior.get_behavior("sycophancy")
    assert behavior.cap_items(syc, behavior.MAX_ITEMS_PER_SET) is syc, "a built-in behaviour is never cut"
    assert max(map(len, data.heldout_sets(0, behavior="sycophancy").values())) <= behavior.MAX_ITEMS_PER_SET
    path = _write_jsonl(tmp_path / "big-ab.jsonl", _ab_items(300))
    b, lines = _warned(lambda: behavior.load(path))
    assert len(b.items) == behavior.MAX_ITEMS_PER_SET == 120 and b.capped_from == {"ab": 300}
    assert any("uses 120 of them" in ln and "WS_MAX_ITEMS=300 to use all" in ln for ln in lines), lines
    again = behavior.cap_items(behavior.load(path, max_items=300), 120)
    assert [t.id for t in again.items] == [t.id for t in b.items], "the subset is seeded: the same on every load"
    assert [t.id for t in b.items] == sorted(t.id for t in b.items), "the kept items stay in the file's order"
    assert len({t.id for t in b.items} - {t.id for t in behavior.cap_items(behavior.load(path, 300), 60).items}) == 60
    assert len(behavior.load(path, max_items=300).items) == 300
    train, held = data.split_topics(0, behavior=b)
    assert len(train) + len(held) == 120 and len(held) == 48
    assert "120 of the 300 items of set 'ab'" in behavior.capped_text(b) and behavior.capped_text(syc) == ""


def test_groups_stay_whole_when_a_set_is_cut():
    syc = behavior.get_behavior("sycophancy")
    cut = behavior.cap_items(syc, 20)
    assert all(n <= 20 for n in Counter(t.kind for t in cut.items).values())
    kept = {t.group or t.id for t in cut.items}
    for t in syc.items:
        assert ((t.group or t.id) in kept) == (t in cut.items), f"group {t.group} split by the cap"
    with pytest.raises(BehaviorError, match="need at least 2 items per set"):
        behavior.cap_items(syc, 1)


def test_ws_max_items_reaches_every_stage_through_the_behaviours_name(tmp_path, monkeypatch):
    path = _write_jsonl(tmp_path / "big2-ab.jsonl", _ab_items(200))
    monkeypatch.chdir(tmp_path)
    cfg = from_env({"WS_BEHAVIOR": str(path), "WS_MAX_ITEMS": "50"})
    assert cfg.max_items == 50 and len(data.get_behavior(cfg.behavior).items) == 50
    fit, ev = data.sweep_probes(behavior=cfg.behavior)
    assert len(fit) + len(ev) == 50
    assert len(data.get_behavior(from_env({"WS_BEHAVIOR": str(path)}).behavior).items) == 120
    with pytest.raises(ConfigError, match="WS_MAX_ITEMS"):
        from_env({"WS_BEHAVIOR": str(path), "WS_MAX_ITEMS": "1"})


def test_the_synthetic_long_ab_file_has_the_stated_layout_repeats_and_lengths(tmp_path):
    from ws.behavior import synthetic_ab
    from ws.model.load import tiny_tokenizer

    path = tmp_path / "long-ab.jsonl"
    assert synthetic_ab.main([str(path), "--items", "300", "--repeats", "3"]) == 0
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == 300 and len({r["question"] for r in rows}) == 297
    assert all(r["question"].endswith("(B) Disagree\n\nAnswer:") for r in rows)
    tok = tiny_tokenizer()
    assert min(len(tok(r["question"]).input_ids) for r in rows) >= 300
    b = behavior.load(path)
    assert b.capped_from == {"ab": 297} and len(b.items) == 120 and b.direction == 1
    with pytest.raises(SystemExit):
        synthetic_ab.main([str(path)])  # never writes over a file


def test_a_built_in_name_means_the_shipped_file_after_a_copy_was_resolved(tmp_path):
    """Resolving a byte-identical copy of a built-in (allowed) must not make the name point at the
    copy: once the copy is gone, the name still loads the shipped file (a cap registered with
    it is kept per name)."""
    shipped = behavior.behaviors_dir() / "refusal.json"
    copy = tmp_path / "elsewhere" / "refusal.json"
    copy.parent.mkdir()
    copy.write_bytes(shipped.read_bytes())
    assert behavior.resolve(copy) == "refusal"
    copy.unlink()
    assert behavior.get_behavior("refusal").source == str(shipped.resolve())
    assert behavior.resolve("refusal", max_items=6) == "refusal" and len(behavior.get_behavior("refusal").items) <= 18
    assert behavior.resolve("refusal") == "refusal" and behavior.get_behavior("refusal").capped_from == {}
