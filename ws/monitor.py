"""Screen other fine-tunes against a found subspace (``make monitor``, :func:`monitor`).

v8 keeps the subspace that carries a behaviour beside its tables
(``v8_carrier_basis.safetensors``, :mod:`ws.v8.carrier`: one ``[d, k]`` orthonormal basis per
layer the diff touched). Any other weight diff of the same model (a pair of adapters, one
adapter or one checkpoint against the base, a trained diff) can be screened against it
without a forward pass: does it write into that subspace?

Per residual writer tensor (``o_proj``, ``down_proj``: their output side lives in the residual
stream, ``d`` rows) on the subspace's layers, the fraction of the diff's energy inside the
subspace, ``‖BᵀM‖²_F/‖M‖²_F``, against v7's exact random-subspace null (:mod:`ws.stats`: mean
``k/d``, the variance from ``tr A²``, the Gaussian tail, or a seeded Monte Carlo of the exact
null when the label is close to rank one); per layer v7's combined fraction (both writers at
unit norm); overall the mean of the layers' combined fractions, whose exact null is the
layers' nulls averaged (independent random subspaces per layer: means add, variances add).
``ratio`` is the fraction over the null mean (1 = a random subspace, ``d/k`` = all of it
inside). BH q-values over the tensor rows and over the layer rows.

The verdict reads one pre-specified test, the overall row: the diff **writes into the
subspace** when its p < :data:`~ws.core.caveats.MONITOR_ALPHA` AND its ratio ≥
:data:`~ws.core.caveats.MONITOR_MIN_RATIO`; otherwise it **does not**. Energy inside a
subspace is not the behaviour: the subspace was causally tested on the diff it came from
only (v8), so a diff that writes into it is a candidate to test, not a proof.

    from ws.monitor import monitor
    r = monitor(model, w, "out/sycophancy/lora/v8/v8_carrier_basis.safetensors")
    r.writes_into, r.table, r.conclusion
    r.write("out/sycophancy/lora/monitor/mine")     # monitor.tsv + monitor_conclusion.md

``python -m ws.monitor`` (``make monitor``) reads ``WS_SUBSPACE`` and the diff from the
environment (see :func:`main`).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from ws.config import BY_NAME, Config, ConfigError, from_env, import_label
from ws.core.caveats import MONITOR_ALPHA, MONITOR_MIN_RATIO, ORTH_TOL
from ws.core.caveats import SMOKE as SMOKE_CAVEAT
from ws.core.columns import WRITER_TAGS
from ws.core.io import OutputNotWritableError, RunLockedError, check_writable, hold_run_lock, staged_files, write_staged
from ws.core.linalg import blas_threads, f64, orthonormality_error
from ws.core.log import logger, setup_logging
from ws.core.markdown import fmt_num, pct
from ws.core.paths import safe_component
from ws.diffs import imports
from ws.diffs.store import load_diff, writer_deltas_by_layer
from ws.model.anatomy import WRITER_KEY_RE, writer_key
from ws.model.load import load_model, model_id
from ws.stats import PR_THRESHOLD, bh_qvalues, combined_delta, energy_frac_w, weight_traces
from ws.stats.null import LabelNull, haar_null_draws, p_empirical, p_gaussian, participation_ratio, zscore
from ws.v8.carrier import CARRIER_FILE, CARRIER_FORMAT, read_carrier_raw

__all__ = [
    "MONITOR_FILES",
    "MONITOR_COLUMNS",
    "SubspaceFileError",
    "ScreeningExistsError",
    "Subspace",
    "read_subspace",
    "MonitorResult",
    "monitor",
    "write_monitor",
    "monitor_dir",
    "main",
]

NAN = float("nan")
#: the screening's file set, written as one (the conclusion last)
MONITOR_TABLE = "monitor.tsv"
MONITOR_CONCLUSION = "monitor_conclusion.md"
MONITOR_FILES = (MONITOR_TABLE, MONITOR_CONCLUSION)
#: the table's columns: one row per writer tensor, per layer (combined) and the overall row
MONITOR_COLUMNS = (
    "row",
    "layer",
    "tensor",
    "k",
    "d",
    "norm",
    "energy_frac",
    "null_mean",
    "null_std",
    "ratio",
    "z",
    "p",
    "null_method",
    "q",
    "verdict",
)
_SCHEMA = {
    "row": pl.String,
    "layer": pl.Int64,
    "tensor": pl.String,
    "k": pl.Int64,
    "d": pl.Int64,
    "norm": pl.Float64,
    "energy_frac": pl.Float64,
    "null_mean": pl.Float64,
    "null_std": pl.Float64,
    "ratio": pl.Float64,
    "z": pl.Float64,
    "p": pl.Float64,
    "null_method": pl.String,
    "q": pl.Float64,
    "verdict": pl.String,
}
WRITES = "writes into the subspace"
DOES_NOT = "does not write into the subspace"
#: the rule in words
RULE = (
    f"overall p < {fmt_num(MONITOR_ALPHA)} and overall ratio ≥ {fmt_num(MONITOR_MIN_RATIO)} "
    "(the mean over the screened layers of v7's combined weight fraction against its exact random-subspace null)"
)
#: :func:`monitor` scores on one thread up to this residual width (see its ``num_threads``)
ONE_THREAD_MAX_D = 1024


class SubspaceFileError(ValueError):
    """A subspace file that cannot screen diffs of the model at hand (another model, other
    shapes, non-orthonormal columns, not a carrier file); the message names the file."""


class ScreeningExistsError(FileExistsError):
    """The screening's folder already holds a screening; nothing is overwritten without ``rebuild``."""


