"""The model and what is done to it in a forward pass.

The block's anatomy, one home for its projections and residual writers (``anatomy``);
loading the embedded SmolLM2, any HF folder or tiny random test models (``load``), the
TraceDict-style hooks and the padding-proof last-token gather (``trace``), weight steering
``θ + α·w`` (``steer``), the chat template (``chat``), the answer read-out (``readout``) and
the fast read-out that skips the blocks a diff cannot change (``fast_readout``), and a
researcher's steering vectors read and checked against the model (``vectors``).

May import: ``ws.core``.
"""
