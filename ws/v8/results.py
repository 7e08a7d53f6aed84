"""What a v8 run produces, as types: the block-local label, the tables, the file set's contents and
names, and the facts its conclusion is written from. No behaviour lives here; :mod:`ws.v8.sweep`
fills them (as :mod:`ws.v7.results` for v7)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch

from ws.core.markdown import Claim, SelfTest
from ws.v8.carrier import CARRIER_FILE, CarrierBasis

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


@dataclass
class BlockLocal:
    """The block-local label of the primary seed and what it gives."""

    label: torch.Tensor  # [L, n_eval, d] cumulative (post⁺ − post⁻), as v7's label
    label_block: torch.Tensor  # [L, n_eval, d] (post⁺ − pre⁺) − (post⁻ − pre⁻)
    per_layer: pl.DataFrame  # layer, subspace + ws.v8.blocklocal.BLOCK_COLUMNS
    summary: pl.DataFrame  # subspace + ws.v8.blocklocal.BLOCK_SUMMARY_COLUMNS
    scope: pl.DataFrame  # ws.v8.blocklocal.SCOPE_COLUMNS
    label_max_abs_diff: float  # |label − v7's label_eval|, must be 0
    seconds: float


@dataclass
class V8Tables:
    per_layer: pl.DataFrame  # v7's per-layer table + the block-local columns
    summary: pl.DataFrame  # v7's summary_pct + seed columns + block-local + causal columns
    causal: pl.DataFrame  # ws.v8.causal.CAUSAL_COLUMNS
    variants: pl.DataFrame  # ws.v8.causal.VARIANT_COLUMNS
    scope: pl.DataFrame  # ws.v8.blocklocal.SCOPE_COLUMNS


V8_FILES = (
    "v8_per_layer.csv",
    "v8_summary.tsv",
    "v8_causal.tsv",
    "v8_causal_variants.tsv",
    "v8_scope.tsv",
    "v8_causal_retention.png",
    "v8_causal_retention.pdf",
    "v8_block_local.png",
    "v8_block_local.pdf",
    CARRIER_FILE,
    "v8_definitions.md",
    "v8_plan_merge.md",
    "v8_conclusion.md",
)


@dataclass
class V8Outputs:
    """The v8 file set's contents before anything is written (:func:`v8_outputs`)."""

    tables: dict[str, pl.DataFrame]
    texts: dict[str, str]
    tabs: V8Tables
    target_label: str
    seed: int
    carrier: CarrierBasis | None = None  # the carrier's per-layer basis (ws.v8.carrier)
