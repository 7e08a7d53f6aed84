"""The candidate registry: every hypothesis basis of the v7 sweep, the two ceilings, the
adapter-family candidates and the self-test rows, each a small registered function.

    from ws.bases import build_all, REGISTRY
    bases, meta = build_all(model, captures, deltas, label_fit)   # k = 8, k_broad = 64

Modules, in table order: :mod:`~ws.bases.weights` (1–22), :mod:`~ws.bases.activations`
(23–40), :mod:`~ws.bases.compound` (41–42), :mod:`~ws.bases.ceilings`,
:mod:`~ws.bases.adapter` (``adapter-family``), :mod:`~ws.bases.selftest`; a researcher's
steering vectors as candidates ``vector:<name>`` (:mod:`~ws.bases.vectors`, not registered:
appended per run); an S-space diff's frozen bases as self-test rows (:mod:`~ws.bases.planted`,
appended per run when the diff has them).

May import: the stages below it (``ws.core`` … ``ws.captures``); not its sibling ``ws.stats``.
"""

# Importing a module registers its candidates; the import order IS the table order, so the
# sorter must leave these lines as they are.
# isort: off
from ws.bases import weights  # noqa: F401  (1–22)
from ws.bases import activations  # noqa: F401  (23–40)
from ws.bases import compound  # noqa: F401  (41–42)
from ws.bases import ceilings  # noqa: F401
from ws.bases import adapter  # noqa: F401  (adapter-family)
from ws.bases import selftest  # noqa: F401

# isort: on
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
