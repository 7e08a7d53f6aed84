"""The persona gradient at the base model as candidates: ``grad_write`` and ``grad_read``.

From ``G = ∇_W L⁺ − ∇_W L⁻`` at θ₀ (:func:`ws.diffs.gradient.persona_gradient`, on the diff's own
training completions; its singular vectors are kept beside ``w`` when the diff is built), per layer:

- ``grad_write``: the top-``k`` left singular vectors of ``[G_o_proj | G_down_proj]``
  (``d × (d + d_ff)``): the residual directions the first training step would write;
- ``grad_read``: the top-``k`` right singular vectors of the readers' gradients stacked
  ``[G_q; G_k; G_v; G_gate; G_up]`` (``· × d``): the residual directions it would read.

Both are A-hypotheses (family ``gradient``, source ``base-gradient``), appended per run like
the steering vectors (:func:`gradient_candidates`, then
:func:`ws.bases.registry.append_candidates`). A diff the suite did not train (imported, or
brought to :func:`ws.analysis.analyse` as tensors) has no training data here: no rows.
Known answer (``tests/test_gradient.py``): a diff made by one plain gradient step from θ₀
has writer deltas ``−η G``, so ``grad_write`` is its dW oracle at rank ``k`` (100 % of the best weight energy at that rank).
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
import torch

from ws.bases.registry import meta_frame

DEFINITIONS = {
    "grad_write": (
        "write",
        "top-k left singular vectors of the persona gradient at the base model, [∇L⁺ − ∇L⁻] of o_proj | down_proj "
        "(where the first training step would write)",
    ),
    "grad_read": (
        "read",
        "top-k right singular vectors of the persona gradient at the base model, the readers' [∇L⁺ − ∇L⁻] stacked "
        "(q, k, v, gate, up: where the first training step would read)",
    ),
}


def gradient_bases(directions: Mapping[str, Mapping[str, torch.Tensor]], n_layers: int, k: int) -> dict[str, list]:
    """``{name: per layer [d, ≤ k] float32 orthonormal basis or None}``: the first ``k`` of the
    singular vectors kept beside the diff (:func:`ws.diffs.gradient.gradient_directions`)."""
    return {
        name: [
            directions[name][str(layer)][:, :k].to(torch.float32).contiguous() if str(layer) in directions.get(name, {}) else None
            for layer in range(n_layers)
        ]
        for name in DEFINITIONS
    }


def gradient_candidates(
    directions: Mapping[str, Mapping[str, torch.Tensor]], n_layers: int, k: int
) -> tuple[dict[str, list[torch.Tensor | None]], pl.DataFrame]:
    """``(bases, meta)`` of ``grad_write`` / ``grad_read`` from the diff's saved gradient
    directions (appended by :func:`ws.bases.registry.append_candidates`)."""
    gb = gradient_bases(directions, n_layers, k)
    rows = []
    for name, (axis, definition) in DEFINITIONS.items():
        ranks = [b.shape[1] for b in gb[name] if b is not None]
        rows.append(
            {
                "subspace": name,
                "family": "gradient",
                "axis_kind": axis,
                "source": "base-gradient",
                "kind": "A-hypothesis",
                "definition": definition,
                "note": "rank below k where the gradient has fewer independent directions",
                "construction": "∇L± over the first 4 training batches at θ₀ (ws.diffs.gradient), float64 SVD",
                "expected_rank": k,
                "rank_min": min(ranks) if ranks else 0,
                "rank_max": max(ranks) if ranks else 0,
            }
        )
    return gb, pl.DataFrame(rows, schema=meta_frame([]).schema)


__all__ = ["DEFINITIONS", "gradient_bases", "gradient_candidates"]
