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

from ws.core.caveats import FDR_ALPHA, NULL_FIT_ALPHA
from ws.stats import bh_qvalues, normal_fit_p, null_tail_p, p_empirical, p_normal_predictive

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
