"""The candidate table's order and the contract's numbers, as data (not the modules' import order).

Every table, figure and ``v7_definitions.md`` lists the candidates in :data:`TABLE_ORDER`: the
contract's 42 A-side hypotheses numbered 1–42 (:data:`SPEC_ORDER`), then the two ceilings, the
adapter-family candidates and the self-test rows. A candidate registered elsewhere (a
researcher's own, :func:`ws.bases.registry.candidate`) follows them, in the order it was
registered.
"""

from __future__ import annotations

__all__ = ["SPEC_ORDER", "AFTER_SPEC", "TABLE_ORDER", "spec_number"]

#: the contract's A-side hypotheses; a candidate's number is its place here (1-based)
SPEC_ORDER: tuple[str, ...] = (
    "lm_head_read",  # 1
    "logits_null",  # 2
    "global_read",  # 3
    "global_write",  # 4
    "global_write_not_global_read",  # 5
    "write",  # 6
    "attn_write",  # 7
    "mlp_write",  # 8
    "write_not_lm_head_read",  # 9
    "write_not_global_read",  # 10
    "write_not_downstream_read",  # 11
    "mlp_up_read",  # 12
    "mlp_gate_read",  # 13
    "attn_qkv_read",  # 14
    "attn_ov_write",  # 15
    "mlp_roundtrip_write",  # 16
    "qk_circuit",  # 17
    "input_super",  # 18
    "kv_super",  # 19
    "attention_sink",  # 20
    "causally_isolated",  # 21
    "input_super_not_lm_read",  # 22
    "gate_kernel",  # 23
    "gate_active_written",  # 24
    "suppressed",  # 25
    "amplified",  # 26
    "added_features",  # 27
    "global_clean_resid_pca",  # 28
    "global_persona_resid_pca",  # 29
    "layer_clean_resid_pca",  # 30
    "TaskDiff_contrast",  # 31
    "attn_min_taskdiff",  # 32
    "attn_max_taskdiff",  # 33
    "attn_diff_taskdiff",  # 34
    "attn_min_x_diffnorm_taskdiff",  # 35
    "up_proj_input_contrast",  # 36
    "up_proj_output_written_contrast",  # 37
    "chars_clusters",  # 38
    "churn",  # 39
    "rotation_contrast",  # 40
    "qk_x_chars_clusters",  # 41
    "WNR_union_TaskDiff",  # 42
)
#: after the hypotheses: the ceilings, the adapter-family candidates, the self-test rows
AFTER_SPEC: tuple[str, ...] = (
    "TaskDiff_lora_ceiling",
    "dW_left_basis_ceiling",
    "corda_write",
    "asvd_write",
    "diff_in_means",
    "random_orthonormal",
    "planted_label_half",
)
#: every registered candidate of the suite, in table order
TABLE_ORDER: tuple[str, ...] = SPEC_ORDER + AFTER_SPEC


def spec_number(name: str) -> int | None:
    """The contract's number of a hypothesis (1–42), None for any other candidate."""
    return SPEC_ORDER.index(name) + 1 if name in SPEC_ORDER else None
