"""Export a weight diff for use outside the suite: a PEFT LoRA folder, or a merged checkpoint.

:func:`export_diff` writes ``α·Δ`` (``Δ`` = the diff ``w``, optionally restricted to a subspace of the
residual stream) in one of two forms:

- ``fmt="peft"``: a LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) that
  ``peft.PeftModel.from_pretrained(base, folder)`` loads on the base model. Each touched tensor is stored as
  the EXACT low-rank factors of ``α·Δ``: a thin SVD in float64, ``B = U_r·√S_r``, ``A = √S_r·V_rᵀ``, keeping
  only the numerically nonzero singular values (``s > rtol·s_max`` with ``rtol = max(out, in)·ε_float32``, the
  float32 matrix-rank rule: the diff is float32 data). Per-tensor ranks go in ``rank_pattern`` with
  ``alpha_pattern`` equal to them, so peft's scale ``lora_alpha / r`` is 1 and peft's merge is ``B·A``. A
  difference of two rank-r LoRAs (``w = Δ⁺ − Δ⁻``) comes out at rank ≤ 2r; a full fine-tune's diff at full
  rank (exact, but as large as the tensor). A tensor whose ``α·Δ`` is zero is skipped. Only linear layers'
  weights can be a LoRA; any other key is refused (export it merged).
- ``fmt="merged"``: the base model with ``α·Δ`` added, ``save_pretrained`` (safetensors), the tokenizer beside
  it when given. The delta is added IN PLACE to the model at hand (``ws.model.steer.weight_steer``: only the
  touched tensors are copied, to be restored bit-exactly afterwards, also on an error), so no second copy of
  the model is made; ``save_pretrained`` then writes it shard by shard (peak extra memory: the touched
  tensors' copies plus one shard). Do not use the model from another thread meanwhile. A model with
  offloaded (``meta``) weights is refused: load it on one device.

With ``subspace`` (``{layer: B [d_model, k]}``, orthonormal columns) only the residual writers are exported,
projected on their output side: ``P·Δ`` with ``P = B·Bᵀ`` for ``o_proj`` and ``down_proj`` (``[d_model, in]``:
their rows live in the residual stream). This is v8's ``inside`` variant (``ws.v8.causal.variant_diff``, which
sits above this stage and is not imported; ``tests/test_export.py`` holds :func:`project_writers` to it): the
other tensors (q/k/v, gate/up) are dropped, and a layer without a basis (or with ``k = 0``) contributes nothing.

Every export is written into a staging folder beside ``out`` and renamed onto it at the end; an existing
non-empty ``out`` is refused unless ``rebuild=True`` (``WS_REBUILD=1`` on the command line). Beside the
weights: ``README.md`` (the provenance, per-tensor ranks, the tolerance, the largest reconstruction error and
how to get ``w`` back) and ``ws_export.json`` (the same, machine-readable).

Getting ``w`` back from a PEFT export: ``Δα, _ = ws.diffs.imports.adapter_delta(model, folder)``, then
``w = {k: t / α for k, t in Δα.items()}`` (only the exported tensors; a subspace export gives back the
projection).

Usage::

    from ws.diffs.export import export_diff
    export_diff(model, w, 4.0, "exports/syco-lora", fmt="peft", provenance={"diff": "…/w.safetensors"})

    python -m ws.diffs.export --diff out/…/seed0/w.safetensors --alpha 4 --format peft --out exports/syco-lora
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import peft
import torch
from peft import LoraConfig
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ws.core.io import STAGING_PREFIX, remove_stale_staging, umask
from ws.core.linalg import check_orthonormal
from ws.core.log import logger
from ws.core.paths import DEFAULT_MODEL, resolve_user_path
from ws.diffs.imports import ADAPTER_SAFETENSORS, sha256_file
from ws.diffs.store import check_against_model, load_diff
from ws.model.anatomy import WRITER_KEY_RE
from ws.model.load import d_model, load_model, model_id, n_layers
from ws.model.steer import weight_steer

__all__ = [
    "ExportRefused",
    "FORMATS",
    "export_diff",
    "lora_factors",
    "project_writers",
    "read_subspace",
    "main",
]

FORMATS = ("peft", "merged")
#: the machine-readable provenance written beside the weights
EXPORT_JSON = "ws_export.json"
#: the peft key prefix of a causal LM's adapter weights (``PeftModel`` wraps the model as ``base_model.model``)
PEFT_PREFIX = "base_model.model."
_EPS32 = float(torch.finfo(torch.float32).eps)
_LAYER_KEY = re.compile(r"^(?:(?:layer|layers)\.)?(\d+)$")


class ExportRefused(ValueError):
    """A diff, subspace or output folder that cannot be exported as asked; the message names it and what to do."""


# ----------------------------------------------------------------------------- the subspace
def project_writers(w: Mapping[str, torch.Tensor], bases: Mapping[int, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """The residual writers of ``w`` projected on their output side, ``P·Δ`` with ``P = B·Bᵀ`` (float64 inside,
    float32 out), for every layer whose ``o_proj`` / ``down_proj`` ``w`` holds; other keys are dropped. A layer
    without a basis (None, missing, ``k = 0``) gives zeros. v8's ``inside`` variant, same keys and values."""
    out = {}
    for key, m in w.items():
        if not (m_key := WRITER_KEY_RE.match(key)):
            continue
        B = bases.get(int(m_key.group(1)))
        M = m.detach().to("cpu", torch.float64)
        if B is None or B.shape[1] == 0:
            out[key] = torch.zeros_like(M, dtype=torch.float32)
        else:
            B = B.detach().to("cpu", torch.float64)
            out[key] = (B @ (B.T @ M)).float()
    return out


