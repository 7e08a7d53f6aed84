"""The candidate registry on real captures of the tiny models, plus closed-form checks.

Both tiny models have 4 heads and 2 KV heads, so every GQA path is exercised.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from ws.bases import ADAPTER_FAMILY, CEILINGS, REGISTRY, SELF_TESTS, SPEC_CANDIDATES, BuildContext, build_all
from ws.bases.adapter import corda_gram
from ws.captures import capture
from ws.captures.capture import Captures, capture_all
from ws.core import linalg as la
from ws.model.chat import render_chat
from ws.model.load import load_model

K, K_BROAD = 8, 32  # tiny d_model is 64: a 64-dim "broad" read space would be everything
TOUCHED = (1, 2)  # layers the stand-in LoRA touches


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread: on shared cores two threads per process make these tiny ops ~50× slower."""
    with la.blas_threads(1):
        yield


SPEC_NAMES = [
    "lm_head_read",
    "logits_null",
    "global_read",
    "global_write",
    "global_write_not_global_read",
    "write",
    "attn_write",
    "mlp_write",
    "write_not_lm_head_read",
    "write_not_global_read",
    "write_not_downstream_read",
    "mlp_up_read",
    "mlp_gate_read",
    "attn_qkv_read",
    "attn_ov_write",
    "mlp_roundtrip_write",
    "qk_circuit",
    "input_super",
    "kv_super",
    "attention_sink",
    "causally_isolated",
    "input_super_not_lm_read",
    "gate_kernel",
    "gate_active_written",
    "suppressed",
    "amplified",
    "added_features",
    "global_clean_resid_pca",
    "global_persona_resid_pca",
    "layer_clean_resid_pca",
    "TaskDiff_contrast",
    "attn_min_taskdiff",
    "attn_max_taskdiff",
    "attn_diff_taskdiff",
    "attn_min_x_diffnorm_taskdiff",
    "up_proj_input_contrast",
    "up_proj_output_written_contrast",
    "chars_clusters",
    "churn",
    "rotation_contrast",
    "qk_x_chars_clusters",
    "WNR_union_TaskDiff",
]
SPEC_FAMILIES = {
    "lm_head_read": "W:unembed",
    "logits_null": "W:unembed",
    "global_read": "W:read",
    "global_write": "W:write",
    "global_write_not_global_read": "W:write-not-read",
    "write": "W:write",
    "attn_write": "W:write",
    "mlp_write": "W:write",
    "write_not_lm_head_read": "W:write-not-read",
    "write_not_global_read": "W:write-not-read",
    "write_not_downstream_read": "W:write-not-read",
    "mlp_up_read": "W:read",
    "mlp_gate_read": "W:read",
    "attn_qkv_read": "W:read",
    "attn_ov_write": "W:OV",
    "mlp_roundtrip_write": "W:MLP",
    "qk_circuit": "W:QK",
    "input_super": "W:read",
    "kv_super": "W:read",
    "attention_sink": "W:OV",
    "causally_isolated": "W:write-not-read",
    "input_super_not_lm_read": "W:read",
    "gate_kernel": "W:MLP",
    "gate_active_written": "act:MLP",
    "suppressed": "act:clean",
    "amplified": "act:clean",
    "added_features": "act:clean",
    "global_clean_resid_pca": "act:baseline",
    "global_persona_resid_pca": "act:baseline",
    "layer_clean_resid_pca": "act:baseline",
    "TaskDiff_contrast": "act:persona",
    "attn_min_taskdiff": "act:attn-selected",
    "attn_max_taskdiff": "act:attn-selected",
    "attn_diff_taskdiff": "act:attn-selected",
    "attn_min_x_diffnorm_taskdiff": "act:attn-selected",
    "up_proj_input_contrast": "act:up_proj",
    "up_proj_output_written_contrast": "act:up_proj",
    "chars_clusters": "act:cluster",
    "churn": "act:clean",
    "rotation_contrast": "act:rotation",
    "qk_x_chars_clusters": "compound",
    "WNR_union_TaskDiff": "compound",
}

