"""Self-test rows, scored in every run (kind and axis_kind ``self-test``).

- ``random_orthonormal``: a seeded Haar-random rank-8 basis per layer (generator seeded
  with ``seed · 1_000_003 + layer``): it must land within its null (``|z|`` small).
- ``planted_label_half``: the best rank-8 subspace of the first half of the EVAL label rows
  of each layer (at least 8 rows), at unit norm and NOT mean-centred — the maximiser of what
  ``R_act`` scores, fitted on half of the label itself. It must come close to the best rank-8
  subspace of the whole EVAL label (``pct_act_matched_rank``, the oracle at 100 %).

Why not centred: on the embedded model 77–99 % of the label rows' unit energy lies along
one direction every probe shares (measured on the sycophancy and refusal labels, layers
9–25). A mean-centred PCA drops that direction by construction, so a centred "planted" basis
reaches only 20–25 % of the best rank-8 subspace, and whether it then matched the (also
centred) activation ceiling was chance: it did for sycophancy and failed for refusal.
"""

from __future__ import annotations

import torch

from ws.bases.registry import BuildContext, candidate
from ws.core import linalg


@candidate(
    "random_orthonormal",
    "self-test",
    "self-test",
    "seeded Haar-random orthonormal basis, rank 8 per layer (must land within its null)",
    kind="self-test",
    construction="Haar-random per layer from a generator seeded basis_seed·1000003 + layer",
)
def random_orthonormal(ctx: BuildContext, layer: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(ctx.seed * 1_000_003 + layer)
    return linalg.haar_orthonormal(ctx.d, ctx.k, g, dtype=torch.float64)


@candidate(
    "planted_label_half",
    "self-test",
    "self-test",
    "best rank-8 subspace of the first half of the EVAL label rows per layer, uncentred "
    "(must come close to the best rank-8 subspace of the whole EVAL label)",
    kind="self-test",
    needs=("label_eval",),
    note="rank 0 at layers the steering cannot reach (label exactly zero before the first LoRA layer)",
    construction=(
        "the first half of the EVAL label rows (at least k), each at unit norm, top-k right singular "
        "vectors without mean-centring (the maximiser of R_act on those rows); scored against the "
        "whole EVAL label, so those rows are in-sample"
    ),
)
def planted_label_half(ctx: BuildContext, layer: int) -> torch.Tensor:
    X = ctx.cap("label_eval")[layer]  # [n_eval, d]
    return linalg.unit_row_basis(X[: max(ctx.k, X.shape[0] // 2)], ctx.k)
