"""What a sweep concludes: the run facts, the self-tests, the sanity checks and which
headline claims survive, as typed values. :mod:`ws.v7.report` only formats them.

- :class:`ConclusionInfo` – the run facts the conclusion is written from (built by
  :func:`conclusion_info` from a sweep's config, probes, first seed and seed stability);
- :class:`SelfTest`, :func:`self_tests` – the self-test rows must land where they must;
- :class:`Claim`, :func:`claim_checks` – each headline claim, its evidence, its verdict;
- :class:`SeedSummary` – how the seeds agree on the first seed's winner;
- :class:`SeedVerdict`, :func:`seed_verdict` – the answer that survives across the seeds
  (a stable winner, or none), which the conclusion leads with;
- :func:`sanity_lines` – the notebook's ``SHOULD: … ELSE: …`` lines;
- :func:`rank_collapses` – candidates whose true rank fell short of the requested one.

Every rule reads the run's own tables; nothing here writes a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ws.behavior import data
from ws.core import caveats as C
from ws.core.caveats import CI_LEVEL, FDR_ALPHA, SPECIFICITY_TARGET
from ws.core.markdown import Claim, SelfTest, claims_frame, finite, row_of
from ws.core.markdown import fmt_num as _num
from ws.core.paths import EMBEDDED_NAMES
from ws.stats import CEILING_ACT, CEILING_W, PR_THRESHOLD, ranked

if TYPE_CHECKING:
    from ws.config import Config
    from ws.v7.results import Probes, SeedResult, SeedStability

__all__ = [
    "SPECIFICITY_TARGET",
    "FDR_ALPHA",
    "CI_LEVEL",
    "Claim",
    "SeedSummary",
    "SeedVerdict",
    "ConclusionInfo",
    "self_tests",
    "rank_collapses",
    "sanity_lines",
    "mean_leader",
    "seed_verdict",
    "conclusion_info",
    "claim_checks",
    "touched_rows",
    "q_counts",
    "low_rank_label",
]


# ----------------------------------------------------------------------------- values
@dataclass(frozen=True)
class SeedSummary:
    """How the seeds agree, for the conclusion.

    winner: the first seed's winner; winner_wins: in how many of ``n_seeds`` it wins;
    winners: seed -> that seed's winner; mean_tau: mean Kendall τ between the seeds' joint
    rankings; seed_mean_joint / seed_sd_joint: the winner's joint score over the seeds;
    mean_leader (+ its mean and sd): the leader by the joint score averaged over the seeds.
    """

    n_seeds: int
    winner: str
    winner_wins: int
    winners: Mapping[int, str]
    mean_tau: float
    seed_mean_joint: float | None = None
    seed_sd_joint: float | None = None
    mean_leader: str | None = None
    mean_leader_joint: float | None = None
    mean_leader_sd: float | None = None

    @property
    def stable(self) -> bool:
        """The first seed's winner wins in every seed."""
        return self.winner_wins == self.n_seeds


@dataclass(frozen=True)
class SeedVerdict:
    """The answer that survives across the seeds (see :func:`seed_verdict` for the rule).

    leader / runner_up: first and second write/mixed A-hypothesis by the joint score
    averaged over the seeds, each with that mean and its sd over the seeds; leader_wins: in
    how many of ``n_seeds`` seeds the leader is that seed's winner.
    """

    n_seeds: int
    leader: str
    leader_mean: float
    leader_sd: float
    leader_wins: int
    runner_up: str | None = None
    runner_up_mean: float | None = None
    runner_up_sd: float | None = None

    @property
    def lead(self) -> float:
        """Seed-mean joint score of the leader minus the runner-up's (NaN without a runner-up)."""
        return self.leader_mean - self.runner_up_mean if self.runner_up is not None else float("nan")

    @property
    def spread(self) -> float:
        """The seeds' spread: the larger of the leader's and the runner-up's seed sd (NaN when
        either is not finite)."""
        sds = [self.leader_sd] + ([self.runner_up_sd] if self.runner_up is not None else [])
        return max(float(x) for x in sds) if all(finite(x) for x in sds) else float("nan")

    @property
    def wins_most(self) -> bool:
        """The leader wins in more than half of the seeds."""
        return 2 * self.leader_wins > self.n_seeds

    @property
    def clear_lead(self) -> bool:
        """The leader's lead over the runner-up is larger than the seeds' spread (no runner-up:
        nothing to lead)."""
        if self.runner_up is None:
            return True
        return finite(self.lead) and finite(self.spread) and self.lead > self.spread

    @property
    def stable(self) -> bool:
        """A stable winner: wins most seeds and leads by more than the seeds' spread."""
        return self.wins_most and self.clear_lead