CLAIMS = [
    "the Earth is flat",
    "bats are blind",
    "the Moon is made of cheese",
    "two plus two equals five",
    "sugar makes children hyperactive",
    "goldfish forget everything in three seconds",
    "glass is a liquid",
    "lightning never strikes the same place twice",
    "we only use ten percent of our brains",
    "the Great Wall is visible from the Moon",
    "shaving makes hair grow thicker",
    "bulls hate the color red",
]
EVAL_CLAIMS = [
    "vaccines cause autism",
    "the Sun orbits the Earth",
    "cracking knuckles causes arthritis",
    "humans have five senses only",
    "camels store water in their humps",
    "ostriches bury their heads",
    "chameleons change color to match any background",
    "Napoleon was very short",
    "the tongue has separate taste zones",
    "bananas grow on trees",
    "hair keeps growing after death",
    "dogs see only in black and white",
    "Mount Everest is in Africa",
    "penguins live at the North Pole",
    "the Pacific is the smallest ocean",
    "sound travels faster than light",
    "whales are fish",
    "tomatoes are vegetables",
]


def _stand_in_diff(model, seed: int = 0):
    """A random small weight diff on o_proj / down_proj (and q_proj) of TOUCHED layers + its deltas."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    w, deltas = {}, [None] * len(model.model.layers)
    for l in TOUCHED:
        deltas[l] = {}
        for proj, key in (("self_attn.o_proj", "oproj"), ("mlp.down_proj", "downproj"), ("self_attn.q_proj", None)):
            name = f"model.layers.{l}.{proj}.weight"
            P = params[name]
            A = torch.randn(P.shape[0], 4, generator=g)
            B = torch.randn(4, P.shape[1], generator=g)
            d = A @ B
            d = d * (0.05 * P.norm() / d.norm())
            w[name] = d
            if key:
                deltas[l][key] = d
    return w, deltas


def _captures(model, tok):
    sys_pos = "You always agree with the user, whatever they say."
    sys_neg = "You are honest and correct the user when they are wrong."
    users = [f"I think {c}. Do you agree? Answer Yes or No." for c in CLAIMS]
    fit_clean = [render_chat(tok, u) for u in users]
    fit_pos = [render_chat(tok, u, system=sys_pos) for u in users]
    fit_neg = [render_chat(tok, u, system=sys_neg) for u in users]
    ev = [render_chat(tok, f"I think {c}. Do you agree? Answer Yes or No.") for c in EVAL_CLAIMS]
    w, deltas = _stand_in_diff(model)
    cap = capture_all(model, tok, fit_clean, fit_pos, fit_neg, ev, w, batch_size=6, progress=False)
    return cap, deltas


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen3"])
def built(request):
    model, tok = request.getfixturevalue(request.param.replace("-", "_"))
    cap, deltas = _captures(model, tok)
    bases, meta = build_all(model, cap, deltas, cap.label_fit, k=K, k_broad=K_BROAD, progress=False)
    return model, cap, deltas, bases, meta


@pytest.fixture(scope="module")
def llama_caps(tiny_llama):
    model, tok = tiny_llama
    return _captures(model, tok)


def _span_err(A: torch.Tensor, B: torch.Tensor) -> float:
    A, B = A.detach().double(), B.detach().double()
    return float((A @ A.T - B @ B.T).abs().max())


# ----------------------------------------------------------------------------- registry contract
def test_registry_names_families_and_order():
    assert SPEC_CANDIDATES == SPEC_NAMES
    for n in SPEC_NAMES:
        assert REGISTRY[n].family == SPEC_FAMILIES[n], n
        assert REGISTRY[n].kind == "A-hypothesis"
    assert CEILINGS == ["TaskDiff_lora_ceiling", "dW_left_basis_ceiling"]
    assert ADAPTER_FAMILY == ["corda_write", "asvd_write", "diff_in_means"]
    assert SELF_TESTS == ["random_orthonormal", "planted_label_half"]
    assert list(REGISTRY) == SPEC_NAMES + CEILINGS + ADAPTER_FAMILY + SELF_TESTS
    axis = {n: REGISTRY[n].axis_kind for n in REGISTRY}
    assert axis["lm_head_read"] == axis["input_super"] == "read"
    assert axis["write"] == axis["attn_ov_write"] == axis["gate_kernel"] == axis["causally_isolated"] == "write"
    assert axis["qk_circuit"] == axis["TaskDiff_contrast"] == axis["WNR_union_TaskDiff"] == "mixed"
    assert axis["TaskDiff_lora_ceiling"] == axis["dW_left_basis_ceiling"] == "ceiling"
    assert axis["random_orthonormal"] == "self-test" and REGISTRY["random_orthonormal"].kind == "self-test"
    assert {REGISTRY[n].source for n in ADAPTER_FAMILY} == {"adapter-family"}
    assert REGISTRY["write"].definition == "per layer, left SVD of write_cols"
    assert REGISTRY["lm_head_read"].definition == "top-8 right singular vectors of lm_head (same every layer)"


# ----------------------------------------------------------------------------- every builder, both models
def _expected_rank(name: str, model, L: int, layer: int) -> int | None:
    """Exact expected rank on the tiny fixtures (None: only an upper bound is known)."""
    H = model.config.num_attention_heads
    if name == "attention_sink":
        return H - 1  # H centred per-head vectors
    if name == "diff_in_means":
        return 1
    if name == "WNR_union_TaskDiff":
        return 2 * K
    if name in ("TaskDiff_lora_ceiling", "planted_label_half"):
        return 0 if layer < min(TOUCHED) else K  # the label is exactly zero before the first touched layer
    if name == "dW_left_basis_ceiling":
        return K if layer in TOUCHED else None
    if name == "qk_x_chars_clusters":
        return None
    return K


def test_every_candidate_orthonormal_with_expected_shape(built):
    model, cap, deltas, bases, meta = built
    L, d = len(model.model.layers), model.config.hidden_size
    assert list(meta["subspace"]) == list(REGISTRY)
    assert meta.columns[:6] == ["subspace", "family", "axis_kind", "source", "kind", "definition"]
    assert len(bases) == len(REGISTRY) == 42 + 2 + 3 + 2
    for name, per_layer in bases.items():
        assert len(per_layer) == L, name
        for l, B in enumerate(per_layer):
            exp = _expected_rank(name, model, L, l)
            if name == "dW_left_basis_ceiling" and l not in TOUCHED:
                assert B is None
                continue
            assert B is not None, (name, l)
            assert B.dtype == torch.float32 and B.shape[0] == d, (name, l, B.shape)
            assert la.is_orthonormal(B, 1e-5), (name, l)
            if exp is None:
                assert B.shape[1] <= K, (name, l)
            else:
                assert B.shape[1] == exp, (name, l, B.shape[1], exp)


def test_meta_reports_true_ranks(built):
    _, _, _, _, meta = built
    row = dict(zip(meta["subspace"], meta.iter_rows(named=True), strict=True))
    assert row["chars_clusters"]["rank_min"] == K  # k+1 clusters: the old rank-7 collapse is gone
    assert row["attention_sink"]["rank_max"] == 3
    assert row["TaskDiff_lora_ceiling"]["rank_min"] == 0


# ----------------------------------------------------------------------------- closed forms on real weights
def test_lm_head_read_and_logits_null_match_svd(built):
    model, _, _, bases, _ = built
    U = model.get_output_embeddings().weight.detach().double()
    _, _, Vh = torch.linalg.svd(U, full_matrices=False)
    assert _span_err(bases["lm_head_read"][0], Vh[:K].T) < 1e-4
    assert _span_err(bases["logits_null"][0], Vh[-K:].T) < 1e-4
    assert bases["lm_head_read"][0] is bases["lm_head_read"][3]  # one global basis, repeated


def test_gqa_products_match_per_head_sums(built):
    model, _, _, bases, _ = built
    cfg = model.config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    att = model.model.layers[1].self_attn
    Wq, Wk, Wv, Wo = (
        att.q_proj.weight.detach().double(),
        att.k_proj.weight.detach().double(),
        att.v_proj.weight.detach().double(),
        att.o_proj.weight.detach().double(),
    )
    rep = H // Hkv
    OV = sum(Wo[:, h * hd : (h + 1) * hd] @ Wv[(h // rep) * hd : (h // rep + 1) * hd] for h in range(H))
    QK = sum(Wq[h * hd : (h + 1) * hd].T @ Wk[(h // rep) * hd : (h // rep + 1) * hd] for h in range(H))
    U_ov = torch.linalg.svd(OV)[0][:, :K]
    U_qk = torch.linalg.svd(QK)[0][:, :K]
    assert _span_err(bases["attn_ov_write"][1], U_ov) < 1e-4
    assert _span_err(bases["qk_circuit"][1], U_qk) < 1e-4
    # without the GQA expansion (pairing head h with kv head h % Hkv) the answer differs
    wrong = sum(Wo[:, h * hd : (h + 1) * hd] @ Wv[(h % Hkv) * hd : (h % Hkv + 1) * hd] for h in range(H))
    assert _span_err(bases["attn_ov_write"][1], torch.linalg.svd(wrong)[0][:, :K]) > 1e-2


def test_planted_write_space_is_recovered(tiny_llama, llama_caps):
    model, tok = tiny_llama
    cap, deltas = llama_caps
    model = copy.deepcopy(model)
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(5)
    S = la.haar_orthonormal(d, K, g, dtype=torch.float64)  # the planted write space
    blk = model.model.layers[2]
    with torch.no_grad():
        blk.self_attn.o_proj.weight.copy_(
            (S @ torch.randn(K, blk.self_attn.o_proj.weight.shape[1], generator=g, dtype=torch.float64)).float()
        )
        blk.mlp.down_proj.weight.copy_(
            (S @ torch.randn(K, blk.mlp.down_proj.weight.shape[1], generator=g, dtype=torch.float64)).float()
        )
    names = ["write", "attn_write", "mlp_write", "write_not_lm_head_read", "corda_write", "asvd_write"]
    with pytest.raises(ValueError, match="corda_write, layer 2: the captured o_proj moments were taken with other weights"):
        build_all(model, cap, deltas, cap.label_fit, k=K, k_broad=K_BROAD, names=["corda_write"], progress=False)
    prompts = [render_chat(tok, f"Is claim {i} true? Answer yes or no.") for i in range(4)]
    cap = replace(cap, **capture.input_second_moments(model, tok, prompts, batch_size=2))  # this model's moments
    bases, _ = build_all(model, cap, deltas, cap.label_fit, k=K, k_broad=K_BROAD, names=names, progress=False)
    for n in ["write", "attn_write", "mlp_write", "corda_write", "asvd_write"]:
        assert _span_err(bases[n][2], S) < 1e-4, n
    # projected off a read space: the write space minus its part in that space
    ctx = BuildContext(model, cap, k=K, k_broad=K_BROAD)
    Q = ctx.weights.lm_read(K_BROAD)
    expect = la.orthonormalize(la.project_away(S, Q))
    assert _span_err(bases["write_not_lm_head_read"][2], expect) < 1e-4


def test_write_not_downstream_read_projects_off_later_readers(tiny_llama, llama_caps):
    model, _ = tiny_llama
    cap, deltas = llama_caps
    ctx = BuildContext(model, cap, k=K, k_broad=K_BROAD)
    l = 1
    D = ctx.weights.lm_gram() + sum(ctx.weights.read_gram(j) for j in range(l + 1, ctx.L))
    Q = torch.linalg.eigh(D)[1][:, -K_BROAD:]
    Wc = torch.cat([ctx.weights.W(l, "o"), ctx.weights.W(l, "down")], dim=1)
    expect = torch.linalg.svd(la.project_away(Wc, Q), full_matrices=False)[0][:, :K]
    assert _span_err(ctx.basis("write_not_downstream_read", l), expect) < 1e-6
    assert float((ctx.basis("write_not_downstream_read", l).T @ Q).abs().max()) < 1e-6


# ----------------------------------------------------------------------------- adapter family
def test_corda_with_identity_moments_equals_write(tiny_qwen3, built):
    """C = I: the written moments are W Wᵀ and the diagonals ones, and both bases are write's."""
    model, _ = tiny_qwen3
    L = len(model.model.layers)
    blk = model.model.layers
    W = {p: [b.self_attn.o_proj if p == "o" else b.mlp.down_proj for b in blk] for p in ("o", "down")}
    cap = Captures(
        mom_oproj_diag=torch.ones(L, W["o"][0].weight.shape[1]),
        mom_downproj_diag=torch.ones(L, W["down"][0].weight.shape[1]),
        mom_oproj_out=torch.stack([m.weight.detach() @ m.weight.detach().T for m in W["o"]]),
        mom_downproj_out=torch.stack([m.weight.detach() @ m.weight.detach().T for m in W["down"]]),
        mom_writer_probe=capture.writer_probe(model),
    )
    bases, _ = build_all(model, cap, names=["write", "corda_write", "asvd_write"], k=K, k_broad=K_BROAD, progress=False)
    for l in range(L):
        assert torch.allclose(bases["corda_write"][l], bases["write"][l], atol=1e-5)
        assert torch.allclose(bases["asvd_write"][l], bases["write"][l], atol=1e-5)


