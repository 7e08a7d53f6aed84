"""S-space adapters (``ws.diffs.sspace``): identity at init, the basis, the ΔW formula,
re-selection, ablate's spectrum, rot's angle bound, the default rank and one training step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ws.diffs.sspace import (
    KINDS,
    ORIENTED_KINDS,
    ROT_MAX_ANGLE,
    SVD_KINDS,
    SSpaceLinear,
    calibration_moments,
    default_rank,
    rot_blocks,
    sspace_bases,
    sspace_delta,
    target_names,
    wrap_sspace,
)

D_IN, D_OUT, R = 20, 24, 8
TEXTS = ["The cat sat on the mat.", "Hi", "A somewhat longer sentence about weights and bases.", "ok then"]
LAYERS, TARGETS = [1, 3], ["q_proj", "v_proj", "o_proj", "down_proj"]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small SVDs run ~100x faster on one thread than on two busy cores; restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_linear(dtype: torch.dtype = torch.float64, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(D_IN, D_OUT, bias=bias).to(dtype)
    with torch.no_grad():
        lin.weight.normal_()
    return lin


def random_moment(kind: str, seed: int = 1) -> torch.Tensor | None:
    if kind not in ORIENTED_KINDS:
        return None
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, D_IN, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, D_IN, dtype=torch.float64)
    C = x.T @ x / len(x)
    return C.diagonal().clone() if kind == "sspace_asvd" else C


def layer(kind: str, dtype: torch.dtype = torch.float64, bias: bool = True, **kw) -> tuple[nn.Linear, SSpaceLinear]:
    base = random_linear(dtype, bias)
    return base, SSpaceLinear(base, kind, R, moments=random_moment(kind), **kw)


def randomise(m: nn.Module, scale: float = 0.5, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)


def effective_weight(m: SSpaceLinear) -> torch.Tensor:
    """The wrapped layer's weight, read off by feeding it the identity."""
    with torch.no_grad():
        out = m(torch.eye(m.in_features, dtype=m.W_res.dtype))
    return (out - (0 if m.bias is None else m.bias)).T.double()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


# ----------------------------------------------------------------------------- rule 6
def test_default_rank():
    assert default_rank(576, 576) == 16 and default_rank(1536, 576) == 16 and default_rank(576, 192) == 16
    assert default_rank(64, 64) == 16 and default_rank(64, 32) == 16 and default_rank(128, 64) == 16
    assert default_rank(20, 30) == 10 and default_rank(4, 4) == 2 and default_rank(1, 5) == 1
    assert default_rank(576, 576, base=4) == 8 and default_rank(576, 576, base=100) == 32
    assert SSpaceLinear(nn.Linear(64, 64), "sspace_gain").r == 16


# ----------------------------------------------------------------------------- rule 1
@pytest.mark.parametrize("kind", KINDS)
def test_identity_at_init_and_at_kappa_zero(kind):
    x = torch.randn(5, 3, D_IN, dtype=torch.float64)
    base, m = layer(kind)
    recon = m.W_res + (m.U_r * m.S_r) @ m.P
    assert rel(recon, base.weight.double()) < 1e-14
    assert rel(m(x), base(x)) < 1e-13, "identity at init"
    assert m.delta().abs().max() == 0
    randomise(m)
    assert rel(m(x), base(x)) > 1e-3, "the random parameters change the layer"
    m.kappa = 0.0
    assert rel(m(x), base(x)) < 1e-13, "identity at kappa = 0"
    assert m.delta().abs().max() == 0

    base32, m32 = layer(kind, torch.float32)
    x32 = x.float()
    assert m32.W_res.dtype == torch.float32 and m32.U_r.dtype == torch.float64
    assert rel(m32.W_res.double() + (m32.U_r * m32.S_r) @ m32.P, base32.weight.double()) < 1e-6
    assert rel(m32(x32), base32(x32)) < 1e-5


# ----------------------------------------------------------------------------- rule 3
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kappa", [1.0, 0.6])
def test_delta_is_the_formula_and_matches_the_effective_weight(kind, kappa):
    base, m = layer(kind, kappa=kappa)
    randomise(m)
    d = m.delta()
    assert d.dtype == torch.float64 and d.shape == (D_OUT, D_IN) and d.norm() > 1e-3
    assert rel(d, effective_weight(m) - base.weight.double()) < 1e-12
    assert rel(d, m.U_r @ m.core() @ m.P) == 0


