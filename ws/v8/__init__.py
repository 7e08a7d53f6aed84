"""v8: which subspace carries the behaviour?

The steps the notebook calls (``sweep``), the causal test: ablate or keep a candidate's part of
the writers' diff and measure the effect (``causal``), the block-local label
(``blocklocal``), and v8's figures and markdown (``report``).

May import: every stage below it (``ws.core`` … ``ws.v7``).
"""
