"""Known answers for the causal projection test (ws.v8.causal), on a real tiny Llama.

A planted diff whose writers write only into a planted subspace: inside that subspace the
whole effect is kept (retention 100 %), outside nothing (0 %); a random rank-k subspace
keeps about k/d of the writers' energy and little of the effect, and sits in its null;
norm-matching is exact.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from ws.behavior import data
from ws.core.columns import WRITER_TAGS
from ws.core.linalg import haar_orthonormal, orthonormalize
from ws.core.log import logger
from ws.diffs import effect
from ws.model.anatomy import writer_key
from ws.model.chat import render_chat
from ws.model.readout import answer_token_ids
from ws.model.steer import Deferred, weight_steer
from ws.model.trace import TraceDict
from ws.v8 import causal

K = 8
LAYERS = (1, 2)


def _basis(d, k, seed):
    return haar_orthonormal(d, k, torch.Generator().manual_seed(seed), dtype=torch.float64)


def _yes_no_direction(model, tok):
    """Unit vector along mean(lm_head rows of Yes) − mean(rows of No): what the read-out sees."""
    yes, no = answer_token_ids(tok)
    E = model.get_output_embeddings().weight.detach().double()
    u = E[yes].mean(0) - E[no].mean(0)
    return u / u.norm()


def _mean_writer_inputs(model, tok, texts):
    """Per writer key, the mean input over the real tokens of ``texts`` ``[in]``."""
    mods = {writer_key(l, t): writer_key(l, t)[: -len(".weight")] for l in LAYERS for t in WRITER_TAGS}
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad(), TraceDict(model, list(mods.values()), retain_input=True, retain_output=False) as td:
        model(**enc)
    real = enc["attention_mask"].bool()
    return {k: td[n].input[real].double().mean(0) for k, n in mods.items()}


def _planted(model, tok, texts, seed=0):
    """Per layer a rank-8 basis B_l holding the Yes/No direction u, and writer deltas
    ``u m̂ᵀ + 0.2·B_l R`` (m̂: the writer's mean input, R random): every column of every delta
    lies in span(B_l), and the diff moves the Yes/No answer the same way on every prompt."""
    g = torch.Generator().manual_seed(seed)
    d, u = model.config.hidden_size, _yes_no_direction(model, tok)
    B = [None] * model.config.num_hidden_layers
    for l in LAYERS:
        B[l] = orthonormalize(torch.cat([u[:, None], torch.randn(d, K - 1, generator=g, dtype=torch.float64)], 1))
    w = {}
    for key, m in _mean_writer_inputs(model, tok, texts).items():
        l = int(key.split(".")[2])
        R = torch.randn(K, m.numel(), generator=g, dtype=torch.float64) / math.sqrt(m.numel())
        w[key] = (torch.outer(u, m / m.norm()) + 0.2 * B[l] @ R).float()
    return w, B


def test_inside_plus_outside_is_the_writers_and_norm_matching_is_exact():
    g = torch.Generator().manual_seed(3)
    ww = {writer_key(l, t): torch.randn(16, 24 if t == "oproj" else 40, generator=g) for l in LAYERS for t in WRITER_TAGS}
    B = {1: _basis(16, 3, 1), 2: _basis(16, 5, 2)}
    ins, s_in = causal.variant_diff(ww, B, "inside")
    out, _ = causal.variant_diff(ww, B, "outside")
    nm, scales = causal.variant_diff(ww, B, "normmatched")
    assert set(ins) == set(out) == set(nm) == set(ww) and s_in == {1: 1.0, 2: 1.0}
    for k in ww:
        torch.testing.assert_close(ins[k] + out[k], ww[k], atol=1e-5, rtol=1e-5)
        # the inside part lies in span(B), the outside part is orthogonal to it
        l = int(k.split(".")[2])
        torch.testing.assert_close(B[l].T.float() @ out[k], torch.zeros(B[l].shape[1], ww[k].shape[1]), atol=1e-4, rtol=0)
    for l in LAYERS:
        keys = [writer_key(l, t) for t in WRITER_TAGS]
        n_w = math.sqrt(sum(float(ww[k].double().pow(2).sum()) for k in keys))
        n_nm = math.sqrt(sum(float(nm[k].double().pow(2).sum()) for k in keys))
        n_in = math.sqrt(sum(float(ins[k].double().pow(2).sum()) for k in keys))
        assert n_nm == pytest.approx(n_w, rel=1e-6)
        assert scales[l] == pytest.approx(n_w / n_in, rel=1e-6) and scales[l] > 1
        for k in keys:  # one factor per layer: the direction of the inside part is kept
            torch.testing.assert_close(nm[k], ins[k] * scales[l], rtol=1e-5, atol=1e-5)
    # rank 0 (no basis): nothing inside, everything outside, no scale to match
    nm0, sc0 = causal.variant_diff(ww, {1: None, 2: B[2]}, "normmatched")
    assert math.isnan(sc0[1]) and float(nm0[writer_key(1, "oproj")].abs().max()) == 0.0
    out0, _ = causal.variant_diff(ww, {1: None, 2: B[2]}, "outside")
    assert torch.equal(out0[writer_key(1, "oproj")], ww[writer_key(1, "oproj")])


@pytest.mark.parametrize("part", causal.PARTS)
def test_a_deferred_variant_is_the_same_delta_and_steers_identically(part, tiny_llama):
    """The causal test makes each edited writer while its module runs (``deferred``): the same
    tensor bit for bit as the variant made whole, and the same logits under weight steering."""
    model, tok = tiny_llama
    params, g = dict(model.named_parameters()), torch.Generator().manual_seed(11)
    ww = {writer_key(l, t): 0.3 * torch.randn(params[writer_key(l, t)].shape, generator=g) for l in LAYERS for t in WRITER_TAGS}
    d = model.config.hidden_size
    B = {1: _basis(d, 3, 1), 2: None if part == "normmatched" else _basis(d, 2, 2)}
    whole, s1 = causal.variant_diff(ww, B, part)
    lazy, s2 = causal.variant_diff(ww, B, part, deferred=True)
    assert set(whole) == set(lazy) and s1.keys() == s2.keys()
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(s1.values(), s2.values(), strict=True))
    for k in whole:
        assert isinstance(lazy[k], Deferred) and lazy[k].shape == whole[k].shape
        assert torch.equal(lazy[k].materialize(), whole[k])
    batch = tok(["Is the sky green?", "Hello there"], return_tensors="pt", padding=True)
    with torch.no_grad():
        with weight_steer(model, whole, -1.0):
            a = model(**batch).logits
        with weight_steer(model, lazy, -1.0):
            b = model(**batch).logits
        with weight_steer(model, lazy, -1.0, in_place=True):
            c = model(**batch).logits
    assert torch.equal(a, b) and torch.equal(a, c)


def test_a_variant_is_deferred_only_past_its_memory_bound(monkeypatch):
    g = torch.Generator().manual_seed(14)
    ww = {writer_key(l, t): torch.randn(16, 24, generator=g) for l in LAYERS for t in WRITER_TAGS}
    B = {1: _basis(16, 3, 1), 2: _basis(16, 2, 2)}
    small, _ = causal.variant_diff(ww, B, "inside")
    assert all(isinstance(v, torch.Tensor) for v in small.values())
    monkeypatch.setattr(causal, "DEFER_VARIANT_BYTES", 4 * sum(m.numel() for m in ww.values()) - 1)
    big, _ = causal.variant_diff(ww, B, "inside")
    assert all(isinstance(v, Deferred) for v in big.values())
    assert all(torch.equal(big[k].materialize(), small[k]) for k in ww)


def test_a_random_rank_k_subspace_keeps_k_over_d_of_the_energy():
    d = 64
    B = {l: _basis(d, K, 10 + l) for l in LAYERS}
    g = torch.Generator().manual_seed(0)
    ww = {
        writer_key(l, t): (B[l] @ torch.randn(K, 48, generator=g, dtype=torch.float64)).float()
        for l in LAYERS
        for t in WRITER_TAGS
    }
    assert causal.energy_inside(ww, B) == pytest.approx(1.0, abs=1e-6)
    e = [causal.energy_inside(ww, causal.random_bases({l: K for l in LAYERS}, d, j)) for j in range(200)]
    assert np.mean(e) == pytest.approx(K / d, abs=0.01)
    # the draws are seeded: the same draw gives the same bases, another draw others
    a, b = causal.random_bases({1: K}, d, 0), causal.random_bases({1: K}, d, 0)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], causal.random_bases({1: K}, d, 1)[1])
    assert causal.random_bases({1: 0}, d, 0)[1] is None


def test_ratio_ci_null_and_verdict_known_answers():
    rng = np.random.default_rng(0)
    den = rng.normal(2.0, 0.5, 30)
    assert causal.ratio_ci(0.25 * den, den, 500, 0) == pytest.approx((0.25, 0.25, 0.25))
    r, lo, hi = causal.ratio_ci(rng.normal(1.0, 1.0, 30), den, 2000, 0)
    assert lo < r < hi
    m, mlo, mhi = causal.mean_ci(np.arange(10.0), 2000, 0)
    assert m == 4.5 and mlo < 4.5 < mhi
    draws = np.arange(20.0)
    st = causal.null_stats(draws)
    assert st["mean"] == 9.5 and st["sd"] == pytest.approx(np.std(draws, ddof=1)) and st["p95"] == pytest.approx(18.05)
    z, tail = causal.null_z_p(25.0, draws)
    assert z == pytest.approx((25 - 9.5) / st["sd"]) and tail.p_empirical == pytest.approx(1 / 21)
    # evenly spaced draws pass the normality check: the normal tail, below the empirical floor
    assert tail.method == "normal" and tail.p == tail.p_normal < 1 / 21
    assert causal.null_z_p(-1.0, draws)[1].p_empirical == pytest.approx(1.0)
    assert causal.carries(0.9, 0.2, 0.1) is True
    assert causal.carries(0.15, 0.2, 0.1) is False  # inside CI reaches into the null
    assert causal.carries(0.9, 0.2, 1.1) is False  # outside CI reaches the writers' effect
    assert causal.carries(float("nan"), 0.2, 0.1) is None


def test_contributing_above_chance_is_not_carrying_most_of_the_effect():
    """The issue's case: 3.4 % inside (CI above a null p95 of 2.5 %) and 99.6 % outside passes
    the above-chance rule but does not carry the behaviour (inside CI ≥ 50 %, outside CI ≤ 50 %)."""
    assert causal.above_chance(0.030, 0.025, 0.998) is True and causal.carries(0.030, 0.025, 0.998) is False
    assert causal.carries(0.50, 0.1, 0.50) is True and causal.carries(0.49, 0.1, 0.3) is False
    assert causal.carries(0.8, 0.1, 0.51) is False and causal.above_chance(0.8, 0.1, 0.51) is True
    assert causal.carries(0.6, 0.7, 0.1) is False  # random subspaces keep as much: not above chance
    assert causal.above_chance(float("nan"), 0.1, 0.2) is None


def test_no_ratio_when_the_denominators_ci_spans_zero():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, 40)  # writers-only spread: mean near 0, CI spans 0
    assert not causal.effect_measurable(*causal.mean_ci(noise, 500, 0)[1:])
    assert all(math.isnan(x) for x in causal.retention_ci(rng.normal(1.0, 0.1, 40), noise, 500, 0))
    den = rng.normal(2.0, 0.2, 40)
    assert causal.retention_ci(0.5 * den, den, 500, 0) == pytest.approx((0.5, 0.5, 0.5))
    assert causal.effect_measurable(-2.0, -1.0) and not causal.effect_measurable(float("nan"), 1.0)


def _pair(rng, sets, mean, n=30, sd=0.3):
    """A synthetic read-out: per set ``n`` prompts whose spread is ``mean`` ± ``sd``."""
    out = {}
    for s in sets:
        lm = rng.normal(0.0, 0.1, n)
        out[s] = {"lr_plus": lm + rng.normal(mean, sd, n), "lr_minus": lm, "mass_plus": np.ones(n), "mass_minus": np.ones(n)}
    return causal.Pair(out)


def _synthetic_measured(writers_mean: float, carrier: float) -> causal._Measured:
    """Read-outs without a model: writers-only spread ``writers_mean``; candidate ``c`` keeps
    ``carrier`` of it inside and the rest outside; 20 random draws keep ~2 %."""
    rng, sets = np.random.default_rng(2), [causal.TARGET, *causal.CONTROLS]
    ref = {"full": _pair(rng, sets, 2.0), "writers_only": _pair(rng, sets, writers_mean)}
    for v in ref["writers_only"].sets.values():  # the writers' mean spread is exactly writers_mean
        v["lr_plus"] += writers_mean - (v["lr_plus"] - v["lr_minus"]).mean()
    parts = {"c": {p: _pair(rng, sets, x) for p, x in (("inside", carrier), ("outside", 2 - carrier), ("normmatched", carrier))}}
    draw = lambda: {"energy": 0.05, **{p: _pair(rng, [causal.TARGET], 0.04, sd=0.02) for p in causal.NULL_PARTS}}  # noqa: E731
    null = {(8, 8): [draw() for _ in range(20)]}
    return causal._Measured(ref, parts, {"c": 0.9}, {"c": {1: 1.0, 2: 1.0}}, {"c": (8, 8)}, null)


def test_a_synthetic_carrier_survives_and_unmeasurable_writers_give_no_ratio_and_no_verdict():
    meta = pl.DataFrame({"subspace": ["c"], "family": ["f"], "axis_kind": ["write"], "kind": ["A-hypothesis"]})
    args = (meta, ["c"], None, 500, 0, causal.TARGET, causal.CONTROLS)
    ok = causal._candidate_table(_synthetic_measured(2.0, 1.8), *args).row(0, named=True)
    assert ok["retention_inside"] == pytest.approx(0.9, abs=0.05) and ok["carries"] is True and ok["above_chance"] is True
    assert ok["p_inside_empirical"] == pytest.approx(1 / 21) and ok["null_fit_p"] > 0.05 and ok["null_n"] == 20
    assert ok["p_inside_method"] == "normal" and ok["p_inside"] == ok["p_inside_normal"] < 1e-9 and ok["q_inside"] < 1e-9
    m = _synthetic_measured(0.0, 1.8)  # the writers move nothing measurable
    bad = causal._candidate_table(m, *args).row(0, named=True)
    for c in ("retention_inside", "retention_inside_ci_lo", "retention_outside_ci_hi", "null_mean", "z_inside", "p_inside"):
        assert math.isnan(bad[c]), c
    assert bad["carries"] is None and bad["above_chance"] is None and bad["works_as_target"] is None
    assert bad["spread_inside"] == pytest.approx(1.8, abs=0.2) and bad["null_n"] == 20
    v = causal._variant_table(m, ["c"], 500, 0).filter(pl.col("set") == causal.TARGET)
    assert v["retention"].is_nan().all() and not v["spread"].is_nan().any()


@pytest.fixture(scope="module")
def planted_run(tiny_llama):
    model, tok = tiny_llama
    texts = {s: [render_chat(tok, p) for p in ps] for s, ps in effect.heldout_prompts(0, 6).items()}
    w, B = _planted(model, tok, texts[causal.TARGET])
    R = [None if l not in LAYERS else _basis(model.config.hidden_size, K, 200 + l) for l in range(len(B))]
    meta = pl.DataFrame(
        {
            "subspace": ["planted", "other_random"],
            "family": ["test", "test"],
            "axis_kind": ["write", "write"],
            "kind": ["A-hypothesis", "A-hypothesis"],
        }
    )
    res = causal.run_causal(
        model,
        tok,
        w,
        {"planted": B, "other_random": R},
        meta,
        ["planted", "other_random"],
        LAYERS,
        texts,
        n_null=20,
        n_boot=300,
        progress=False,
        threads=1,
    )
    return res, w


def test_planted_subspace_keeps_all_of_the_effect_and_its_complement_none(planted_run):
    res, _ = planted_run
    wr = res.writers_spread[0]
    assert abs(wr) > 0.5, f"the planted diff barely moves the answer (spread {wr}): the test would prove little"
    row = res.table.filter(pl.col("subspace") == "planted").row(0, named=True)
    assert row["energy_frac_inside"] == pytest.approx(1.0, abs=1e-6)
    assert row["retention_inside"] == pytest.approx(1.0, abs=1e-3)
    assert row["retention_normmatched"] == pytest.approx(1.0, abs=1e-3)
    assert abs(row["retention_outside"]) < 1e-3
    assert row["retention_inside_ci_lo"] > row["null_p95"] and row["retention_outside_ci_hi"] < 1
    assert row["carries"] is True and row["above_chance"] is True and row["p_inside_empirical"] == pytest.approx(1 / 21)
    # the null passes the normality check (Shapiro–Wilk p 0.9 here): its normal tail goes far below
    # the empirical floor 1/21, and the planted row survives BH
    assert row["null_fit_p"] > 0.5 and row["p_inside_method"] == "normal"
    assert row["p_inside"] == row["p_inside_normal"] < 1e-6 and row["q_inside"] <= 0.05
    assert row["works_as_target"] is True and row["retention_normmatched_ci_lo"] > row["null_normmatched_p95"]
    # the diff is writers only: they carry all of it
    assert res.writers_share[0] == pytest.approx(1.0, abs=1e-9)


def test_random_subspace_keeps_k_over_d_of_the_energy_little_effect_and_sits_in_its_null(planted_run, tiny_llama):
    res, _ = planted_run
    d = tiny_llama[0].config.hidden_size
    row = res.table.filter(pl.col("subspace") == "other_random").row(0, named=True)
    assert row["energy_frac_inside"] == pytest.approx(K / d, abs=0.08)
    assert abs(row["retention_inside"]) < 0.5 and row["retention_outside"] > 0.5
    assert abs(row["z_inside"]) < 3 and row["p_inside"] > 0.05 and row["carries"] is False and not row["above_chance"]
    null = res.variants.filter(pl.col("part") == "null_inside")
    assert null.height == 20 and null["set"].unique().to_list() == [causal.TARGET]
    assert res.variants.filter(pl.col("part") == "null_normmatched").height == 20
    assert row["works_as_target"] is False or abs(row["z_normmatched"]) < 3
    assert float(null["energy_frac_inside"].mean()) == pytest.approx(K / d, abs=0.03)
    assert abs(float(null["retention"].mean())) < 0.5


def test_tables_have_their_columns_and_every_variant(planted_run):
    res, _ = planted_run
    assert res.table.columns == causal.CAUSAL_COLUMNS and res.variants.columns == causal.VARIANT_COLUMNS
    v = res.variants
    for name in ("planted", "other_random"):
        for p in causal.PARTS:
            assert v.filter(pl.col("variant") == f"{name}:{p}")["set"].sort().to_list() == sorted(
                [causal.TARGET, *causal.CONTROLS]
            )
    wo = v.filter((pl.col("variant") == "writers_only") & (pl.col("set") == causal.TARGET)).row(0, named=True)
    assert wo["retention"] == pytest.approx(1.0) and wo["spread"] == pytest.approx(res.writers_spread[0])
    assert res.first_block == LAYERS[0] and res.n_rows > 0


def test_any_behaviours_sets_name_the_target_and_the_controls(tiny_llama):
    """The built-in refusal behaviour: retention is read on its target set, its control sets
    name the control columns, and a missing set is refused before any pass."""
    model, tok = tiny_llama
    b = data.get_behavior("refusal")
    texts = {s: [render_chat(tok, p) for p in ps] for s, ps in effect.heldout_prompts(0, 4, behavior="refusal").items()}
    w, B = _planted(model, tok, texts[b.target])
    meta = pl.DataFrame({"subspace": ["planted"], "family": ["test"], "axis_kind": ["write"], "kind": ["A-hypothesis"]})
    args = (model, tok, w, {"planted": B}, meta, ["planted"], LAYERS)
    kw = dict(n_null=5, n_boot=100, progress=False, threads=1, target=b.target, controls=b.controls)
    res = causal.run_causal(*args, texts, **kw)
    assert res.target == "harmless" and res.controls == ("impossible", "questions")
    assert res.table.columns == causal.causal_columns(b.controls) != causal.CAUSAL_COLUMNS
    assert "spread_impossible_outside" in res.table.columns and "spread_neutral_inside" not in res.table.columns
    row = res.table.row(0, named=True)
    assert row["retention_inside"] == pytest.approx(1.0, abs=1e-3) and abs(row["retention_outside"]) < 1e-3
    assert res.variants.filter(pl.col("part") == "null_inside")["set"].unique().to_list() == ["harmless"]
    with pytest.raises(ValueError, match=r"none for \['questions'\]"):
        causal.run_causal(*args, {k: v for k, v in texts.items() if k != "questions"}, **kw)


def test_rows_needed_gives_the_half_width_a_monte_carlo_measures():
    """The delta-method row count, read on a pilot, against the ratio's spread over 4,000
    simulated test sets of that size: their 95 % range is ±half_width (within 10 %)."""
    rng = np.random.default_rng(0)

    def draw(n):
        den = rng.normal(2.0, 0.6, n)
        return 0.7 * den + rng.normal(0.0, 0.5, n), den

    n = causal.rows_needed(*draw(20_000), 0.03)
    assert 200 < n < 2000  # sd(num − r·den)/mean(den) = 0.25: n ≈ (1.96·0.25/0.03)² ≈ 267
    assert n == pytest.approx((1.959964 * 0.5 / 2.0 / 0.03) ** 2, rel=0.05)
    sims = np.array([causal.ratio(*draw(n)) for _ in range(4000)])
    lo, hi = np.quantile(sims, [0.025, 0.975])
    assert (hi - lo) / 2 == pytest.approx(0.03, rel=0.1)
    assert causal.rows_needed(np.ones(5), np.zeros(5), 0.03) == 0 and causal.rows_needed(np.ones(1), np.ones(1), 0.03) == 0
    assert causal.rows_needed(2 * np.arange(1.0, 9.0), np.arange(1.0, 9.0), 0.03) == 0  # an exact ratio: no noise


def test_sized_rows_follow_the_pilot_within_the_sets():
    sizes, n0 = {"t": 40, "c1": 10, "c2": 30}, {"t": 16, "c1": 10, "c2": 16}
    assert causal._sized_rows(sizes, n0, "t", 25, True) == {"t": 25, "c1": 10, "c2": 25}
    assert causal._sized_rows(sizes, n0, "t", 3, True) == {"t": 16, "c1": 10, "c2": 16}  # at least the pilot
    assert causal._sized_rows(sizes, n0, "t", 900, True) == {"t": 40, "c1": 10, "c2": 30}  # at most the set
    assert causal._sized_rows(sizes, n0, "t", None, True) == {"t": 40, "c1": 10, "c2": 30}  # no effect on the pilot
    assert causal._sized_rows(sizes, sizes, "t", 5, False) == sizes
    o = causal.row_order(30, "t", 0)
    assert (
        sorted(o) == list(range(30))
        and o != list(range(30))
        and o == causal.row_order(30, "t", 0) != causal.row_order(30, "t", 1)
    )


def test_read_outs_merged_from_two_parts_equal_one_over_every_prompt(tiny_llama):
    model, tok = tiny_llama
    texts = {s: [render_chat(tok, p) for p in ps] for s, ps in effect.heldout_prompts(0, 10).items()}
    w, _ = _planted(model, tok, texts[causal.TARGET])
    first, ro = causal.first_block(w, w), causal.Readout()
    with torch.no_grad():
        one = causal._Evaluator(model)
        one.add(
            causal._readout(model, tok, texts, ro, {s: range(len(v)) for s, v in texts.items()}, first, 4),
            {s: range(len(v)) for s, v in texts.items()},
        )
        two = causal._Evaluator(model)
        cuts = [
            {s: [i for i in range(len(v)) if i % 3 == j % 3 or (j == 1 and i % 3 == 2)] for s, v in texts.items()} for j in (0, 1)
        ]
        for c in cuts:
            two.add(causal._readout(model, tok, texts, ro, c, first, 4), c)
        a, b = one.pair(w, list(texts)), two.pair(w, list(texts))
    for s in texts:
        assert b.idx[s].tolist() == list(range(len(texts[s])))
        for k in a.sets[s]:
            np.testing.assert_allclose(b.sets[s][k], a.sets[s][k], atol=1e-4, rtol=1e-4)
    assert two.rows == one.rows


def test_the_pilot_sizes_the_rows_and_a_planted_carrier_keeps_its_verdict(tiny_llama):
    """Built-in sycophancy prompts (24 / 16 / 12): a loose target stops at a 6-prompt pilot, a
    tight one takes every prompt; the planted subspace carries the behaviour either way."""
    from ws.v8.verdicts import rows_caveat

    model, tok = tiny_llama
    texts = {s: [render_chat(tok, p) for p in ps] for s, ps in effect.heldout_prompts(0).items()}
    w, B = _planted(model, tok, texts[causal.TARGET])
    R = [None if l not in LAYERS else _basis(model.config.hidden_size, K, 300 + l) for l in range(len(B))]
    meta = pl.DataFrame(
        {"subspace": ["planted", "r"], "family": ["t", "t"], "axis_kind": ["write"] * 2, "kind": ["A-hypothesis"] * 2}
    )
    args = (model, tok, w, {"planted": B, "r": R}, meta, ["planted", "r"], LAYERS, texts)
    kw = dict(n_null=8, n_boot=200, progress=False, threads=1, pilot=6)
    sizes = {s: len(v) for s, v in texts.items()}
    loose = causal.run_causal(*args, half_width=10.0, **kw)
    assert loose.rows == {s: (6, n) for s, n in sizes.items()} and loose.pilot == {s: 6 for s in sizes}
    assert loose.rows_asked is not None and loose.rows_asked <= 6 and loose.half_width == 10.0
    tight = causal.run_causal(*args, half_width=1e-6, **kw)
    assert tight.rows == {s: (n, n) for s, n in sizes.items()} and tight.rows_asked > max(sizes.values())
    every = causal.run_causal(*args, half_width=0, **kw)
    assert every.rows == tight.rows and every.pilot == {} and every.rows_asked is None
    for res in (loose, tight, every):
        row = res.table.filter(pl.col("subspace") == "planted").row(0, named=True)
        assert row["carries"] is True and row["retention_inside"] == pytest.approx(1.0, abs=1e-3)
    wo = lambda r: r.variants.filter((pl.col("variant") == "writers_only") & (pl.col("set") == causal.TARGET))  # noqa: E731
    assert wo(loose)["n"][0] == 6 and wo(tight)["n"][0] == wo(every)["n"][0] == sizes[causal.TARGET]
    assert abs(wo(tight)["spread"][0] - wo(every)["spread"][0]) < 1e-4 * abs(wo(every)["spread"][0])
    assert loose.n_rows < tight.n_rows
    assert "asked for" in rows_caveat(loose) and "6 of 24 in `opinion_false`" in rows_caveat(loose)
    assert "every prompt" in rows_caveat(every)


def test_the_null_draws_on_in_steps_while_a_decision_is_open(tiny_llama, monkeypatch):
    """With the decision held open (the rule itself is checked in tests/test_null_tail.py), the
    null grows by ``n_null`` draws at a time up to ``n_null_max``; its first draws are the ones
    a run that stops at once makes (the same seeds)."""
    from ws.v8.verdicts import null_caveat

    model, tok = tiny_llama
    texts = {s: [render_chat(tok, p) for p in ps] for s, ps in effect.heldout_prompts(0, 4).items()}
    w, B = _planted(model, tok, texts[causal.TARGET])
    meta = pl.DataFrame({"subspace": ["planted"], "family": ["t"], "axis_kind": ["write"], "kind": ["A-hypothesis"]})
    args = (model, tok, w, {"planted": B}, meta, ["planted"], LAYERS, texts)
    kw = dict(n_null=3, n_boot=100, progress=False, threads=1)
    once = causal.run_causal(*args, **kw)
    asked = []
    monkeypatch.setattr(causal, "null_could_decide", lambda v, d, n: asked.append([x.size for x in d]) or True)
    got = []
    sink = logger.add(lambda m: got.append(m.record["message"]), level="INFO")
    try:
        more = causal.run_causal(*args, n_null_max=8, **(kw | {"progress": True}))
    finally:
        logger.remove(sink)
    done = [g for g in got if "null of rank profile" in g and "done in" in g]
    assert [g.split(", draws ")[1].split(":")[0] for g in done] == ["1–3", "4–6", "7–8"]  # a progress line per step
    assert once.n_null == once.n_null_first == 3 and more.n_null == 8 and more.n_null_first == 3
    assert asked == [[3], [6]]  # asked after 3 and 6 draws; 8 is the cap
    null = lambda r: r.variants.filter(pl.col("part") == "null_inside")["retention"].to_list()  # noqa: E731
    assert len(null(more)) == 8 and null(more)[:3] == null(once)
    assert "3 first, then more" in null_caveat(more) and "first" not in null_caveat(once)


def test_in_bfloat16_a_lora_sized_diff_keeps_the_answers_and_verdicts_within_the_stated_tolerance(tiny_llama):
    """The model in bfloat16 (a GPU's default) against float32, a planted diff scaled to 2 % of
    each writer's norm (a LoRA diff's size, where rounding ``θ + α·Δ`` to bfloat16 costs the
    diff the most digits). The tolerance docs/gpu.md states: the writers' spread within 2 %,
    every retention within 0.02 of the writers' effect, the null's mean within 0.01 and its sd
    within 10 %, the same verdicts; the planted subspace keeps 100 % in both."""
    from ws.model.load import load_model

    f32, tok = tiny_llama
    texts = {s: [render_chat(tok, p) for p in ps] for s, ps in effect.heldout_prompts(0, 6).items()}
    w, B = _planted(f32, tok, texts[causal.TARGET])
    params = dict(f32.named_parameters())
    w = {k: v * (0.02 * params[k].detach().norm() / v.norm()) for k, v in w.items()}
    R = [None if l not in LAYERS else _basis(f32.config.hidden_size, K, 200 + l) for l in range(len(B))]
    names = ["planted", "other_random"]
    meta = pl.DataFrame({"subspace": names, "family": ["t"] * 2, "axis_kind": ["write"] * 2, "kind": ["A-hypothesis"] * 2})
    bf16, _ = load_model("tiny-llama", dtype="bfloat16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    kw = dict(n_null=20, n_boot=300, progress=False, threads=1)
    bases = {"planted": B, "other_random": R}
    ref, got = (causal.run_causal(m, tok, w, bases, meta, names, LAYERS, texts, **kw) for m in (f32, bf16))
    assert abs(ref.writers_spread[0]) > 0.1, "the diff barely moves the answer: the comparison would prove little"
    assert got.writers_spread[0] == pytest.approx(ref.writers_spread[0], rel=0.02)
    a, b = (r.table.sort("subspace").to_dicts() for r in (ref, got))
    for x, y in zip(a, b, strict=True):
        for col in ("retention_inside", "retention_outside", "retention_normmatched"):
            assert abs(x[col] - y[col]) <= 0.02, (x["subspace"], col, x[col], y[col])
        assert abs(x["null_mean"] - y["null_mean"]) <= 0.01 and y["null_sd"] == pytest.approx(x["null_sd"], rel=0.1)
        assert (x["carries"], x["above_chance"]) == (y["carries"], y["above_chance"])
    planted = {r["subspace"]: r for r in b}["planted"]
    assert planted["retention_inside"] == pytest.approx(1.0, abs=1e-3) and planted["carries"] is True
