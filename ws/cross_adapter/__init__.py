"""The cross-adapter comparison: does where the diff acts depend on how it was trained?

Its result types and file names (``results``), the statistics across adapters and seeds
(``compare``), and its claims, caveats, conclusion and figure (``report``).

May import: every stage below it (``ws.core`` … ``ws.v7``); not ``ws.v8``.
"""