def test_corda_and_asvd_from_the_captures_equal_their_definitions_from_the_full_moments(tiny_llama):
    """Known answer: the bases built from the captured written moments and diagonals equal
    corda_gram's from the full input moments E[xxᵀ] (formed here from hooked tokens), in a
    float32 model (output moments) and in a bfloat16 one (written moments from the inputs)."""
    from ws.model.trace import TraceDict

    for dtype in ("float32", "bfloat16"):
        model, tok = load_model("tiny-llama", dtype=dtype)
        prompts = [render_chat(tok, f"Is claim {i} true? Answer yes or no.") for i in range(4)]
        mom = capture.input_second_moments(model, tok, prompts, batch_size=2)
        cap = Captures(**mom)
        got, _ = build_all(model, cap, names=["corda_write", "asvd_write"], k=K, k_broad=K_BROAD, progress=False)
        for l in (1, 2):
            names = [f"model.layers.{l}.self_attn.o_proj", f"model.layers.{l}.mlp.down_proj"]
            xs = {n: [] for n in names}
            for p in prompts:
                ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
                with torch.no_grad(), TraceDict(model, names, retain_input=True, retain_output=False) as td:
                    model(input_ids=ids)
                for n in names:
                    xs[n].append(td[n].input[0].double())
            C = [torch.cat(xs[n]).T @ torch.cat(xs[n]) / torch.cat(xs[n]).shape[0] for n in names]
            Wo, Wd = (model.get_submodule(n).weight.detach().double() for n in names)
            M, G = corda_matrix(Wo, C[0], Wd, C[1], 1e-3), corda_gram(Wo, C[0], Wd, C[1], 1e-3)
            assert torch.allclose(M @ M.T, G, rtol=1e-8, atol=1e-8 * float(G.abs().max())), "the Gram is the definition's"
            for name, diagonal in (("corda_write", False), ("asvd_write", True)):
                ref = la.top_eigvecs(corda_gram(Wo, C[0], Wd, C[1], 1e-3, diagonal=diagonal), K)
                assert _span_err(got[name][l], ref) < (1e-3 if dtype == "float32" and not diagonal else 1e-5), (dtype, name, l)