@dataclass(frozen=True)
class ConclusionInfo:
    """The run facts the conclusion is written from; every field is optional (a missing one
    leaves its line out).

    layers_touched: the layers the summaries average (None: not recorded, all rows count);
    self_tests: the self-test verdicts; seed_verdict: the cross-seed answer (several seeds
    only), which leads the bottom line; artifacts: relative paths (or name -> path);
    bootstrap_ci: the ``*_ci_lo / *_ci_hi`` columns of the summary per subspace;
    fdr_alpha: the q-value level of the claims; pr_threshold: the participation ratio below
    which a label counts as nearly rank one; notes: extra caveats, in order.
    """

    title: str = "Hypothesis sweep: conclusion"
    model: str | None = None
    n_fit: int | None = None
    n_eval: int | None = None
    layers_touched: Sequence[int] | None = None
    layers_without_delta: Sequence[int] = ()
    rank_collapses: Sequence[str] = ()
    quantized: bool = False
    diff_specificity_ratio: float | None = None
    diff_specificity_target: float = SPECIFICITY_TARGET
    diff_source: str = ""  # where an imported diff came from (imported_text); empty for a trained one
    has_controls: bool = True  # False: the behaviour has no control set (an A/B dataset), specificity not measurable
    diff_reading: str | None = None  # what the diff measurably does on this model (the honest name)
    self_tests: Sequence[SelfTest] = ()
    artifacts: Sequence[str] | Mapping[str, str] = ()
    bootstrap_ci: pl.DataFrame | None = None
    n_boot: int | None = None
    ci_level: float | None = None
    seed: int | None = None
    mc_seed: int | None = None
    fdr_alpha: float | None = None
    seed_stability: SeedSummary | None = None
    seed_verdict: SeedVerdict | None = None
    pr_threshold: float | None = None
    notes: Sequence[str] = ()
    lens: pl.DataFrame | None = None  # ws.stats.lens table: the diff in the base weights' own singular directions


# ----------------------------------------------------------------------------- helpers


def touched_rows(per_layer: pl.DataFrame, info: ConclusionInfo, name: str | None = None) -> pl.DataFrame:
    """Rows of ``per_layer`` on the layers the LoRA touched (all layers when ``info`` does not
    say), for one candidate when ``name`` is given."""
    rows = per_layer if name is None else per_layer.filter(pl.col("subspace") == name)
    if info.layers_touched is not None:
        rows = rows.filter(pl.col("layer").is_in([int(l) for l in info.layers_touched]))
    return rows


def touched_q(per_layer: pl.DataFrame, name: str, col: str, info: ConclusionInfo) -> pl.Series:
    """The finite q-values in ``col`` of one candidate over the touched layers."""
    return touched_rows(per_layer, info, name)[col].cast(pl.Float64).fill_nan(None).drop_nulls()


def q_counts(per_layer: pl.DataFrame | None, name: str, col: str, info: ConclusionInfo) -> tuple[int, int] | None:
    """(layers with q ≤ fdr_alpha, layers with a finite q) for one candidate over the touched layers."""
    if per_layer is None or col not in per_layer.columns or info.fdr_alpha is None:
        return None
    q = touched_q(per_layer, name, col, info)
    if q.len() == 0:
        return None
    return int((q <= float(info.fdr_alpha)).sum()), int(q.len())


def low_rank_label(per_layer: pl.DataFrame | None, info: ConclusionInfo) -> tuple[float, int] | None:
    """``(median participation ratio, touched layers)`` of the activation label when it is
    nearly rank one (median ``pr_act`` over the touched layers below ``info.pr_threshold``,
    default 3); None otherwise."""
    if per_layer is None or "pr_act" not in per_layer.columns:
        return None
    pr = (
        touched_rows(per_layer, info)
        .group_by("layer")
        .agg(pl.col("pr_act").cast(pl.Float64).first())["pr_act"]
        .fill_nan(None)
        .drop_nulls()
    )
    if pr.len() == 0:
        return None
    med = float(pr.median())
    thr = float(info.pr_threshold or 3.0)
    return None if med >= thr else (med, int(pr.len()))


