"""Self-test rows, scored in every run (kind and axis_kind ``self-test``).

- ``random_orthonormal``: a seeded Haar-random rank-8 basis per layer (generator seeded
  with ``seed · 1_000_003 + layer``): it must land within its null (``|z|`` small).
- ``planted_label_half``: PCA(8) of the first half of the EVAL label rows of each layer (at
  least 9 rows, so that the centred PCA can have its full rank 8 when a behaviour has few
  EVAL rows): a basis fitted on (half of) the label itself, so it must approach the
  activation ceiling.
"""

from __future__ import annotations

import torch

from ws import linalg
from ws.bases.registry import BuildContext, candidate


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
    "PCA(8) of the first half of the EVAL label rows per layer (must approach the ceiling)",
    kind="self-test",
    needs=("label_eval",),
    construction=(
        "the first half of the EVAL label rows (at least k+1, the fewest that give a full-rank centred "
        "PCA), mean-centred PCA; scored against the whole EVAL label, so those rows are in-sample"
    ),
)
def planted_label_half(ctx: BuildContext, layer: int) -> torch.Tensor:
    X = ctx.cap("label_eval")[layer]  # [n_eval, d]
    return linalg.pca(X[: max(ctx.k + 1, X.shape[0] // 2)], ctx.k)
