"""v7_definitions.md tells how each row is built: the registry's construction notes, with the
build's k and k_broad, printed beside the contract's definition."""

from __future__ import annotations

import polars as pl

from ws.bases import REGISTRY, meta_frame
from ws.v7 import report

# rows whose construction differs from the spec's words or from upstream's code in a way a
# reader of the definition alone could not guess
MUST_SAY_HOW = [
    "input_super_not_lm_read",
    "attn_ov_write",
    "qk_circuit",
    "churn",
    "rotation_contrast",
    "chars_clusters",
    "qk_x_chars_clusters",
    "attention_sink",
    "TaskDiff_contrast",
    "TaskDiff_lora_ceiling",
    "dW_left_basis_ceiling",
    "write_not_downstream_read",
    "causally_isolated",
]


def test_rows_built_otherwise_say_how():
    for name in MUST_SAY_HOW:
        assert REGISTRY[name].construction.strip(), name
    assert "right singular vectors of the reader stack" in REGISTRY["input_super_not_lm_read"].construction
    assert "head block by head block" in REGISTRY["attn_ov_write"].construction


def test_construction_notes_carry_this_builds_ranks():
    meta = meta_frame(k=8)  # no build context: the spec's k_broad
    for r in meta.iter_rows(named=True):
        assert "{" not in r["construction"].replace("h_{", "").replace("^{", ""), r["subspace"]
    c = REGISTRY["input_super_not_lm_read"]
    assert "top-16 lm_head read space (k_broad = 16 in this run" in c.construction_for(8, 16)
    assert "top-64" in c.construction_for(8, 64) and "top-4 right singular vectors" in c.construction_for(4, 64)


def test_definitions_md_prints_the_construction_beside_the_definition():
    meta = meta_frame(["input_super_not_lm_read", "write"], k=8)
    md = report.definitions_md(meta)
    assert "| name | family | axis_kind | source | definition | construction |" in md
    row = next(l for l in md.splitlines() if l.startswith("| input_super_not_lm_read |"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[4] == "input_super projected off the top-64 lm_head read space, first 8"
    assert cells[5].startswith("built as the top-8 right singular vectors of the reader stack")
    blank = next(l for l in md.splitlines() if l.startswith("| write |"))
    assert blank.rstrip().endswith("|  |")  # built as defined: the construction cell is empty
    assert isinstance(meta, pl.DataFrame) and "construction" in meta.columns
