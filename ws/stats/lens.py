"""The base-W S-space lens: does a diff re-weight W's own singular directions, or write new ones?

For every tensor the diff touches, with ``W = U₀ S₀ V₀ᵀ`` the base weight's FULL float64 SVD
(``U₀`` ``d_out × d_out``, ``V₀`` ``d_in × d_in``, singular values descending):

    dS = U₀ᵀ · dW · V₀                       (‖dS‖_F = ‖dW‖_F: both bases are orthogonal)

and the shares of ``‖dW‖²_F``:

- ``frac_diag``: on the diagonal of ``dS`` (a pure re-weighting of W's own singular pairs);
- ``frac_top_block``: in the top-``r`` block ``dS[:r, :r]`` (inside the top-r S-space);
- ``frac_top_rows`` / ``frac_top_cols``: on the top-``r`` output (left) / input (right)
  singular directions.

Known answers (``tests/test_lens.py``): an ``sspace_gain`` diff is 100 % diagonal and 100 %
in the top block; a rotation-invariant random diff has expected shares ``min(d_out, d_in)
/ (d_out·d_in)`` (diagonal), ``r² / (d_out·d_in)`` (block), ``r / d_out`` and ``r / d_in``
(rows, columns): the ``null_*`` columns beside each share.

The shares come from W's reduced SVD (cached per weight for the process, up to
:data:`SVD_CACHE_BYTES`; past it computed per use and freed): the rows of
``dS`` past ``min(d_out, d_in)`` span the complement of W's column space and are in none of
the shares. The profile (:func:`lens_profile`) is the cumulative share on the top-``i`` output singular
directions, per tensor type (mean over layers), against ``i / d_out`` for a random diff:
:func:`plot_lens` draws it.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from ws.core import linalg  # noqa: E402

#: the rank r of the shares' top block (the S-space family's default rank)
LENS_RANK = 16
LENS_COLUMNS = (
    "layer",
    "tensor",
    "d_out",
    "d_in",
    "norm",
    "frac_diag",
    "null_diag",
    "frac_top_block",
    "null_top_block",
    "frac_top_rows",
    "null_top_rows",
    "frac_top_cols",
    "null_top_cols",
)


_SCHEMA = {c: (pl.String if c == "tensor" else pl.Int64 if c in ("layer", "d_out", "d_in") else pl.Float64) for c in LENS_COLUMNS}


#: the most memory (bytes) the cached SVDs below may hold: a weight past it has its SVD computed,
#: used and freed (at 135M every touched weight fits, about 0.6 GiB; at 0.6B and up the cache
#: stops growing here instead of holding every layer's float64 factors, 2.6 GiB at 0.6B)
SVD_CACHE_BYTES = 1 << 30

#: the base weights' reduced SVDs, computed once per process while they fit in
#: :data:`SVD_CACHE_BYTES`: ``{id(W): (weakref to W, (version, linalg.compute_mode()), U, Vh)}``
_SVD: dict[int, tuple] = {}


def _cached_bytes() -> int:
    """Bytes the cache holds, after dropping the entries of weights that are gone."""
    for key in [k for k, v in _SVD.items() if v[0]() is None]:
        del _SVD[key]
    return sum(v[2].nbytes + v[3].nbytes for v in _SVD.values())


def clear_svd_cache() -> int:
    """Drop every cached SVD (a process that has finished the lens and goes on to other work:
    the bench's v8 stages, which the main job runs in a kernel of their own).

    Returns:
        The bytes the cache held.
    """
    held = _cached_bytes()
    _SVD.clear()
    return held


def svd_bytes(shape: Sequence[int]) -> int:
    """Bytes of the float64 ``U`` and ``Vh`` of a ``[d_out, d_in]`` weight's reduced SVD."""
    d_out, d_in = shape
    return 8 * min(d_out, d_in) * (d_out + d_in)


def base_svd(W: Tensor, name: str = "", cache: bool = True) -> tuple[Tensor, Tensor]:
    """``(U, Vh)`` of W's reduced float64 SVD (``[d_out, m]``, ``[m, d_in]``, m = min), cached
    per weight tensor while it lives and is unchanged, up to :data:`SVD_CACHE_BYTES` in all
    (``cache=False``: computed, used and freed; a hit is still used)."""
    hit, mode = _SVD.get(id(W)), linalg.compute_mode()
    if hit is not None and hit[0]() is W and hit[1] == (W._version, mode):
        return hit[2], hit[3]
    U, _, Vh = linalg.svd(W)  # float64 on the CPU, or where a ``linalg.compute_on`` block says
    if cache and _cached_bytes() + U.nbytes + Vh.nbytes <= SVD_CACHE_BYTES:
        _SVD[id(W)] = (weakref.ref(W), (W._version, mode), U, Vh)
    return U, Vh


def shares(W: Tensor, dW: Tensor, r: int = LENS_RANK, name: str = "", cache: bool = True) -> tuple[dict[str, float], np.ndarray]:
    """The shares of ``‖dW‖²`` (see the module docstring) with their random-diff expectations,
    and the output-side profile ``[m]``: the share on each of W's left singular directions.

    From the reduced SVD: ``A = U₀ᵀ dW`` holds the row energies exactly (the rows of ``dS``
    beyond ``m`` span the complement of W's column space and are never one of the shares),
    ``A V₀`` gives the diagonal and the top block, ``dW V₀[:, :r]`` the top columns."""
    U, Vh = base_svd(W, name, cache)
    D = dW.detach().to("cpu", torch.float64)
    d_out, d_in = D.shape
    tot = float((D**2).sum())
    if tot == 0:
        raise ValueError(f"the diff of {name or 'a tensor'} is zero: no shares to take")
    r = min(r, U.shape[1])
    A = U.T @ D  # [m, d_in]
    rows = (A**2).sum(dim=1)  # [m]
    core = A @ Vh[:r].T  # [m, r]: dS[:, :r] within W's column space
    diag = float(((A * Vh).sum(dim=1) ** 2).sum())  # diag(A V₀) without the [m, m] product
    out = {
        "frac_diag": diag / tot,
        "null_diag": min(d_out, d_in) / (d_out * d_in),
        "frac_top_block": float((core[:r] ** 2).sum()) / tot,
        "null_top_block": r * r / (d_out * d_in),
        "frac_top_rows": float(rows[:r].sum()) / tot,
        "null_top_rows": r / d_out,
        "frac_top_cols": float(((D @ Vh[:r].T) ** 2).sum()) / tot,
        "null_top_cols": r / d_in,
    }
    return out, (rows / tot).numpy()


def _where(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return int(parts[parts.index("layers") + 1]), parts[-2]


def sspace_lens(model: nn.Module, w: Mapping[str, Tensor], r: int = LENS_RANK) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """``(table, rows)``: one row per touched 2-D weight of a decoder block (:data:`LENS_COLUMNS`),
    and per tensor ``key`` the output-side energy profile ``[min(d_out, d_in)]`` (share of ‖dW‖²
    on each left singular direction of W, descending singular value).

    The base weights' SVDs are cached for a later call (the next seed) only when every touched
    weight's fit in :data:`SVD_CACHE_BYTES` (at 135M: about 0.6 GiB); past that a partial cache
    would save a fraction of the SVDs at the cost of holding it through the next candidate build,
    so none is kept (at 8B one block's factors are 2.4 GiB)."""
    params = dict(model.named_parameters())
    keys = [k for k in w if ".layers." in k and w[k].ndim == 2 and k in params]
    cache = sum(svd_bytes(w[k].shape) for k in keys) <= SVD_CACHE_BYTES
    out, prof = [], {}
    for key in sorted(keys, key=_where):
        layer, tensor = _where(key)
        sh, prof[key] = shares(params[key], w[key], r, key, cache)
        d_out, d_in = w[key].shape
        norm = float(w[key].detach().double().norm())
        out.append({"layer": layer, "tensor": tensor, "d_out": d_out, "d_in": d_in, "norm": norm, **sh})
    return pl.DataFrame(out, schema=_SCHEMA), prof


def lens_profile(rows: Mapping[str, np.ndarray], table: pl.DataFrame) -> pl.DataFrame:
    """Per tensor type and output singular index ``i`` (1-based): the cumulative share of ‖dW‖²
    on the top-``i`` left singular directions, mean over layers (``cum_share``), and a random
    diff's ``i / d_out`` (``null``). ``table``: :func:`sspace_lens`'s, for each type's ``d_out``."""
    d_outs = dict(zip(table["tensor"].to_list(), table["d_out"].to_list(), strict=True))
    by_type: dict[str, list[np.ndarray]] = {}
    for key, p in rows.items():
        by_type.setdefault(_where(key)[1], []).append(np.cumsum(p))
    frames = []
    for t, cs in by_type.items():
        m = np.mean(np.stack(cs), axis=0)
        i = np.arange(1, m.size + 1)
        frames.append(pl.DataFrame({"tensor": [t] * m.size, "index": i, "cum_share": m, "null": i / d_outs[t]}))
    empty = {"tensor": pl.String, "index": pl.Int64, "cum_share": pl.Float64, "null": pl.Float64}
    return pl.concat(frames) if frames else pl.DataFrame(schema=empty)


def plot_lens(profile: pl.DataFrame, path, title: str = "") -> None:
    """One panel per tensor type: the cumulative share of ‖dW‖² on W's top-i left singular
    directions (mean over layers) against i / d_out, with a random diff's diagonal."""
    types = list(dict.fromkeys(profile["tensor"].to_list()))
    if not types:
        raise ValueError("the lens profile is empty: the diff touches no decoder-block weight")
    n = len(types)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows), squeeze=False)
    for ax, t in zip(axes.flat, types, strict=False):
        p = profile.filter(pl.col("tensor") == t)
        x = p["null"].to_numpy()
        ax.plot(x, p["cum_share"].to_numpy(), color="tab:blue", label="this diff")
        ax.plot(x, x, color="grey", ls="--", lw=1, label="random diff")
        ax.set_xscale("log")
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("top-i of W's left singular directions (i / d_out)", fontsize=7)
        ax.set_ylabel("share of ‖dW‖²", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title or "Where the diff sits in the base weights' own singular directions (mean over layers)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


__all__ = ["LENS_RANK", "LENS_COLUMNS", "SVD_CACHE_BYTES", "base_svd", "shares", "sspace_lens", "lens_profile", "plot_lens"]
