"""Known-answer tests of ws.core.linalg (synthetic data, milliseconds)."""

from __future__ import annotations

import math

import pytest
import torch

from ws.core import linalg as la

D = 40


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread: on shared cores two threads per process make these tiny ops ~50× slower."""
    with la.blas_threads(1):
        yield


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _basis(d: int, k: int, seed: int) -> torch.Tensor:
    return la.haar_orthonormal(d, k, _gen(seed), dtype=torch.float64)


def _proj(B: torch.Tensor) -> torch.Tensor:
    return B @ B.T


def _same_span(A: torch.Tensor, B: torch.Tensor, tol: float = 1e-8) -> bool:
    return A.shape == B.shape and float((_proj(A) - _proj(B)).abs().max()) < tol


# ----------------------------------------------------------------------------- pca / svd bases
def test_pca_recovers_planted_subspace():
    g = _gen(1)
    S = _basis(D, 3, 2)
    scales = torch.tensor([10.0, 6.0, 3.0], dtype=torch.float64)
    Z = torch.randn(500, 3, generator=g, dtype=torch.float64) * scales
    X = Z @ S.T + 0.01 * torch.randn(500, D, generator=g, dtype=torch.float64) + 5.0  # offset: centring matters
    B = la.pca(X, 3)
    assert B.shape == (D, 3)
    assert la.is_orthonormal(B, 1e-10)
    cos = torch.cos(la.principal_angles(B, S))
    assert float(cos.min()) > 0.999
    # the direction of largest variance first
    assert abs(float(B[:, 0] @ S[:, 0])) > 0.999


def test_unit_row_basis_is_the_maximiser_of_the_mean_unit_row_energy():
    """Known answer: the best rank-k subspace for the mean of ‖x̂ᵀB‖² holds the sum of the
    top-k eigenvalues of the unit rows' second-moment matrix; a shared shift stays in it,
    while the centred PCA drops it and holds much less."""
    g = _gen(11)
    S = _basis(D, 4, 12)
    shift = S[:, :1].T * 6.0  # one direction every row shares
    X = shift + torch.randn(60, 3, generator=g, dtype=torch.float64) @ S[:, 1:].T
    X = X + 0.05 * torch.randn(60, D, generator=g, dtype=torch.float64)
    Xh = X / X.norm(dim=1, keepdim=True)

    def share(B):
        return float(((Xh @ B) ** 2).sum(1).mean())

    best = float(torch.linalg.eigvalsh(Xh.T @ Xh / Xh.shape[0]).flip(0)[:4].sum())
    B = la.unit_row_basis(X, 4)
    assert B.shape == (D, 4) and la.is_orthonormal(B, 1e-10)
    assert share(B) == pytest.approx(best, rel=1e-10)
    assert abs(float(B[:, 0] @ S[:, 0])) > 0.99  # the shared direction first
    assert share(la.pca(X, 4)) < 0.5 * best  # centring throws the shift away
    # zero rows are left out; all-zero rows give rank 0; float32 stays float32
    Z = torch.cat([X, torch.zeros(5, D, dtype=torch.float64)])
    assert _same_span(la.unit_row_basis(Z, 4), B)
    assert la.unit_row_basis(torch.zeros(6, D), 4).shape == (D, 0)
    assert la.unit_row_basis(X.float(), 2).dtype == torch.float32


def test_pca_true_rank_and_sign_convention():
    g = _gen(3)
    S = _basis(D, 2, 4)
    X = torch.randn(50, 2, generator=g, dtype=torch.float64) @ S.T  # rank 2 after centring
    B = la.pca(X, 8)
    assert B.shape == (D, 2)  # never padded to 8
    for j in range(B.shape[1]):
        i = int(B[:, j].abs().argmax())
        assert B[i, j] > 0
    assert la.pca(torch.zeros(10, D), 8).shape == (D, 0)
    # n centred rows span at most n − 1 directions
    assert la.pca(torch.randn(5, D, generator=g), 8).shape == (D, 4)
    # float32 in -> float32 out
    assert la.pca(torch.randn(20, D, generator=g), 3).dtype == torch.float32


def test_left_right_svd_basis_match_torch_svd():
    g = _gen(5)
    # tall (thin SVD), wide and square (d × d Gram), tall with many columns (m × m Gram)
    for shape in [(D, 10), (D, 200), (D, D), (300, 100)]:
        M = torch.randn(*shape, generator=g, dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        B = la.left_svd_basis(M, 4)
        assert _same_span(B, U[:, :4], 1e-8)
        R = la.right_svd_basis(M.T, 4)
        assert _same_span(R, U[:, :4], 1e-8)
        assert la.is_orthonormal(B, 1e-10)
    # a rank-deficient tall matrix through the m × m Gram: true rank, no junk directions
    M = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 100, generator=g, dtype=torch.float64)
    assert la.left_svd_basis(M, 8).shape == (300, 5)


def test_gram_is_exact_and_symmetric():
    M = torch.randn(30, 70, generator=_gen(30), dtype=torch.float64)
    G = la.gram(M)
    assert torch.allclose(G, M @ M.T, atol=1e-12) and torch.equal(G, G.T)
    assert torch.allclose(la.gram(M, transpose=True), M.T @ M, atol=1e-12)


def test_orthonormalize_is_orthonormal_and_spans_input():
    g = _gen(6)
    A = torch.randn(D, 5, generator=g, dtype=torch.float64)
    M = torch.cat([A, A[:, :2] @ torch.randn(2, 3, generator=g, dtype=torch.float64)], dim=1)  # rank 5 of 8 cols
    Q = la.orthonormalize(M)
    assert Q.shape == (D, 5)
    assert la.is_orthonormal(Q, 1e-10)
    assert float((M - Q @ (Q.T @ M)).abs().max()) < 1e-10  # spans M
    # a direction far below the tolerance is dropped, one above it is kept
    tiny = torch.cat([A[:, :1], 1e-9 * torch.randn(D, 1, generator=g, dtype=torch.float64)], dim=1)
    assert la.orthonormalize(tiny, tol=1e-6).shape[1] == 1
    assert la.orthonormalize(tiny, tol=1e-12).shape[1] == 2


def test_top_eigvecs_subset_driver_matches_full():
    g = _gen(7)
    A = torch.randn(300, 900, generator=g, dtype=torch.float64)
    G = A @ A.T  # 300 x 300, k small -> subset driver
    vals, vecs = torch.linalg.eigh(G)
    B = la.top_eigvecs(G, 8)
    assert _same_span(B, vecs[:, -8:], 1e-8)
    assert la.bottom_eigvecs(G, 3).shape == (300, 3)
    assert _same_span(la.bottom_eigvecs(G, 3), vecs[:, :3], 1e-8)


# ----------------------------------------------------------------------------- union / intersection
def test_union_of_planted_subspaces():
    e = torch.eye(D, dtype=torch.float64)
    A = e[:, [0, 1]]
    B = e[:, [1, 2]]
    U = la.union(A, B)
    assert U.shape == (D, 3)  # shared e1 counted once
    assert _same_span(U, e[:, [0, 1, 2]])
    assert la.union(A, A).shape == (D, 2)
    assert la.union(A, torch.zeros(D, 0, dtype=torch.float64)).shape == (D, 2)
    # k keeps the most shared direction first
    assert _same_span(la.union(A, B, k=1), e[:, [1]])


def test_intersection_two_planes_sharing_a_line():
    Q = _basis(D, 3, 8)
    line, a2, b2 = Q[:, 0], Q[:, 1], Q[:, 2]
    R = torch.linalg.qr(torch.stack([line + 0.3 * a2, a2], dim=1))[0]  # plane {line, a2} in another basis
    A = R
    B = torch.stack([b2, line], dim=1)
    I = la.intersection(A, B)
    assert I.shape == (D, 1)
    assert abs(float(I[:, 0] @ line)) > 1 - 1e-10


def test_intersection_orthogonal_is_rank_zero_and_threshold():
    e = torch.eye(D, dtype=torch.float64)
    assert la.intersection(e[:, [0, 1]], e[:, [2, 3]]).shape == (D, 0)
    # two lines at 20°: inside a 30° threshold (bisector returned), outside a 10° one
    t = math.radians(20)
    a = e[:, [0]]
    b = (math.cos(t) * e[:, 0] + math.sin(t) * e[:, 1])[:, None]
    I = la.intersection(a, b, max_angle_deg=30)
    assert I.shape == (D, 1)
    expect = torch.nn.functional.normalize(a[:, 0] + b[:, 0], dim=0)
    assert abs(float(I[:, 0] @ expect)) > 1 - 1e-12
    assert la.intersection(a, b, max_angle_deg=10).shape == (D, 0)


def test_bisector_option_always_returns_k():
    e = torch.eye(D, dtype=torch.float64)
    A, B = e[:, [0, 1]], e[:, [2, 3]]
    Bi = la.bisector_intersection(A, B, 2)
    assert Bi.shape == (D, 2)  # even for orthogonal subspaces
    assert la.is_orthonormal(Bi, 1e-10)
    # each column is a normalised sum of one direction of A and one of B
    assert torch.allclose(Bi.abs()[:4].pow(2).sum(0), torch.ones(2, dtype=torch.float64))
    assert float(Bi[:, 0].abs()[:4].max()) == pytest.approx(math.sqrt(0.5))
    # random 3-dim subspaces: the bisector gives 3, the true intersection none
    A3, B3 = _basis(D, 3, 11), _basis(D, 3, 12)
    assert la.bisector_intersection(A3, B3, 3).shape == (D, 3)
    assert la.intersection(A3, B3, 30.0).shape == (D, 0)


# ----------------------------------------------------------------------------- angles, projections
def test_principal_angles_of_known_rotations():
    e = torch.eye(D, dtype=torch.float64)
    angles = [0.1, 0.7]
    A = e[:, [0, 2]]
    B = torch.stack(
        [
            math.cos(angles[0]) * e[:, 0] + math.sin(angles[0]) * e[:, 1],
            math.cos(angles[1]) * e[:, 2] + math.sin(angles[1]) * e[:, 3],
        ],
        dim=1,
    )
    th = la.principal_angles(A, B)
    assert torch.allclose(th, torch.tensor(angles, dtype=torch.float64), atol=1e-10)
    assert la.mean_principal_cosine(A, B) == pytest.approx((math.cos(0.1) + math.cos(0.7)) / 2, abs=1e-12)
    assert la.mean_principal_cosine(A, A) == pytest.approx(1.0)
    assert math.isnan(la.mean_principal_cosine(A, torch.zeros(D, 0, dtype=torch.float64)))


def test_complement_and_project_away():
    B = _basis(D, 5, 13)
    C = la.complement(B, D)
    assert C.shape == (D, D - 5)
    assert la.is_orthonormal(C, 1e-10)
    assert float((B.T @ C).abs().max()) < 1e-12
    M = torch.randn(D, 7, generator=_gen(14), dtype=torch.float64)
    P = la.project_away(M, B)
    assert float((B.T @ P).abs().max()) < 1e-12
    assert torch.allclose(P + B @ (B.T @ M), M)
    G = M @ M.T
    assert torch.allclose(la.project_gram(G, B), P @ P.T, atol=1e-10)


def test_effective_rank_of_known_spectra():
    assert la.effective_rank(torch.ones(4)) == pytest.approx(4.0)
    assert la.effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    # singular values (1, 1/√2): eigenvalues (1, 1/2) → (1.5)²/(1.25) = 1.8
    assert la.effective_rank(torch.tensor([1.0, 1 / math.sqrt(2)])) == pytest.approx(1.8)
    assert la.effective_rank(torch.zeros(3)) == 0.0
    # a matrix with 3 equal singular values
    Q = _basis(D, 3, 15)
    assert la.effective_rank(2.0 * Q) == pytest.approx(3.0)


def test_check_orthonormal_raises_with_name_and_layer():
    B = _basis(D, 4, 16)
    la.check_orthonormal(B, "x", 3)
    la.check_orthonormal(torch.zeros(D, 0), "empty", 0)
    with pytest.raises(ValueError, match=r"'my_cand' at layer 7"):
        la.check_orthonormal(B * 1.1, "my_cand", 7)
    with pytest.raises(ValueError, match="2-D"):
        la.check_orthonormal(torch.ones(D), "v", 0)
    assert not la.is_orthonormal(torch.full((D, 2), float("nan")))


# ----------------------------------------------------------------------------- model helpers
def test_expand_kv_explicit_example():
    # 2 kv heads of head_dim 2, 4 query heads: head j uses kv head j // 2
    W = torch.arange(4 * 3, dtype=torch.float64).reshape(4, 3)  # rows: kv0 = rows 0-1, kv1 = rows 2-3
    E = la.expand_kv(W, n_heads=4, n_kv=2)
    expect = torch.cat([W[0:2], W[0:2], W[2:4], W[2:4]])
    assert torch.equal(E, expect)
    assert torch.equal(la.expand_kv(W, 2, 2), W)  # no GQA: unchanged
    with pytest.raises(ValueError):
        la.expand_kv(W, 3, 2)


def test_psd_sqrt_reconstructs():
    g = _gen(17)
    A = torch.randn(12, 5, generator=g, dtype=torch.float64)
    C = A @ A.T / 5  # singular (rank 5 of 12): needs the damping
    W = torch.randn(7, 12, generator=g, dtype=torch.float64)
    h, ih, eps = la.psd_sqrt(C, eps_rel=1e-3)
    assert eps > 0
    assert torch.allclose(W @ h @ ih, W, atol=1e-9)
    assert torch.allclose(h @ h, C + eps * torch.eye(12, dtype=torch.float64), atol=1e-10)


def test_haar_orthonormal_seeded():
    a = la.haar_orthonormal(D, 8, _gen(3))
    b = la.haar_orthonormal(D, 8, _gen(3))
    assert torch.equal(a, b) and la.is_orthonormal(a)
    assert not torch.equal(a, la.haar_orthonormal(D, 8, _gen(4)))


def test_kmeans_finds_planted_clusters():
    g = _gen(18)
    centers = 10.0 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    X = torch.cat([c + 0.1 * torch.randn(30, 5, generator=g, dtype=torch.float64) for c in centers])
    C, lab, inertia = la.kmeans(X, 3, seed=0)
    assert C.shape == (3, 5)
    for c in centers:
        assert float((C - c).norm(dim=1).min()) < 0.1
    assert len(set(lab[:30].tolist())) == 1 and len(set(lab.tolist())) == 3
    C2, _, _ = la.kmeans(X, 3, seed=0)
    assert torch.equal(C, C2)  # seeded: deterministic


# ----------------------------------------------------------------------------- where the work runs (compute_on)
def _planted_gram(d: int, k: int, seed: int, gap: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A PSD ``[d, d]`` Gram whose top-``k`` eigenspace is a known basis (eigenvalues ``gap``·(1…2)
    on it, ``0…1`` elsewhere), and that basis."""
    Q = _basis(d, d, seed)
    g = _gen(seed + 1)
    lam = torch.cat(
        [gap * (1 + torch.rand(k, generator=g, dtype=torch.float64)), torch.rand(d - k, generator=g, dtype=torch.float64)]
    )
    return (Q * lam) @ Q.T, Q[:, :k]