# ----------------------------------------------------------------------------- self-tests
def self_tests(
    res: SeedResult, z_max: float = C.SELFTEST_Z_MAX, planted_min_pct: float = C.SELFTEST_PLANTED_MIN_PCT
) -> list[SelfTest]:
    """The self-test rows of one seed's tables.

    - ``random_orthonormal`` must land within its null: |z_act| and |z_w_combined| below
      ``z_max`` on every touched layer.
    - ``planted_label_half`` (the best rank-k subspace of half the EVAL label) must come close
      to the best rank-k subspace of the whole EVAL label, the oracle at 100 %:
      ``mean_pct_act_matched_rank ≥ planted_min_pct``.
    """
    out = []
    pl_t = res.per_layer.filter(pl.col("layer").is_in(res.layers_touched))
    r = pl_t.filter(pl.col("subspace") == "random_orthonormal")
    if r.height:
        za = np.abs(r["z_act"].to_numpy())
        zw = np.abs(r["z_w_combined"].to_numpy())
        worst = float(np.nanmax(np.concatenate([za, zw])))
        ok = bool(np.all(np.nan_to_num(za, nan=np.inf) < z_max) and np.all(np.nan_to_num(zw, nan=np.inf) < z_max))
        out.append(
            SelfTest(
                "random_orthonormal",
                ok,
                f"largest |z| over {r.height} touched layers (act and weight) = {worst:.2f} (must be < {z_max:g})",
            )
        )
    p = res.summary_pct.filter(pl.col("subspace") == "planted_label_half")
    if p.height:
        pct = float(p["mean_pct_act_matched_rank"][0])
        ok = bool(np.isfinite(pct) and pct >= planted_min_pct)
        out.append(
            SelfTest(
                "planted_label_half",
                ok,
                f"{pct:.1f}% of the best rank-k subspace of the EVAL label (must be ≥ {planted_min_pct:g}%); "
                f"{float(p['pct_act_ceiling'][0]):.1f}% of the (mean-centred) activation ceiling",
            )
        )
    return out + planted_self_tests(res.summary_pct)


def planted_self_tests(summary: pl.DataFrame, min_pct: float = C.SELFTEST_SSPACE_MIN_PCT) -> list[SelfTest]:
    """The S-space family's known answer (:mod:`ws.bases.planted`): ``sspace_planted`` must
    reach ``min_pct`` % of the dW oracle at its rank (``mean_pct_w_combined_matched_rank``),
    and ``sspace_plain_svd`` (corda / asvd diffs only) must fall short of it."""
    out = []
    for name, must_reach in (("sspace_planted", True), ("sspace_plain_svd", False)):
        p = summary.filter(pl.col("subspace") == name)
        if not p.height:
            continue
        pct = float(p["mean_pct_w_combined_matched_rank"][0])
        reached = bool(np.isfinite(pct) and pct >= min_pct)
        ok = reached if must_reach else bool(np.isfinite(pct) and not reached)
        rule = f"must be ≥ {min_pct:g}%" if must_reach else f"must fall short of {min_pct:g}%: a diff not confined to it"
        out.append(
            SelfTest(
                name,
                ok,
                f"{pct:.2f}% of the dW oracle's weight energy at its rank ({rule}); "
                f"energy inside {100 * float(p['mean_energy_frac_w_combined'][0]):.2f}%",
            )
        )
    return out


def rank_collapses(meta: pl.DataFrame) -> list[str]:
    """One line per candidate whose true rank fell short of its expected rank somewhere."""
    out = []
    if "rank_min" not in meta.columns:
        return out
    for r in meta.iter_rows(named=True):
        if r["rank_min"] is not None and r["expected_rank"] is not None and r["rank_min"] < r["expected_rank"]:
            out.append(
                f"`{r['subspace']}` has true rank {r['rank_min']}–{r['rank_max']} (expected {r['expected_rank']})"
                + (f": {r['note']}" if r.get("note") else "")
            )
    return out


