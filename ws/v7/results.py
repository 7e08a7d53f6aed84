"""What a v7 run produces, as types: the probes, one seed's result, the seeds' agreement,
and the names of the v7 file set. No behaviour lives here; :mod:`ws.v7.sweep` fills them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl


@dataclass
class Probes:
    fit_topics: list
    eval_topics: list
    fit_clean: list[str]
    fit_pos: list[str]
    fit_neg: list[str]
    eval: list[str]
    persona_pos: str
    persona_neg: str


@dataclass
class SeedResult:
    """What one seed's diff gives: its captures, candidates and scores."""

    seed: int
    captures: Any
    bases: dict[str, list]
    meta: pl.DataFrame
    scores: Any  # ws.stats.SweepScores
    per_layer: pl.DataFrame
    specific_per_layer: pl.DataFrame
    summary: pl.DataFrame
    summary_pct: pl.DataFrame
    specific_summary: pl.DataFrame
    layers_touched: list[int]
    layers_without_delta: list[int]
    diff_meta: dict
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_gib: dict[str, float] = field(default_factory=dict)  # stage -> the process's peak RSS when it ended
    missing_writers: dict[str, list[int]] = field(default_factory=dict)  # ws.diffs.store.missing_writers
    lens: pl.DataFrame | None = None  # ws.stats.lens.sspace_lens: the diff in W's own singular directions
    lens_rows: dict = field(default_factory=dict)  # its output-side profile per tensor


@dataclass
class SeedStability:
    """How far the seeds' diffs agree on the ranking."""

    seeds: list[int]
    winners: dict[int, str]  # seed -> best write/mixed A-hypothesis
    winner: str  # the primary seed's winner
    winner_wins: int  # in how many seeds it wins
    tau: pl.DataFrame  # seed_a, seed_b, kendall_tau, p_value, n
    per_candidate: pl.DataFrame  # subspace + seed mean / sd of the main scores

    @property
    def mean_tau(self) -> float:
        v = self.tau["kendall_tau"].to_numpy()
        return float(np.nanmean(v)) if v.size else float("nan")

    @property
    def stable(self) -> bool:
        """The winner is stable when it wins in every seed."""
        return self.winner_wins == len(self.seeds)


#: the files of the v7 contract, and the extra tables beside them
V7_FILES = (
    "v7_per_layer.csv",
    "v7_summary.tsv",
    "v7_summary_pct.tsv",
    "v7_specific_per_layer.csv",
    "v7_specific_summary.tsv",
    "v7_joint_act_weight_scatter.png",
    "v7_joint_act_weight_scatter.pdf",
    "v7_definitions.md",
    "v7_plan_merge.md",
    "v7_conclusion.md",
)
EXTRA_FILES = ("v7_seeds.tsv", "v7_seed_stability.tsv", "v7_sspace_lens.tsv", "v7_sspace_lens.png")