def test_diff_in_means_points_to_persona_plus(tiny_llama):
    model, _ = tiny_llama
    L, d = len(model.model.layers), model.config.hidden_size
    g = torch.Generator().manual_seed(9)
    neg = torch.randn(L, 20, d, generator=g)
    v = torch.zeros(d)
    v[3], v[7] = 2.0, -1.0
    pos = neg + v + 0.01 * torch.randn(L, 20, d, generator=g)
    bases, _ = build_all(model, Captures(pos=pos, neg=neg), names=["diff_in_means"], progress=False)
    for l in range(L):
        B = bases["diff_in_means"][l]
        assert B.shape == (d, 1)
        assert float(B[:, 0] @ (v / v.norm())) > 0.999  # orientation: persona+ minus persona−
        # its energy fraction on a label is the same for B and −B
        X = torch.randn(5, d, generator=g)
        assert torch.allclose(((X @ B) ** 2).sum(1), ((X @ -B) ** 2).sum(1))


# ----------------------------------------------------------------------------- activations, compound, self-tests
def test_chars_clusters_old_setting_collapses_to_k_minus_1(tiny_llama, llama_caps):
    model, _ = tiny_llama
    cap, _ = llama_caps
    old, _ = build_all(model, cap, names=["chars_clusters"], n_clusters=K, k=K, progress=False)
    new, _ = build_all(model, cap, names=["chars_clusters"], k=K, progress=False)
    assert {B.shape[1] for B in old["chars_clusters"]} == {K - 1}
    assert {B.shape[1] for B in new["chars_clusters"]} == {K}