def _check_subspace(bases: Mapping[int, torch.Tensor | None], model: nn.Module, where: str) -> dict[int, torch.Tensor]:
    """``bases`` checked against the model (layer range, ``[d_model, k]``, orthonormal columns), float64."""
    L, d = n_layers(model), d_model(model)
    out = {}
    for l, B in bases.items():
        if not isinstance(l, int) or not 0 <= l < L:
            raise ExportRefused(f"the subspace {where} names layer {l!r}, but the model has layers 0..{L - 1}")
        if B is None:
            continue
        if not isinstance(B, torch.Tensor) or B.ndim != 2 or B.shape[0] != d:
            shape = tuple(B.shape) if isinstance(B, torch.Tensor) else type(B).__name__
            hint = (
                " (transpose it: columns are the basis vectors)"
                if isinstance(B, torch.Tensor) and B.ndim == 2 and B.shape[1] == d
                else ""
            )
            raise ExportRefused(f"the subspace {where} at layer {l} is {shape}, not [d_model={d}, k]{hint}")
        check_orthonormal(B.to(torch.float64), f"subspace {where}", l)
        out[l] = B.detach().to("cpu", torch.float64)
    if not out:
        raise ExportRefused(f"the subspace {where} has no basis at any layer: nothing would be exported")
    return out


