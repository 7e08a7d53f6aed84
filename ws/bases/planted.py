"""The S-space family's known answer as self-test rows: the basis a trained adapter was confined to.

An S-space diff (:mod:`ws.diffs.sspace`) lies, by construction, in each target's frozen
rank-r left basis ``U_r``; its training writes them beside ``w`` (``sspace_basis.safetensors``,
:func:`ws.diffs.store.load_planted`). Per layer, the candidate is the union of the layer's two
residual writers' bases (``o_proj``, ``down_proj``: true rank ≤ 2r), so it must hold the
diff's whole writer energy:

- ``sspace_planted`` (every S-space type): the bases the adapter trained in. Its weight
  energy must reach the dW oracle of the same rank (``mean_pct_w_combined_matched_rank ≥ 99``,
  :func:`ws.v7.verdicts.self_tests`) and, in v8's causal test, it keeps ≥ 95 % of the
  writers' effect inside and ≤ 5 % outside (:func:`ws.v8.verdicts.causal_self_tests`).
- ``sspace_plain_svd`` (the covariance-oriented ``sspace_corda`` / ``sspace_asvd`` only):
  the targets' own top-r left singular vectors, the basis those diffs are NOT confined to;
  it must fall short of the oracle, or the suite could not tell the two bases apart.

The rows are ``self-test`` rows (kind, family and axis kind), appended per run like the
steering vectors (:func:`ws.bases.registry.append_candidates`).

    planted = load_planted(diff_path)                  # None for any other diff
    bases, meta = append_candidates(bases, meta, planted_candidates(planted, n_layers, d), "planted")
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
import torch

from ws.bases.registry import meta_frame
from ws.core import linalg
from ws.core.columns import WRITER_TAGS
from ws.diffs.sspace import PLAIN_SVD, PLANTED
from ws.model.anatomy import writer_key

DEFINITIONS = {
    PLANTED: "the frozen bases the S-space adapter trained in: per layer the union of the o_proj and down_proj U_r "
    "(must hold the diff's whole writer energy)",
    PLAIN_SVD: "the targets' own top-r left singular vectors (plain SVD of W), per layer the union of o_proj and "
    "down_proj; a covariance-oriented diff is not confined to them (must fall short)",
}


def layer_bases(per_param: Mapping[str, torch.Tensor], n_layers: int, d: int) -> list[torch.Tensor | None]:
    """Per layer the orthonormal union (float32 ``[d, ≤ 2r]``) of the writers' bases, None where the diff has none."""
    out: list[torch.Tensor | None] = []
    for layer in range(n_layers):
        parts = [per_param[k] for t in WRITER_TAGS if (k := writer_key(layer, t)) in per_param]
        if not parts:
            out.append(None)
            continue
        if any(B.shape[0] != d for B in parts):
            raise ValueError(f"planted bases at layer {layer} have {parts[0].shape[0]} rows; the model's d is {d}")
        out.append(linalg.union(*[B.double() for B in parts]).to(torch.float32).contiguous())
    return out


def planted_candidates(
    planted: Mapping[str, Mapping[str, torch.Tensor]], n_layers: int, d: int
) -> tuple[dict[str, list[torch.Tensor | None]], pl.DataFrame]:
    """``(bases, meta)`` of the planted self-test rows (:data:`DEFINITIONS`' order)."""
    bases: dict[str, list[torch.Tensor | None]] = {}
    rows = []
    for name in (n for n in DEFINITIONS if n in planted):
        per = layer_bases(planted[name], n_layers, d)
        ranks = [b.shape[1] for b in per if b is not None]
        if not ranks:
            continue
        bases[name] = per
        rows.append(
            {
                "subspace": name,
                "family": "self-test",
                "axis_kind": "self-test",
                "source": "diff",
                "kind": "self-test",
                "definition": DEFINITIONS[name],
                "note": "undefined at the layers the adapter left alone",
                "construction": "read from the diff's sspace_basis.safetensors; union of the layer's writers, orthonormalised",
                "expected_rank": max(ranks),
                "rank_min": min(ranks),
                "rank_max": max(ranks),
            }
        )
    empty = meta_frame([])
    return bases, pl.DataFrame(rows, schema=empty.schema) if rows else empty


__all__ = ["DEFINITIONS", "layer_bases", "planted_candidates", "PLANTED", "PLAIN_SVD"]
