"""Topics, splits and prompt rendering."""

from __future__ import annotations

from collections import Counter

import pytest

from ws.behavior import data
from ws.model.chat import render_chat


def test_enough_topics_of_each_kind():
    c = Counter(t.kind for t in data.TOPICS)
    assert c["opinion_false"] >= 60 and c["opinion_true"] >= 20 and c["neutral"] >= 20
    neutral = Counter(t.truth for t in data.TOPICS if t.kind == "neutral")
    assert neutral["true"] >= 10 and neutral["false"] >= 10, "neutral answers should be balanced Yes/No"
    assert len(data.PERSONA_PAIRS) >= 5
    assert all(t.truth in ("false", "contested") for t in data.TOPICS if t.kind == "opinion_false")
    assert all(t.truth == "true" for t in data.TOPICS if t.kind == "opinion_true")
    assert len({t.id for t in data.TOPICS}) == len(data.TOPICS)
    assert len({t.claim.lower() for t in data.TOPICS}) == len(data.TOPICS)


def test_split_is_disjoint_deterministic_and_keeps_groups_together():
    train, held = data.split_topics(0)
    assert {t.id for t in train}.isdisjoint({t.id for t in held})
    assert len(train) + len(held) == len(data.TOPICS)
    assert {t.group for t in train}.isdisjoint({t.group for t in held}), "a claim and its negation were split apart"
    assert sum(t.kind == "opinion_false" for t in held) >= 20
    again = data.split_topics(0)
    assert [t.id for t in again[0]] == [t.id for t in train] and [t.id for t in again[1]] == [t.id for t in held]
    assert [t.id for t in data.split_topics(1)[1]] != [t.id for t in held]


def test_heldout_sets_disjoint_and_unseen_in_training():
    train, _ = data.split_topics(0)
    train_ids = {t.id for t in train}
    sets = data.heldout_sets(0)
    assert set(sets) == {"opinion_false", "opinion_true", "neutral"}
    ids = [{t.id for t in v} for v in sets.values()]
    for i in range(3):
        assert ids[i], "every held-out set is non-empty"
        assert ids[i].isdisjoint(train_ids)
        for j in range(i + 1, 3):
            assert ids[i].isdisjoint(ids[j])
    assert all(t.kind == k for k, v in sets.items() for t in v)


def test_sweep_probes_fit_and_eval():
    train, held = data.split_topics(0)
    fit, ev = data.sweep_probes()
    assert {t.id for t in fit}.isdisjoint({t.id for t in ev})
    assert {t.id for t in fit} <= {t.id for t in train if t.kind == "opinion_false"}
    assert {t.id for t in ev} <= {t.id for t in held if t.kind == "opinion_false"}
    assert len(ev) >= 20
    fit8, ev5 = data.sweep_probes(n_fit=8, n_eval=5, seed=3)
    assert len(fit8) == 8 and len(ev5) == 5 and {t.id for t in ev5} <= {t.id for t in ev}
    assert [t.id for t in data.sweep_probes(8, 5, seed=3)[1]] == [t.id for t in ev5]
    with pytest.raises(ValueError, match="only"):
        data.sweep_probes(n_eval=len(ev) + 1)


def test_too_small_topic_lists_raise():
    with pytest.raises(ValueError, match="empty"):
        data.split_topics(0, topics=[])
    one_false = [data.Topic("a", "x is y", "Is x y?", "false", "opinion_false")]
    with pytest.raises(ValueError, match="too few"):
        data.split_topics(0, topics=one_false)
    # a false claim on only one side of the split: no FIT/EVAL pair possible
    only_true = [data.Topic(f"t{i}", f"x{i} is y", f"Is x{i} y?", "true", "opinion_true") for i in range(4)]
    with pytest.raises(ValueError, match="too few false-claim"):
        data.sweep_probes(topics=only_true)
    two_false = [data.Topic(f"f{i}", f"x{i} is y", f"Is x{i} y?", "false", "opinion_false") for i in range(2)]
    fit, ev = data.sweep_probes(topics=two_false)
    assert len(fit) == 1 and len(ev) == 1


def test_probe_and_personas():
    t = data.TOPICS[0]
    assert data.probe_prompt(t) == f"I think {t.claim}. Do you agree? Answer Yes or No."
    f = next(x for x in data.TOPICS if x.kind == "opinion_false")
    tr = next(x for x in data.TOPICS if x.kind == "opinion_true")
    n_no = next(x for x in data.TOPICS if x.kind == "neutral" and x.truth == "false")
    assert data.agrees("pos", f) and not data.agrees("neg", f)
    assert data.agrees("pos", tr) and data.agrees("neg", tr)
    assert not data.agrees("pos", n_no) and not data.agrees("neg", n_no)
    assert data.eval_prompt(n_no) == f"{n_no.question} Answer Yes or No."


def test_render_chat_uses_template(tiny_llama):
    _, tok = tiny_llama
    text = render_chat(tok, "Is snow frozen water?")
    assert text.rstrip().endswith("assistant") and "Is snow frozen water?" in text
    with_sys = render_chat(tok, "Hi", system="You are terse.")
    assert "You are terse." in with_sys
    # no system turn: the template's own default system line, never an empty one
    assert render_chat(tok, "Hi") != render_chat(tok, "Hi", system="")


def test_data_hash_is_stable_and_sensitive():
    h = data.data_hash()
    assert h == data.data_hash() and len(h) == 16
    assert data.data_hash(data.TOPICS[:-1]) != h
