"""A/B datasets become behaviours; the read-out reads a behaviour's own answers, oriented per item."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ws.behavior import data
from ws.behavior import files as behavior
from ws.behavior.files import BehaviorError
from ws.config import ConfigError, from_env
from ws.diffs import completions, effect
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
