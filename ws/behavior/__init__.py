"""The behaviours as data: behaviour files (schema, parsing, the fixed split: ``files``)
and the data the suite draws from them (topics, persona pairs, probes, prompts: ``data``);
A/B datasets converted into behaviours (``ab``).

May import: ``ws.core``, ``ws.model``.
"""
