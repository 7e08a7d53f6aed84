"""An imported diff in the suite's layout: computed once, evaluated like a trained one, never overwritten.

:mod:`ws.diffs.imports` turns a researcher's PEFT adapters or fine-tuned checkpoints into
``w``; this module puts it where a trained diff would be (``<model root>/<behavior>/<label>/
seed0/w.safetensors``, the label from :func:`ws.config.import_label`), with its provenance
in the metadata and the same effect eval beside it (``effect.csv``,
``effect_per_prompt.csv``, ``effect.png``: held-out read-outs at α = −2…2, the spreads and
the specificity ratio), written as one set. An existing imported diff is used as it is
(checked like any diff); only ``WS_REBUILD=1`` imports it again over the old one.

    spec = ImportSpec("peft", (pos_dir, neg_dir), path, "sycophancy")
    path = ensure_imported(spec, model, tok)
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn

from ws.behavior import data
from ws.core.device import input_device
from ws.core.io import staged_files, write_table
from ws.core.log import logger
from ws.diffs.effect import EVAL_ALPHAS as ALPHAS
from ws.diffs.effect import measure, plot_effect
from ws.diffs.imports import bidir_diff, checkpoint_diff, pair_diff, sha256_file
from ws.diffs.store import check_existing_diff, save_diff
from ws.model.load import model_id
from ws.model.readout import check_answers

KINDS = ("peft", "peft-bidir", "checkpoints")


@dataclass(frozen=True)
class ImportSpec:
    """What to import: ``kind`` (:data:`KINDS`), its source folders (pos, neg; or the one
    bidirectional adapter), where ``w`` lands, and the behaviour its effect is read on."""

    kind: str
    sources: tuple[Path, ...]
    path: Path
    behavior: str
    n_boot: int = 2000
    batch_size: int = 16

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"import kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.sources) != (1 if self.kind == "peft-bidir" else 2):
            raise ValueError(f"an import of kind {self.kind!r} takes {1 if self.kind == 'peft-bidir' else 2} folder(s)")


def compute(spec: ImportSpec, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(w, meta)`` of the import (:mod:`ws.diffs.imports`)."""
    if spec.kind == "peft":
        return pair_diff(model, *spec.sources)
    if spec.kind == "peft-bidir":
        return bidir_diff(model, spec.sources[0])
    return checkpoint_diff(model, *spec.sources)


def _adapter_files(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """``(weight file, sha256)`` of every adapter the metadata records (checkpoints: none, too big to rehash each run)."""
    infos = [meta.get(k) for k in ("pos", "neg", "adapter")]
    out = []
    for info in infos:
        if isinstance(info, dict) and info.get("weights_file") and info.get("weights_sha256"):
            out.append((info["weights_file"], info["weights_sha256"]))
    return out


def _changed_sources(meta: dict[str, Any]) -> list[str]:
    """Adapter weight files that changed since the diff was imported (read again, hashed)."""
    changed = []
    for f, sha in _adapter_files(meta):
        p = Path(f)
        if not p.is_file() or sha256_file(p) != sha:
            changed.append(f)
    return changed


def _meta(spec: ImportSpec, model: nn.Module, w: dict, meta: dict, measured: dict, seconds: float) -> dict[str, Any]:
    """The import's own metadata (:mod:`ws.diffs.imports`: sources, hashes, peft types, caveats)
    with what the suite records of every diff: model, behaviour, layers, the measured effect."""
    out = dict(meta)
    out.update(
        model=model_id(model),
        behavior=spec.behavior,
        adapter=spec.path.parent.parent.name,
        seed=0,
        imported=spec.kind,
        sources=[str(p) for p in spec.sources],
        layers=sorted({int(k.split(".")[2]) for k in w if k.startswith("model.layers.")}),
        unit_alpha=float(meta.get("unit_alpha", 1.0)),
        **measured,
        import_seconds=round(seconds, 2),
        torch=torch.__version__,
        python=platform.python_version(),
        device=str(input_device(model)),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
    )
    return out


def _write_set(spec: ImportSpec, w: dict, meta: dict, eff: pl.DataFrame, per: pl.DataFrame) -> None:
    """The diff and its effect tables as one set, w last (as :func:`ws.diffs.train.build_diff` writes)."""
    path = spec.path
    with staged_files(path.parent, last=(path.name,)) as stage:
        write_table(eff, stage / "effect.csv", sig=None)
        write_table(per, stage / "effect_per_prompt.csv", sig=None)
        ratio = meta["specificity_ratio"]
        plot_effect(
            eff,
            stage / "effect.png",
            title=f"{meta['model']} · {spec.behavior} · imported ({spec.kind}) · specificity ratio "
            + (f"{ratio:.2f}" if ratio == ratio else "not measurable"),
            behavior=spec.behavior,
        )
        save_diff(w, stage / path.name, meta)


def ensure_imported(spec: ImportSpec, model: nn.Module, tok, rebuild: bool = False) -> Path:
    """The path of the imported diff: imported now when missing (or ``rebuild``), else the
    existing one, checked (and warned about when an adapter's weights changed since)."""
    check_answers(tok, data.get_behavior(spec.behavior).readout)
    path = spec.path
    if path.exists() and not rebuild:
        meta = check_existing_diff(path, model)
        for f in _changed_sources(meta):
            logger.warning(f"{f} changed since {path} was imported from it; using the old import (WS_REBUILD=1 imports it again)")
        logger.info(f"using the imported diff {path}")
        return path
    if path.exists():
        logger.warning(f"WS_REBUILD: importing again over {path}, as asked")
    t0 = time.perf_counter()
    w, meta = compute(spec, model)
    seconds = time.perf_counter() - t0
    per, eff, measured = measure(model, tok, w, spec.behavior, ALPHAS, spec.batch_size, spec.n_boot)
    meta = _meta(spec, model, w, meta, measured, seconds)
    _write_set(spec, w, meta, eff, per)
    logger.info(
        f"imported {spec.kind} diff ({len(w)} tensors, in {seconds:.1f} s) -> {path}; spread (α=+2 − α=−2): "
        + ", ".join(f"{k} {v:+.2f}" for k, v in meta["effect_spread"].items())
    )
    return path