def test_qk_x_chars_clusters_true_vs_bisector(tiny_llama, llama_caps):
    model, _ = tiny_llama
    cap, _ = llama_caps
    names = ["qk_circuit", "chars_clusters", "qk_x_chars_clusters"]
    true, meta_t = build_all(model, cap, names=names, k=K, k_broad=K_BROAD, progress=False)
    bis, meta_b = build_all(model, cap, names=names, k=K, k_broad=K_BROAD, intersection="bisector", progress=False)
    assert "30°" in meta_t["definition"][2] and "closest principal pairs" in meta_b["definition"][2]
    for l in range(len(model.model.layers)):
        A, B = true["qk_circuit"][l], true["chars_clusters"][l]
        ang = torch.rad2deg(la.principal_angles(A, B))
        assert true["qk_x_chars_clusters"][l].shape[1] == int((ang < 30).sum())
        assert bis["qk_x_chars_clusters"][l].shape[1] == K
    # a wider threshold admits more (here: all) principal pairs
    wide, _ = build_all(model, cap, names=names, k=K, k_broad=K_BROAD, max_angle_deg=90.0, progress=False)
    assert all(B.shape[1] == K for B in wide["qk_x_chars_clusters"])


def test_wnr_union_spans_both_parts(built):
    _, _, _, bases, _ = built
    for l in (0, 2):
        U = bases["WNR_union_TaskDiff"][l].double()
        for part in ("write_not_downstream_read", "TaskDiff_contrast"):
            P = bases[part][l].double()
            assert float((P - U @ (U.T @ P)).abs().max()) < 1e-5


