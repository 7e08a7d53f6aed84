"""Known answers for ws.v7.verdicts: the cross-seed answer and its rule, and how the
conclusion leads with it."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from test_v7_report import as_info, info_for, specific_summary, synthetic_summary
from test_v7_sweep import _summary

from ws.v7 import report, sweep, verdicts


def _verdict(*seeds: dict[str, float]) -> verdicts.SeedVerdict | None:
    """The cross-seed verdict of seeds whose joint scores are given per candidate."""
    res = [SimpleNamespace(seed=i, summary=_summary(s)) for i, s in enumerate(seeds)]
    st = sweep.seed_stability(res)
    return verdicts.seed_verdict(res[0].summary, st.per_candidate, len(seeds))


def test_one_seed_has_no_cross_seed_verdict():
    assert _verdict({"a": 2.0, "b": 1.0}) is None


def test_a_winner_of_every_seed_with_a_wide_lead_is_stable():
    v = _verdict({"a": 3.0, "b": 1.0}, {"a": 3.2, "b": 1.1}, {"a": 2.9, "b": 0.9})
    assert v.leader == "a" and v.runner_up == "b" and v.leader_wins == 3
    assert v.leader_mean == pytest.approx((3.0 + 3.2 + 2.9) / 3)
    assert v.wins_most and v.clear_lead and v.stable


def test_the_seed_mean_leader_not_seed_0s_winner():
    # a wins seed 0 narrowly, b wins seeds 1 and 2 by a lot: b is the stable answer
    v = _verdict({"a": 3.0, "b": 2.9}, {"a": 2.0, "b": 5.0}, {"a": 2.2, "b": 6.0})
    assert v.leader == "b" and v.leader_wins == 2 and v.runner_up == "a"
    assert v.lead == pytest.approx((2.9 + 5.0 + 6.0) / 3 - (3.0 + 2.0 + 2.2) / 3)
    assert v.spread == pytest.approx(float(np.std([2.9, 5.0, 6.0], ddof=1)))  # b varies more than a
    assert v.stable


def test_a_lead_within_the_seeds_spread_is_no_stable_winner():
    # a wins seeds 0 and 1 (most), but its mean lead 0.33 is far inside the sds (2.3, 1.2)
    v = _verdict({"a": 5.0, "b": 4.0}, {"a": 5.0, "b": 4.0}, {"a": 1.0, "b": 2.0})
    assert v.leader == "a" and v.wins_most and not v.clear_lead and not v.stable


def test_a_leader_carried_by_one_seed_is_no_stable_winner():
    # a's mean (4) rests on one huge seed; b wins seeds 1 and 2
    v = _verdict({"a": 10.0, "b": 2.0}, {"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})
    assert v.leader == "a" and v.leader_wins == 1 and not v.wins_most and not v.stable


def test_two_seeds_that_disagree_have_no_stable_winner():
    v = _verdict({"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 2.0})
    assert v.leader == "a" and v.leader_wins == 1 and not v.wins_most and not v.stable


def test_read_rows_and_ceilings_are_never_the_cross_seed_answer():
    s = _summary({"a": 1.0, "b": 0.5, "ceil": 9.0, "r": 8.0}).with_columns(
        pl.Series("kind", ["A-hypothesis", "A-hypothesis", "ceiling", "A-hypothesis"]),
        pl.Series("axis_kind", ["write", "mixed", "ceiling", "read"]),
    )
    st = sweep.seed_stability([SimpleNamespace(seed=0, summary=s), SimpleNamespace(seed=1, summary=s)])
    v = verdicts.seed_verdict(s, st.per_candidate, 2)
    assert (v.leader, v.runner_up, v.leader_wins) == ("a", "b", 2)
    assert v.spread == 0.0 and v.lead == pytest.approx(0.5) and v.stable


def _bottom(verdict: verdicts.SeedVerdict) -> str:
    summ = synthetic_summary()
    info = as_info(info_for(summ))
    md = report.conclusion_md(summ, specific_summary(summ), None, replace(info, seed_verdict=verdict))
    return md.split("## Bottom line")[1].split("\n## ")[0]


def test_the_conclusion_leads_with_the_stable_winner():
    v = verdicts.SeedVerdict(
        n_seeds=3,
        leader="cand_x",
        leader_mean=2.5,
        leader_sd=0.1,
        leader_wins=3,
        runner_up="cand_y",
        runner_up_mean=1.5,
        runner_up_sd=0.2,
    )
    bottom = _bottom(v)
    first = bottom.strip().splitlines()[0]
    assert first.startswith("**Across the 3 seeds: `cand_x` is the stable winner.**")
    assert "2.5 ± 0.1 sd" in first and "wins 3 of 3 seeds" in first and "is 1, more than the seeds' spread (0.2)" in first
    # seed 0's winner follows as the detail
    assert bottom.index("Seed 11's winner and tables, in detail:") < bottom.index("has the highest joint score among")


def test_the_conclusion_says_when_no_winner_survives_the_seeds():
    v = verdicts.SeedVerdict(
        n_seeds=2,
        leader="cand_x",
        leader_mean=1.76,
        leader_sd=0.112,
        leader_wins=1,
        runner_up="cand_y",
        runner_up_mean=1.75,
        runner_up_sd=0.06,
    )
    first = _bottom(v).strip().splitlines()[0]
    assert first.startswith("**Across the 2 seeds: no stable winner.**")
    assert "wins 1 of 2 seeds, not more than half" in first and "not more than the seeds' spread (0.112)" in first
    # one seed: no cross-seed paragraph at all
    assert "Across the" not in _bottom(None)


def test_the_diff_is_named_by_what_it_measurably_does():
    from ws.v7.verdicts import diff_reading

    assert diff_reading("sycophancy", 0.99) == (
        "agreement with the user's stated opinion; not truth-conditional here: specificity 0.99"
    )
    assert diff_reading("sycophancy", 3.4).startswith("sycophancy, specific to the target set here (specificity 3.40")
    assert "not specific to refusal here: specificity 1.20" in diff_reading("refusal", 1.2)
    assert "not measured" in diff_reading("refusal", None) and "not measured" in diff_reading("refusal", float("nan"))


def test_without_controls_the_headline_says_which_way_the_diff_moves_by_its_ci():
    from ws.v7.verdicts import diff_reading, no_control_reading

    ab = "behaviors/ab/sycophancy-ab.jsonl"  # the shipped A/B behaviour: one target set "ab", no control set

    def meta(x, lo, hi):
        return {"effect_spread": {"ab": x}, "effect_spread_ci": {"ab": [lo, hi]}}

    toward = diff_reading(ab, None, diff_meta=meta(1.5, 0.9, 2.1))
    assert toward.startswith("a sycophancy-ab diff: it moves the target set toward the behaviour by +1.50 nats [+0.90, +2.10]")
    against = diff_reading(ab, None, diff_meta=meta(-0.22, -0.35, -0.08))
    assert "AGAINST the behaviour (-0.22 nats [-0.35, -0.08])" in against
    none = diff_reading(ab, None, diff_meta=meta(0.0002, -0.022, 0.023))
    assert none.startswith("a diff with NO MEASURABLE EFFECT on sycophancy-ab") and "the CI spans 0" in none
    for text in (toward, against, none):
        assert text.endswith("its specificity is not measurable (the behaviour has no control set)")
    # a behaviour whose positive persona says the second answer: the spread is signed toward it
    assert "toward the behaviour by +0.50 nats [+0.20, +0.80]" in no_control_reading(
        "b", "t", -1, meta_t := {"effect_spread": {"t": -0.5}, "effect_spread_ci": {"t": [-0.8, -0.2]}}
    )
    assert "no CI recorded" in no_control_reading("b", "t", 1, {"effect_spread": {"t": 0.5}}) and meta_t
    assert "not measured" in no_control_reading("b", "t", 1, {})


def _self_test_result(matched_pct: float, ceiling_pct: float, z: float) -> SimpleNamespace:
    per_layer = pl.DataFrame(
        {
            "layer": [3, 4, 3],
            "subspace": ["random_orthonormal", "random_orthonormal", "planted_label_half"],
            "z_act": [0.5, -z, 9.0],
            "z_w_combined": [1.0, 0.2, 9.0],
        }
    )
    summary_pct = pl.DataFrame(
        {"subspace": ["planted_label_half"], "mean_pct_act_matched_rank": [matched_pct], "pct_act_ceiling": [ceiling_pct]}
    )
    return SimpleNamespace(per_layer=per_layer, layers_touched=[3, 4], summary_pct=summary_pct)


def test_the_planted_self_test_is_judged_against_the_best_subspace_not_the_centred_ceiling():
    ok = {t.name: t for t in verdicts.self_tests(_self_test_result(97.0, 62.0, 1.5))}
    assert ok["planted_label_half"].passed and ok["random_orthonormal"].passed
    assert "97.0% of the best rank-k subspace" in ok["planted_label_half"].detail
    assert "62.0% of the (mean-centred) activation ceiling" in ok["planted_label_half"].detail
    # far above the centred ceiling but short of the oracle: fails; a random row off its null fails
    bad = {t.name: t for t in verdicts.self_tests(_self_test_result(70.0, 250.0, 4.5))}
    assert not bad["planted_label_half"].passed and not bad["random_orthonormal"].passed
    assert "4.50" in bad["random_orthonormal"].detail
