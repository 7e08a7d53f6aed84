"""The cross-adapter comparison: its bootstrap and ranking rules on known inputs, and the
notebook end to end in smoke mode (on tiny Llama: a LoRA per persona, IA³'s multiplicative
one without o_proj, an S-space type with its calibration moments and planted basis), twice;
the bidirectional LoRA in the shared refusal run (lora, bidir). That every registered type
trains and gives its diff is tested per type (tests/test_adapters.py, tests/test_sspace_adapters.py)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from smoke_env import smoke_env

from ws.behavior.data import get_behavior
from ws.core.bootstrap import percentile_interval
from ws.core.markdown import fmt_num
from ws.cross_adapter import compare as X
from ws.cross_adapter.report import claims
from ws.diffs import effect

ROOT = Path(__file__).resolve().parent.parent
#: the types the end-to-end run compares (``make cross-adapter``'s default is every registered type)
ADAPTERS = ("lora", "ia3", "sspace_corda")


# ----------------------------------------------------------------------------- the math
def test_row_draws_resample_the_same_prompts_for_every_seed():
    vals = np.array([[1.0, 2.0, 3.0, 4.0], [11.0, 12.0, 13.0, 14.0]])
    d = X.row_draws(vals, n_boot=50, seed=3)
    assert d.shape == (2, 50)
    assert np.allclose(d[1] - d[0], 10.0), "the two seeds' draws use the same prompt indices"
    assert np.array_equal(d, X.row_draws(vals, n_boot=50, seed=3))
    # NaN prompts are left out of a draw's mean
    nan = X.row_draws(np.array([[1.0, np.nan, 1.0, 1.0]]), 40, 0)
    assert np.all((nan == 1.0) | np.isnan(nan))


def test_over_seeds_with_one_seed_is_the_identity_and_with_several_mixes_them():
    one = np.arange(10.0)[None, :]
    assert np.array_equal(X.over_seeds(one, X.seed_picks(1, 10, 0)), one[0])
    two = np.stack([np.zeros(2000), np.ones(2000)])
    m = X.over_seeds(two, X.seed_picks(2, 2000, 0))
    assert set(np.unique(m)) == {0.0, 0.5, 1.0}
    assert abs(m.mean() - 0.5) < 0.05
    lo, hi = percentile_interval(m)
    assert lo == 0.0 and hi == 1.0


def _per_prompt(spreads: dict[str, list[float]]) -> pl.DataFrame:
    rows = []
    for s, vals in spreads.items():
        for j, v in enumerate(vals):
            for a, sign in ((-1.0, -0.5), (1.0, 0.5)):
                rows.append(dict(set=s, alpha=a, prompt_idx=j, prompt=f"{s}{j}", logratio=sign * v, mass=0.5))
    return pl.DataFrame(rows)


def test_effect_stats_known_answer_and_the_suite_s_specificity():
    per = _per_prompt({"opinion_false": [6.0, 8.0, 10.0], "opinion_true": [2.0, 2.0, 2.0], "neutral": [-4.0, -4.0, -4.0]})
    assert np.allclose(X.prompt_spreads(per, "opinion_false", 1.0), [6.0, 8.0, 10.0])
    run = X.AdapterRun("lora", [], None, {0: per})
    st = X.effect_stats(run, 1.0, n_boot=200, seed=0)
    assert st["opinion_false"] == pytest.approx(8.0) and st["neutral"] == pytest.approx(-4.0)
    assert st["specificity"] == pytest.approx(2.0)
    assert 6.0 <= st["opinion_false_ci_lo"] < 8.0 < st["opinion_false_ci_hi"] <= 10.0
    assert st["opinion_true_ci_lo"] == st["opinion_true_ci_hi"] == pytest.approx(2.0)
    # the same rule as ws.diffs.effect.specificity_ratio
    summ = effect.summarize_effect(per, n_boot=10)
    assert float(X.specificity(8.0, [2.0, -4.0])) == pytest.approx(effect.specificity_ratio(summ)) == 2.0
    assert X.specificity(np.array([1.0, -1.0, 0.0]), [np.zeros(3), np.zeros(3)]).tolist()[:2] == [math.inf, -math.inf]
    assert float(X.specificity(8.0, [2.0, -4.0], direction=-1)) == -2.0, "a behaviour whose positive persona says No"
    assert math.isnan(float(X.specificity(8.0, []))), "no control set: specificity cannot be measured"
    # a diff without an effect table (imported) gives NaN, not an error
    assert math.isnan(X.effect_stats(X.AdapterRun("lora", [], None, {0: None}), 1.0, 10, 0)["specificity"])


def _cands(adapter: str, order: list[str], top: dict[str, int] | None = None) -> pl.DataFrame:
    n = len(order)
    top = top or {}
    return pl.DataFrame(
        {
            "adapter": [adapter] * n,
            "rank": list(range(1, n + 1)),
            "subspace": order,
            "family": ["f"] * n,
            "axis_kind": ["write"] * n,
            "seed_mean_joint_score": [float(n - i) for i in range(n)],
            "joint_ci_lo": [0.0] * n,
            "joint_ci_hi": [9.0] * n,
            "seed_mean_conc_act": [2.0] * n,
            "conc_act_ci_lo": [1.5] * n,
            "conc_act_ci_hi": [2.5] * n,
            "seed_mean_conc_w_combined": [2.0] * n,
            "conc_w_ci_lo": [1.0] * n,
            "conc_w_ci_hi": [3.0] * n,
            "n_seeds": [2] * n,
            "seeds_won": [0] * n,
            "seeds_in_top_k": [top.get(s, 2 if i < X.TOP_K else 0) for i, s in enumerate(order)],
            "best_seed_rank": [1] * n,
            "worst_seed_rank": [n] * n,
        }
    )


NAMES = [f"c{i}" for i in range(12)]


def test_rank_table_names_behaviour_and_adapter_level_candidates():
    a = _cands("lora", NAMES)
    b = _cands("bidir", ["c0", "c1", "c2", "c3", "c9", "c5", "c6", "c7", "c8", "c4", "c10", "c11"])
    r = X.rank_table({"lora": a, "bidir": b})
    level = dict(zip(r["subspace"].to_list(), r["level"].to_list(), strict=True))
    assert [n for n, lv in level.items() if lv == "behaviour-level"] == ["c0", "c1", "c2", "c3"]
    assert {n for n, lv in level.items() if lv == "adapter-level"} == {"c4", "c9"}
    assert level["c11"] == "none"
    assert r["subspace"].to_list()[:4] == ["c0", "c1", "c2", "c3"], "sorted by mean rank"
    assert set(X.rank_table({"lora": a})["level"].to_list()) == {"single adapter"}
    tau = X.tau_table({"lora": a, "bidir": b})
    assert tau.height == 1 and 0 < tau["kendall_tau"][0] < 1 and tau["n"][0] == 12
    assert X.tau_table({"lora": a, "lora2": a.with_columns(pl.lit("lora2").alias("adapter"))})["kendall_tau"][0] == pytest.approx(
        1.0
    )


def _summary(**spec) -> pl.DataFrame:
    rows = []
    for a, (sp, lo, hi, ov, win) in spec.items():
        rows.append(
            dict(
                adapter=a,
                n_seeds=2,
                seeds="0,1",
                unit_alpha=0.5 if a == "bidir" else 1.0,
                spread_opinion_false=sp,
                spread_opinion_false_ci_lo=sp - 1,
                spread_opinion_false_ci_hi=sp + 1,
                specificity=(lo + hi) / 2,
                specificity_ci_lo=lo,
                specificity_ci_hi=hi,
                winner=win,
                winner_seeds_won=2,
                winner_joint_score=2.0,
                winner_joint_ci_lo=1.5,
                winner_joint_ci_hi=2.5,
                oracle_overlap_cos=ov,
                oracle_overlap_ci_lo=ov - 0.1,
                oracle_overlap_ci_hi=ov + 0.1,
                self_tests_passed=4,
                self_tests=4,
            )
        )
    return pl.DataFrame(rows)


def test_claims_verdicts_follow_the_evidence():
    a = _cands("lora", NAMES)
    b = _cands(
        "bidir", ["c0", "c1", "c2", "c3", "c9", "c5", "c6", "c7", "c8", "c4", "c10", "c11"], top={"c3": 1}
    )  # c3 is in bidir's top 5 in one seed of two
    cands = pl.concat([a, b])
    ranks = X.rank_table({"lora": a, "bidir": b})
    tau = X.tau_table({"lora": a, "bidir": b})
    summ = _summary(lora=(4.0, 0.9, 1.1, 0.6, "c0"), bidir=(6.0, 1.3, 1.5, 0.4, "c0"))
    rows = {c.claim: (c.evidence, c.survives) for c in claims(summ, cands, ranks, tau)}
    verdict = {c.split(" ")[0]: ok for c, (_, ok) in rows.items() if c.startswith("`")}
    assert verdict["`c0`"] is True and verdict["`c3`"] is False, "c3 misses bidir's top 5 in one seed"
    assert verdict["`c4`"] is True and verdict["`c9`"] is True
    one = next(ok for c, (_, ok) in rows.items() if c.startswith("One candidate"))
    assert one is True
    strongest = next((e, ok) for c, (e, ok) in rows.items() if c.startswith("The adapter whose diff"))
    assert strongest[1] is True and "bidir: spread 6" in strongest[0]
    bidir = next(ok for c, (_, ok) in rows.items() if c.startswith("One bidirectional LoRA"))
    assert bidir is True
    some = next(ok for c, (_, ok) in rows.items() if c.startswith("Some adapter's diff"))
    assert some is True
    # one adapter: nothing across adapters can be tested
    single = claims(summ.head(1), a, X.rank_table({"lora": a}), X.tau_table({"lora": a}))
    untested = {c.claim.split(" (")[0] for c in single if c.survives is None}
    assert "One candidate is the seed-mean winner for every adapter" in untested
    assert not any(c.claim.startswith("`") for c in single)


# ----------------------------------------------------------------------------- end to end
def _env(base: Path, **extra: str) -> dict:
    env = smoke_env(base)
    env["WS_ADAPTERS"] = ",".join(ADAPTERS)
    env.pop("WS_BEHAVIOR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env | extra


def _run(base: Path, **extra: str) -> None:
    """``make cross-adapter`` from a checkout (tests/make_targets.py), every folder under ``base``."""
    from make_targets import checkout, ok, run_make

    env = {k: v for k, v in _env(base, **extra).items() if k.startswith("WS_")}
    env.pop("WS_RUN_DIR", None)
    ok(run_make(checkout(base / "repo"), "cross-adapter", base=base, timeout=1800, **env))


#: the behaviour's folder of the smoke model (tiny-llama: not the embedded one, so under models/)
SYC = Path("out", "models", "tiny-llama", "sycophancy")


def cross(base: Path) -> Path:
    return base / SYC / "cross_adapter"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cross")
    _run(base)
    return base


@pytest.mark.slow
def test_every_compared_adapter_is_built_swept_and_compared(smoke):
    for name in (*X.TABLES, *X.FIGURES, X.CONCLUSION):
        assert (cross(smoke) / name).stat().st_size > 0, name
    assert not [p.name for p in cross(smoke).iterdir() if p.name.startswith(".")], "temporary files left behind"
    for a in ADAPTERS:
        assert (smoke / SYC / a / "seed0" / "w.safetensors").exists(), a
        assert (smoke / SYC / a / "v7" / "v7_conclusion.md").exists(), a
    summ = pl.read_csv(cross(smoke) / "cross_adapter_summary.tsv", separator="\t")
    assert summ["adapter"].to_list() == list(ADAPTERS)
    assert summ.filter(pl.col("adapter") == "ia3")["layers_without_oproj"][0] > 0
    cands = pl.read_csv(cross(smoke) / "cross_adapter_candidates.tsv", separator="\t")
    for a in ADAPTERS:
        ranks = cands.filter(pl.col("adapter") == a)["rank"].to_list()
        assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) > 10
    ranks = pl.read_csv(cross(smoke) / "cross_adapter_ranks.tsv", separator="\t")
    assert [f"rank_{a}" for a in ADAPTERS] == [c for c in ranks.columns if c.startswith("rank_")]
    assert pl.read_csv(cross(smoke) / "cross_adapter_tau.tsv", separator="\t").height == 3
    corda = summ.filter(pl.col("adapter") == "sspace_corda").row(0, named=True)
    assert corda["self_tests_passed"] == corda["self_tests"], "the planted S-space basis is found end to end"
    # the matched KL budget: an α per adapter, the spreads at it, and its own section of the conclusion
    assert (summ["kl_budget"] == 0.002).all()  # WS_KL_BUDGET's smoke default: the tiny model's KL stays small
    text = (cross(smoke) / X.CONCLUSION).read_text()
    assert "## At a matched budget" in text
    reached = summ.filter(pl.col("budget_alpha").is_finite())
    assert "lora" in reached["adapter"].to_list() and (reached["budget_alpha"] > 0).all()
    assert reached["budget_spread_opinion_false"].is_finite().all()
    for a in summ.filter(~pl.col("budget_alpha").is_finite())["adapter"].to_list():  # a tiny diff may never reach it
        assert f"`{a}` seed 0: its KL stays below the matched budget" in text, a


@pytest.mark.slow
def test_ia3_weight_cells_are_nan_never_zero(smoke):
    per = pl.read_csv(smoke / SYC / "ia3" / "v7" / "v7_per_layer.csv", infer_schema_length=None)
    touched = per.filter(pl.col("conc_w_downproj").is_not_nan())
    assert touched.height > 0
    assert touched["conc_w_oproj"].is_nan().all(), "IA3 has no o_proj delta: its cells must be NaN"
    assert "no o_proj delta" in (smoke / SYC / "ia3" / "v7" / "v7_conclusion.md").read_text()
    assert "`ia3` has no o_proj delta" in (cross(smoke) / X.CONCLUSION).read_text()


@pytest.mark.slow
def test_conclusion_numbers_come_from_the_tables(smoke):
    text = (cross(smoke) / X.CONCLUSION).read_text()
    summ = pl.read_csv(cross(smoke) / "cross_adapter_summary.tsv", separator="\t")
    for r in summ.iter_rows(named=True):
        assert f"`{r['winner']}`" in text
        assert fmt_num(r["specificity"]) in text and fmt_num(r["winner_conc_act"]) in text
    assert "SMOKE MODE" in text and "## Which claims survive" in text
    for a in ADAPTERS:
        assert f"../{a}/v7/v7_conclusion.md" in text


@pytest.mark.slow
def test_a_rerun_gives_byte_identical_tables(smoke, tmp_path):
    """A second run with the same diffs (copied: every adapter's training is seeded, see
    tests/test_adapters.py) and a fresh cache and output folders writes the same bytes."""
    for a in ADAPTERS:
        shutil.copytree(smoke / SYC / a / "seed0", tmp_path / SYC / a / "seed0")
    _run(tmp_path)
    for name in X.TABLES:
        assert (cross(tmp_path) / name).read_bytes() == (cross(smoke) / name).read_bytes(), name
    for a in ADAPTERS:
        v7 = SYC / a / "v7"
        for p in sorted((smoke / v7).glob("*.[ct]sv")):
            assert (tmp_path / v7 / p.name).read_bytes() == p.read_bytes(), f"{a}/{p.name}"


#: the refusal behaviour's folder of the smoke model
REF = Path("out", "models", "tiny-llama", "refusal")


@pytest.fixture(scope="module")
def refusal(smoke_cross_refusal) -> Path:
    """The session's shared run of the cross-adapter notebook on refusal (lora, bidir)."""
    return smoke_cross_refusal.base


