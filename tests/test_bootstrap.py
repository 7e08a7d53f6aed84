"""The one percentile bootstrap (ws.core.bootstrap): seeded, and its interval covers what it should."""

from __future__ import annotations

import numpy as np

from ws.core.bootstrap import mean_ci, percentile_interval, resample


def test_bootstrap_ci_seeded_and_covers_mean():
    x = np.random.default_rng(0).normal(3.0, 1.0, 40)
    lo, hi = mean_ci(x, 500, seed=1)
    assert lo < x.mean() < hi and (lo, hi) == mean_ci(x, 500, seed=1)


def test_resample_is_seeded_and_in_range():
    a, b = resample(7, 50, seed=3), resample(7, 50, seed=3)
    assert a.shape == (50, 7) and (a == b).all() and a.min() >= 0 and a.max() <= 6
    assert not (a == resample(7, 50, seed=4)).all()


def test_percentile_interval_of_known_draws():
    draws = np.arange(1001, dtype=float)  # 0..1000: the 2.5th and 97.5th percentiles are 25 and 975
    lo, hi = percentile_interval(draws)
    assert np.allclose((lo, hi), (25.0, 975.0), rtol=0, atol=1e-9)
    assert (lo, hi) == percentile_interval(np.r_[draws, np.nan])  # NaN draws are left out


def test_mean_ci_needs_two_rows():
    assert all(np.isnan(mean_ci(np.array([1.0]))))