def test_the_cpu_in_float64_block_is_the_default_path_bit_for_bit():
    G, _ = _planted_gram(160, 8, 3)
    M = torch.randn(160, 300, generator=_gen(4), dtype=torch.float64)
    ref = (la.gram(M), la.top_eigvecs(G, 8), la.left_svd_basis(M[:, :100], 5), la.svd(M), la.eigh(G))
    with la.compute_on("cpu", torch.float64):
        got = (la.gram(M), la.top_eigvecs(G, 8), la.left_svd_basis(M[:, :100], 5), la.svd(M), la.eigh(G))
        assert la.rank_floor(1e-6, 160) == 1e-12
    flat = lambda xs: [t for x in xs for t in (x if isinstance(x, tuple) else (x,))]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(flat(ref), flat(got), strict=True))


def test_float32_work_finds_a_planted_eigenspace_and_returns_float64_on_the_cpu():
    G, B = _planted_gram(256, 8, 5)
    with la.compute_on("cpu", torch.float32):
        top = la.top_eigvecs(G, 8)
        vals, vecs = la.eigh(G)
        U, S, Vh = la.svd(G)
    for t in (top, vals, vecs, U, S, Vh):
        assert t.dtype == torch.float64 and t.device.type == "cpu"
    assert float(la.principal_angles(top, B).max()) < 1e-4  # float32 rounding over a gap of about 9
    assert _same_span(vecs[:, -8:], B, tol=1e-4) and _same_span(U[:, :8], B, tol=1e-4)
    assert la.orthonormality_error(top) < 1e-5