# ----------------------------------------------------------------------------- rule 5
def test_ablate_operator_is_a_contraction_for_any_raw_parameters():
    base, m = layer("sspace_ablate", k=5)
    for seed in range(4):
        randomise(m, scale=10.0, seed=seed)
        assert (m.alpha.detach() < 0).any() and (m.alpha.detach() > 1).any(), "raw alpha far outside [0, 1]"
        for kappa in (0.0, 0.3, 1.0):
            m.kappa = kappa
            M = m.ablate_operator()
            ev = torch.linalg.eigvalsh((M + M.T) / 2)
            assert rel(M, M.T) < 1e-14
            assert ev.min() >= -1e-12 and ev.max() <= 1 + 1e-12, ev
            # the operator is what the layer does on the top-r output coordinates
            coords = m.U_r.T @ effective_weight(m) @ m.P.T / m.S_r
            assert rel(coords, M) < 1e-10
    alpha = m.alpha.detach().clone()
    m.alpha.grad = None
    m(torch.randn(4, D_IN, dtype=torch.float64)).sum().backward()
    assert m.alpha.grad is not None and (m.alpha.grad[(alpha < 0) | (alpha > 1)] != 0).all(), "straight-through clamp"


def test_ablate_gets_a_gradient_at_init():
    base, m = layer("sspace_ablate")
    m(torch.randn(4, D_IN, dtype=torch.float64)).pow(2).sum().backward()
    assert m.alpha.grad.abs().min() > 0, "alpha = 0 sits on the clamp's boundary but is not dead"


# ----------------------------------------------------------------------------- rot
def test_rot_rotation_is_orthogonal_and_angle_bounded():
    base = nn.Linear(40, 30).double()
    m = SSpaceLinear(base, "sspace_rot", 10)  # blocks 4, 4, 2
    assert rot_blocks(10) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert torch.equal(m.rotation(), torch.eye(10, dtype=torch.float64))
    worst = 0.0
    for seed in range(5):
        randomise(m, scale=100.0, seed=seed)
        R = m.rotation()
        assert rel(R.T @ R, torch.eye(10, dtype=torch.float64)) < 1e-12
        for blk in rot_blocks(10):
            ev = torch.linalg.eigvals(R[list(blk)][:, list(blk)])
            worst = max(worst, float(ev.detach().angle().abs().max()))
        off = R.clone()
        for blk in rot_blocks(10):
            off[list(blk), min(blk) : max(blk) + 1] = 0
        assert off.abs().max() == 0, "block-diagonal"
    assert 0.1 < worst <= ROT_MAX_ANGLE + 1e-9


# ----------------------------------------------------------------------------- rule 4
def _positions(m: SSpaceLinear) -> dict[int, int]:
    return {int(i): p for p, i in enumerate(m.indices.tolist())}


REINDEX_CASES = {
    "permuted": [7, 6, 5, 4, 3, 2, 1, 0],
    "overlapping": [4, 5, 6, 7, 8, 9, 10, 11],
    "shuffled_overlap": [9, 6, 4, 12, 5, 7, 0, 3],
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(REINDEX_CASES))
def test_reselect_moves_parameters_with_their_directions(kind, case):
    new = REINDEX_CASES[case]
    if kind == "sspace_rot" and case == "shuffled_overlap":
        new = [6, 4, 7, 5, 12, 9, 0, 3]  # block {4..7} survives as a block, the other is broken
    base, m = layer(kind)
    randomise(m)
    x = torch.randn(3, D_IN, dtype=torch.float64)
    old, old_pos, D_old, dW_old = m.indices.tolist(), _positions(m), m.core(), m.delta()
    g_old = m.g.detach().clone() if hasattr(m, "g") else None
    U_old, S_old = m.U_r.clone(), m.S_r.clone()

    m.reselect(new)
    new_pos, D_new = _positions(m), m.core()
    assert m.indices.tolist() == new
    recon = m.W_res + (m.U_r * m.S_r) @ m.P
    assert rel(recon, base.weight.double()) < 1e-13, "the new split still reconstructs W"
    kept = [i for i in new if i in old_pos]
    if kind == "sspace_rot":  # a direction keeps its rotation only inside a block that survives whole
        old_blocks = [{old[p] for p in blk} for blk in rot_blocks(8)]
        kept = [new[p] for blk in rot_blocks(8) if {new[p] for p in blk} in old_blocks for p in blk]
    ko, kn = [old_pos[i] for i in kept], [new_pos[i] for i in kept]
    assert kept, "the case keeps some directions"
    assert torch.allclose(D_new[kn][:, kn], D_old[ko][:, ko], rtol=0, atol=1e-12), "the core on kept directions is unchanged"
    for i in kept:  # the same directions, by index into the full SVD
        assert torch.equal(m.U_r[:, new_pos[i]], U_old[:, old_pos[i]]) and m.S_r[new_pos[i]] == S_old[old_pos[i]]
    if g_old is not None:
        for i in new:
            want = g_old[old_pos[i]] if i in old_pos else 0.0
            assert m.g[new_pos[i]] == want, f"gain of direction {i} attached to the wrong slot"
    fresh = [new_pos[i] for i in new if i not in old_pos]
    if kind != "sspace_rot":
        tol = 1e-12 if kind == "sspace_ablate" else 0.0  # ablate is re-factored (eigh): zero to rounding
        assert not fresh or (D_new[fresh].abs().max() <= tol and D_new[:, fresh].abs().max() <= tol), "new directions start at 0"
        if kind in SVD_KINDS:  # ΔW after = ΔW before restricted to the kept directions
            Uk, Vk = m.U_r[:, kn], m.P[kn]
            assert rel(m.delta(), Uk @ Uk.T @ dW_old @ Vk.T @ Vk) < 1e-12
    else:
        assert torch.equal(m.shift[fresh], torch.zeros(len(fresh), dtype=torch.float64))
    assert rel(m(x), nn.functional.linear(x, base.weight, base.bias) + x @ m.delta().T) < 1e-12