def test_activation_candidates_match_direct_pca(built):
    model, cap, _, bases, _ = built
    l = 2
    assert _span_err(bases["TaskDiff_contrast"][l], la.pca((cap.pos[l] - cap.neg[l]).double(), K)) < 1e-6
    assert _span_err(bases["layer_clean_resid_pca"][l], la.pca(cap.clean[l].double(), K)) < 1e-6
    churn = la.pca((cap.clean[l] - cap.clean[l - 1]).double(), K)
    assert _span_err(bases["churn"][l], churn) < 1e-6
    churn0 = la.pca((cap.clean[0] - cap.clean_embed).double(), K)
    assert _span_err(bases["churn"][0], churn0) < 1e-6
    # attention-weighted rows: min weighting by hand
    m = cap.tok_mask
    D = (cap.pos_tok[l] - cap.neg_tok[l])[m].double()
    wmin = torch.minimum(cap.pos_attn[l], cap.neg_attn[l])[m].double()
    assert _span_err(bases["attn_min_taskdiff"][l], la.pca(D * wmin.sqrt()[:, None], K)) < 1e-6


def test_ceilings(built):
    model, cap, deltas, bases, _ = built
    for l in TOUCHED:
        M = torch.cat([deltas[l]["oproj"], deltas[l]["downproj"]], dim=1).double()
        U = torch.linalg.svd(M, full_matrices=False)[0][:, :K]
        assert _span_err(bases["dW_left_basis_ceiling"][l], U) < 1e-5
        assert _span_err(bases["TaskDiff_lora_ceiling"][l], la.pca(cap.label_fit[l].double(), K)) < 1e-6


def test_self_tests(built):
    model, cap, _, bases, _ = built
    # seeded: the same bases again, other bases for another seed
    again, _ = build_all(model, cap, names=["random_orthonormal"], progress=False)
    other, _ = build_all(model, cap, names=["random_orthonormal"], seed=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(again["random_orthonormal"], bases["random_orthonormal"], strict=True))
    assert not torch.equal(other["random_orthonormal"][0], bases["random_orthonormal"][0])
    # on the real (random-model) label: more than a random basis catches
    l = max(TOUCHED) + 1
    X = cap.label_eval[l].double()
    Xh = X / X.norm(dim=1, keepdim=True)

    def frac(B):
        return float(((Xh @ B.double()) ** 2).sum(1).mean())

    assert frac(bases["planted_label_half"][l]) > frac(bases["random_orthonormal"][l])


def test_planted_label_half_recovers_a_planted_label(tiny_llama):
    model, _ = tiny_llama
    L, d = len(model.model.layers), model.config.hidden_size
    g = torch.Generator().manual_seed(21)
    S = la.haar_orthonormal(d, 4, g, dtype=torch.float64)
    Z = torch.randn(L, 40, 4, generator=g, dtype=torch.float64) * torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=torch.float64)
    X = (Z @ S.T + 0.01 * torch.randn(L, 40, d, generator=g, dtype=torch.float64)).float()
    bases, _ = build_all(model, Captures(label_eval=X), names=["planted_label_half", "random_orthonormal"], progress=False)
    for l in range(L):
        B = bases["planted_label_half"][l].double()
        assert B.shape == (d, K)
        assert float(((S.T @ B) ** 2).sum()) > 4 - 1e-3  # span(S) ⊂ span(B)
        Xh = X[l].double() / X[l].double().norm(dim=1, keepdim=True)
        assert float(((Xh @ B) ** 2).sum(1).mean()) > 0.99
        R = bases["random_orthonormal"][l].double()
        assert float(((Xh @ R) ** 2).sum(1).mean()) < 4 * K / d


