"""The benches: what the suite costs on this machine.

``make bench`` measures one sweep on the embedded model (:mod:`ws.bench.embedded`, ``python -m ws.bench``);
``make bench-scale`` what one sweep costs as the model grows (:mod:`ws.bench.scale`, ``python -m
ws.bench.scale``): the shapes and the memory estimate (``shapes``), the measurement of each shape in a child
process (``measure``), the fits and extrapolation (``fits``) and the report (``report``). Both share their
helpers (``common``).

May import: every stage below it (``ws.core`` … ``ws.v8``).
"""