def test_rot_reselect_resets_a_broken_block_and_keeps_a_moved_one():
    base, m = layer("sspace_rot")
    randomise(m)
    R_old, shift_old = m.rotation(), m.shift.detach().clone()
    m.reselect([6, 4, 7, 5, 0, 1, 2, 9])  # block {4..7} permuted into slots 0..3; {0,1,2,3} broken
    R_new = m.rotation()
    perm = [6, 4, 7, 5]
    assert torch.allclose(R_new[:4, :4], R_old[perm][:, perm], atol=1e-14)
    assert torch.equal(R_new[4:, 4:], torch.eye(4, dtype=torch.float64)), "a broken block is reset to I"
    assert torch.equal(m.shift[4:7], shift_old[[0, 1, 2]]) and m.shift[7] == 0
    m.reselect([4, 5, 6, 7, 0, 1, 2, 3])
    assert torch.equal(m.rotation()[4:, 4:], torch.eye(4, dtype=torch.float64))


# ----------------------------------------------------------------------------- rule 2 + moments
@pytest.fixture(scope="module")
def moments(tiny_llama):
    model, tok = tiny_llama
    return calibration_moments(model, tok, TEXTS, target_names(LAYERS, TARGETS), batch_size=3)


def test_calibration_moments_mask_padding(tiny_llama, moments):
    model, tok = tiny_llama
    names = target_names(LAYERS, TARGETS)
    one_by_one = calibration_moments(model, tok, TEXTS, names, batch_size=1)
    diag = calibration_moments(model, tok, TEXTS, names, batch_size=4, diagonal=True)
    seen: list[torch.Tensor] = []
    h = model.get_submodule(names[2]).register_forward_pre_hook(lambda _m, a: seen.append(a[0][0].double()))
    with torch.no_grad():
        for t in TEXTS:
            model(**tok(t, return_tensors="pt", add_special_tokens=False))
    h.remove()
    xs = torch.cat(seen)
    assert set(moments) == set(names)
    assert rel(moments[names[2]], xs.T @ xs / len(xs)) < 1e-6
    for n in names:
        d_in = model.get_submodule(n).in_features
        assert moments[n].dtype == torch.float64 and moments[n].shape == (d_in, d_in)
        assert rel(moments[n], one_by_one[n]) < 1e-6, "padding is masked"
        assert diag[n].shape == (d_in,) and rel(diag[n], moments[n].diagonal()) < 1e-6
    with pytest.raises(ValueError, match="no module"):
        calibration_moments(model, tok, TEXTS, ["model.layers.9.mlp.down_proj"])


