"""The rows this suite computes differently from upstream's v7 notebook: what upstream's code
does, what this suite does, why, and the measured effect.

Two kinds of figures appear, always labelled:

- **earlier**: from an earlier comparison run of upstream's own notebook code against this
  suite on the embedded model (SmolLM2-135M-Instruct) with the same inputs. That run found
  32 of the 44 shared rows (the 42 hypotheses and the 2 ceilings) equal within 4e-5
  (relative); its per-row list is not kept with this suite, the list below comes from
  reading upstream's code. These figures are constants here and never change with a run.
- **this run**: computed from the run that writes ``v7_plan_merge.md``: the row's own scores
  (seed 0, mean over the touched layers) and, where the run holds what upstream's
  construction needs, that construction's R_act on this run's label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl
import torch

from ws.bases.activations import procrustes_skew_basis
from ws.core.markdown import fmt_num
from ws.stats import conc, energy_frac_act

if TYPE_CHECKING:
    from ws.v7.results import SeedResult

__all__ = [
    "EARLIER_COMPARISON",
    "Difference",
    "DIFFERENCES",
    "mean_r_act",
    "churn_upstream_pairing_r_act",
    "rotation_joint_centring_r_act",
    "difference_lines",
]

#: what the earlier comparison against upstream's code found, in words
EARLIER_COMPARISON = (
    "an earlier comparison run of upstream's own v7 code against this suite on the embedded "
    "model, same inputs, found 32 of the 44 shared rows equal within 4e-5 (relative); its per-row "
    "list is not kept, the rows below come from reading upstream's code"
)


@dataclass(frozen=True)
class Difference:
    """One way a row (or a group of rows) is built differently from upstream v7.

    earlier: the effect measured in the earlier comparison (empty when it was not recorded);
    this_run: extra figures from the run (``res -> text``), beyond the rows' own scores.
    """

    rows: tuple[str, ...]
    what: str
    upstream: str
    here: str
    why: str
    earlier: str = ""
    this_run: Callable[[SeedResult], str] | None = None


# ----------------------------------------------------------------------------- this run's figures
def mean_r_act(bases: Sequence[torch.Tensor | None], label: torch.Tensor, layers: Sequence[int]) -> float:
    """Mean over ``layers`` of R_act = energy_frac_act / (rank/d) of ``bases[l]`` against the
    activation label ``label [L, n, d]`` (layers without a basis are left out; NaN if none)."""
    d = label.shape[-1]
    vals = []
    for l in layers:
        B = bases[l]
        if B is None or B.shape[1] == 0:
            continue
        r = conc(energy_frac_act(B, label[l]), B.shape[1], d)
        if math.isfinite(r):
            vals.append(r)
    return sum(vals) / len(vals) if vals else float("nan")


def churn_upstream_pairing_r_act(res: SeedResult) -> tuple[float, int]:
    """R_act of upstream's churn pairing on this run's label, and the number of layers it covers.

    Upstream's churn at layer l is the PCA of the change block l+1 writes, which is this
    suite's churn basis at layer l+1: so the figure scores ``churn[l+1]`` at layer l, over the
    touched layers that have a next block."""
    L = res.captures.label_eval.shape[0]
    layers = [l for l in res.layers_touched if l + 1 < L]
    shifted = [res.bases["churn"][l + 1] if l + 1 < L else None for l in range(L)]
    return mean_r_act(shifted, res.captures.label_eval, layers), len(layers)


def rotation_joint_centring_r_act(res: SeedResult, k: int, rot_dim: int = 32) -> float:
    """R_act on this run's label of rotation_contrast built with both persona sets centred on
    their joint mean (this suite's earlier construction)."""
    pos, neg = res.captures.pos, res.captures.neg
    L = pos.shape[0]
    bases = [
        procrustes_skew_basis(pos[l], neg[l], k, rot_dim, centre="joint") if l in res.layers_touched else None for l in range(L)
    ]
    return mean_r_act(bases, res.captures.label_eval, res.layers_touched)


def _scores(res: SeedResult, rows: Sequence[str]) -> str:
    s = res.summary
    out = []
    for n in rows:
        r = s.filter(pl.col("subspace") == n)
        if not r.height:
            out.append(f"`{n}` not built")
            continue
        r = r.row(0, named=True)
        out.append(f"`{n}` R_act {fmt_num(r['mean_conc_act'])}, R_w combined {fmt_num(r['mean_conc_w_combined'])}")
    return "; ".join(out)


def _k(res: SeedResult, name: str) -> int:
    """The rank ``name`` was built for in this run (its expected rank)."""
    return int(res.meta.filter(pl.col("subspace") == name)["expected_rank"][0])


def _rank_range(res: SeedResult, name: str) -> str:
    r = res.meta.filter(pl.col("subspace") == name)
    if not r.height or r["rank_min"][0] is None:
        return f"`{name}` was not built"
    lo, hi = int(r["rank_min"][0]), int(r["rank_max"][0])
    return f"true rank {lo if lo == hi else f'{lo}–{hi}'} over the layers (expected {int(r['expected_rank'][0])})"


def _churn_run(res: SeedResult) -> str:
    r, n = churn_upstream_pairing_r_act(res)
    return (
        f"upstream's pairing (this run's churn basis of the next block, scored at layer l) R_act {fmt_num(r)} "
        f"over the {n} touched layers that have a next block"
    )


# ----------------------------------------------------------------------------- the list
_GQA_UPSTREAM = (
    "repeats each single key/value ROW n_heads/n_kv times, so column j of W_o (row j of W_q) meets row "
    "⌊j·n_kv/n_heads⌋ of W_v (W_k): one head's dimensions are paired with rows of several heads, which "
    "is not what the model computes (a bug)"
)

DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        rows=("attn_ov_write", "qk_circuit"),
        what="GQA pairing",
        upstream=_GQA_UPSTREAM,
        here="repeats whole head blocks of head_dim rows, so each query head meets its own KV head, as in attention",
        why="the circuit W_oʰW_vʰ (W_qʰᵀW_kʰ) exists only between a head and its own KV head",
        earlier="mean R_act of `attn_ov_write` 1.67 with upstream's pairing, 2.50 with this one",
    ),
    Difference(
        rows=("churn",),
        what="which block's change",
        upstream="at layer l takes h_{l+1} − h_l of the block outputs: what block l+1 writes (and at the last "
        "layer a difference of zero)",
        here="at layer l takes the output of block l minus its input (the spec's h_{l+1} − h_l in hidden_states "
        "numbering, h_0 = the embedding): what block l writes",
        why="a layer's basis should describe the change written at that layer, where its label and its LoRA delta are",
        this_run=_churn_run,
    ),
    Difference(
        rows=("rotation_contrast",),
        what="centring before the Procrustes fit, now as upstream",
        upstream="centres each persona set on its own mean, the usual Procrustes analysis",
        here="the same since this version (only the joint PCA keeps its true rank, up to 2n − 1; upstream caps it at "
        "2n − 2); before, both sets were centred on their joint mean",
        why="with joint centring the shift between the two sets enters the fit and distorts a plane of rotation it "
        "lies in (tests/test_bases_rotation.py); the shift itself is what diff_in_means scores",
        this_run=lambda res: (
            "the earlier joint centring, rebuilt on this run's persona captures, R_act "
            f"{fmt_num(rotation_joint_centring_r_act(res, _k(res, 'rotation_contrast')))}"
        ),
    ),
    Difference(
        rows=("input_super_not_lm_read",),
        what="what is projected off",
        upstream="projects input_super's 8 basis columns off the top-64 lm_head read space and re-orthonormalises "
        "them (QR): what is left of those 8 directions, in input_super's order",
        here="projects the rows of the reader stack [W_q; W_k; W_v; W_up; W_gate] off that space and takes the "
        "top-8 right singular vectors",
        why="the directions the readers read most outside the lm_head's read space, ranked by how much they are "
        "read (the spec's 'first 8'), not the remains of a basis chosen before the projection",
    ),
    Difference(
        rows=("chars_clusters",),
        what="k-means and rank",
        upstream="uses 8 clusters started at the 8 largest-norm points, 8 Lloyd iterations; the PCA of 8 centred "
        "centroids has rank 7, and its 8th column (singular value zero) is an arbitrary direction scored "
        "as part of the basis",
        here="k + 1 clusters, seeded k-means++ start, Lloyd iterations to convergence, best of 4 starts: k + 1 "
        "centred centroids span k dimensions; a rank below k is reported, never padded",
        why="a basis should hold only directions the construction produced",
        this_run=lambda res: _rank_range(res, "chars_clusters"),
    ),
    Difference(
        rows=("qk_x_chars_clusters",),
        what="intersection",
        upstream="takes the bisector of the 8 closest principal pairs of qk_circuit and chars_clusters, whatever their "
        "angle (two unrelated subspaces still give 8 directions)",
        here="the principal pairs closer than the angle threshold (v7_definitions.md), each averaged; no such pair: "
        "rank 0, scored as undefined (the bisector stays available: intersection='bisector')",
        this_run=lambda res: _rank_range(res, "qk_x_chars_clusters"),
        why="an intersection should be empty when the two subspaces share nothing",
    ),
    Difference(
        rows=("attn_min_taskdiff", "attn_max_taskdiff", "attn_diff_taskdiff", "attn_min_x_diffnorm_taskdiff"),
        what="which token rows",
        upstream="right-aligns the two renderings over their whole length, so the rows include the system-prompt "
        "positions (different tokens in the two renderings) and the padded positions as zero rows, which "
        "move the PCA's mean",
        here="only the suffix the two renderings share token for token (the user turn and the generation prompt), "
        "padding excluded",
        why="a token-level persona difference compares the same token under the two personas",
    ),
)


def difference_lines(res: SeedResult) -> list[str]:
    """One markdown bullet per difference: upstream, here, why, the earlier figure and this
    run's figures (the first seed's tables)."""
    out = []
    for dif in DIFFERENCES:
        rows = ", ".join(f"`{r}`" for r in dif.rows)
        figs = [f"This run (seed {res.seed}, mean over the touched layers): {_scores(res, dif.rows)}"]
        if dif.this_run is not None:
            figs.append(dif.this_run(res))
        earlier = f" Earlier comparison: {dif.earlier}." if dif.earlier else ""
        out.append(
            f"{rows} ({dif.what}): upstream {dif.upstream}. Here: {dif.here}. Why: {dif.why}.{earlier} " + "; ".join(figs) + "."
        )
    return out