def read_subspace(path: str | Path) -> dict[int, torch.Tensor]:
    """Per-layer bases from a safetensors file: one tensor ``[d_model, k]`` (orthonormal columns) per layer,
    keyed ``"12"``, ``"layer.12"`` or ``"layers.12"`` (block index). Checked against a model by :func:`export_diff`."""
    path = Path(path)
    if not path.is_file():
        raise ExportRefused(f"no subspace file at {path}: save {{'12': B}} with safetensors.torch.save_file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any reader error means an unreadable file
        raise ExportRefused(f"could not read the subspace file {path} ({type(e).__name__}: {e}): not safetensors?") from e
    out = {}
    for key, t in raw.items():
        m = _LAYER_KEY.match(key)
        if not m:
            raise ExportRefused(f"the subspace file {path} has a tensor {key!r}: name each basis by its layer ('12', 'layer.12')")
        out[int(m.group(1))] = t
    if not out:
        raise ExportRefused(f"the subspace file {path} holds no tensors")
    return out


# ----------------------------------------------------------------------------- the LoRA factors
def lora_factors(delta: torch.Tensor, rtol: float | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """``(B [out, r], A [r, in], info)`` float32 with ``B·A = delta`` up to float32 rounding: a thin SVD in
    float64, keeping singular values ``> rtol·s_max`` (default ``rtol = max(out, in)·ε_float32``). ``info``:
    ``rank``, ``rtol``, ``s_max``, ``s_dropped`` (the largest dropped singular value, 0 if none) and ``rel_err``
    (``‖B·A − delta‖_F / ‖delta‖_F``, measured on the float32 factors). ``delta`` must not be zero."""
    M = delta.detach().to("cpu", torch.float64)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    rtol = max(M.shape) * _EPS32 if rtol is None else float(rtol)
    r = int((S > rtol * S[0]).sum())
    root = S[:r].sqrt()
    B = (U[:, :r] * root).float().contiguous()
    A = (root[:, None] * Vh[:r]).float().contiguous()
    rel = float((B.double() @ A.double() - M).norm() / M.norm())
    info = {"rank": r, "rtol": rtol, "s_max": float(S[0]), "s_dropped": float(S[r]) if r < len(S) else 0.0, "rel_err": rel}
    return B, A, info


# ----------------------------------------------------------------------------- checks
def _check_out(out: Path, rebuild: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportRefused(f"the export folder {out} is a file: give a folder (new or empty)")
    if out.is_dir() and any(out.iterdir()) and not rebuild:
        raise ExportRefused(
            f"the export folder {out} is not empty: nothing was written. Give a new or empty folder, or replace it "
            f"on purpose: rebuild=True (on the command line WS_REBUILD=1 or --rebuild)"
        )


def _check_diff(model: nn.Module, w: Mapping[str, torch.Tensor], fmt: str) -> None:
    params = dict(model.named_parameters())
    bad = [k for k in w if k not in params]
    bad += [
        f"{k} {tuple(w[k].shape)} (the model's is {tuple(params[k].shape)})"
        for k in w
        if k in params and w[k].shape != params[k].shape
    ]
    if bad:
        raise ExportRefused(
            f"the weight diff does not fit the model {model_id(model)!r} ({len(bad)} key(s)): {', '.join(bad[:6])}; "
            f"export it with the model it was made for"
        )
    nonfinite = [k for k, t in w.items() if not bool(torch.isfinite(t).all())]
    if nonfinite:
        raise ExportRefused(f"the weight diff has NaN/Inf in {len(nonfinite)} tensor(s): {', '.join(nonfinite[:6])}")
    if fmt == "peft":
        modules = dict(model.named_modules())
        not_linear = [k for k in w if not (k.endswith(".weight") and isinstance(modules.get(k[: -len(".weight")]), nn.Linear))]
        if not_linear:
            raise ExportRefused(
                f"{len(not_linear)} tensor(s) of the diff are not a linear layer's weight, which a LoRA cannot hold: "
                f"{', '.join(not_linear[:6])}. Export it with fmt='merged' (--format merged), or drop those keys"
            )
    else:
        offloaded = [k for k in w if params[k].device.type == "meta"]
        if offloaded:
            raise ExportRefused(
                f"{len(offloaded)} weight(s) the diff touches are offloaded (meta device), e.g. {offloaded[0]}: a merged "
                f"export adds the diff in place; load the model on one device (no device_map) to export it merged"
            )


# ----------------------------------------------------------------------------- writers
def _write_peft(stage: Path, scaled: Mapping[str, torch.Tensor], base_name: str, rtol: float | None) -> list[dict]:
    tensors, rows = {}, []
    for key, delta in scaled.items():
        B, A, info = lora_factors(delta, rtol)
        module = key[: -len(".weight")]
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = A
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = B
        rows.append({"tensor": key, "module": module, "shape": list(delta.shape), "norm": float(delta.double().norm()), **info})
    ranks = {row["module"]: row["rank"] for row in rows}
    r = max(ranks.values())
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(ranks),
        rank_pattern=dict(ranks),
        alpha_pattern=dict(ranks),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=True,
        base_model_name_or_path=base_name,
        inference_mode=True,
    )
    wrong = [m for m in ranks if get_pattern_key(list(ranks), m) != m]
    if wrong:  # peft reads pattern keys as regexes: each module must find its own key
        raise ExportRefused(f"peft would read another module's rank for {', '.join(wrong[:4])}; export it merged")
    config.save_pretrained(str(stage))
    save_file(tensors, str(stage / ADAPTER_SAFETENSORS), metadata={"format": "pt"})
    return rows


def _write_merged(stage: Path, model: nn.Module, delta: Mapping[str, torch.Tensor], tokenizer) -> list[dict]:
    with weight_steer(model, delta, 1.0, in_place=True):  # save_pretrained reads the weights
        model.save_pretrained(str(stage), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(stage))
    return [
        {"tensor": k, "shape": list(t.shape), "norm": float(t.double().norm()), "rank": None, "rel_err": None}
        for k, t in delta.items()
    ]


def _readme(info: Mapping[str, Any]) -> str:
    fmt, alpha, out = info["format"], info["alpha"], info["folder"]
    rows = info["tensors"]
    lines = [
        f"# Weight-steering diff, exported ({'PEFT LoRA' if fmt == 'peft' else 'merged checkpoint'})",
        "",
        f"`α·Δ` with α = {alpha:g}, exported by `ws.diffs.export` for the base model `{info['base_model']}` "
        f"(loaded in the suite as `{info['model']}`).",
        "",
        "## Provenance",
        "",
        f"- source diff: {info['provenance'].get('diff', '(given in memory, no file)')}",
        f"- α: {alpha:g}",
        f"- subspace: {info['subspace']['what'] if info['subspace'] else 'none (the whole diff)'}",
    ]
    if info["subspace"]:
        sub = info["subspace"]
        lines.append(f"  - layers and ranks k: {', '.join(f'{l}: {k}' for l, k in sub['ranks'].items())}")
        lines.append("  - only the residual writers (o_proj, down_proj) are exported, as `P·Δ` with `P = B·Bᵀ` (v8's 'inside')")
    lines += [f"- {k}: {v}" for k, v in info["provenance"].items() if k != "diff"]
    lines.append(f"- exported tensors: {len(rows)}; skipped (α·Δ zero): {len(info['skipped'])}")
    lines += [*(f"  - `{k}`" for k in info["skipped"]), ""]
    if fmt == "peft":
        lines += [
            "## The LoRA",
            "",
            "Each tensor is the exact low-rank factorisation of `α·Δ` (thin SVD in float64, `B = U·√S`, "
            "`A = √S·Vᵀ`), keeping the singular values above rtol·s_max (rtol per tensor below; by default "
            f"max(out, in)·ε_float32, ε_float32 = {_EPS32:.3g}). `lora_alpha` equals each tensor's rank "
            "(`rank_pattern` = `alpha_pattern`), so peft's scale is 1 and its merge is `B·A`.",
            "",
            f"- largest relative reconstruction error ‖B·A − α·Δ‖/‖α·Δ‖: {info['max_rel_err']:.3g}",
            "",
            "| tensor | shape | rank | rtol | ‖α·Δ‖ | rel. error |",
            "|---|---|---|---|---|---|",
            *(
                f"| `{r['tensor']}` | {r['shape'][0]}×{r['shape'][1]} | {r['rank']} | {r['rtol']:.3g} "
                f"| {r['norm']:.4g} | {r['rel_err']:.2g} |"
                for r in rows
            ),
            "",
            "## Use it",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f'base = AutoModelForCausalLM.from_pretrained("{info["base_model"]}")',
            f'steered = PeftModel.from_pretrained(base, "{out}")  # or .merge_and_unload()',
            "```",
            "",
            "Back to the suite's `w` (the exported tensors only):",
            "",
            "```python",
            "from ws.diffs.imports import adapter_delta",
            "from ws.model.load import load_model",
            f'model, _ = load_model("{info["model"]}")  # the base model, as the suite loads it',
            f'delta, _ = adapter_delta(model, "{out}")',
            f"w = {{k: t / {alpha!r} for k, t in delta.items()}}",
            "```",
        ]
    else:
        lines += [
            "## The checkpoint",
            "",
            "The base model's weights with `α·Δ` added (in the model's dtype); every other weight is the base's, unchanged.",
            "",
            "| tensor | shape | ‖α·Δ‖ |",
            "|---|---|---|",
            *(f"| `{r['tensor']}` | {'×'.join(map(str, r['shape']))} | {r['norm']:.4g} |" for r in rows),
            "",
            "```python",
            "from transformers import AutoModelForCausalLM",
            f'model = AutoModelForCausalLM.from_pretrained("{out}")',
            "```",
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the export
def export_diff(
    model: nn.Module,
    w: Mapping[str, torch.Tensor],
    alpha: float,
    out: str | Path,
    *,
    fmt: str = "peft",
    base_name: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    subspace: Mapping[int, torch.Tensor | None] | None = None,
    tokenizer=None,
    rebuild: bool = False,
    rtol: float | None = None,
) -> Path:
    """Write ``α·w`` (optionally restricted to ``subspace``) as a PEFT LoRA or a merged checkpoint.

    See the module docstring for what each format holds and how exact it is.

    Args:
        model: the base model ``w`` was made for.
        w: the diff by parameter name.
        alpha: the steering strength to export (``α·w``).
        out: the folder to write (refused when it holds files, unless ``rebuild``).
        fmt: ``"peft"`` (a LoRA folder) or ``"merged"`` (a full checkpoint).
        base_name: the adapter's ``base_model_name_or_path`` (default: the name the model was
            loaded under).
        provenance: recorded in ``README.md`` and ``ws_export.json`` (``"diff"``: the source file).
        subspace: per-layer bases: only the writers' part inside them is exported (v8's "inside").
        tokenizer: saved beside a merged checkpoint.
        rebuild: replace an existing export.
        rtol: the relative singular-value cut of the LoRA factors (default: float32's resolution).

    Returns:
        ``out``.

    Raises:
        ExportRefused: the format, the folder or the diff cannot be exported (named).
    """
    if fmt not in FORMATS:
        raise ExportRefused(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    _check_out(out, rebuild)
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ExportRefused(f"α must be a finite number, got {alpha!r}")
    if not w:
        raise ExportRefused("the weight diff is empty: nothing to export")
    _check_diff(model, w, fmt)
    sub_info = None
    if subspace is not None:
        where = str((provenance or {}).get("subspace", "given"))
        bases = _check_subspace(subspace, model, where)
        w = project_writers(w, bases)
        if not w:
            raise ExportRefused("the diff has no o_proj / down_proj tensor: a subspace export keeps only the residual writers")
        sub_info = {"what": where, "ranks": {str(l): int(B.shape[1]) for l, B in sorted(bases.items())}}
    scaled, skipped = {}, []
    for k, t in w.items():
        s = t.detach().to("cpu", torch.float32) * alpha
        if bool((s == 0).all()):
            skipped.append(k)
        else:
            scaled[k] = s
    if not scaled:
        raise ExportRefused(f"α·Δ is zero on every tensor (α = {alpha:g}, {len(w)} tensor(s)): nothing to export")
    base = base_name or model_id(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent)  # a killed export's leftovers (their process is gone)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{out.name}-", dir=out.parent))
    os.chmod(stage, 0o777 & ~umask())  # mkdtemp makes 0700; the folder keeps the usual mode
    try:
        if fmt == "peft":
            rows = _write_peft(stage, scaled, base, rtol)
        else:
            rows = _write_merged(stage, model, scaled, tokenizer)
        errs = [r["rel_err"] for r in rows if r["rel_err"] is not None]
        info = {
            "format": fmt,
            "alpha": alpha,
            "folder": str(out),
            "model": model_id(model),
            "base_model": base,
            "subspace": sub_info,
            "provenance": dict(provenance or {}),
            "tensors": rows,
            "skipped": skipped,
            "max_rel_err": max(errs) if errs else None,
            "peft_version": peft.__version__,
            "recipe": "w = {k: t / alpha for k, t in ws.diffs.imports.adapter_delta(model, folder)[0].items()}",
        }
        (stage / EXPORT_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n")
        (stage / "README.md").write_text(_readme(info))
        for f in stage.rglob("*"):  # some writers make 0600 files; give every file the usual mode
            if f.is_file():
                os.chmod(f, 0o666 & ~umask())
        old = None
        if out.exists():  # empty, or rebuild: moved aside, removed once the new folder is in place
            old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{out.name}-old-", dir=out.parent))
            os.replace(out, old / out.name)
        try:
            os.replace(stage, out)
        except OSError:
            if old is not None:
                os.replace(old / out.name, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    ranks = ", ".join(f"{r['tensor']}: {r['rank']}" for r in rows[:4]) if fmt == "peft" else ""
    logger.info(
        f"exported α·Δ (α = {alpha:g}, {len(rows)} tensor(s), {len(skipped)} zero skipped) as {fmt} to {out}"
        + (f"; ranks {ranks}…" if ranks else "")
    )
    return out


# ----------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ws.diffs.export", description="Export α·w as a PEFT LoRA folder or a merged checkpoint."
    )
    p.add_argument("--diff", required=True, help="the diff (w.safetensors)")
    p.add_argument("--alpha", required=True, type=float, help="the steering strength α")
    p.add_argument("--format", choices=FORMATS, default="peft")
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")
    p.add_argument("--model", default=None, help="the base model (default: the diff's metadata 'model', else the embedded one)")
    p.add_argument("--subspace", default=None, help="per-layer bases (safetensors: '12' -> [d_model, k])")
    p.add_argument("--base-name", default=None, help="base_model_name_or_path for the adapter (default: the model's name)")
    p.add_argument("--rebuild", action="store_true", help="replace a non-empty --out (as WS_REBUILD=1 does)")
    args = p.parse_args(argv)
    try:
        return _export_from_args(args)
    except (FileNotFoundError, ValueError) as e:  # ExportRefused too: the suite's own message, no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def _export_from_args(args: argparse.Namespace) -> int:
    """The command line's work: paths relative to the user's folder (``WS_RUN_DIR``, as every
    ``make`` target), the diff checked against its model, then :func:`export_diff`."""
    diff, out = resolve_user_path(args.diff), resolve_user_path(args.out)
    w, meta = load_diff(diff)
    name = args.model or meta.get("model") or DEFAULT_MODEL
    model, tok = load_model(name)
    check_against_model(w, model, meta, diff)
    provenance: dict[str, Any] = {"diff": str(diff.resolve()), "diff sha256": sha256_file(diff)}
    provenance.update({k: meta[k] for k in ("model", "behavior", "adapter", "seed", "source") if k in meta})
    subspace = None
    if args.subspace:
        subspace = read_subspace(resolve_user_path(args.subspace))
        provenance["subspace"] = str(resolve_user_path(args.subspace))
    rebuild = args.rebuild or os.environ.get("WS_REBUILD", "").strip() == "1"
    folder = export_diff(
        model,
        w,
        args.alpha,
        out,
        fmt=args.format,
        base_name=args.base_name,
        provenance=provenance,
        subspace=subspace,
        tokenizer=tok,
        rebuild=rebuild,
    )
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
