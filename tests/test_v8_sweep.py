"""Known answers for the v8 steps that need no model: the causal candidates, the claims,
the definitions (tiny tables written here)."""

from __future__ import annotations

import json
import math

import polars as pl

from ws.config import Config
from ws.diffs.effect import readout_of
from ws.v8 import causal
from ws.v8 import report as R8
from ws.v8 import sweep as v8
from ws.v8.results import ConclusionFacts


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


def _facts(spread: tuple[float, float, float]) -> ConclusionFacts:
    return ConclusionFacts(
        title="t",
        seed=0,
        n_null=20,
        layers_touched=[1, 2],
        n_target=24,
        controls=[],
        target_label="false claims",
        control_labels={},
        writers_share=(1.0, 0.9, 1.1),
        writers_spread=spread,
        full_spread=(2.0, 1.5, 2.5),
        v7_leader=None,
        v7_claims=[],
        self_tests=[],
        caveats=[],
        cost=[],
        artifacts=[],
    )


def _causal_row(name, ins, ins_lo, out, out_hi, p95=0.025):
    r = {**_row(name, "A-hypothesis", ins, ins_lo, out_hi, p95), "retention_outside": out}
    r |= {"carries": causal.carries(ins_lo, p95, out_hi), "above_chance": causal.above_chance(ins_lo, p95, out_hi)}
    r |= {"mean_rank": 8.0, "energy_frac_inside": 0.1, "null_mean": 0.02, "null_sd": 0.007, "z_inside": 5.0}
    r |= {"p_inside": 1e-9, "p_inside_method": "normal", "p_inside_empirical": 1 / 21, "null_fit_p": 0.5, "q_inside": 1e-8}
    r |= {"retention_normmatched": 0.5, "retention_normmatched_ci_lo": 0.4, "retention_normmatched_ci_hi": 0.6}
    return r | {"null_normmatched_p95": 0.1}


def test_the_conclusion_separates_carrying_from_contributing_above_chance():
    weak = _causal_row("weak", 0.034, 0.030, 0.996, 0.998)  # the case
    t = pl.DataFrame([weak, _causal_row("strong", 1.43, 1.40, 0.1, 0.2)])
    text = "\n".join(R8._carry_lines(t, _facts((1.0, 0.8, 1.2))))
    assert "**`strong` carries the behaviour** (most of the writers' effect: inside CI ≥ 50.0%" in text
    assert "p 1e-09 (normal tail; empirical 0.0476)" in text
    assert "Contribute above chance" in text and "`weak` (inside 3.4%, outside 99.6%)" in text
    assert "only 3.4% of the writers' effect survives inside" in text
    only_weak = "\n".join(R8._carry_lines(pl.DataFrame([weak]), _facts((1.0, 0.8, 1.2))))
    assert "**No tested write/mixed candidate carries the behaviour**" in only_weak and "`weak` (inside 3.4%" in only_weak


def test_no_verdict_when_the_writers_have_no_measurable_effect():
    row = _causal_row("c", float("nan"), float("nan"), float("nan"), float("nan"))
    assert row["carries"] is None and row["above_chance"] is None
    text = "\n".join(R8._carry_lines(pl.DataFrame([row]), _facts((0.05, -0.1, 0.2))))
    assert "no measurable effect to divide by" in text and "No tested write/mixed candidate carries the behaviour" in text
    assert "its CI spans zero" in text and "carries the behaviour**:" not in text


def test_the_causal_items_are_a_seeded_subset_and_the_built_in_behaviours_keep_all():
    assert causal.item_subset(10, 48, "s") == list(range(10)) and causal.item_subset(10, None, "s") == list(range(10))
    a = causal.item_subset(100, 12, "opinion_false", 0)
    assert len(a) == 12 == len(set(a)) and a == sorted(a) and a == causal.item_subset(100, 12, "opinion_false", 0)
    assert a != causal.item_subset(100, 12, "opinion_false", 1) and a != causal.item_subset(100, 12, "neutral", 0)
    default = Config().causal_items
    for b in ("sycophancy", "refusal"):  # the built-in runs, smoke and full, steer every held-out item
        assert all(used == n for used, n in causal.causal_item_counts(b, default).values()), b
    assert causal.causal_item_counts("sycophancy", 5)["opinion_false"] == (5, 24)


def test_a_large_ab_file_is_cut_to_the_causal_items_with_its_signs(tiny_llama, tmp_path):
    items = []
    for i in range(200):
        m, o = ("A", "B") if i % 3 else ("B", "A")
        q = f"Claim {i}: the sky is green. Right?\n\nChoices:\n (A) Yes, right.\n (B) No."
        items.append({"question": q, "answer_matching_behavior": f" ({m})", "answer_not_matching_behavior": f" ({o})"})
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    tok = tiny_llama[1]
    full, ro = causal.heldout_texts(tok, str(path)), readout_of(str(path))
    texts, sub = causal.causal_prompts(tok, str(path), 10, 0)
    (s,) = texts
    assert len(full[s]) > 10 and len(texts[s]) == 10 and sub.answers == ro.answers
    keep = causal.item_subset(len(full[s]), 10, s, 0)
    assert texts[s] == [full[s][i] for i in keep] and sub.signs[s] == [ro.signs[s][i] for i in keep]


def test_the_figures_cluster_labels_are_runs_of_numbers():
    assert R8._number_list([2, 3, 4, 5, 6, 7, 8, 9, 10, 14]) == "2–10, 14"
    assert R8._number_list([3, 1, 2]) == "1–3" and R8._number_list([1, 2, 5, 6, 9]) == "1, 2, 5, 6, 9"


def test_the_retention_figure_names_the_carrier_and_groups_the_cluster(tmp_path):
    """A carrier far from a cluster of null-like rows: the carrier's label names it, the cluster
    shares one label; the figure is written."""
    import matplotlib

    matplotlib.use("Agg")
    rows = [_causal_row("carrier", 1.4, 1.3, -0.05, 0.0), *[_causal_row(f"n{i}", 0.01 * i, 0.0, 1.0, 1.05) for i in range(1, 6)]]
    t = pl.DataFrame([r | {"family": "f"} for r in rows])
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    names = R8._plane_panel(ax, t, pl.DataFrame({"retention": [0.0, 0.01, 0.02]}), {"f": "C0"})
    texts = [a.get_text() for a in ax.texts]
    assert names[0] == "carrier" and "1. carrier: carries" in texts and "2–6" in texts and len(texts) == 2
