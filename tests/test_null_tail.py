"""Known answers for :func:`ws.stats.null_tail_p`, the p of v8's causal test (no model).

(a) a planted carrier far outside the null survives BH at 0.05 among the default number of
candidates (the empirical p alone never can: its floor 1/21 is above 0.05/10);
(b) calibration: a candidate drawn from the null's own law is called significant at 0.05 in
at most 5 % of 2,000 simulations, within Monte Carlo error;
(c) a clearly non-normal null falls back to the empirical p.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from ws.core.caveats import FDR_ALPHA, NULL_FIT_ALPHA
from ws.stats import bh_qvalues, normal_fit_p, null_tail_p, p_empirical, p_normal_predictive, p_with_draws

N_NULL = 20  # WS_N_CAUSAL_NULL's default
N_CAND = 10  # WS_N_CAUSAL's default


def test_a_planted_carrier_far_outside_the_null_survives_bh_among_the_default_candidates():
    rng = np.random.default_rng(0)
    p = []
    for i in range(N_CAND):
        draws = rng.normal(0.02, 0.007, N_NULL)  # random rank-8 subspaces keep 2.0 % ± 0.7 %
        value = 1.43 if i == 0 else float(rng.normal(0.02, 0.007))  # one carrier, nine null-like candidates
        p.append(null_tail_p(value, draws))
    carrier = p[0]
    assert carrier.method == "normal" and carrier.p < 1e-20
    assert carrier.p_empirical == pytest.approx(1 / (N_NULL + 1)) and carrier.p_empirical > FDR_ALPHA / N_CAND
    q = bh_qvalues(np.array([t.p for t in p]))
    assert q[0] <= FDR_ALPHA
    # the old test: the floored empirical p cannot survive BH among the same candidates
    assert bh_qvalues(np.array([t.p_empirical for t in p]))[0] > FDR_ALPHA


def test_under_a_true_null_the_test_calls_at_most_five_percent_within_monte_carlo_error():
    """2,000 simulated candidates, each drawn with its 20 null draws from one normal law. The
    Monte Carlo sd of a 5 % rate over 2,000 trials is √(0.05·0.95/2000) = 0.49 %; the rate must
    stay within 3 sds of 5 % (≤ 6.46 %) and is expected to be close to it (the test is exact)."""
    rng = np.random.default_rng(1)
    n_sim, alpha = 2000, 0.05
    x = rng.normal(0.3, 0.05, (n_sim, N_NULL + 1))
    hits = sum(null_tail_p(float(row[0]), row[1:]).p <= alpha for row in x)
    mc_sd = math.sqrt(alpha * (1 - alpha) / n_sim)
    rate = hits / n_sim
    assert rate <= alpha + 3 * mc_sd, f"false-positive rate {rate:.4f} > {alpha} + 3·{mc_sd:.4f}"
    assert rate >= alpha - 3 * mc_sd, f"rate {rate:.4f}: far more conservative than the exact test should be"


def test_the_predictive_p_is_exact_under_normality():
    """The predictive t's p is uniform: its 5 % and 20 % quantiles over 4,000 simulations sit
    at 0.05 and 0.20 within Monte Carlo error."""
    rng = np.random.default_rng(2)
    x = rng.normal(-1.0, 2.0, (4000, N_NULL + 1))
    p = np.array([p_normal_predictive(float(r[0]), r[1:]) for r in x])
    for a in (0.05, 0.2):
        assert abs(float(np.mean(p <= a)) - a) <= 3 * math.sqrt(a * (1 - a) / p.size)


def test_a_clearly_non_normal_null_falls_back_to_the_empirical_p():
    rng = np.random.default_rng(3)
    bimodal = np.r_[np.zeros(10), np.ones(10)] + rng.normal(0, 0.01, N_NULL)
    skewed = rng.lognormal(0.0, 1.5, N_NULL)
    for draws in (bimodal, skewed):
        t = null_tail_p(5.0, draws)
        assert t.fit_p < NULL_FIT_ALPHA and t.method == "empirical"
        assert t.p == t.p_empirical == pytest.approx(p_empirical(5.0, draws)) and math.isfinite(t.p_normal)


def test_edge_cases_give_an_empirical_or_no_p():
    draws = np.array([0.1, 0.2, float("nan"), 0.15, 0.12])
    t = null_tail_p(0.18, draws)
    assert t.p_empirical == pytest.approx(2 / 5)  # the NaN draw is dropped: 1 + 1 of 4 draws ≥ 0.18
    assert null_tail_p(float("nan"), draws).method == "" and math.isnan(null_tail_p(1.0, np.array([])).p)
    const = np.full(N_NULL, 0.2)  # no spread: no normal tail, no fit
    c = null_tail_p(0.5, const)
    assert c.method == "empirical" and math.isnan(c.p_normal) and math.isnan(c.fit_p)
    two = null_tail_p(0.5, np.array([0.1, 0.2]))  # too few draws for Shapiro–Wilk
    assert two.method == "empirical" and math.isnan(normal_fit_p(np.array([0.1, 0.2])))


def test_p_with_draws_is_the_p_a_larger_null_like_this_one_would_give():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, N_NULL)
    x = (x - x.mean()) / x.std(ddof=1)  # mean 0, sd 1 exactly
    assert p_with_draws(2.5, x, N_NULL) == pytest.approx(null_tail_p(2.5, x).p, rel=1e-12)
    assert p_with_draws(2.5, x, 100) == pytest.approx(float(student_t.sf(2.5 / math.sqrt(1.01), 99)), rel=1e-12)
    assert p_with_draws(2.5, x, 100) < null_tail_p(2.5, x).p  # a larger null reaches further out
    skewed = rng.lognormal(0.0, 1.5, N_NULL)
    e = int((skewed >= 3.0).sum())
    assert null_tail_p(3.0, skewed).method == "empirical"
    assert p_with_draws(3.0, skewed, 100) == pytest.approx((1 + e * 5) / 101)
    assert math.isnan(p_with_draws(float("nan"), x, 100))


def _sequential(rng, values_fn, n_first=N_NULL, n_max=5 * N_NULL, n_cand=N_CAND):
    """One family of ``n_cand`` candidates against their own N(0,1) nulls, drawn on while
    :func:`ws.v8.causal.null_could_decide` says more could change a BH decision."""
    from ws.v8.causal import null_could_decide

    values, draws, n = values_fn(), [rng.normal(0.0, 1.0, n_first) for _ in range(n_cand)], n_first
    while n < n_max and null_could_decide(values, draws, n_max):
        n = min(n_max, n + n_first)
        draws = [np.r_[d, rng.normal(0.0, 1.0, n - d.size)] for d in draws]
    return np.array([null_tail_p(v, d).p for v, d in zip(values, draws, strict=True)]), n


def test_the_sequential_null_keeps_the_error_rate_and_draws_on_only_where_close():
    """300 families of 10 candidates drawn from the null (3,000 candidates): p ≤ 0.05 in at most
    5 % + 3 Monte Carlo sds of them, and a BH discovery in at most 5 % + 3 sds of the families.
    A carrier 40 sds out stops at the first 20 draws; one near the BH line draws on."""
    rng = np.random.default_rng(5)
    ps, any_q, ns = [], 0, []
    for _ in range(300):
        p, n = _sequential(rng, lambda: rng.normal(0.0, 1.0, N_CAND))
        ps += p.tolist()
        any_q += bool((bh_qvalues(p) <= FDR_ALPHA).any())
        ns.append(n)
    rate, sd = float(np.mean(np.array(ps) <= 0.05)), math.sqrt(0.05 * 0.95 / len(ps))
    assert rate <= 0.05 + 3 * sd, f"false-positive rate {rate:.4f}"
    assert any_q / 300 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)
    assert np.mean(np.array(ns) == N_NULL) > 0.8  # under the null most families stop at once
    far = _sequential(rng, lambda: np.r_[40.0, rng.normal(0.0, 1.0, N_CAND - 1)])
    assert far[1] == N_NULL and bh_qvalues(far[0])[0] <= FDR_ALPHA
    near = [_sequential(rng, lambda: np.r_[3.6, rng.normal(0.0, 1.0, N_CAND - 1)])[1] for _ in range(20)]
    assert max(near) > N_NULL  # p ≈ 1e-3 against 20 draws: BH's line 0.005 is within reach
