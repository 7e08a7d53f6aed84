"""Known answers for the v8 steps that need no model: the causal candidates, the claims,
the definitions (tiny tables written here)."""

from __future__ import annotations

import math

import polars as pl

from ws.v8 import causal
from ws.v8 import report as R8
from ws.v8 import sweep as v8


def _summary():
    rows = [
        ("a", "A-hypothesis", "write"),
        ("b", "A-hypothesis", "mixed"),
        ("c", "A-hypothesis", "write"),
        ("r", "A-hypothesis", "read"),
        ("n", "A-hypothesis", "write"),
        ("TaskDiff_lora_ceiling", "ceiling", "ceiling"),
        ("dW_left_basis_ceiling", "ceiling", "ceiling"),
        ("random_orthonormal", "self-test", "self-test"),
    ]
    s = pl.DataFrame(rows, schema=["subspace", "kind", "axis_kind"], orient="row")
    seed_mean = {
        "a": 2.0,
        "b": 3.0,
        "c": 1.0,
        "r": 9.0,
        "n": float("nan"),
        "TaskDiff_lora_ceiling": 8.0,
        "dW_left_basis_ceiling": 7.0,
        "random_orthonormal": 1.0,
    }
    pc = pl.DataFrame({"subspace": list(seed_mean), "seed_mean_joint_score": list(seed_mean.values())})
    return s, pc


def test_causal_candidates_take_the_best_seed_means_then_ceilings_then_self_tests():
    s, pc = _summary()
    names, ranking = v8.causal_candidates(s, pc, 2)
    assert names == ["b", "a", "TaskDiff_lora_ceiling", "dW_left_basis_ceiling", "random_orthonormal"]
    assert ranking["b"] == (1, 3.0) and ranking["a"] == (2, 2.0)
    assert ranking["dW_left_basis_ceiling"] == (None, 7.0)
    names, _ = v8.causal_candidates(s, pc, 10)  # NaN last, read rows never
    assert names[:4] == ["b", "a", "c", "n"] and "r" not in names


def _row(name, kind, ins, ins_lo, out_hi, p95):
    return {
        "subspace": name,
        "kind": kind,
        "retention_inside": ins,
        "retention_inside_ci_lo": ins_lo,
        "retention_inside_ci_hi": ins + 0.1,
        "retention_outside": out_hi - 0.1,
        "retention_outside_ci_lo": 0.0,
        "retention_outside_ci_hi": out_hi,
        "null_p95": p95,
        "carries": causal.carries(ins_lo, p95, out_hi),
    }


def test_causal_claims_one_per_hypothesis_and_ceiling_with_the_rule():
    t = pl.DataFrame(
        [
            _row("x", "A-hypothesis", 0.8, 0.7, 0.4, 0.2),
            _row("y", "A-hypothesis", 0.3, 0.15, 0.9, 0.2),
            _row("z", "A-hypothesis", 0.8, 0.7, 1.05, 0.2),
            _row("dW", "ceiling", 1.0, 0.95, 0.1, 0.2),
            _row("random_orthonormal", "self-test", 0.1, 0.05, 0.99, 0.2),
        ]
    )
    claims = R8.causal_claims(t)
    assert [c.survives for c in claims] == [True, False, False, True]
    assert claims[0].claim == "`x` carries the behaviour" and "ceiling" in claims[3].claim
    assert "80.0% [70.0%, 90.0%]" in claims[0].evidence and "20.0%" in claims[0].evidence


def test_every_causal_column_is_defined():
    text = R8.definitions_v8_md(
        pl.DataFrame({c: ["x"] for c in ("subspace", "family", "axis_kind", "source", "kind", "definition")})
    )
    documented = set()
    for key in R8.COLUMN_DOCS:
        for part in key.split(", "):
            names = [part]
            for pat, vals in (("<part>", causal.PARTS), ("<control set>", causal.CONTROLS)):
                names = [n.replace(pat, v) for n in names for v in vals] if any(pat in n for n in names) else names
            documented |= set(names)
    documented |= {f"retention_{p}_{e}" for p in causal.PARTS for e in ("ci_lo", "ci_hi")}
    missing = [c for c in causal.CAUSAL_COLUMNS if c not in documented and c not in ("subspace", "family", "axis_kind", "kind")]
    assert not missing, f"columns without a definition: {missing}"
    for term, _ in R8.TERMS:
        assert f"**{term}**" in text


def test_pct_formats_a_fraction():
    assert R8.pct(0.123) == "12.3%" and R8.pct(float("nan")) == "NaN%" and R8.pct(None) == "NaN%"
    assert math.isclose(float(R8.pct(1.0)[:-1]), 100.0)


def test_a_carrying_subspace_that_keeps_little_or_fails_bh_is_flagged():
    from ws.v8.report import _carry_caution

    row = {"retention_inside": 0.045, "retention_outside": 0.994, "p_inside": 0.0476, "q_inside": 0.317}
    text = _carry_caution(row, 10)
    assert "only 4.5% of the writers' effect survives inside" in text and "99.4% outside" in text
    assert "does not survive BH over the 10 tested candidates (q 0.317)" in text
    assert _carry_caution({**row, "retention_inside": 0.9, "retention_outside": 0.1, "q_inside": 0.01}, 10) is None
