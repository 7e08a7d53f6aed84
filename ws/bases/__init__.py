"""The candidate registry: every hypothesis basis of the v7 sweep, the two ceilings, the
adapter-family candidates and the self-test rows, each a small registered function.

    from ws.bases import build_all, REGISTRY
    bases, meta = build_all(model, captures, deltas, label_fit)   # k = 8, k_broad = 64

The table order and the contract's numbers are data (:mod:`~ws.bases.order`); the base
model's float64 weights and the Grams the candidates share are :mod:`~ws.bases.grams`
(``ctx.weights``); the candidates
live in :mod:`~ws.bases.weights` (1–22), :mod:`~ws.bases.activations` (23–40),
:mod:`~ws.bases.compound` (41–42), :mod:`~ws.bases.ceilings`, :mod:`~ws.bases.adapter`
(``adapter-family``) and :mod:`~ws.bases.selftest`; a researcher's
steering vectors as candidates ``vector:<name>`` (:mod:`~ws.bases.vectors`, not registered:
appended per run); an S-space diff's frozen bases as self-test rows (:mod:`~ws.bases.planted`,
appended per run when the diff has them).

May import: the stages below it (``ws.core`` … ``ws.captures``); not its sibling ``ws.stats``.
"""

# Importing a module registers its candidates; put_in_order then sets the table order.
from ws.bases import activations, adapter, ceilings, compound, selftest, weights  # noqa: F401
from ws.bases.order import TABLE_ORDER, spec_number
from ws.bases.registry import (  # noqa: F401
    META_COLUMNS,
    REGISTRY,
    BuildContext,
    Candidate,
    axis_kind_for,
    build_all,
    candidate,
    meta_frame,
    put_in_order,
)

put_in_order(TABLE_ORDER)

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
    "TABLE_ORDER",
    "spec_number",
]
