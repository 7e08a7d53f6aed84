"""v7: where in the residual stream does the diff act?

The run's types (``results``), the steps the notebook calls (``sweep``), what a run concludes:
self-tests, sanity lines, claims (``verdicts``), the rows that differ from the upstream v7
(``plan_merge``), the figure (``figure``) and the markdown (``report``).

May import: every stage below it (``ws.core`` … ``ws.bases``, ``ws.stats``).
"""