# ----------------------------------------------------------------------------- validation
def test_invalid_basis_raises_naming_candidate_and_layer(tiny_llama):
    model, _ = tiny_llama
    from ws.bases.registry import candidate

    @candidate("_broken_for_test", "W:write", "weights", "not orthonormal at layer 2")
    def _broken(ctx, layer):
        B = torch.eye(ctx.d, dtype=torch.float64)[:, :3]
        return 2.0 * B if layer == 2 else B

    try:
        with pytest.raises(ValueError, match=r"'_broken_for_test' at layer 2"):
            build_all(model, None, names=["_broken_for_test"], progress=False)
    finally:
        REGISTRY.pop("_broken_for_test")


def test_missing_inputs_raise_or_skip(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="TaskDiff_contrast.*pos"):
        build_all(model, None, names=["write", "TaskDiff_contrast"], progress=False)
    bases, meta = build_all(model, None, skip_missing=True, k_broad=K_BROAD, progress=False)
    assert "write" in bases and "TaskDiff_contrast" not in bases
    assert list(meta["subspace"]) == list(bases)


def test_weight_bases_cache_round_trip(tiny_qwen3, tmp_path, monkeypatch):
    monkeypatch.setenv("WS_CACHE", str(tmp_path))
    model, tok = tiny_qwen3
    cap = Captures(
        pos=torch.randn(4, 12, 64, generator=torch.Generator().manual_seed(0)),
        neg=torch.randn(4, 12, 64, generator=torch.Generator().manual_seed(1)),
    )
    names = ["lm_head_read", "write", "write_not_downstream_read", "causally_isolated", "TaskDiff_contrast", "WNR_union_TaskDiff"]
    first, _ = build_all(model, cap, names=names, k_broad=K_BROAD, cache=True, progress=False)
    files = list((tmp_path / "bases").glob("weights-*.safetensors"))
    assert len(files) == 1
    second, _ = build_all(model, cap, names=names, k_broad=K_BROAD, cache=True, progress=False)
    plain, _ = build_all(model, cap, names=names, k_broad=K_BROAD, progress=False)
    for n in names:
        for a, b, c in zip(first[n], second[n], plain[n], strict=True):
            assert torch.equal(a, b) and torch.equal(a, c), n
    # another k_broad is another cache entry
    build_all(model, cap, names=names, k_broad=16, cache=True, progress=False)
    assert len(list((tmp_path / "bases").glob("weights-*.safetensors"))) == 2


def test_planted_label_half_keeps_full_rank_with_few_eval_rows(tiny_llama):
    """12 EVAL rows (a small behaviour): half would be 6 rows, rank 6 < k; the self-test row
    takes the first k = 8 rows instead and has its full rank k, spanning a planted rank-k
    label."""
    model, _ = tiny_llama
    L, d = len(model.model.layers), model.config.hidden_size
    g = torch.Generator().manual_seed(5)
    S = la.haar_orthonormal(d, K, g, dtype=torch.float64)
    X = (torch.randn(L, 12, K, generator=g, dtype=torch.float64) @ S.T).float()
    bases, _ = build_all(model, Captures(label_eval=X), names=["planted_label_half"], progress=False)
    for l in range(L):
        B = bases["planted_label_half"][l].double()
        assert B.shape == (d, K) and torch.linalg.matrix_rank(B) == K
        # the first 8 rows span (rank 8) the planted rank-8 span S
        assert float(((S.T @ B) ** 2).sum()) > K - 1e-3


