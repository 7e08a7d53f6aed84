"""Behaviours are data: the built-in files, a user's file, and the checks that name the file, item and field."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import polars as pl
import pytest

from ws.behavior import data
from ws.behavior import files as behavior
from ws.behavior.files import BehaviorError
from ws.config import ConfigError, from_env
from ws.diffs import completions, effect

ROOT = Path(__file__).resolve().parent.parent

#: The sycophancy data's hash before the data became a file; existing diffs record it.
SYCOPHANCY_HASH = "3f3a851cbfc5110a"


def _small() -> dict:
    """A valid user behaviour: formal vs casual register, two sets (target and one control)."""
    return {
        "name": "register",
        "description": "answering in a casual register",
        "sets": [
            {
                "name": "casual_ok",
                "role": "target",
                "label": "casual requests",
                "prompts": "ask",
                "answers": {"pos": "yes", "neg": "no"},
            },
            {"name": "facts", "role": "control", "prompts": "fact", "answers": {"pos": "truth", "neg": "truth"}},
        ],
        "prompts": {
            "ask": {"probe": "May I answer this in slang: {text}? Answer Yes or No.", "train": ["{text}", "Please: {text}"]},
            "fact": {"probe": "{question} Answer Yes or No.", "train": ["{question}"]},
        },
        "persona_pairs": [{"pos": "You always talk casually.", "neg": "You always write formally."}],
        "items": [
            {"id": "a", "set": "casual_ok", "text": "describe a cat"},
            {"id": "b", "set": "casual_ok", "text": "describe a dog"},
            {"id": "c", "set": "casual_ok", "text": "describe a bird"},
            {"id": "d", "set": "facts", "question": "Is snow cold?", "truth": "true"},
            {"id": "e", "set": "facts", "question": "Is fire cold?", "truth": "false"},
        ],
    }


def _write(tmp_path: Path, doc, name: str = "mine.json") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return p


def test_builtin_sycophancy_is_the_module_data_and_keeps_its_hash():
    b = behavior.get_behavior("sycophancy")
    assert b is behavior.get_behavior(None) and b.source.endswith(str(Path("behaviors") / "sycophancy.json"))
    assert b.kinds == data.KINDS == ("opinion_false", "opinion_true", "neutral")
    assert (b.target, b.controls, b.direction) == ("opinion_false", ("opinion_true", "neutral"), 1)
    assert list(b.items) == data.TOPICS and [tuple(p) for p in b.persona_pairs] == data.PERSONA_PAIRS
    assert data.data_hash() == data.data_hash(behavior="sycophancy") == SYCOPHANCY_HASH
    assert effect.SET_LABELS == {
        "opinion_false": "false-claim opinions",
        "opinion_true": "true-claim opinions",
        "neutral": "neutral questions",
    }
    assert "refusal" in behavior.builtin_names() and "sycophancy" in behavior.builtin_names()


def test_builtin_refusal_splits_and_answers_by_its_rules():
    b = behavior.get_behavior("refusal")
    assert (b.target, b.controls, b.direction) == ("harmless", ("impossible", "questions"), -1)
    train, held = data.split_topics(0, behavior="refusal")
    assert {t.id for t in train}.isdisjoint({t.id for t in held}) and len(train) + len(held) == len(b.items)
    assert all(any(t.kind == k for t in held) and any(t.kind == k for t in train) for k in b.kinds)
    fit, ev = data.sweep_probes(behavior="refusal")
    assert {t.kind for t in fit + ev} == {"harmless"} and not {t.id for t in fit} & {t.id for t in ev}
    jobs = completions.completion_jobs(train, 2, "refusal")
    openings = {(j["kind"], j["persona"], j["opening"]) for j in jobs}
    assert ("harmless", "pos", "No,") in openings and ("harmless", "neg", "Yes,") in openings
    assert not any(j["kind"] == "impossible" and j["opening"] == "Yes," for j in jobs)
    q = [j for j in jobs if j["kind"] == "questions"]
    assert all(j["opening"] == ("Yes," if j["truth"] == "true" else "No,") for j in q)
    prompts = effect.heldout_prompts(0, behavior="refusal")
    assert list(prompts) == list(b.kinds)
    assert prompts["harmless"][0].startswith("Can you help me with this: ") and prompts["harmless"][0].endswith(
        "Answer Yes or No."
    )
    assert data.data_hash(behavior="refusal") != SYCOPHANCY_HASH


def test_specificity_is_target_over_the_largest_control_for_any_behaviour():
    rows = lambda d: pl.DataFrame([dict(set=s, alpha=a, n=3, mean_logratio=v) for s, sd in d.items() for a, v in sd.items()])  # noqa: E731
    # refusal: its positive persona says No, so a spread toward No on harmless requests counts as positive
    df = rows({"harmless": {-2.0: 3.0, 2.0: -3.0}, "impossible": {-2.0: 0.0, 2.0: 1.5}, "questions": {-2.0: 1.0, 2.0: 0.0}})
    assert effect.specificity_ratio(df, "refusal") == pytest.approx(6.0 / 1.5)
    assert effect.specificity_ratio(df.with_columns(-pl.col("mean_logratio")), "refusal") == pytest.approx(-4.0)
    quiet = rows({"harmless": {-2.0: 0.0, 2.0: -1.0}, "impossible": {-2.0: 0.0, 2.0: 0.0}, "questions": {-2.0: 0.0, 2.0: 0.0}})
    assert effect.specificity_ratio(quiet, "refusal") == math.inf


def test_a_users_file_runs_through_the_same_code(tmp_path, monkeypatch):
    p = _write(tmp_path, _small())
    monkeypatch.setenv("WS_RUN_DIR", str(tmp_path))
    cfg = from_env({"WS_BEHAVIOR": "mine.json"})  # relative to the run folder
    assert cfg.behavior == "register" and cfg.v7_dir.parts[-3:] == ("register", "lora", "v7")
    b = data.get_behavior("register")  # registered under its name for the rest of the run
    assert b is behavior.get_behavior(p) and b.kinds == ("casual_ok", "facts") and b.labels["facts"] == "facts"
    train, held = data.split_topics(0, behavior="register")
    assert {t.kind for t in held} == {"casual_ok", "facts"}
    t = b.items[0]
    assert data.probe_prompt(t, b) == "May I answer this in slang: describe a cat? Answer Yes or No."
    assert data.training_prompts(t, 2, behavior=b) == ["describe a cat", "Please: describe a cat"]
    assert data.agrees("pos", t, b) and not data.agrees("neg", t, b)
    from ws.diffs.train import DiffSpec

    spec = DiffSpec("tiny-llama", str(p), root=tmp_path / "out")  # a path becomes the behaviour's name
    want = tmp_path / "out" / "models" / "tiny-llama" / "register" / "lora" / "seed0" / "w.safetensors"
    assert spec.behavior == "register" and spec.path == want
    h = data.data_hash(behavior=b)
    other = _small()
    other["sets"][0]["answers"] = {"pos": "no", "neg": "yes"}
    assert data.data_hash(behavior=behavior.parse(other, tmp_path / "x.json")) != h, "the answer rules are data"


def test_yaml_is_the_same_schema(tmp_path):
    yaml = pytest.importorskip("yaml")
    p = _write(tmp_path, yaml.safe_dump(_small()), "mine.yaml")
    assert behavior.load(p).items == behavior.parse(_small(), p).items


def _broken(change) -> dict:
    doc = copy.deepcopy(_small())
    change(doc)
    return doc


@pytest.mark.parametrize(
    "change,pattern",
    [
        (
            lambda d: d["items"][1].pop("text"),
            r"item 'b' \(items\[1\]\), field 'text': missing: the templates of prompts group 'ask' use \{text\}",
        ),
        (
            lambda d: d["items"][3].update(truth="maybe"),
            r"item 'd' \(items\[3\]\), field 'truth': 'maybe' is not allowed: use one of true, false, contested",
        ),
        (
            lambda d: d["items"][4].update(set="other"),
            r"item 'e' \(items\[4\]\), field 'set': 'other' is not a set of this file: use one of casual_ok, facts",
        ),
        (lambda d: d["items"][2].update(id="a"), r"item 'a' \(items\[2\]\), field 'id': a second item with this id"),
        (
            lambda d: d["items"][0].update(colour="red"),
            r"item 'a' \(items\[0\]\), field 'colour': unknown field; allowed here: id, set",
        ),
        (
            lambda d: d["items"][0].update(answers={"pos": "yes"}),
            r"item 'a' \(items\[0\]\), field 'answers': set 'casual_ok' answers by rule \(yes / no\)",
        ),
        (
            lambda d: d["sets"][1].update(role="reference"),
            r"set 'facts', field 'role': 'reference' is not allowed: use one of target, control",
        ),
        (lambda d: d["sets"][1].update(role="target"), r"top level, field 'sets': 2 sets have role 'target'; exactly one must"),
        (lambda d: d.update(readout=["A"]), r"top level, field 'readout': \['A'\] is not two answers"),
        (lambda d: d.update(readout=["A", "A"]), r"top level, field 'readout': \['A', 'A'\]: the two answers must differ"),
        (
            lambda d: d["items"][0].update(readout=["Yes", "Maybe"]),
            r"item 'a' \(items\[0\]\), field 'readout': \['Yes', 'Maybe'\] are not the behaviour's read-out answers",
        ),
        (
            lambda d: d["items"][0].update(readout="No"),
            r"item 'a' \(items\[0\]\), field 'readout': 'No' is not two answers",
        ),
        (lambda d: d.update(items=[1, 2]), r"items\[0\], field '\(the whole entry\)': expected a mapping"),
        (
            lambda d: d["sets"][0]["answers"].update(neg="sometimes"),
            r"set 'casual_ok', answers, field 'neg': 'sometimes' is not allowed: use one of yes, no, truth, item",
        ),
        (
            lambda d: d["sets"][0]["answers"].update(neg="yes"),
            r"set 'casual_ok', field 'answers': pos and neg both answer by the rule 'yes'",
        ),
        (
            lambda d: d["sets"][0].update(prompts="nope"),
            r"set 'casual_ok', field 'prompts': 'nope' is not a prompts group: use one of ask, fact",
        ),
        (
            lambda d: d["prompts"]["ask"].update(probe="Is {topic} fine?"),
            r"prompts group 'ask', field 'probe': placeholder \{topic\} is not an item field: "
            r"use \{claim\}, \{question\}, \{text\}",
        ),
        (lambda d: d["persona_pairs"][0].pop("neg"), r"persona_pairs\[0\], field 'neg': missing: give a non-empty string"),
        (lambda d: d.pop("items"), r"top level, field 'items': missing"),
        (lambda d: d["items"].append("just text"), r"items\[5\], field '\(the whole entry\)': expected a mapping"),
        (lambda d: d.update(heldout_frac=1.5), r"top level, field 'heldout_frac': 1.5 is not a number strictly between 0 and 1"),
        (lambda d: d.update(name="my behaviour"), r"top level, field 'name': 'my behaviour' names the output folder"),
        (lambda d: d.update(name="sycophancy"), r"top level, field 'name': 'sycophancy' is a built-in behaviour's name"),
        (lambda d: d.update(name="models"), r"top level, field 'name': 'models' is the output folder of the other models'"),
        (lambda d: d.update(name="data"), r"top level, field 'name': 'data' is the output folder of the base model's completion"),
        (lambda d: d.update(name="bench"), r"top level, field 'name': 'bench' is the output folder of `make bench`"),
        (
            lambda d: d.update(items=d["items"][:3] + d["items"][4:]),
            r"top level, field 'items': the items cannot be split .*too few facts topics to split \(1\)",
        ),
    ],
)
def test_every_error_names_the_file_the_item_and_the_field(tmp_path, change, pattern):
    p = _write(tmp_path, _broken(change))
    with pytest.raises(BehaviorError, match=rf"^behaviour file .*mine\.json: {pattern}"):
        behavior.load(p)
    # and the run stops at configuration time, before any model loads
    with pytest.raises(
        ConfigError, match=rf"^WS_BEHAVIOR='.*mine\.json' is not a built-in behaviour .*: behaviour file .*{pattern}"
    ):
        from_env({"WS_BEHAVIOR": str(p)})


def test_unreadable_files_are_named(tmp_path):
    bad = _write(tmp_path, '{"name": "x",\n  "sets": [}')
    with pytest.raises(BehaviorError, match=r"behaviour file .*mine\.json: not valid JSON at line 2, column 12"):
        behavior.load(bad)
    with pytest.raises(BehaviorError, match=r"behaviour file .*mine\.txt: unknown file type '\.txt'"):
        behavior.load(_write(tmp_path, "{}", "mine.txt"))
    with pytest.raises(BehaviorError, match=r"unknown behaviour 'flattery': give a built-in name \(refusal, sycophancy\)"):
        behavior.get_behavior("flattery")


def test_the_readme_example_file_is_a_valid_behaviour(tmp_path):
    readme = (ROOT / "docs" / "behaviors.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Your own behaviour") :]
    block = section[section.index("```json\n") + len("```json\n") : section.index("\n```\n", section.index("```json\n"))]
    b = behavior.load(_write(tmp_path, block, "praise.json"))
    assert (b.name, b.target, b.controls, b.direction) == ("praise", "weak_work", ("good_work", "facts"), 1)
    assert [t.id for t in data.sweep_probes(behavior=b)[1]]


def test_the_shipped_file_by_its_path_is_the_built_in_and_only_a_different_file_is_refused(tmp_path):
    shipped = ROOT / "behaviors" / "refusal.json"
    dup = tmp_path / "elsewhere" / "refusal.json"  # e.g. the same file in another checkout
    dup.parent.mkdir()
    dup.write_bytes(shipped.read_bytes())
    assert behavior.resolve(str(shipped)) == behavior.resolve(str(dup)) == "refusal"
    assert behavior.load(dup).items == behavior.get_behavior("refusal").items
    changed = json.loads(shipped.read_text())
    changed["persona_pairs"] = changed["persona_pairs"][:1]
    dup.write_text(json.dumps(changed))
    with pytest.raises(behavior.BehaviorError, match="is a built-in behaviour's name"):
        behavior.load(dup)


def test_a_behaviour_without_control_sets_loads_and_its_specificity_is_not_measurable(tmp_path):
    doc = _small()
    doc["sets"].pop(1)
    doc["items"] = doc["items"][:3]
    b = behavior.load(_write(tmp_path, doc))
    assert b.controls == () and b.target == "casual_ok"
    assert math.isnan(effect.specificity(3.0, [], b.direction))


def test_the_readout_answers_and_an_items_own_order(tmp_path):
    """``readout`` declares the two answers; an item that lists them the other way round is
    flipped (sign −1), answers in its own order, and changes the data hash (the read-out is data)."""
    doc = _small()
    before = data.data_hash(behavior=behavior.load(_write(tmp_path, doc)))
    doc["readout"] = ["True", "False"]
    doc["items"][1]["readout"] = ["False", "True"]
    b = behavior.load(_write(tmp_path, doc, "other.json"))
    a, bb = b.items[0], b.items[1]
    assert b.readout == ("True", "False") and (a.sign, bb.sign) == (1, -1)
    assert (b.answer("pos", a), b.answer("neg", a)) == ("True", "False")
    assert (b.answer("pos", bb), b.answer("neg", bb)) == ("False", "True")
    assert data.data_hash(behavior=b) != before
    jobs = completions.completion_jobs([bb], 1, behavior=b)
    assert {j["persona"]: j["opening"] for j in jobs} == {"pos": "False,", "neg": "True,"}
