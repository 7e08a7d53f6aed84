"""What the cross-adapter comparison produces, as types, and the names of its file set.

No behaviour lives here: :mod:`ws.cross_adapter.compare` fills them and
:mod:`ws.cross_adapter.report` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from ws.core.markdown import Claim
from ws.v7.results import SeedResult, SeedStability

#: a candidate "ranks high" when it is among the first TOP_K of a ranking
TOP_K = 5
TABLES = ("cross_adapter_summary.tsv", "cross_adapter_candidates.tsv", "cross_adapter_ranks.tsv", "cross_adapter_tau.tsv")
FIGURES = ("cross_adapter_ranks.png", "cross_adapter_ranks.pdf")
CONCLUSION = "cross_adapter_conclusion.md"


@dataclass
class AdapterRun:
    """One adapter's sweep over the seeds (captures and bases dropped once written)."""

    adapter: str
    results: list[SeedResult]  # one per seed
    stab: SeedStability
    effects: dict[int, pl.DataFrame | None]  # seed -> effect_per_prompt.csv (None: not there)
    #: seed -> (α, KL) at the matched KL budget (ws.diffs.budget.alpha_at_kl)
    budget: dict[int, tuple[float, float]] = field(default_factory=dict)
    #: seed -> the held-out read-outs at ±α of the budget, the α column relabelled ±1
    budget_effects: dict[int, pl.DataFrame | None] = field(default_factory=dict)


@dataclass
class Comparison:
    """Everything the cross-adapter files are written from."""

    adapters: list[str]
    summary: pl.DataFrame
    candidates: pl.DataFrame  # every adapter's candidate_table, stacked
    ranks: pl.DataFrame
    tau: pl.DataFrame
    claims: list[Claim]
    caveats: list[str]