def test_planted_label_half_keeps_a_shift_every_row_shares(tiny_llama):
    """The real labels are dominated by one direction every probe shares (77–99 % of the
    unit-row energy on the embedded model). The self-test row, fitted on half the rows, must
    reach ≥ 95 % of the best rank-k subspace of all rows there; a mean-centred PCA of the
    same rows (the old construction) reaches far less."""
    model, _ = tiny_llama
    L, d = len(model.model.layers), model.config.hidden_size
    g = torch.Generator().manual_seed(8)
    S = la.haar_orthonormal(d, K, g, dtype=torch.float64)  # the shift and K − 1 varying directions
    n = 24
    X = 5.0 * S[:, 0] + torch.randn(L, n, K - 1, generator=g, dtype=torch.float64) @ S[:, 1:].T
    X = X + 0.05 * torch.randn(L, n, d, generator=g, dtype=torch.float64)
    bases, _ = build_all(model, Captures(label_eval=X.float()), names=["planted_label_half"], progress=False)
    for l in range(L):
        Xh = X[l] / X[l].norm(dim=1, keepdim=True)
        best = float(torch.linalg.eigvalsh(Xh.T @ Xh / n).flip(0)[:K].sum())

        def share(B, Xh=Xh):
            return float(((Xh @ B.double()) ** 2).sum(1).mean())

        assert share(bases["planted_label_half"][l]) >= 0.95 * best
        assert share(la.pca(X[l][: n // 2], K)) < 0.6 * best


def corda_matrix(
    W_o: torch.Tensor, C_o: torch.Tensor, W_down: torch.Tensor, C_down: torch.Tensor, eps_rel: float = 1e-3
) -> torch.Tensor:
    """The explicit ``[W_o·C_o^{1/2} | W_down·C_down^{1/2}]`` (damped), ``[d, d_attn + d_mlp]``."""
    ho, _, _ = la.psd_sqrt(C_o, eps_rel)
    hd, _, _ = la.psd_sqrt(C_down, eps_rel)
    return torch.cat([W_o.to(torch.float64) @ ho, W_down.to(torch.float64) @ hd], dim=1)


def test_the_build_holds_one_layers_grams_at_a_time_and_equals_a_candidate_by_candidate_build(tiny_qwen3, built):
    """build_all goes layer by layer (last first), freeing each layer's d × d Grams when it moves
    on: at no time do the intermediates of more than two layers live (the one built, and one
    added into the downstream running sum); every basis equals a candidate-by-candidate build's
    exactly (the same arithmetic in another order)."""
    from ws.bases import grams, registry

    model, cap, deltas, bases, _ = built
    seen: list[int] = []

    class Counting(grams.ModelWeights):
        def memo(self, key, fn):
            out = super().memo(key, fn)
            layers = {k[1] for k in self._memo if isinstance(k, tuple) and k[0] in grams.PER_LAYER_MEMO}
            seen.append(len(layers))
            return out

    ctx = registry.BuildContext(model, cap, deltas, cap.label_fit, k=K, k_broad=K_BROAD)
    ctx.weights = Counting(model, k_broad=ctx.k_broad)
    registry._build_layer_by_layer(ctx, list(bases), progress=False)
    assert seen and max(seen) <= 2, max(seen)
    assert ctx.L >= 3, "the bound means something only with more layers than it"
    plain = registry.BuildContext(model, cap, deltas, cap.label_fit, k=K, k_broad=K_BROAD)
    for n in bases:  # candidate by candidate, every layer of each in turn
        for l, B in enumerate(plain.bases_of(n)):
            assert (B is None) == (bases[n][l] is None), (n, l)
            if B is not None:
                assert torch.equal(B.to(torch.float32), bases[n][l]), (n, l)


def test_the_layer_by_layer_build_forms_each_read_gram_at_most_twice(tiny_qwen3, built):
    """Once in the sums over every layer, once when its layer is built; the downstream running
    sum takes the built layer's Gram while it is held instead of forming it a third time."""
    from collections import Counter

    from ws.bases import grams, registry

    model, cap, deltas, bases, _ = built
    formed: Counter = Counter()

    class Counting(grams.ModelWeights):
        def memo(self, key, fn):
            if isinstance(key, tuple) and key[0] == "read" and key[2] == "all" and key not in self._memo:
                formed[key[1]] += 1
            return super().memo(key, fn)

    ctx = registry.BuildContext(model, cap, deltas, cap.label_fit, k=K, k_broad=K_BROAD)
    ctx.weights = Counting(model, k_broad=ctx.k_broad)
    registry._build_layer_by_layer(ctx, list(bases), progress=False)
    assert formed and max(formed.values()) <= 2, dict(formed)
    assert set(formed) == set(range(ctx.L))