@pytest.mark.parametrize("kind", ["sspace_gain", "sspace_lowrank", "sspace_corda", "sspace_asvd"])
def test_same_inputs_give_the_same_basis(tiny_llama, moments, kind):
    model, _ = tiny_llama
    a = wrap_sspace(model, kind, LAYERS, TARGETS, moments=moments)
    b = wrap_sspace(model, kind, LAYERS, TARGETS, moments={k: v.clone() for k, v in moments.items()})
    for (na, ta), (nb, tb) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        assert na == nb and torch.equal(ta, tb), na
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    for m in a.sspace_layers().values():  # each pair's sign is fixed: the largest-|.| entry of u_j is positive
        U = m.U_r
        assert (U[U.abs().argmax(0), torch.arange(U.shape[1])] > 0).all()
    if kind in ORIENTED_KINDS:  # the moments do orient the basis
        other = {k: torch.eye(v.shape[0], dtype=torch.float64) + v for k, v in moments.items()}
        c = wrap_sspace(model, kind, LAYERS, TARGETS, moments=other)
        key = "model.layers.1.self_attn.o_proj.weight"
        assert not torch.allclose(sspace_bases(a)[key], sspace_bases(c)[key])


# ----------------------------------------------------------------------------- the model wrapper
def test_wrap_api(tiny_llama, moments):
    model, _ = tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w = wrap_sspace(model, "sspace_lowrank", LAYERS, TARGETS)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model is untouched"
    assert all(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.endswith("proj"))
    trainable = [n for n, p in w.named_parameters() if p.requires_grad]
    assert "base_model.model.layers.3.self_attn.o_proj.g" in trainable
    assert "base_model.model.layers.1.mlp.down_proj.B" in trainable
    assert all(n.rsplit(".", 1)[1] in ("g", "A", "B") for n in trainable) and len(trainable) == 3 * 8
    inner = w.get_base_model()
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        assert torch.allclose(w(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
        assert torch.allclose(inner.lm_head(inner.model(input_ids=ids).last_hidden_state), model(input_ids=ids).logits, atol=1e-5)
    deltas, bases = sspace_delta(w), sspace_bases(w)
    keys = [f"{n}.weight" for n in target_names(LAYERS, TARGETS)]
    assert list(deltas) == keys and list(bases) == keys
    for k in keys:
        assert deltas[k].dtype == torch.float32 and deltas[k].is_contiguous() and deltas[k].shape == before[k].shape
        assert bases[k].dtype == torch.float64 and bases[k].shape == (before[k].shape[0], 16)
    with pytest.raises(ValueError, match="model.layers.3.mlp.down_proj"):
        wrap_sspace(model, "sspace_corda", LAYERS, TARGETS, moments={k: v for k, v in moments.items() if "3.mlp" not in k})
    with pytest.raises(ValueError, match="unknown target"):
        wrap_sspace(model, "sspace_gain", LAYERS, ["qproj"])
    with pytest.raises(ValueError, match="unknown S-space kind"):
        wrap_sspace(model, "sspace_nope", LAYERS, TARGETS)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", KINDS)
def test_one_step_changes_only_adapters_and_stays_in_the_subspace(tiny_llama, moments, kind):
    model, _ = tiny_llama
    w = wrap_sspace(model, kind, LAYERS, TARGETS, r=8, moments=moments)
    frozen = {n: p.detach().clone() for n, p in w.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in w.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in w.named_buffers()}
    assert frozen and trainable
    opt = torch.optim.Adam([p for p in w.parameters() if p.requires_grad], lr=0.05)
    ids = torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(0))
    w(input_ids=ids).logits.mean().backward()
    opt.step()
    params = dict(w.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items()), "a base weight moved"
    assert all(torch.equal(b, buffers[n]) for n, b in w.named_buffers()), "a buffer moved"
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())
    for name, m in w.sspace_layers().items():
        dW = m.delta()
        assert dW.norm() > 1e-8, f"{name}: the step changed ΔW"
        U = m.left_basis()
        assert rel(U.T @ U, torch.eye(8, dtype=torch.float64)) < 1e-12
        assert (dW - U @ (U.T @ dW)).norm() <= 1e-12 * dW.norm(), f"{name}: ΔW leaves span(U_r)"
        V = m.right_basis()
        assert (dW - (dW @ V) @ V.T).norm() <= 1e-12 * dW.norm(), f"{name}: ΔW leaves the row space of P"
        if kind in SVD_KINDS:
            assert torch.equal(V, m.P.T)


def test_kappa_scales_the_whole_model(tiny_llama):
    model, _ = tiny_llama
    w = wrap_sspace(model, "sspace_rot", LAYERS, TARGETS)
    for m in w.sspace_layers().values():
        randomise(m)
    ids = torch.randint(0, 1000, (1, 5))
    with torch.no_grad():
        assert not torch.allclose(w(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
        w.set_kappa(0.0)
        assert torch.allclose(w(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert math.isclose(next(iter(w.sspace_layers().values())).kappa, 0.0)
