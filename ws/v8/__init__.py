"""v8: which subspace carries the behaviour?

Laid out as v7: the run's types (``results``), the steps the notebook calls (``sweep``), what a
run concludes: self-tests, sanity lines, the conclusion's facts and caveats (``verdicts``), and
v8's figures and markdown (``report``). Its own parts: the causal test, which ablates or keeps a
candidate's part of the writers' diff and measures the effect, and chooses its prompts
(``causal``), the block-local label (``blocklocal``), and the carrier's per-layer basis kept
beside the tables (``carrier``, read by :mod:`ws.monitor`).

May import: every stage below it (``ws.core`` … ``ws.v7``).
"""