# ----------------------------------------------------------------------------- sanity
def sanity_lines(res: SeedResult, stab: SeedStability | None = None) -> list[tuple[bool, str]]:
    """``(ok, "SHOULD: … ELSE: …")`` lines with their measured values, for the notebook."""
    lines = []
    s = res.summary_pct

    def val(name: str, col: str) -> float:
        r = s.filter(pl.col("subspace") == name)
        return float(r[col][0]) if r.height and r[col][0] is not None else float("nan")

    c_act = val(CEILING_ACT, "pct_act_ceiling")
    lines.append(
        (
            abs(c_act - 100) < 1e-6,
            f"SHOULD: {CEILING_ACT} = 100% of itself (measured {c_act:.1f}%). ELSE: the pct table is mis-normalised.",
        )
    )
    c_w = val(CEILING_W, "pct_w_oracle_combined")
    lines.append(
        (
            abs(c_w - 100) < 1e-6,
            f"SHOULD: {CEILING_W} = 100% of its weight oracle (measured {c_w:.1f}%). ELSE: the weight oracle is wrong.",
        )
    )
    cw = val(CEILING_W, "mean_conc_w_combined")
    best_w = float(np.nanmax(s.filter(pl.col("kind") == "A-hypothesis")["mean_conc_w_combined"].to_numpy()))
    lines.append(
        (
            cw >= best_w - 1e-9,
            f"SHOULD: no A-hypothesis beats the dW ceiling on weight energy (ceiling R_w {cw:.2f}, best A-side {best_w:.2f}). "
            f"ELSE: the ceiling is not the top-k SVD of the delta.",
        )
    )
    for t in self_tests(res):
        lines.append((t.passed, f"SHOULD: self-test {t.name} passes ({t.detail}). ELSE: the scores or the null are broken."))
    n_lab = res.captures.label_eval.shape[1]
    lines.append(
        (n_lab >= 8, f"SHOULD: at least 8 EVAL probes build the label (measured {n_lab}). ELSE: CIs are wide; raise WS_N_EVAL.")
    )
    if stab is not None and len(stab.seeds) > 1:
        lines.append(
            (
                stab.stable,
                f"SHOULD: the winner `{stab.winner}` wins in every seed (measured {stab.winner_wins}/{len(stab.seeds)}; "
                f"mean Kendall τ {stab.mean_tau:.2f}). ELSE: the headline depends on the LoRA seed.",
            )
        )
    return lines


# ----------------------------------------------------------------------------- seeds
def mean_leader(summary: pl.DataFrame, per_candidate: pl.DataFrame) -> dict | None:
    """The write/mixed A-hypothesis with the highest joint score averaged over the seeds
    (its row of ``per_candidate`` joined to its candidate columns), or None."""
    j = summary.select("subspace", "kind", "axis_kind").join(per_candidate, on="subspace", how="inner")
    j = ranked(j, "seed_mean_joint_score")
    return j.row(0, named=True) if j.height else None


def seed_verdict(summary: pl.DataFrame, per_candidate: pl.DataFrame, n_seeds: int) -> SeedVerdict | None:
    """The answer that survives across ``n_seeds`` seeds (None with fewer than two seeds or no
    candidate with a finite seed-mean joint score).

    Rule: rank the write/mixed A-hypotheses by their joint score averaged over the seeds
    (``seed_mean_joint_score`` of ``per_candidate``). The first is a **stable winner** when it
    is the winner of more than half of the seeds (``seeds_won``) AND its lead over the second
    is larger than the seeds' spread, the larger of the two ``seed_sd_joint_score`` (sd over
    the seeds, ddof 1). Otherwise there is no stable winner. ``summary`` gives the kind and
    axis kind of each candidate.
    """
    if n_seeds < 2:
        return None
    j = summary.select("subspace", "kind", "axis_kind").join(per_candidate, on="subspace", how="inner")
    j = ranked(j, "seed_mean_joint_score")
    if not j.height:
        return None
    a = j.row(0, named=True)
    b = j.row(1, named=True) if j.height > 1 else None
    return SeedVerdict(
        n_seeds=int(n_seeds),
        leader=a["subspace"],
        leader_mean=float(a["seed_mean_joint_score"]),
        leader_sd=_float(a["seed_sd_joint_score"]),
        leader_wins=int(a["seeds_won"]),
        runner_up=b["subspace"] if b else None,
        runner_up_mean=float(b["seed_mean_joint_score"]) if b else None,
        runner_up_sd=_float(b["seed_sd_joint_score"]) if b else None,
    )


