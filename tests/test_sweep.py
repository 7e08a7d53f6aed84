"""Known answers for the sweep's seed-stability summary and self-test verdicts."""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest

from ws import sweep


def _summary(scores: dict[str, float]) -> pl.DataFrame:
    names = list(scores)
    return pl.DataFrame({
        "subspace": names,
        "kind": ["A-hypothesis"] * len(names),
        "axis_kind": ["write"] * len(names),
        "joint_score": [scores[n] for n in names],
        "mean_conc_act": [scores[n] for n in names],
        "mean_conc_w_combined": [scores[n] for n in names],
    })


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
        pl.Series("kind", ["A-hypothesis", "ceiling", "A-hypothesis"]),
        pl.Series("axis_kind", ["write", "ceiling", "read"]))
    st = sweep.seed_stability([SimpleNamespace(seed=0, summary=s)])
    assert st.winner == "a"
