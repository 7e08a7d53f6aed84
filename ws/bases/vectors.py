"""A researcher's steering vectors as candidate subspaces: ``vector:<name>`` rows of the sweep.

Each file read by :func:`ws.model.vectors.read_vectors` becomes one candidate whose basis at
layer ``l`` spans the file's directions for block ``l`` (orthonormalised; rank = the number
of independent directions, usually 1) and is undefined (None) at the layers the file has
no direction for. The rows are write/mixed A-hypotheses (``axis_kind`` ``mixed``, family
``vector``, source ``user``): v7 scores and ranks them like every other candidate, against
the same exact random-subspace null of their own rank, and v8's causal test always
includes them (:func:`is_vector`).

    vecs = [read_vectors("refusal.safetensors", n_layers(model), d_model(model))]
    bases, meta = vector_candidates(vecs, n_layers(model), d_model(model))
    bases["vector:refusal"][12]      # [d, 1] float32, orthonormal
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import torch

from ws.bases.registry import META_COLUMNS, meta_frame
from ws.core import linalg
from ws.model.vectors import SteeringVectors

PREFIX = "vector:"
FAMILY = "vector"


def vector_name(v: SteeringVectors) -> str:
    """The candidate name of a file's vectors: ``vector:<name>``."""
    return f"{PREFIX}{v.name}"


def is_vector(name: str) -> bool:
    return str(name).startswith(PREFIX)


def _definition(v: SteeringVectors) -> str:
    layers = v.layers
    span = f"block {layers[0]}" if len(layers) == 1 else f"{len(layers)} blocks ({layers[0]}–{layers[-1]})"
    return (
        f"your steering vector(s) from {v.path} ({v.format}, {v.convention} indexing, shift {v.shift}): per layer the span "
        f"of its direction(s) at the output of {span}; undefined at the other layers"
    )


def vector_candidates(
    vectors: Sequence[SteeringVectors], n_layers: int, d: int
) -> tuple[dict[str, list[torch.Tensor | None]], pl.DataFrame]:
    """``(bases, meta)`` of the files' candidates: ``bases[name]`` one float32 ``[d, r]``
    orthonormal basis (or None) per layer; ``meta`` rows with :data:`META_COLUMNS` and the
    rank facts, in the files' order. Two files of one name are refused (rename one)."""
    names = [vector_name(v) for v in vectors]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two steering-vector files give the candidate name {dup[0]!r}: rename one of the files")
    bases: dict[str, list[torch.Tensor | None]] = {}
    rows = []
    for v, name in zip(vectors, names, strict=True):
        if v.d and v.d != d:
            raise ValueError(f"{v.path}: its directions have width {v.d}, the model's d is {d}")
        per = [None] * n_layers
        for l, B in v.bases().items():
            B32 = B.to(torch.float32).contiguous()
            linalg.check_orthonormal(B32, name, l, tol=1e-3)
            per[l] = B32
        bases[name] = per
        ranks = [b.shape[1] for b in per if b is not None]
        rows.append(
            {
                "subspace": name,
                "family": FAMILY,
                "axis_kind": "mixed",
                "source": "user",
                "kind": "A-hypothesis",
                "definition": _definition(v),
                "note": "",
                "construction": "orthonormalised (SVD) span of the file's directions per block",
                "expected_rank": max(ranks),
                "rank_min": min(ranks),
                "rank_max": max(ranks),
            }
        )
    empty = meta_frame([])
    return bases, pl.DataFrame(rows, schema=empty.schema) if rows else empty


__all__ = ["PREFIX", "FAMILY", "META_COLUMNS", "vector_name", "is_vector", "vector_candidates"]
