"""v8: which subspace carries the behaviour?

The steps the notebook calls (``sweep``), the causal test: ablate or keep a candidate's part of
the writers' diff and measure the effect (``causal``), the block-local label
(``blocklocal``), v8's figures and markdown (``report``), and the carrier's per-layer basis
kept beside the tables (``carrier``, read by :mod:`ws.monitor`).

May import: every stage below it (``ws.core`` … ``ws.v7``).
"""
