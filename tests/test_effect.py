"""``ws.diffs.effect``: the spread's paired bootstrap CI, with known answers."""

from __future__ import annotations

import numpy as np
import polars as pl

from ws.core.bootstrap import mean_ci
from ws.diffs.effect import spread, spread_ci, spread_cis, summarize_effect


def _per_prompt(shift: np.ndarray, noise: np.ndarray) -> pl.DataFrame:
    """Each prompt's log-ratio: ``noise`` at every α, plus ``α/2 · shift`` (so spread = mean shift·2)."""
    rows = [
        dict(set="t", alpha=a, prompt_idx=j, prompt=f"p{j}", logratio=float(noise[j] + a / 2 * shift[j]), mass=0.5)
        for a in (-2.0, 0.0, 2.0)
        for j in range(len(shift))
    ]
    return pl.DataFrame(rows)


def test_the_spread_ci_is_paired_by_prompt():
    g = np.random.default_rng(0)
    shift, noise = 1.0 + 0.01 * g.standard_normal(40), 5.0 * g.standard_normal(40)
    per = _per_prompt(shift, noise)
    lo, hi = spread_ci(per, "t", n_boot=500)
    x = spread(summarize_effect(per, n_boot=50), "t")
    assert lo < x < hi and hi - lo < 0.05  # the prompt noise (sd 5) cancels in the pairing
    assert (lo, hi) == mean_ci(2 * shift, 500, seed=0)
    assert spread_cis(per, 500) == {"t": [lo, hi]}


def test_no_effect_gives_a_ci_that_spans_zero():
    g = np.random.default_rng(1)
    per = _per_prompt(0.3 * g.standard_normal(60), g.standard_normal(60))
    lo, hi = spread_ci(per, "t", n_boot=1000)
    assert lo < 0 < hi
