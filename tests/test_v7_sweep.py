"""Known answers for the sweep's seed-stability summary and self-test verdicts."""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest

from ws.v7 import sweep, verdicts


def _summary(scores: dict[str, float]) -> pl.DataFrame:
    names = list(scores)
    return pl.DataFrame(
        {
            "subspace": names,
            "kind": ["A-hypothesis"] * len(names),
            "axis_kind": ["write"] * len(names),
            "joint_score": [scores[n] for n in names],
            "mean_conc_act": [scores[n] for n in names],
            "mean_conc_w_combined": [scores[n] for n in names],
        }
    )


def test_identical_rankings_are_stable():
    s = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5}
    res = [SimpleNamespace(seed=i, summary=_summary(s)) for i in (0, 1, 2)]
    st = sweep.seed_stability(res)
    assert st.winner == "a" and st.winner_wins == 3 and st.stable
    assert st.tau["kendall_tau"].to_list() == pytest.approx([1.0, 1.0, 1.0])
    row = st.per_candidate.filter(pl.col("subspace") == "a").row(0, named=True)
    assert row["seed_sd_joint_score"] == pytest.approx(0.0) and row["seeds_won"] == 3


def test_reversed_ranking_is_unstable():
    a = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5}
    b = {"a": 0.5, "b": 1.0, "c": 2.0, "d": 3.0}
    st = sweep.seed_stability([SimpleNamespace(seed=0, summary=_summary(a)), SimpleNamespace(seed=7, summary=_summary(b))])
    assert st.winners == {0: "a", 7: "d"}
    assert st.winner_wins == 1 and not st.stable
    assert st.tau["kendall_tau"][0] == pytest.approx(-1.0)


def test_read_rows_and_ceilings_never_win():
    s = _summary({"a": 1.0, "ceil": 9.0, "r": 8.0}).with_columns(
        pl.Series("kind", ["A-hypothesis", "ceiling", "A-hypothesis"]), pl.Series("axis_kind", ["write", "ceiling", "read"])
    )
    st = sweep.seed_stability([SimpleNamespace(seed=0, summary=s)])
    assert st.winner == "a"


def test_mean_leader_is_the_best_seed_mean_and_skips_read_rows_and_ceilings():
    # a wins seed 0 narrowly, b wins seeds 1 and 2 by a lot: b leads by the mean
    s0 = _summary({"a": 3.0, "b": 2.9, "c": 1.0})
    s1 = _summary({"a": 2.0, "b": 5.0, "c": 1.0})
    s2 = _summary({"a": 2.2, "b": 6.0, "c": 1.0})
    st = sweep.seed_stability([SimpleNamespace(seed=i, summary=s) for i, s in enumerate((s0, s1, s2))])
    ml = verdicts.mean_leader(s0, st.per_candidate)
    assert st.winner == "a" and ml["subspace"] == "b"
    assert ml["seed_mean_joint_score"] == pytest.approx((2.9 + 5.0 + 6.0) / 3)
    # a read row or a ceiling with a higher mean is never the leader
    s = _summary({"a": 1.0, "ceil": 9.0, "r": 8.0}).with_columns(
        pl.Series("kind", ["A-hypothesis", "ceiling", "A-hypothesis"]), pl.Series("axis_kind", ["write", "ceiling", "read"])
    )
    st = sweep.seed_stability([SimpleNamespace(seed=0, summary=s), SimpleNamespace(seed=1, summary=s)])
    assert verdicts.mean_leader(s, st.per_candidate)["subspace"] == "a"
