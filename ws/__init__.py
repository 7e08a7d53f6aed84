"""ws: the weight-steering subspace analysis suite.

Where in the residual stream does a weight diff ``w = Δθ⁺ − Δθ⁻`` act, and which subspace
carries the behaviour? The packages follow the pipeline; each imports only from those
above it in this list (``tests/test_architecture.py`` enforces it):

- ``ws.core``       paths, atomic files, logging, cache, devices, linear algebra, the table
                    contract, bootstrap, thresholds and caveats, markdown helpers
- ``ws.model``      load a model, TraceDict hooks, steering, chat template, answer read-out
- ``ws.behavior``   behaviour files and the data drawn from them
- ``ws.diffs``      adapter types, training, the effect eval, the diff store
- ``ws.config``     the one run configuration (every ``WS_*`` variable)
- ``ws.captures``   the named captures and their recorders
- ``ws.bases``      the candidate registry        ``ws.stats``  scores, the null, summaries
- ``ws.v7``         where the diff acts           (``nbs/hypothesis_sweep_v7.py``)
- ``ws.v8``         which subspace carries it     (``nbs/hypothesis_sweep_v8.py``)
- ``ws.cross_adapter``  the comparison across adapter types (``nbs/cross_adapter.py``)
- ``ws.bench``      the benchmark (``make bench``)
- ``ws.analysis``   :func:`ws.analysis.analyse`, one call from a researcher's notebook (the notebooks use it too)
- ``ws.steering``   the diff against activation steering and prompting at one KL budget (``make compare-steering``)
- ``ws.monitor``    :func:`ws.monitor.monitor`, screen another fine-tune against a found subspace (``make monitor``)
"""

__version__ = "0.1.0"
