"""The ground floor: what every stage needs and nothing stage-specific.

Paths of the output/cache/log folders (``paths``), atomic file sets and the run lock (``io``),
logging (``log``), the activation cache (``cache``), devices and dtypes (``device``), subspace
algebra (``linalg``), the table contract (``columns``), the percentile bootstrap
(``bootstrap``), thresholds and caveat texts (``caveats``), the markdown helpers and the
``Claim`` type (``markdown``), the notebooks' inline display (``show``), and headless
notebook runs for ``make`` (``notebooks``).

May import: nothing of ``ws`` outside ``ws.core``.
"""
