"""What a v8 run concludes from, as a type: the facts its conclusion is written from."""

from __future__ import annotations

from dataclasses import dataclass

from ws.core.markdown import Claim
from ws.v7.verdicts import SelfTest

#: (value, CI low, CI high)
Interval = tuple[float, float, float]


@dataclass(frozen=True)
class ConclusionFacts:
    """The facts of a v8 run that ``v8_conclusion.md`` is written from (every figure in the
    markdown comes from here or from the run's own tables).

    ``writers_share``: the writers-only effect ÷ the full diff's on the target set;
    ``writers_spread`` / ``full_spread``: their spreads at α = ±1 (nats); ``v7_claims``: v7's
    claims on the same seed's tables; ``self_tests``: v7's and the causal test's.
    """

    title: str
    seed: int
    n_null: int
    layers_touched: list[int]
    n_target: int
    controls: list[str]
    target_label: str
    control_labels: dict[str, str]
    writers_share: Interval
    writers_spread: Interval
    full_spread: Interval
    v7_leader: str | None
    v7_claims: list[Claim]
    self_tests: list[SelfTest]
    caveats: list[str]
    cost: list[str]
    artifacts: list[str]
