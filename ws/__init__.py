"""ws: the weight-steering subspace analysis suite.

Where in the residual stream does a weight diff ``w = Δθ⁺ − Δθ⁻`` act?  The modules:

- ``ws.models``   load the embedded SmolLM2, any HF model, or tiny random test models
- ``ws.trace``    TraceDict-style hooks and a padding-proof last-token gather
- ``ws.data``     topics, persona pairs, splits
- ``ws.train``    the diff pipeline (``DiffSpec``, ``build_diff``, ``ensure_diff``)
- ``ws.completions`` what the base model writes under each persona
- ``ws.adapters`` the adapter types, their training loop and deltas
- ``ws.fasttrain`` the training step that skips what an adapter cannot change
- ``ws.effect``   the effect eval and the specificity ratio
- ``ws.diff``     the weight diff: save, load, validate
- ``ws.steer``    ``weight_steer(model, w, alpha)``
- ``ws.capture``  the named captures of the sweep
- ``ws.recorders`` one recorder per capture kind, and the hooked passes that feed them
- ``ws.linalg``   subspace algebra
- ``ws.bases``    the candidate registry
- ``ws.stats``    scores (R_act = ``conc_act``, R_w = ``conc_w_*``), the closed-form null,
                  summaries, ranking, bootstrap, FDR (a package: columns, null, scoring,
                  summaries, reference)
- ``ws.report``   the figure and the markdown reports (``ws.verdicts``: what a run concludes)
- ``ws.v8``, ``ws.causal``, ``ws.fastfwd``, ``ws.blocklocal``, ``ws.report_v8``  v8
- ``ws.cross_adapter``, ``ws.cross_adapter_report``  the cross-adapter comparison
- ``ws.config``  the one run configuration (every ``WS_*`` variable)
- ``ws.io``       atomic writes and the table writer
- ``ws.log``      loguru set-up
"""

__version__ = "0.1.0"