@pytest.mark.slow
def test_refusal_spreads_and_specificity_are_the_effect_tables(refusal):
    """The comparison reads the behaviour's own target and control sets (refusal: harmless
    requests, then impossible requests and yes/no questions) and applies the effect eval's
    specificity rule, its sign toward No included: each figure equals what the diff's own
    effect table gives at the adapter's unit α (one seed: the seed mean is that seed)."""
    b = get_behavior("refusal")
    sets = (b.target, *b.controls)
    summ = pl.read_csv(refusal / REF / "cross_adapter" / "cross_adapter_summary.tsv", separator="\t")
    spread_cols = [c for c in summ.columns if c.startswith("spread_") and not c.endswith(("_ci_lo", "_ci_hi"))]
    assert spread_cols == [f"spread_{s}" for s in sets] == ["spread_harmless", "spread_impossible", "spread_questions"]
    assert summ["adapter"].to_list() == ["lora", "bidir"]
    assert summ.filter(pl.col("adapter") == "bidir")["unit_alpha"][0] == 0.5
    for r in summ.iter_rows(named=True):
        a = r["unit_alpha"]
        eff = pl.read_csv(refusal / REF / r["adapter"] / "seed0" / "effect.csv")
        sp = {s: effect.spread(eff, s, hi=a, lo=-a) for s in sets}
        spec = float(effect.specificity(sp[b.target], [sp[s] for s in b.controls], b.direction))
        for s in sets:
            assert math.isfinite(r[f"spread_{s}"]), (r["adapter"], s)
            assert r[f"spread_{s}"] == pytest.approx(sp[s], rel=1e-5, abs=1e-9), (r["adapter"], s)
            assert r[f"spread_{s}_ci_lo"] <= r[f"spread_{s}"] <= r[f"spread_{s}_ci_hi"]
        assert math.isfinite(r["specificity"]) and r["specificity"] == pytest.approx(spec, rel=1e-5), r["adapter"]
    text = (refusal / REF / "cross_adapter" / X.CONCLUSION).read_text()
    assert "spread harmless" in text and "opinion_false" not in text
    assert f"moves {b.labels[b.target]} most" in text
