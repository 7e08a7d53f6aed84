"""rotation_contrast: a planted rotation with a planted shift between the persona sets.

Own-mean centring (the usual Procrustes analysis) recovers the plane of the rotation whatever
the shift; centring both sets on their joint mean lets a shift inside that plane distort it."""

from __future__ import annotations

import math

import torch

from ws.bases.activations import procrustes_skew_basis
from ws.core import linalg

D, N_PROBES = 12, 60


def _planted(shift: float, along: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """persona− rows ``N`` and persona+ rows ``P = N·R + shift·e_along``, ``R`` a 40° rotation in
    the (e_0, e_1) plane; returns ``P, N`` and that plane."""
    g = torch.Generator().manual_seed(5)
    scales = torch.linspace(3.0, 0.5, D, dtype=torch.float64)
    N = torch.randn(N_PROBES, D, generator=g, dtype=torch.float64) * scales
    a = math.radians(40.0)
    R = torch.eye(D, dtype=torch.float64)
    R[0, 0], R[0, 1], R[1, 0], R[1, 1] = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
    e = torch.eye(D, dtype=torch.float64)
    return N @ R + shift * e[along], N, e[:, :2]


def _captured(B: torch.Tensor, S: torch.Tensor) -> float:
    """Fraction of span(S) inside span(B) (1: contained)."""
    return float(((B.T @ S) ** 2).sum()) / S.shape[1]


def test_own_centring_recovers_the_plane_of_rotation_whatever_the_shift():
    for shift, along in ((0.0, 5), (20.0, 5), (20.0, 0)):
        P, N, plane = _planted(shift, along)
        B = procrustes_skew_basis(P, N, k=2)
        assert B.shape == (D, 2)
        assert _captured(B, plane) > 1 - 1e-9, (shift, along)
        linalg.check_orthonormal(B, "rotation_contrast", 0)
        # the rotation is the only one there is: asking for more gives no more directions
        assert procrustes_skew_basis(P, N, k=8).shape[1] == 2


def test_joint_centring_lets_a_shift_in_the_plane_distort_the_rotation():
    # a shift inside the plane of rotation, large against the spread (scale 3 there)
    P, N, plane = _planted(20.0, along=0)
    assert _captured(procrustes_skew_basis(P, N, k=2, centre="joint"), plane) < 0.6
    # without a planted shift the two nearly agree (the sample means still differ a little:
    # mean(P) = mean(N)·R)
    P0, N0, _ = _planted(0.0)
    assert _captured(procrustes_skew_basis(P0, N0, k=2, centre="joint"), plane) > 0.999