def test_float32_work_keeps_a_grams_true_rank():
    """A rank-3 Gram: float32 rounding leaves eigenvalues of about 1e-7·λ_max where they are 0,
    far above float64's floor rtol² = 1e-12; the raised floor drops them, so the rank stays 3."""
    M = torch.randn(200, 3, generator=_gen(6), dtype=torch.float64)
    with la.compute_on("cpu", torch.float32):
        G = la.gram(M)
        assert la.rank_floor(1e-6, 200) == pytest.approx(200 * torch.finfo(torch.float32).eps)
        B = la.top_eigvecs(G, 8)
        L = la.left_svd_basis(M, 8)
    assert B.shape == (200, 3) and L.shape == (200, 3)
    Q, _ = torch.linalg.qr(M)
    assert _same_span(B, Q, tol=1e-5) and _same_span(L, Q, tol=1e-5)
    assert float((G - M @ M.T).abs().max()) <= 1e-5 * float((M @ M.T).abs().max())


def test_compute_modes_are_checked():
    with pytest.raises(ValueError, match="float32 or float64"):
        with la.compute_on("cpu", torch.float16):
            pass
    with pytest.raises(ValueError, match="unknown linalg mode 'gpu'"):
        la.compute_in("gpu", "cpu")
    with la.compute_in("device-float32", torch.device("cpu")):
        assert la.compute_mode() == ("cpu", torch.float32)
    assert la.compute_mode() == ("cpu", torch.float64)
    with la.compute_in("device", torch.device("meta")):  # offloaded weights: the CPU
        assert la.compute_mode() == ("cpu", torch.float64)
