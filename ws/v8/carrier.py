"""The carrier's per-layer basis, kept beside v8's tables: ``v8_carrier_basis.safetensors``.

v8 says which candidate subspace carries the behaviour; this file keeps that subspace itself
(one ``[d, k]`` float64 orthonormal basis per touched layer) so that other fine-tunes can be
screened against it later (:mod:`ws.monitor`, ``make monitor``) without rerunning v7 or v8.

Which candidate (:func:`choose_carrier`), among the tested write/mixed A-hypotheses:

1. the one with the highest inside retention whose ``carries`` verdict holds (``verdict = "carries"``);
2. else the one with the highest inside retention whose ``above_chance`` verdict holds
   (``verdict = "above_chance"``);
3. else the dW ceiling (the diff's own top-k write directions, ``verdict = "dW_ceiling"``):
   no tested subspace carries or beats chance, so the file keeps where the diff itself writes.

Layout: a tensor ``layer.<l>`` ``[d, k_l]`` per touched layer with a non-empty basis; string
metadata (non-strings JSON-encoded, as the diff store does): ``format``, ``model``, ``behavior``,
``adapter``, ``seed``, ``candidate``, ``verdict``, ``retention`` (inside / outside retention
with their CIs, the null's 95th percentile, energy inside, p, q, the writers' share), ``d``,
``layers`` and ``ranks`` (one per layer). :func:`read_carrier` reads it back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors import safe_open

from ws.core.columns import CEILING_W
from ws.core.io import save_safetensors
from ws.core.linalg import f64
from ws.diffs.store import decode_meta, encode_meta

#: the file's name in the v8 folder (one of ``ws.v8.results.V8_FILES``)
CARRIER_FILE = "v8_carrier_basis.safetensors"
#: the metadata's ``format`` value (bumped if the layout changes)
CARRIER_FORMAT = "ws-carrier-basis/1"
#: the three ways the candidate is chosen, best first (:func:`choose_carrier`)
VERDICTS = ("carries", "above_chance", "dW_ceiling")
#: the retention figures copied from ``v8_causal.tsv`` into the metadata
RETENTION_COLUMNS = (
    "retention_inside",
    "retention_inside_ci_lo",
    "retention_inside_ci_hi",
    "retention_outside",
    "retention_outside_ci_lo",
    "retention_outside_ci_hi",
    "null_p95",
    "energy_frac_inside",
    "p_inside",
    "q_inside",
)


@dataclass
class CarrierBasis:
    """The carrier's bases and provenance: ``bases[l]`` is layer l's ``[d, k_l]`` float64 basis."""

    bases: dict[int, torch.Tensor]
    candidate: str
    verdict: str
    model: str
    behavior: str
    adapter: str
    seed: int
    d: int
    retention: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.bases)

    @property
    def ranks(self) -> list[int]:
        return [int(self.bases[l].shape[1]) for l in self.layers]

    def metadata(self) -> dict[str, Any]:
        return {
            "format": CARRIER_FORMAT,
            "model": self.model,
            "behavior": self.behavior,
            "adapter": self.adapter,
            "seed": int(self.seed),
            "candidate": self.candidate,
            "verdict": self.verdict,
            "retention": self.retention,
            "d": int(self.d),
            "layers": self.layers,
            "ranks": self.ranks,
            **self.extra,
        }


def _finite_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def choose_carrier(causal: pl.DataFrame) -> tuple[str, str, dict[str, Any] | None]:
    """``(candidate, verdict, its v8_causal.tsv row or None)`` (see the module's docstring):
    among the tested write/mixed A-hypotheses the highest inside retention with ``carries``,
    else with ``above_chance``, else the dW ceiling. Ties go to the name first in order."""
    hyp = causal.filter(pl.col("kind") == "A-hypothesis") if "kind" in causal.columns else causal.clear()
    for verdict in VERDICTS[:2]:
        yes = hyp.filter(pl.col(verdict).fill_null(False)).sort(["retention_inside", "subspace"], descending=[True, False])
        if yes.height:
            r = yes.row(0, named=True)
            return r["subspace"], verdict, r
    rows = causal.filter(pl.col("subspace") == CEILING_W) if "subspace" in causal.columns else causal.clear()
    return CEILING_W, VERDICTS[2], rows.row(0, named=True) if rows.height else None


def _layer_bases(per: Sequence, layers: Sequence[int]) -> tuple[dict[int, torch.Tensor], int]:
    """``({layer: [d, k] float64}, d)`` of the non-empty bases of ``per`` on ``layers``."""
    out: dict[int, torch.Tensor] = {}
    d = 0
    for l in layers:
        B = per[l] if l < len(per) else None
        if B is None or B.ndim != 2:
            continue
        d = int(B.shape[0])
        if B.shape[1] > 0:
            out[int(l)] = f64(B).detach().cpu().contiguous()
    return out, d


def carrier_basis(
    causal: pl.DataFrame,
    bases: Mapping[str, Sequence],
    layers: Sequence[int],
    *,
    model: str,
    behavior: str,
    adapter: str,
    seed: int,
    writers_share: Sequence[float] = (),
) -> CarrierBasis:
    """The chosen candidate's bases on ``layers`` (the layers the diff touched), from ``bases``
    (v7's ``res.bases``: name -> per-layer ``[d, k]``), with its retention figures."""
    name, verdict, row = choose_carrier(causal)
    out, d = _layer_bases(bases.get(name, ()), layers)
    if not out and name != CEILING_W:  # an empty basis on every touched layer: fall back to where the diff writes
        name, verdict = CEILING_W, VERDICTS[2]
        rows = causal.filter(pl.col("subspace") == CEILING_W) if "subspace" in causal.columns else causal.clear()
        row = rows.row(0, named=True) if rows.height else None
        out, d = _layer_bases(bases.get(name, ()), layers)
    if not out:
        raise ValueError(f"v8's carrier {name!r} ({verdict}) has no basis on any touched layer {list(layers)}")
    retention = {c: _finite_or_none(row.get(c)) for c in RETENTION_COLUMNS} if row else {}
    if len(writers_share) == 3:
        retention.update(
            zip(("writers_share", "writers_share_ci_lo", "writers_share_ci_hi"), map(_finite_or_none, writers_share), strict=True)
        )
    return CarrierBasis(out, name, verdict, model, behavior, adapter, int(seed), d, retention)


def save_carrier(c: CarrierBasis, path: str | Path) -> Path:
    """Write ``c`` to ``path`` atomically (``layer.<l>`` tensors, the metadata in the header)."""
    tensors = {f"layer.{l}": f64(c.bases[l]).detach().cpu().contiguous() for l in c.layers}
    return save_safetensors(tensors, path, encode_meta(c.metadata()))


def read_carrier_raw(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The file's tensors and decoded metadata, unchecked (:mod:`ws.monitor` checks them)."""
    with safe_open(str(path), framework="pt") as f:
        meta = decode_meta(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta
