"""Candidates 41–42: built from other candidates' bases.

``qk_x_chars_clusters`` is the TRUE intersection of ``qk_circuit`` and ``chars_clusters``
by principal angles (:func:`ws.core.linalg.intersection`): each principal pair closer than
``max_angle_deg`` (default 30°, i.e. cosine > 0.87) contributes the unit average of its
two vectors; pairs further apart are not shared. Two unrelated 8-dim subspaces of a
576-dim space have all principal angles near 90°, so this candidate is often rank 0 (an
honest "they do not intersect") and is then scored as undefined. ``build_all(...,
intersection="bisector")`` restores the older behaviour (normalised sums of the 8 closest
pairs, whatever their angle).
"""

from __future__ import annotations

import torch

from ws.bases.registry import BuildContext, candidate
from ws.core import linalg


def _describe(ctx: BuildContext) -> str:
    if ctx.intersection == "bisector":
        return (
            "intersection of qk_circuit and chars_clusters as v7 built it: normalised sums of the 8 closest "
            "principal pairs, whatever their angle"
        )
    return (
        f"intersection of qk_circuit and chars_clusters: the principal pairs with angle < {ctx.max_angle_deg:g}°, "
        f"each averaged (v7 used a bisector of all pairs); may be rank 0"
    )


@candidate(
    "qk_x_chars_clusters",
    "compound",
    "compound",
    "intersection of qk_circuit and chars_clusters: the principal pairs with angle < 30°, each averaged "
    "(v7 used a bisector of all pairs); may be rank 0",
    needs=("clean", "pos", "neg"),
    describe=_describe,
    note="true intersection by principal angles; option intersection='bisector' gives v7's bisector",
    construction=(
        "principal angles from the SVD of qk_circuitᵀ·chars_clusters; each pair closer than the "
        "threshold gives the unit average of its two vectors; no such pair: rank 0, scored as "
        "undefined"
    ),
)
def qk_x_chars_clusters(ctx: BuildContext, layer: int) -> torch.Tensor:
    A, B = ctx.basis("qk_circuit", layer), ctx.basis("chars_clusters", layer)
    if ctx.intersection == "bisector":
        return linalg.bisector_intersection(A, B, ctx.k)
    return linalg.intersection(A, B, ctx.max_angle_deg)


@candidate(
    "WNR_union_TaskDiff",
    "compound",
    "compound",
    "orthonormal union of write_not_downstream_read and TaskDiff_contrast",
    needs=("pos", "neg"),
    max_rank=lambda k: 2 * k,
    note="rank up to 2k = 16",
    construction=("orthonormal union by a rank-revealing SVD: a direction the two share counts once (rank up to 2·{k})"),
)
def WNR_union_TaskDiff(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.union(ctx.basis("write_not_downstream_read", layer), ctx.basis("TaskDiff_contrast", layer))
