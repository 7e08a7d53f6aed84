"""The decoder block's anatomy as the suite relies on it: one home for each of these facts.

A Llama / Qwen3 decoder layer ``model.layers.{i}`` holds the attention projections
``self_attn.{q,k,v,o}_proj`` and the MLP projections ``mlp.{gate,up,down}_proj``. Two of them
write into the residual stream (their output side is ``d_model``): ``o_proj`` and
``down_proj``, the **residual writers**; the other five read from it. The tables name the
writers by a column tag (``oproj``, ``downproj``).
"""

from __future__ import annotations

import re

from ws.core.columns import WRITER_TAGS

__all__ = [
    "ATTN_PROJ",
    "MLP_PROJ",
    "PROJECTIONS",
    "WRITERS",
    "READERS",
    "WRITER_KEY_RE",
    "block_path",
    "param_in_block",
    "param_name",
    "writer_key",
]

#: the attention projections of a block, in the order the suite lists them
ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
#: the MLP projections of a block
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
#: every projection a full adapter targets
PROJECTIONS = ATTN_PROJ + MLP_PROJ
#: the residual writers: a table's column tag (:data:`ws.core.columns.WRITER_TAGS`) -> the
#: projection (the last of the attention and of the MLP projections: ``o_proj``, ``down_proj``)
WRITERS = dict(zip(WRITER_TAGS, (ATTN_PROJ[-1], MLP_PROJ[-1]), strict=True))
#: the projections that read from the residual stream, in :data:`PROJECTIONS` order
READERS = tuple(p for p in PROJECTIONS if p not in WRITERS.values())


def block_path(proj: str) -> str:
    """The module path of projection ``proj`` inside a block: ``self_attn.q_proj``, ``mlp.up_proj``."""
    if proj not in PROJECTIONS:
        raise ValueError(f"unknown projection {proj!r}; the block's projections are {PROJECTIONS}")
    return f"{'self_attn' if proj in ATTN_PROJ else 'mlp'}.{proj}"


def param_in_block(proj: str) -> str:
    """The weight's name inside a block: ``self_attn.o_proj.weight``."""
    return f"{block_path(proj)}.weight"


def param_name(layer: int, proj: str) -> str:
    """The weight's full name: ``model.layers.12.self_attn.o_proj.weight``."""
    return f"model.layers.{int(layer)}.{param_in_block(proj)}"


def writer_key(layer: int, tag: str) -> str:
    """The full weight name of the writer with column tag ``tag`` (``oproj``/``downproj``) at ``layer``."""
    return param_name(layer, WRITERS[tag])


#: a residual writer's full weight name; group 1 is the layer
WRITER_KEY_RE = re.compile(
    r"^model\.layers\.(\d+)\.(?:" + "|".join(re.escape(block_path(p)) for p in WRITERS.values()) + r")\.weight$"
)
