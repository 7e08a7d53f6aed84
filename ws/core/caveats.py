"""The thresholds every conclusion applies and the caveat texts they all print: one home,
so v7, v8 and the cross-adapter comparison say the same thing the same way."""

from __future__ import annotations

#: Benjamini–Hochberg false-discovery rate of the q-value columns (v7) and the causal table (v8).
FDR_ALPHA = 0.05
#: Level of every bootstrap interval the conclusions print.
CI_LEVEL = 0.95
#: A p-value threshold where a single test (not a family) is read: the Kendall τ between adapters.
P_ALPHA = 0.05
#: The diff's specificity ratio a behaviour-specific diff should reach (target spread ÷ controls').
SPECIFICITY_TARGET = 3.0
#: v8 "carries most of the effect": the inside retention's CI low end must reach this share of the
#: writers-only effect (0.5 = half) ...
CARRY_INSIDE_MIN = 0.5
#: ... and the outside retention's CI high end must stay at or below this share.
CARRY_OUTSIDE_MAX = 0.5
#: v8's causal test sizes its prompt rows by this precision target: the largest half-width of a
#: candidate's inside / outside retention CI (every row of the test) (95 %, delta method on a pilot of
#: :data:`CAUSAL_PILOT_ITEMS` items per set), in shares of the writers-only effect (0.03 = 3 points).
CAUSAL_HALF_WIDTH = 0.03
#: Items per prompt set in the causal test's pilot (all of a smaller set).
CAUSAL_PILOT_ITEMS = 16
#: A self-test's random-basis row passes while its |z| against its own null stays below this
#: (v7's score null and v8's causal null).
SELFTEST_Z_MAX = 4.0
#: v7's planted-label self-test passes when its basis keeps at least this share (%) of the best
#: rank-k subspace of the EVAL label.
SELFTEST_PLANTED_MIN_PCT = 80.0
#: The S-space family's planted basis (v7) must hold at least this share (%) of the dW oracle's
#: weight energy at its rank.
SELFTEST_SSPACE_MIN_PCT = 99.0
#: v8's planted S-space basis must keep at least this share of the writers' effect inside (and at
#: most 1 − it outside).
SELFTEST_PLANTED_MIN_INSIDE = 0.95
#: Shapiro–Wilk p of a null's draws below which their normal tail is not trusted and the
#: empirical p is used instead (v8's causal test, :func:`ws.stats.null.null_tail_p`).
NULL_FIT_ALPHA = 0.05
#: ``make monitor`` (:mod:`ws.monitor`): a screened diff "writes into the subspace" when the overall
#: row's p (one pre-specified test: the mean over the screened layers of v7's combined weight
#: fraction against its exact random-subspace null) is below this ...
MONITOR_ALPHA = 0.05
#: ... AND that fraction is at least this many times the null mean (k/d: a random subspace's share).
MONITOR_MIN_RATIO = 2.0
#: The largest ``max|BᵀB − I|`` a basis may have: every candidate's (v7) and a subspace file's
#: (``make monitor``).
ORTH_TOL = 1e-3

SMOKE = "SMOKE MODE: a tiny random model and a few training steps; no number here means anything"
QUANTIZED = "the model weights are 4-bit quantised: weight-derived bases inherit quantisation noise"
RANDOM_IS_ONE = (
    "R = 1 is what a random subspace of the same rank gets; z and p test concentration against that "
    "null, not causal use of the subspace"
)


def run_caveats(smoke: bool, quantized: bool) -> list[str]:
    """The caveats of how a run was made: smoke mode, a quantised model (in that order)."""
    return ([SMOKE] if smoke else []) + ([QUANTIZED] if quantized else [])


#: A behaviour without a control set (an A/B dataset has none): the specificity ratio divides by nothing.
NO_CONTROLS = (
    "the behaviour has no control set (an A/B dataset has none), so nothing measures whether the diff moves "
    "only the behaviour; add a control set to the behaviour file to measure it (docs/bring-your-own.md)"
)
