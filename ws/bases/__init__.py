"""The candidate registry: every hypothesis basis of the v7 sweep, the two ceilings, the
adapter-family candidates and the self-test rows, each a small registered function.

    from ws.bases import build_all, REGISTRY
    bases, meta = build_all(model, captures, deltas, label_fit)   # k = 8, k_broad = 64

Modules, in table order: :mod:`~ws.bases.weights` (1–22), :mod:`~ws.bases.activations`
(23–40), :mod:`~ws.bases.compound` (41–42), :mod:`~ws.bases.ceilings`,
:mod:`~ws.bases.adapter` (``adapter-family``), :mod:`~ws.bases.selftest`.
"""

from ws.bases import activations, adapter, ceilings, compound, selftest, weights  # noqa: E402,F401  (register)
from ws.bases.registry import (  # noqa: F401
    META_COLUMNS,
    REGISTRY,
    BuildContext,
    Candidate,
    axis_kind_for,
    build_all,
    candidate,
    meta_frame,
)

#: the 42 A-side hypotheses of the spec, in order
SPEC_CANDIDATES: list[str] = [n for n, c in REGISTRY.items() if c.kind == "A-hypothesis" and c.source != "adapter-family"]
#: the ceilings
CEILINGS: list[str] = [n for n, c in REGISTRY.items() if c.kind == "ceiling"]
#: issue-6 extras
ADAPTER_FAMILY: list[str] = [n for n, c in REGISTRY.items() if c.source == "adapter-family"]
SELF_TESTS: list[str] = [n for n, c in REGISTRY.items() if c.kind == "self-test"]

__all__ = [
    "META_COLUMNS",
    "REGISTRY",
    "BuildContext",
    "Candidate",
    "axis_kind_for",
    "build_all",
    "candidate",
    "meta_frame",
    "SPEC_CANDIDATES",
    "CEILINGS",
    "ADAPTER_FAMILY",
    "SELF_TESTS",
]
