"""The named captures of a sweep and their recorders: block outputs, ``up_proj``
inputs and outputs, token-level residuals with attention rows, the activation label at
``α = ±1`` (``capture``), and one recorder per capture kind with the hooked passes that feed
them (``recorders``).

May import: ``ws.core``, ``ws.model``, ``ws.behavior``, ``ws.diffs``, ``ws.config``.
"""