# ----------------------------------------------------------------------------- the subspace
@dataclass
class Subspace:
    """A checked subspace file: ``bases[l]`` is layer l's ``[d, k_l]`` float64 orthonormal basis."""

    path: Path
    bases: dict[int, torch.Tensor]
    meta: dict[str, Any]
    d: int

    @property
    def layers(self) -> list[int]:
        return sorted(self.bases)

    @property
    def candidate(self) -> str:
        return str(self.meta.get("candidate", "?"))

    @property
    def verdict(self) -> str:
        return str(self.meta.get("verdict", "?"))


def _shapes(model_or_shapes: nn.Module | Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """The base model's parameter shapes and its name (None for bare shapes)."""
    if isinstance(model_or_shapes, nn.Module):
        shapes = {k: tuple(p.shape) for k, p in model_or_shapes.named_parameters(remove_duplicate=False)}
        return shapes, model_id(model_or_shapes)
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(int(x) for x in v) for k, v in model_or_shapes.items()}, None


def _geometry(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    """``(n_layers, d)``: the decoder blocks (by their o_proj) and the residual width."""
    o = WRITER_TAGS[0]
    layers = [int(m.group(1)) for k in shapes if (m := WRITER_KEY_RE.match(k)) and k == writer_key(int(m.group(1)), o)]
    if not layers:
        raise ValueError(f"the model's shapes have no {writer_key(0, o).replace('.0.', '.{i}.')}: not a Llama/Qwen layout")
    return max(layers) + 1, int(shapes[writer_key(min(layers), o)][0])


def _refuse(path: Path, why: str) -> SubspaceFileError:
    return SubspaceFileError(f"the subspace file {path} {why}")


def read_subspace(
    path: str | Path, model_or_shapes: nn.Module | Mapping[str, Any] | None = None, *, model_name: str | None = None
) -> Subspace:
    """Read a subspace file (:data:`ws.v8.carrier.CARRIER_FILE`) and check it against the model.

    Checked: its model (when known), the residual width and layer count, orthonormal columns
    (``max|BᵀB − I| ≤`` :data:`~ws.core.caveats.ORTH_TOL`).

    Args:
        path: the file.
        model_or_shapes: the base model, or its parameter shapes ``{name: shape}``; None reads
            the file without checking it against a model.
        model_name: the model's name when only shapes are given.

    Returns:
        A :class:`Subspace`: the per-layer bases and the file's provenance.

    Raises:
        SubspaceFileError: a refusal, naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise _refuse(path, f"does not exist: give a v8 run's {CARRIER_FILE}")
    try:
        tensors, meta = read_carrier_raw(path)
    except Exception as e:  # noqa: BLE001 - any reader error means an unreadable file
        raise _refuse(path, f"could not be read ({type(e).__name__}: {e}): is it a v8 run's {CARRIER_FILE}?") from e
    if meta.get("format") != CARRIER_FORMAT:
        raise _refuse(
            path, f"is not a carrier basis file (its metadata has no format {CARRIER_FORMAT!r}): give a v8 run's {CARRIER_FILE}"
        )
    shapes, name = _shapes(model_or_shapes) if model_or_shapes is not None else ({}, None)
    name = model_name or name
    if name is not None and meta.get("model") != name:
        raise _refuse(
            path,
            f"was made for model {meta.get('model')!r}, not for {name!r}: screen diffs of {meta.get('model')!r} with it, "
            f"or run v8 on {name!r} for a subspace of its own",
        )
    bases: dict[int, torch.Tensor] = {}
    for key, B in tensors.items():
        m = re.fullmatch(r"layer\.(\d+)", key)
        if m is None or B.ndim != 2:
            raise _refuse(path, f"has a tensor {key!r} {tuple(B.shape)} that is no layer's [d, k] basis")
        bases[int(m.group(1))] = f64(B)
    if not bases:
        raise _refuse(path, "holds no basis")
    widths = {int(B.shape[0]) for B in bases.values()}
    d_file = int(meta.get("d", -1))
    if widths != {d_file} or sorted(bases) != list(meta.get("layers", [])):
        raise _refuse(
            path,
            f"is inconsistent: its metadata says d = {d_file}, layers {meta.get('layers')}, its bases have "
            f"d = {sorted(widths)} on layers {sorted(bases)}",
        )
    if shapes:
        n_layers, d = _geometry(shapes)
        wrong = [f"layer {l} is not in the model ({n_layers} layers)" for l in bases if l >= n_layers]
        if d_file != d:
            wrong.insert(0, f"its bases have d = {d_file} rows, the model's residual stream d = {d}")
        if wrong:
            raise _refuse(path, f"does not fit the model's shapes: {'; '.join(wrong)}")
    for l, B in sorted(bases.items()):
        if B.shape[1] == 0 or B.shape[1] > B.shape[0]:
            raise _refuse(path, f"at layer {l}: a basis of {B.shape[1]} columns in d = {B.shape[0]}")
        err = orthonormality_error(B)
        if not err <= ORTH_TOL:
            raise _refuse(
                path,
                f"at layer {l}: its columns are not orthonormal: max|BᵀB − I| = {err:.3g} (at most {ORTH_TOL:g}); "
                f"was it edited? Write it again from the v8 run",
            )
    return Subspace(path, bases, meta, d_file)


# ----------------------------------------------------------------------------- the scores
def _label(M: torch.Tensor, d: int, mc_draws: int, mc_seed: int) -> LabelNull:
    """v7's null of the weight label ``A = MMᵀ/‖M‖²_F`` (``tr A²`` from the smaller Gram)."""
    _, tr_a2 = weight_traces(M)

    def eigs() -> np.ndarray:
        M64 = f64(M)
        G = M64 @ M64.T if M64.shape[0] <= M64.shape[1] else M64.T @ M64
        return torch.linalg.eigvalsh(G).numpy() / float(torch.trace(G))

    return LabelNull(d, tr_a2, eigs, PR_THRESHOLD, mc_draws, mc_seed)


def _row(kind: str, layer: int | None, tensor: str, B: torch.Tensor, M: torch.Tensor, norm: float, lab: LabelNull) -> dict:
    d, k = int(B.shape[0]), int(B.shape[1])
    frac = energy_frac_w(B, M)
    _conc, z, p, method = lab.score(frac, k)
    mean, std = lab.null(k)
    return dict(
        row=kind, layer=layer, tensor=tensor, k=k, d=d, norm=norm, energy_frac=frac, null_mean=mean, null_std=std,
        ratio=frac / mean if mean > 0 else NAN, z=z, p=p, null_method=method, q=NAN, verdict=None,
    )  # fmt: skip


def _overall(layer_rows: list[dict], labs: list[LabelNull], mc_draws: int, mc_seed: int) -> dict:
    """The mean of the layers' combined fractions against its exact null: independent Haar
    subspaces per layer, so the mean of the layers' null means and ``√(Σ std²)/L``; the p from
    a Monte Carlo of the same null (each layer's exact draws) when the averaged label is close
    to rank one, else the Gaussian tail (as v7)."""
    L = len(layer_rows)
    frac = float(np.mean([r["energy_frac"] for r in layer_rows]))
    mean = float(np.mean([r["null_mean"] for r in layer_rows]))
    std = math.sqrt(sum(r["null_std"] ** 2 for r in layer_rows)) / L
    z = zscore(frac, mean, std)
    pr = participation_ratio(1.0, sum(lab.tr_a2 for lab in labs) / L**2)
    if math.isfinite(pr) and pr < PR_THRESHOLD and all(r["k"] < r["d"] for r in layer_rows):
        draws = (
            sum(
                haar_null_draws(lab.eigs(), r["d"], r["k"], mc_draws, mc_seed + 1 + r["layer"])
                for r, lab in zip(layer_rows, labs, strict=True)
            )
            / L
        )
        p, method = p_empirical(frac, draws), "monte_carlo"
    else:
        p, method = p_gaussian(z), "gaussian"
    ok = math.isfinite(p) and p < MONITOR_ALPHA and mean > 0 and frac / mean >= MONITOR_MIN_RATIO
    return dict(
        row="overall", layer=None, tensor="combined", k=None, d=layer_rows[0]["d"],
        norm=math.sqrt(sum(r["norm"] ** 2 for r in layer_rows)), energy_frac=frac, null_mean=mean, null_std=std,
        ratio=frac / mean if mean > 0 else NAN, z=z, p=p, null_method=method, q=p, verdict=WRITES if ok else DOES_NOT,
    )  # fmt: skip


@dataclass
class MonitorResult:
    """One diff screened against one subspace (:func:`monitor`)."""

    table: pl.DataFrame  # MONITOR_COLUMNS
    writes_into: bool
    subspace: Subspace
    label: str
    layers: list[int]  # the screened layers (the subspace's layers where the diff touches a writer)
    unscreened_writer_layers: list[int]  # layers where the diff touches a writer but the subspace has no basis
    unscreened_share: float  # their share of the writers' energy
    other_tensors: int  # the diff's tensors that are no residual writer (not screened)
    caveats: list[str] = field(default_factory=list)

    @property
    def overall(self) -> dict | None:
        rows = self.table.filter(pl.col("row") == "overall")
        return rows.row(0, named=True) if rows.height else None

    @property
    def conclusion(self) -> str:
        return conclusion_md(self)

    def write(self, folder: str | Path, rebuild: bool = False) -> list[Path]:
        return write_monitor(self, folder, rebuild)


def monitor(
    model_or_shapes: nn.Module | Mapping[str, Any],
    diff_w: Mapping[str, torch.Tensor],
    subspace_file: str | Path | Subspace,
    *,
    label: str = "the diff",
    model_name: str | None = None,
    caveats: list[str] | None = None,
    mc_draws: int = 2000,
    mc_seed: int = 0,
    num_threads: int | None = 0,
) -> MonitorResult:
    """Screen a weight diff against a subspace: does the diff write into it?

    Only the residual writers (``o_proj``, ``down_proj``) on the subspace's layers are scored;
    the rest is counted in the result.

    Args:
        model_or_shapes: the base model, or its parameter shapes ``{name: shape}``.
        diff_w: the diff, keyed by the base model's parameter names.
        subspace_file: a subspace file (v8's ``v8_carrier_basis.safetensors``) or a read
            :class:`Subspace` (checked by :func:`read_subspace`).
        label: the diff's name in the conclusion.
        model_name: checks the file's model when only shapes are given.
        caveats: extra caveat lines for the conclusion.
        mc_draws: Monte Carlo draws of a low-rank label's null.
        mc_seed: their seed.
        num_threads: torch's and BLAS's threads while scoring (None: as they are; 0, the
            default: one for a residual width up to :data:`ONE_THREAD_MAX_D`, where the many
            small products gain nothing from more, else as they are).

    Returns:
        A :class:`MonitorResult`: the table, the verdict and the conclusion.

    Raises:
        SubspaceFileError: the file does not fit the model (named).
    """
    shapes, name = _shapes(model_or_shapes)
    if num_threads == 0:
        num_threads = 1 if _geometry(shapes)[1] <= ONE_THREAD_MAX_D else None
    with blas_threads(num_threads):
        return _monitor(shapes, name, diff_w, subspace_file, label, model_name, caveats, mc_draws, mc_seed)


def _monitor(shapes, name, diff_w, subspace_file, label, model_name, caveats, mc_draws, mc_seed) -> MonitorResult:
    sub = (
        subspace_file
        if isinstance(subspace_file, Subspace)
        else read_subspace(subspace_file, shapes, model_name=model_name or name)
    )
    n_layers, _d = _geometry(shapes)
    wrong = [
        f"{k}: {'not a parameter of the model' if k not in shapes else f'{tuple(t.shape)} (the model has {shapes[k]})'}"
        for k, t in diff_w.items()
        if k not in shapes or tuple(t.shape) != shapes[k]
    ]
    if wrong:
        raise ValueError(
            f"the weight diff {label} does not fit the model {name or '(shapes)'} ({len(wrong)} mismatch(es)):\n  "
            + "\n  ".join(wrong[:12])
        )
    deltas = [
        None if dl is None else {t: m.detach().cpu() for t, m in dl.items()}
        for dl in writer_deltas_by_layer(diff_w, n_layers, partial=True)
    ]
    other = sum(1 for k in diff_w if not WRITER_KEY_RE.match(k))
    touched = [l for l, dl in enumerate(deltas) if dl is not None and any(float(f64(m).norm()) > 0 for m in dl.values())]
    screened = [l for l in touched if l in sub.bases]
    energy = {l: sum(float((f64(m) ** 2).sum()) for m in deltas[l].values()) for l in touched}
    out_layers = [l for l in touched if l not in sub.bases]
    total = sum(energy.values())
    unscreened = sum(energy[l] for l in out_layers) / total if total > 0 else NAN
    tensor_rows, layer_rows, labs = [], [], []
    for l in screened:
        B = sub.bases[l]
        parts = {t: m for t, m in deltas[l].items() if float(f64(m).norm()) > 0}
        for t, M in parts.items():
            tensor_rows.append(_row("tensor", l, t, B, M, float(f64(M).norm()), _label(M, sub.d, mc_draws, mc_seed)))
        Mc = combined_delta(*(parts.get(t) for t in WRITER_TAGS))
        lab = _label(Mc, sub.d, mc_draws, mc_seed)
        labs.append(lab)
        layer_rows.append(_row("layer", l, "combined", B, Mc, math.sqrt(energy[l]), lab))
    for rows in (tensor_rows, layer_rows):
        for r, q in zip(rows, bh_qvalues([r["p"] for r in rows]), strict=True):
            r["q"] = float(q)
    rows = tensor_rows + layer_rows + ([_overall(layer_rows, labs, mc_draws, mc_seed)] if layer_rows else [])
    table = pl.DataFrame([{c: r[c] for c in MONITOR_COLUMNS} for r in rows], schema=_SCHEMA, orient="row")
    res = MonitorResult(
        table=table,
        writes_into=bool(rows and rows[-1]["verdict"] == WRITES),
        subspace=sub,
        label=label,
        layers=screened,
        unscreened_writer_layers=out_layers,
        unscreened_share=unscreened,
        other_tensors=other,
        caveats=list(caveats or []),
    )
    logger.info(f"screened {label} against {sub.candidate} ({sub.path}): {res.overall['verdict'] if res.overall else DOES_NOT}")
    return res


# ----------------------------------------------------------------------------- the conclusion
def _layers(ls: list[int]) -> str:
    return ", ".join(map(str, ls)) if ls else "none"


def conclusion_md(r: MonitorResult) -> str:
    """The screening's one-paragraph conclusion (with its title and caveats)."""
    sub, m = r.subspace, r.subspace.meta
    run = f"{m.get('behavior')}/{m.get('adapter')} seed {m.get('seed')} on `{m.get('model')}`"
    src = f"v8's `{sub.candidate}` ({sub.verdict}) of {run}"
    title = f"# Does {r.label} write into the subspace of {m.get('behavior')}?"
    o = r.overall
    if o is None:
        text = (
            f"**{r.label} {DOES_NOT}**: it touches no residual writer (o_proj, down_proj) on the subspace's layers "
            f"({_layers(sub.layers)}), so nothing could be screened against {src}."
        )
    else:
        tens = r.table.filter(pl.col("row") == "tensor")
        n_sig = int((tens["q"].fill_nan(None).fill_null(1.0) <= MONITOR_ALPHA).sum())
        ranks = sorted({int(sub.bases[l].shape[1]) for l in r.layers})
        text = (
            f"**{r.label} {o['verdict']}**. Over the {len(r.layers)} screened layer(s) ({_layers(r.layers)}), "
            f"{pct(o['energy_frac'])} of its residual writers' energy (v7's combined fraction, o_proj and down_proj at "
            f"unit norm, mean over the layers) lies inside the rank-{'/'.join(map(str, ranks))} subspace {src}: "
            f"{fmt_num(o['ratio'])}× what a random subspace of the same rank holds (null mean {pct(o['null_mean'])}, "
            f"z = {fmt_num(o['z'])}, p = {fmt_num(o['p'])}, {o['null_method']} null; all of it inside would be "
            f"{fmt_num(sub.d / ranks[0]) if len(ranks) == 1 else 'd/k'}×). Rule: {RULE}. Per tensor, {n_sig} of "
            f"{tens.height} writer tensor(s) have q ≤ {fmt_num(MONITOR_ALPHA)} (BH over the tensors, `monitor.tsv`)."
        )
    lines = [title, "", text, ""]
    cav = list(r.caveats)
    if r.unscreened_writer_layers:
        cav.append(
            f"the diff also writes on layer(s) {_layers(r.unscreened_writer_layers)}, where the subspace has no basis "
            f"({pct(r.unscreened_share)} of its writers' energy): not screened"
        )
    if r.other_tensors:
        cav.append(f"{r.other_tensors} tensor(s) of the diff are no residual writer (q, k, v, gate, up, …): not screened")
    if sub.verdict == "dW_ceiling":
        cav.append(
            "the file holds the dW ceiling (the source diff's own top write directions): v8 found no tested subspace that "
            "carries the behaviour or beats chance, so this screens where that diff wrote, not a causal carrier"
        )
    elif sub.verdict == "above_chance":
        cav.append("the subspace contributes above chance to the source diff's effect but does not carry most of it (v8)")
    cav.append(
        "energy inside the subspace is where the diff writes, not what it does: v8's causal test ran on the source diff "
        "only, so a diff that writes into the subspace is a candidate to test (v8 on that diff), not a proof"
    )
    lines += ["## Caveats", "", *[f"- {c}" for c in cav], ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the file set
def check_free(folder: str | Path, rebuild: bool = False) -> None:
    """:class:`ScreeningExistsError` when ``folder`` already holds a screening and not ``rebuild``."""
    folder = Path(folder)
    held = [n for n in MONITOR_FILES if (folder / n).exists()]
    if held and not rebuild:
        raise ScreeningExistsError(
            f"{folder} already holds a screening ({', '.join(held)}): nothing was written. Set WS_REBUILD=1 "
            f"(rebuild=True) to replace it, or give another folder"
        )


def write_monitor(r: MonitorResult, folder: str | Path, rebuild: bool = False) -> list[Path]:
    """Write ``monitor.tsv`` and ``monitor_conclusion.md`` into ``folder`` as one set (staged,
    the markdown last). A folder that already holds a screening is refused
    (:class:`ScreeningExistsError`) unless ``rebuild``."""
    folder = Path(folder)
    check_free(folder, rebuild)
    with staged_files(folder, last=(MONITOR_CONCLUSION,)) as stage:
        written = write_staged(stage, folder, {MONITOR_TABLE: r.table}, {MONITOR_CONCLUSION: r.conclusion})
    logger.info(f"wrote {len(written)} files to {folder}")
    return written


def monitor_dir(cfg: Config, sub: Subspace, label: str) -> Path:
    """``<model root>/<behaviour>/<adapter>/monitor/<diff label>``: beside the v8 folder of the
    run whose subspace it screens against (its behaviour and adapter from the file)."""
    b = safe_component(str(sub.meta.get("behavior", "unknown")), "the subspace's behaviour")
    a = safe_component(str(sub.meta.get("adapter", "unknown")), "the subspace's adapter")
    return cfg.model_root / b / a / "monitor" / safe_component(label, "the screened diff's label")


# ----------------------------------------------------------------------------- make monitor
#: the variables that name the diff to screen (read here, not by :func:`ws.config.from_env`,
#: which takes them as a pair to import)
IMPORT_VARS = ("WS_POS_ADAPTER", "WS_NEG_ADAPTER", "WS_BIDIR_ADAPTER", "WS_POS_MODEL", "WS_NEG_MODEL")


def config_from_env(env: Mapping[str, str] | None = None) -> tuple[Config, dict[str, Path]]:
    """The run's configuration and the import folders given (``WS_POS_ADAPTER`` or
    ``WS_POS_MODEL`` may stand alone here); ``WS_SUBSPACE`` is required."""
    env = dict(os.environ if env is None else env)
    given = {n: env.pop(n) for n in IMPORT_VARS if n in env}
    cfg = from_env(env)
    folders = {n: BY_NAME[n].parse(n, raw) for n, raw in given.items()}
    if cfg.subspace is None:
        raise ConfigError(
            "WS_SUBSPACE is not set: give the subspace file to screen against (a v8 run's v8_carrier_basis.safetensors)"
        )
    for neg, pos in (("WS_NEG_ADAPTER", "WS_POS_ADAPTER"), ("WS_NEG_MODEL", "WS_POS_MODEL")):
        if neg in folders and pos not in folders:
            raise ConfigError(f"{neg} is set but {pos} is not: screen {pos} alone (its delta from the base) or the pair")
    kinds = [n for n in ("WS_POS_ADAPTER", "WS_BIDIR_ADAPTER", "WS_POS_MODEL") if n in folders]
    if len(kinds) > 1:
        raise ConfigError(f"{' and '.join(kinds)} are both set: screen one diff per run")
    return cfg, folders


def load_screened(cfg: Config, folders: Mapping[str, Path], model: nn.Module) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """``(w, label, caveats)``: the diff the variables name (see :func:`main`)."""
    f = folders
    if "WS_POS_ADAPTER" in f and "WS_NEG_ADAPTER" in f:
        w, meta = imports.pair_diff(model, f["WS_POS_ADAPTER"], f["WS_NEG_ADAPTER"])
        return w, import_label("peft", (f["WS_POS_ADAPTER"], f["WS_NEG_ADAPTER"])), meta.get("caveats", [])
    if "WS_POS_ADAPTER" in f:
        w, info = imports.adapter_delta(model, f["WS_POS_ADAPTER"])
        return w, import_label("peft-single", (f["WS_POS_ADAPTER"],)), info.get("warnings", [])
    if "WS_BIDIR_ADAPTER" in f:
        w, meta = imports.bidir_diff(model, f["WS_BIDIR_ADAPTER"])
        return w, import_label("peft-bidir", (f["WS_BIDIR_ADAPTER"],)), meta.get("caveats", [])
    if "WS_POS_MODEL" in f and "WS_NEG_MODEL" in f:
        w, meta = imports.checkpoint_diff(model, f["WS_POS_MODEL"], f["WS_NEG_MODEL"])
        return w, import_label("checkpoints", (f["WS_POS_MODEL"], f["WS_NEG_MODEL"])), meta.get("caveats", [])
    if "WS_POS_MODEL" in f:
        w, meta = imports.checkpoint_delta(model, f["WS_POS_MODEL"])
        return w, import_label("checkpoint", (f["WS_POS_MODEL"],)), meta.get("caveats", [])
    path = cfg.diff_path(cfg.seed)
    w, _meta = load_diff(path, model)
    return w, f"{cfg.adapter}-seed{cfg.seed}", []


def run(env: Mapping[str, str] | None = None) -> tuple[MonitorResult, list[Path]]:
    """What ``make monitor`` does: read the configuration, load the model and the diff,
    screen it, write the set into :func:`monitor_dir`."""
    cfg, folders = config_from_env(env)
    check_writable(cfg.out_root, "WS_OUT")
    check_writable(cfg.logs_root, "WS_LOGS")
    setup_logging("monitor", cfg.logs_root)
    hold_run_lock(cfg.out_root, "monitor")  # before any work, as every run of the suite
    model, _tok = load_model(cfg.model, **cfg.model_kwargs())
    sub = read_subspace(cfg.subspace, model)
    w, label, caveats = load_screened(cfg, folders, model)
    if not folders and cfg.behavior != sub.meta.get("behavior"):
        label = f"{cfg.behavior}-{label}"  # another behaviour's trained diff: never the source's own folder name
    folder = monitor_dir(cfg, sub, label)
    check_free(folder, cfg.rebuild)
    if cfg.smoke:
        caveats = [*caveats, SMOKE_CAVEAT]
    r = monitor(model, w, sub, label=f"`{label}`", caveats=caveats)
    return r, write_monitor(r, folder, rebuild=cfg.rebuild)


def main(argv: list[str] | None = None) -> int:
    """``python -m ws.monitor``: ``WS_SUBSPACE`` and the diff to screen from the environment:
    ``WS_POS_ADAPTER`` + ``WS_NEG_ADAPTER`` (``Δ⁺ − Δ⁻``), ``WS_POS_ADAPTER`` alone (that
    adapter's ``Δ``), ``WS_BIDIR_ADAPTER`` (``2Δ``), ``WS_POS_MODEL`` + ``WS_NEG_MODEL``
    (``θ⁺ − θ⁻``), ``WS_POS_MODEL`` alone (``θ − θ₀``), else the run's trained diff
    (``WS_ADAPTER``, ``WS_SEED``). Prints the conclusion; a refusal prints one line, exit 2."""
    try:
        r, written = run()
    except (
        ConfigError,
        SubspaceFileError,
        ScreeningExistsError,
        imports.ImportRefused,
        RunLockedError,
        OutputNotWritableError,
        FileNotFoundError,
        ValueError,
    ) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(r.conclusion)
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