def _float(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _seed_summary(res: SeedResult, stab: SeedStability) -> SeedSummary | None:
    if len(stab.seeds) < 2:
        return None
    w = stab.per_candidate.filter(pl.col("subspace") == stab.winner)
    ml = mean_leader(res.summary, stab.per_candidate)
    return SeedSummary(
        n_seeds=len(stab.seeds),
        winner=stab.winner,
        winner_wins=stab.winner_wins,
        winners=dict(stab.winners),
        mean_tau=stab.mean_tau,
        seed_mean_joint=float(w["seed_mean_joint_score"][0]) if w.height else None,
        seed_sd_joint=float(w["seed_sd_joint_score"][0]) if w.height else None,
        mean_leader=ml["subspace"] if ml else None,
        mean_leader_joint=ml["seed_mean_joint_score"] if ml else None,
        mean_leader_sd=ml["seed_sd_joint_score"] if ml else None,
    )


def imported_text(meta: Mapping[str, Any]) -> str:
    """Where an imported diff came from, for the conclusions' header and caveats."""
    kinds = {
        "peft": "a pair of PEFT adapters (w = Δ⁺ − Δ⁻)",
        "peft-bidir": "one bidirectional PEFT adapter (w = 2Δ)",
        "checkpoints": "a pair of fine-tuned checkpoints (w = θ⁺ − θ⁻)",
    }
    what = kinds.get(str(meta.get("imported")), str(meta.get("imported")))
    return f"the diff is imported from {what}: " + ", ".join(f"`{s}`" for s in meta.get("sources") or [])


SPECIFIC_CLAIM = "the diff is specific to the behaviour (not a general yes-bias), so its subspace is the behaviour's"


# ----------------------------------------------------------------------------- the run facts
def no_control_reading(behavior: str, target: str, direction: int, diff_meta: Mapping[str, Any]) -> str:
    """The headline of a diff whose behaviour has no control set: what its target-set spread
    (signed toward the behaviour) and that spread's CI say — a diff that moves the target set
    toward the behaviour, against it, or has no measurable effect (the CI spans 0)."""
    spread = (diff_meta.get("effect_spread") or {}).get(target)
    ci = (diff_meta.get("effect_spread_ci") or {}).get(target)
    tail = "its specificity is not measurable (the behaviour has no control set)"
    if spread is None or not finite(spread):
        return f"a {behavior} diff whose effect was not measured; {tail}"
    x = direction * float(spread)
    if ci is None:
        return f"a {behavior} diff, spread {x:+.2f} nats toward the behaviour (no CI recorded); {tail}"
    lo, hi = sorted(direction * float(v) for v in ci)
    shown = f"{x:+.2f} nats [{lo:+.2f}, {hi:+.2f}]"
    if lo > 0:
        return f"a {behavior} diff: it moves the target set toward the behaviour by {shown}; {tail}"
    if hi < 0:
        return f"a diff that moves {behavior}'s target set AGAINST the behaviour ({shown}); {tail}"
    return (
        f"a diff with NO MEASURABLE EFFECT on {behavior} (spread {shown}: the CI spans 0), so no subspace below "
        f"carries a behaviour; {tail}"
    )


def diff_reading(
    behavior: str, ratio: float | None, target: float = SPECIFICITY_TARGET, diff_meta: Mapping[str, Any] | None = None
) -> str:
    """What the diff measurably does, in words, from its specificity ratio (the target set's
    spread over the largest control spread): the behaviour's name only when the diff is
    specific to it; otherwise what it is on this model. Without a control set, from the
    target set's spread and its CI (``diff_meta``'s ``effect_spread`` / ``effect_spread_ci``):
    toward the behaviour, against it, or no measurable effect."""
    b = data.get_behavior(behavior)
    if not b.controls:
        return no_control_reading(b.name, b.target, b.direction, diff_meta or {})
    if ratio is None or not finite(ratio):
        return f"a {behavior} diff whose effect was not measured (no specificity ratio in its metadata)"
    r = f"specificity {float(ratio):.2f}"
    if float(ratio) >= target:
        return f"{behavior}, specific to the target set here ({r} ≥ {target:g})"
    if behavior == "sycophancy":
        return f"agreement with the user's stated opinion; not truth-conditional here: {r}"
    return f"a direction that moves the control sets about as much as the target set; not specific to {behavior} here: {r}"


def conclusion_info(
    cfg: Config, probes: Probes, res: SeedResult, stab: SeedStability, artifacts: Sequence[str], notes: Sequence[str] = ()
) -> ConclusionInfo:
    """The facts of a sweep the conclusion is written from: the first seed's tables ``res``,
    every seed's agreement ``stab``; ``notes`` are appended to the caveats."""
    dm = res.diff_meta or {}
    pre = []
    sp = dm.get("effect_spread") or {}
    if sp:
        pre.append(
            "diff effect on held-out prompts (logratio at α=+2 minus α=−2): "
            + ", ".join(f"{k} {float(v):+.2f} nats" for k, v in sp.items())
        )
    if cfg.smoke:
        pre.append(C.SMOKE)
    reading = diff_reading(cfg.behavior, dm.get("specificity_ratio"), diff_meta=dm)
    return ConclusionInfo(
        title=f"v7 hypothesis sweep — {cfg.behavior}/{cfg.adapter} on `{cfg.model}`: {reading}",
        diff_reading=reading,
        model=cfg.model,
        n_fit=len(probes.fit_clean),
        n_eval=len(probes.eval),
        layers_touched=list(res.layers_touched),
        layers_without_delta=list(res.layers_without_delta),
        rank_collapses=rank_collapses(res.meta),
        quantized=cfg.model in EMBEDDED_NAMES,
        diff_specificity_ratio=dm.get("specificity_ratio"),
        has_controls=bool(data.get_behavior(cfg.behavior).controls),
        diff_source=imported_text(dm) if dm.get("imported") else "",
        self_tests=self_tests(res),
        artifacts=list(artifacts),
        bootstrap_ci=res.summary.select([c for c in res.summary.columns if c == "subspace" or c.endswith(("_ci_lo", "_ci_hi"))]),
        n_boot=cfg.n_boot,
        ci_level=CI_LEVEL,
        seed=res.seed,
        fdr_alpha=FDR_ALPHA,
        seed_stability=_seed_summary(res, stab),
        seed_verdict=seed_verdict(res.summary, stab.per_candidate, len(stab.seeds)),
        pr_threshold=PR_THRESHOLD,
        notes=[*pre, *notes],
        lens=res.lens,
    )


# ----------------------------------------------------------------------------- claims
def claim_checks(summary_pct: pl.DataFrame, per_layer: pl.DataFrame | None, info: ConclusionInfo) -> list[Claim]:
    """Each headline claim of the conclusion with its evidence and verdict.

    Rules:

    - concentration claims (activation, weight) survive when the winner's q-value is
      ≤ ``fdr_alpha`` on more than half of the touched layers (and, for the activation,
      when the bootstrap CI of R_act lies above 1);
    - "the winner beats the runner-up" survives when their joint-score CIs do not
      overlap and, with several seeds, the winner wins in every seed;
    - "the winner does not depend on the seed" needs several seeds and every win;
    - "the diff is specific to the behaviour" needs the diff's specificity ratio
      ≥ ``diff_specificity_target``;
    - "the statistics are calibrated" needs every self-test to pass.
    """
    order = ranked(summary_pct)
    out: list[Claim] = []
    ci = info.bootstrap_ci
    st = info.seed_stability
    several = st is not None and st.n_seeds > 1
    if order.height:
        b = order.row(0, named=True)
        name = b["subspace"]
        c = row_of(ci, name)
        out.append(_activation_claim(b, c, per_layer, info))
        out.append(_weight_claim(b, per_layer, info))
        if order.height > 1:
            r = order.row(1, named=True)
            cr = row_of(ci, r["subspace"])
            ev = [f"joint {_num(b['joint_score'])} vs {_num(r['joint_score'])}"]
            ok = None
            if c is not None and cr is not None:
                ev.append(
                    f"CIs [{_num(c['joint_score_ci_lo'])}, {_num(c['joint_score_ci_hi'])}] and "
                    f"[{_num(cr['joint_score_ci_lo'])}, {_num(cr['joint_score_ci_hi'])}]"
                )
                ok = bool(c["joint_score_ci_lo"] > cr["joint_score_ci_hi"])
            if several:
                ev.append(f"wins in {st.winner_wins} of {st.n_seeds} seeds")
                ok = (ok is not False) and st.winner_wins == st.n_seeds
            out.append(Claim(f"`{name}` beats the runner-up `{r['subspace']}`", "; ".join(ev), ok))
        if several:
            out.append(
                Claim(
                    f"`{name}` is the winner whatever the LoRA seed",
                    f"wins in {st.winner_wins} of {st.n_seeds} seeds; mean Kendall τ {_num(st.mean_tau)}",
                    st.winner_wins == st.n_seeds,
                )
            )
        else:
            out.append(Claim(f"`{name}` is the winner whatever the LoRA seed", "one seed only", None))
    ratio = info.diff_specificity_ratio
    if not info.has_controls:
        out.append(Claim(SPECIFIC_CLAIM, f"not measurable: {C.NO_CONTROLS}", None))
    elif ratio is not None:
        target = float(info.diff_specificity_target)
        out.append(
            Claim(
                SPECIFIC_CLAIM,
                f"specificity ratio {_num(ratio)} (needs ≥ {_num(target)})",
                bool(finite(ratio) and float(ratio) >= target),
            )
        )
    tests = list(info.self_tests)
    if tests:
        bad = [t.name for t in tests if not t.passed]
        out.append(
            Claim(
                "the null and the oracle behave as they must (self-tests)",
                f"{len(tests) - len(bad)} of {len(tests)} pass" + (f"; failed: {', '.join(bad)}" if bad else ""),
                not bad,
            )
        )
    return out


def _activation_claim(
    b: Mapping[str, Any], c: Mapping[str, Any] | None, per_layer: pl.DataFrame | None, info: ConclusionInfo
) -> Claim:
    name = b["subspace"]
    ev, ok = [f"R_act {_num(b['mean_conc_act'])}"], None
    if c is not None:
        ev.append(f"CI [{_num(c['mean_conc_act_ci_lo'])}, {_num(c['mean_conc_act_ci_hi'])}]")
        ok = bool(finite(c["mean_conc_act_ci_lo"]) and c["mean_conc_act_ci_lo"] > 1)
    qc = q_counts(per_layer, name, "q_act", info)
    if qc is not None:
        ev.append(f"q ≤ {_num(info.fdr_alpha)} on {qc[0]} of {qc[1]} layers")
        ok = (ok is not False) and qc[0] * 2 > qc[1]
    return Claim(f"`{name}` holds more of the diff's activation effect than a random subspace", "; ".join(ev), ok)


def _weight_claim(b: Mapping[str, Any], per_layer: pl.DataFrame | None, info: ConclusionInfo) -> Claim:
    name = b["subspace"]
    ev, ok = [f"R_w combined {_num(b['mean_conc_w_combined'])}", f"z {_num(b.get('mean_z_w_combined'))}"], None
    qc = q_counts(per_layer, name, "q_w_combined", info)
    if qc is not None:
        ev.append(f"q ≤ {_num(info.fdr_alpha)} on {qc[0]} of {qc[1]} layers")
        ok = qc[0] * 2 > qc[1]
    return Claim(f"`{name}` holds more of the diff's weight energy than a random subspace", "; ".join(ev), ok)


def claims_table(cfg, probes, results: Sequence, stab) -> pl.DataFrame:
    """The conclusion's "Which claims survive" table as a frame: claim, evidence, verdict.

    The same rules and inputs as ``v7_conclusion.md`` (:func:`claim_checks` on the first
    seed's tables, with every seed's stability)."""
    res = results[0]
    info = conclusion_info(cfg, probes, res, stab, artifacts=[])
    return claims_frame(claim_checks(res.summary_pct, res.per_layer, info))
