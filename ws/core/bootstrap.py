"""The percentile bootstrap: seeded resample indices and the percentile interval.

Every CI in the suite (the effect eval's means, v7's summary, v8's retentions, the
cross-adapter spreads) is drawn and read through these two functions, so one seed gives
one set of resamples and one rule reads the interval.
"""

from __future__ import annotations

import warnings

import numpy as np

from ws.core.caveats import CI_LEVEL


def resample(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` indices into ``n`` rows, drawn with replacement (seeded: PCG64)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(draws: np.ndarray, level: float = CI_LEVEL, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The central ``level`` interval of ``draws`` along ``axis`` (NaN draws left out)."""
    q = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(draws, q, axis=axis), np.nanquantile(draws, 1 - q, axis=axis)


def mean_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``x [n]`` (NaN, NaN below two rows)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    lo, hi = percentile_interval(x[resample(len(x), n_boot, seed)].mean(axis=1), level)
    return float(lo), float(hi)
