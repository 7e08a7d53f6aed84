"""The two ceilings (B side: built FROM the LoRA; scored, never ranked as hypotheses)."""

from __future__ import annotations

import torch

from ws.bases.registry import BuildContext, candidate
from ws.core import linalg
from ws.core.columns import CEILING_ACT, CEILING_W, WRITER_TAGS


@candidate(
    CEILING_ACT,
    "ceiling",
    "lora",
    "per-layer PCA of the label built on FIT probes",
    kind="ceiling",
    needs=("label_fit",),
    note="rank 0 at layers the steering cannot reach (label exactly zero before the first LoRA layer)",
    construction=(
        "label rows: the clean FIT probes' block outputs at θ + w minus θ − w (last token); the PCA "
        "is mean-centred, so the shift every probe shares is not in it"
    ),
)
def TaskDiff_lora_ceiling(ctx: BuildContext, layer: int) -> torch.Tensor:
    return linalg.pca(ctx.cap("label_fit")[layer], ctx.k)


@candidate(
    CEILING_W,
    "ceiling",
    "lora",
    "per-layer top-8 left singular vectors of the LoRA write delta [Δo_proj | Δdown_proj]",
    kind="ceiling",
    needs=("deltas",),
    note="None at layers the LoRA did not touch",
    construction=(
        "the raw [Δo_proj | Δdown_proj] side by side, not the unit-Frobenius-balanced concatenation the combined score uses"
    ),
)
def dW_left_basis_ceiling(ctx: BuildContext, layer: int) -> torch.Tensor | None:
    dl = ctx.deltas[layer]
    if dl is None:
        return None
    parts = [dl[t].detach().to(torch.float64) for t in WRITER_TAGS if dl.get(t) is not None]
    if not parts:
        return None
    for t in parts:
        if t.ndim != 2 or t.shape[0] != ctx.d:
            raise ValueError(f"LoRA delta at layer {layer} must be [d_model={ctx.d}, in], got {tuple(t.shape)}")
    return linalg.left_svd_basis(torch.cat(parts, dim=1), ctx.k)
