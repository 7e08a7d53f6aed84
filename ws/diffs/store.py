"""The weight diff ``w = Δθ⁺ − Δθ⁻``: where it lives, how it is saved, loaded and checked.

A diff is a ``dict[str, Tensor]`` keyed by the BASE model's parameter names
(``model.layers.12.self_attn.o_proj.weight``), float32, each of its parameter's shape.
On disk it is a safetensors file with string metadata in the header: plain strings are
stored as they are, every other value JSON-encoded (the header lists which), so
``load_diff(save_diff(w, p, meta))`` gives back the same keys, values and metadata.

    path = diff_path("sycophancy", "lora", seed=0)   # <out>/sycophancy/lora/seed0/w.safetensors
    w, meta = load_diff(path, model)                 # validated against the model
    diff_path("sycophancy", "lora", 0, model="tiny-llama")
    # <out>/models/tiny-llama/sycophancy/lora/seed0/w.safetensors

Each model's diffs live in its own folder (:func:`ws.core.paths.model_root`): the embedded
default model's at the output root, every other model's under ``<out>/models/<slug>/``.
A diff made for another model than the one at hand is refused
(:class:`DiffMismatchError`); a non-default model's diff found at the default model's
path, where every diff lived before, stops a run with the ``mv`` that moves it to its
own folder (:class:`MisplacedDiffError`, :func:`check_misplaced_diffs`).

``import_pt`` reads an upstream-style ``w.pt`` (a pickled dict of tensors) through
``torch.load(weights_only=True)`` only: arbitrary pickles are refused, never executed.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ws.behavior.data import data_hash
from ws.core.columns import WRITER_TAGS
from ws.core.io import pickle_refusal, save_safetensors
from ws.core.paths import DEFAULT_MODEL, model_root
from ws.model.anatomy import WRITERS, writer_key
from ws.model.load import model_id
from ws.model.steer import w_mismatches

_JSON_KEYS = "__json_keys__"
BUILD_HINT = (
    "Build it with the train notebook (`make diff`, i.e. nbs/train_diff.py) or from Python with "
    "`ws.diffs.train.ensure_diff(model_name, behavior, adapter, seed)`."
)


def diff_path(
    behavior: str = "sycophancy",
    adapter: str = "lora",
    seed: int = 0,
    root: str | Path | None = None,
    *,
    model: str = DEFAULT_MODEL,
) -> Path:
    """``<model root>/<behavior>/<adapter>/seed<k>/w.safetensors``: the model root is the
    output root ``root`` (default ``WS_OUT``) for the embedded default model and
    ``<root>/models/<model_slug>`` for any other (:func:`ws.core.paths.model_root`)."""
    return model_root(model, root) / behavior / adapter / f"seed{int(seed)}" / "w.safetensors"


# ----------------------------------------------------------------------------- metadata
def encode_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    enc: dict[str, str] = {}
    json_keys = []
    for k, v in meta.items():
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be strings, got {k!r}")
        if k == SOURCE_KEY:  # where a loaded diff came from: never part of a file
            continue
        if k == _JSON_KEYS:
            raise ValueError(f"{_JSON_KEYS!r} is reserved")
        if isinstance(v, str):
            enc[k] = v
        else:
            enc[k] = json.dumps(v, sort_keys=True, allow_nan=True)
            json_keys.append(k)
    enc[_JSON_KEYS] = json.dumps(sorted(json_keys))
    return enc


def decode_meta(raw: Mapping[str, str] | None) -> dict[str, Any]:
    raw = dict(raw or {})
    json_keys = set(json.loads(raw.pop(_JSON_KEYS, "[]")))
    return {k: (json.loads(v) if k in json_keys else v) for k, v in raw.items()}


# ----------------------------------------------------------------------------- checks
def check_finite(w: Mapping[str, torch.Tensor], what: str = "weight diff") -> None:
    """``ValueError`` naming every tensor with a NaN or Inf."""
    bad = [k for k, t in w.items() if not torch.isfinite(t).all()]
    if bad:
        shown = ", ".join(bad[:8]) + (f" … (+{len(bad) - 8} more)" if len(bad) > 8 else "")
        raise ValueError(f"the {what} has NaN/Inf values in {len(bad)} tensor(s): {shown}. Rebuild it; {BUILD_HINT}")


def check_nonzero(w: Mapping[str, torch.Tensor], what: str = "weight diff") -> None:
    """``ValueError`` when every tensor is zero: such a diff has no effect to analyse."""
    if all(not bool(t.any()) for t in w.values()):
        raise ValueError(
            f"the {what} is all zeros ({len(w)} tensor(s)): it has no effect to analyse. "
            f"Rebuild it, or bring the diff you meant; {BUILD_HINT}"
        )


def check_against_model(
    w: Mapping[str, torch.Tensor], model: nn.Module, meta: Mapping[str, Any] | None = None, path: str | Path | None = None
) -> None:
    """Refuse a diff built for another model: metadata ``model`` first, then every key/shape."""
    where = f" ({path})" if path is not None else ""

    mismatches = w_mismatches(model, w)
    shown = ""
    if mismatches:
        shown = "\n  " + "\n  ".join(mismatches[:12]) + (f"\n  … (+{len(mismatches) - 12} more)" if len(mismatches) > 12 else "")
    built_for = (meta or {}).get("model")
    if built_for is not None and built_for != model_id(model):
        raise ValueError(
            f"the weight diff{where} was built for model {built_for!r}, not for {model_id(model)!r}. "
            f"Load {built_for!r}, or build a diff for this model: {BUILD_HINT}"
            + (f"\nIt also does not fit ({len(mismatches)} key/shape mismatch(es)):{shown}" if mismatches else "")
        )
    if mismatches:
        raise ValueError(
            f"the weight diff{where} does not fit the model {model_id(model)!r} ({len(mismatches)} mismatch(es)):{shown}\n"
            f"Was it built for another model? Rebuild it for this one: {BUILD_HINT}"
        )


# ----------------------------------------------------------------------------- save / load
class DiffMismatchError(ValueError):
    """A diff exists on disk but was made for another model."""


class DiffMetadataError(ValueError):
    """A diff exists on disk but its metadata does not say which model it was made for."""


class MisplacedDiffError(ValueError):
    """A diff made for a model other than the embedded default sits at the default model's
    path (where every diff lived before each model got its own folder)."""


def misplaced_diffs(model_name: str, behavior: str, root: str | Path | None = None) -> list[tuple[Path, Path]]:
    """``(where it is, where it belongs)`` of every diff of ``behavior`` (any adapter, any
    seed) that sits at the default model's path but whose metadata says it was made for
    ``model_name``; empty for the default model. Only headers are read; a file that cannot
    be read or names no model is not counted (it is not known to be ``model_name``'s)."""
    shared = model_root(DEFAULT_MODEL, root)
    if model_root(model_name, root) == shared:
        return []
    found = []
    for old in sorted((shared / behavior).glob("*/seed*/w.safetensors")):
        adapter, seed = old.parts[-3], old.parts[-2].removeprefix("seed")
        if not seed.isdigit():
            continue
        try:
            made_for = read_meta(old).get("model")
        except (OSError, ValueError):
            continue
        if made_for == model_name:
            found.append((old, diff_path(behavior, adapter, int(seed), root, model=model_name)))
    return found


def _move_hint(old: Path, new: Path) -> str:
    """The shell line that moves ``old``'s diff set (its folder) to ``new``'s."""
    src, dst = old.parent, new.parent
    if new.exists():
        return "but a diff is there too: keep one of the two and move the other out of the output folder"
    if dst.exists():
        return f"mkdir -p {shlex.quote(str(dst))} && mv {shlex.quote(str(src))}/* {shlex.quote(str(dst))}/"
    return f"mkdir -p {shlex.quote(str(dst.parent))} && mv {shlex.quote(str(src))} {shlex.quote(str(dst))}"


def check_misplaced_diffs(model_name: str, behavior: str, root: str | Path | None = None) -> None:
    """Stop before any work when a diff made for ``model_name`` (not the embedded default)
    sits at the default model's path: the run would not see it and would train another.
    :class:`MisplacedDiffError` names both paths and the ``mv`` for each; nothing is moved."""
    found = misplaced_diffs(model_name, behavior, root)
    if not found:
        return
    lines = "\n".join(f"  {old}\n    belongs at {new}:\n    {_move_hint(old, new)}" for old, new in found)
    raise MisplacedDiffError(
        f"{len(found)} diff(s) made for model {model_name!r} sit at the embedded default model's paths, "
        f"where every diff lived before each model got its own folder. This model's diffs live under "
        f"{model_root(model_name, root)}, so this run would not use them and would train new ones. "
        f"Nothing was changed or trained. Move each one, with the files beside it:\n{lines}"
    )


def check_diff_model(path: str | Path, model_name: str) -> dict[str, Any]:
    """Refuse an existing diff at ``path`` whose metadata names another model than
    ``model_name``, or no model at all (only the header is read; nothing changes on disk).
    Returns the metadata."""
    path = Path(path)
    meta = read_meta(path)
    made_for = meta.get("model")
    if made_for is None:
        raise DiffMetadataError(
            f"{path} has no 'model' in its metadata, so the suite cannot tell which model it was made for.\n"
            f"If it was made for {model_name!r}, save it again with that metadata: "
            f"`w, meta = ws.diffs.store.load_diff(path); meta['model'] = {model_name!r}; "
            f"ws.diffs.store.save_diff(w, path, meta)`; "
            f"otherwise move it away (or WS_REBUILD=1 to replace it with a new diff)."
        )
    if made_for != model_name:
        raise DiffMismatchError(
            f"{path} was made for model {made_for!r}, but this run uses {model_name!r}.\n"
            f"Either run with WS_MODEL={made_for}, or write to another output root (WS_OUT=...), or "
            f"replace that diff on purpose (WS_REBUILD=1; or move the file away) to have "
            f"it rebuilt for {model_name!r}."
        )
    return meta


def check_existing_diff(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Everything about an existing diff that must stop a run, checked before any long work:
    readable, made for this model (metadata), finite, not all zero, every key and shape
    fits. Raises the error docs/errors.md lists; never changes the file. Returns the metadata."""
    check_diff_model(path, model_id(model))
    return load_diff(path, model)[1]


def stale_reasons(meta: Mapping[str, Any], train_config: Mapping[str, Any] | None = None, behavior=None) -> list[str]:
    """Why an existing, usable diff may not be what this run would build (each one a warning,
    never a reason to retrain without ``WS_REBUILD=1``): another data version of the
    behaviour (default sycophancy), none recorded, another training config."""
    out = []
    made_with = meta.get("data_hash")
    now = data_hash(behavior=behavior)
    if made_with is None:
        out.append(f"it records no data version (this suite's data is {now}); an imported diff, maybe")
    elif made_with != now:
        out.append(f"it was made from data version {made_with}, this suite's data is now {now}")
    if train_config is not None and meta.get("train_config") not in (None, dict(train_config)):
        old = meta["train_config"]
        changed = sorted(k for k in set(old) | set(train_config) if old.get(k) != train_config.get(k))
        out.append(
            "it was trained with another config ("
            + ", ".join(f"{k}: {old.get(k)!r} there, {train_config.get(k)!r} here" for k in changed[:6])
            + ")"
        )
    return out


def save_diff(w: Mapping[str, torch.Tensor], path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``w`` (float32, contiguous) and ``meta`` to a safetensors file, atomically."""
    if not w:
        raise ValueError("refusing to save an empty weight diff")
    check_finite(w)
    check_nonzero(w)
    tensors = {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in w.items()}
    return save_safetensors(tensors, path, encode_meta(meta or {}))


#: beside ``w.safetensors``: the frozen bases an S-space diff was confined to (its known answer)
PLANTED_FILE = "sspace_basis.safetensors"
#: beside ``w.safetensors``: the singular vectors of the persona gradient at the base model
GRADIENT_FILE = "gradient_basis.safetensors"
#: the key of a loaded diff's metadata that holds the file it was read from (never saved)
SOURCE_KEY = "_file"


def save_bases(bases: Mapping[str, Mapping[str, torch.Tensor]], path: str | Path, what: str = "") -> Path:
    """Write ``{name: {key: basis}}`` (float64) to one safetensors file as ``<name>/<key>``, atomically."""
    tensors = {f"{c}/{k}": t.detach().to("cpu", torch.float64).contiguous() for c, per in bases.items() for k, t in per.items()}
    if not tensors:
        raise ValueError(f"refusing to save an empty set of bases to {Path(path).name}")
    return save_safetensors(tensors, path, {"what": what or "bases, <name>/<key>"})


def save_planted(planted: Mapping[str, Mapping[str, torch.Tensor]], path: str | Path) -> Path:
    """:func:`save_bases` of an S-space diff's frozen bases ``{candidate: {parameter name: U_r}}``."""
    return save_bases(planted, path, "frozen bases of an S-space diff, <candidate>/<parameter>")


def load_bases(diff: str | Path, name: str) -> dict[str, dict[str, torch.Tensor]] | None:
    """The side file ``name`` beside the diff ``diff`` (``w.safetensors``) as ``{name: {key: tensor}}``, or None."""
    path = Path(diff).parent / name
    if not path.exists():
        return None
    out: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                cand, _, rest = key.partition("/")
                out.setdefault(cand, {})[rest] = f.get_tensor(key)
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, e) from e
    return out


def load_planted(diff: str | Path) -> dict[str, dict[str, torch.Tensor]] | None:
    """The planted bases beside the diff ``diff`` (``w.safetensors``), or None when it has none."""
    return load_bases(diff, PLANTED_FILE)


def side_bases(meta: Mapping[str, Any], key: str) -> dict[str, dict[str, torch.Tensor]] | None:
    """The side file the diff's metadata names under ``key`` (``planted_file``, ``gradient_file``),
    read from beside the file the diff was loaded from (:data:`SOURCE_KEY`); None when either is missing."""
    name, src = meta.get(key), meta.get(SOURCE_KEY)
    return load_bases(src, name) if name and src else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """Only the metadata of a saved diff (no tensors are read)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return decode_meta(f.metadata())
    except Exception as e:  # noqa: BLE001 - any reader error means an unreadable file
        raise _corrupt(path, e) from e


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no weight diff at {path}. {BUILD_HINT}")
    return path


def _corrupt(path: Path, e: Exception) -> ValueError:
    return ValueError(
        f"could not read the weight diff {path}: it is corrupt or not a safetensors file "
        f"({type(e).__name__}: {e}). Delete it and rebuild: {BUILD_HINT}"
    )


def load_diff(path: str | Path, model: nn.Module | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weight diff written by the suite.

    Args:
        path: the diff's safetensors file (``<out>/<behavior>/<adapter>/seed<k>/w.safetensors``).
        model: when given, the diff is checked against it (names, shapes, model).

    Returns:
        ``(w, meta)``: the tensors by parameter name (float32) and the metadata.

    Raises:
        FileNotFoundError: the file is missing (the message says how to build it).
        ValueError: a corrupt file, NaN/Inf, or a diff for another model (every mismatch named).
    """
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = decode_meta(f.metadata())
            w = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, e) from e
    if not w:
        raise ValueError(f"the weight diff {path} holds no tensors. Delete it and rebuild: {BUILD_HINT}")
    check_finite(w, f"weight diff {path}")
    check_nonzero(w, f"weight diff {path}")
    if model is not None:
        check_against_model(w, model, meta, path)
    meta[SOURCE_KEY] = str(path)  # its side files (planted / gradient bases) lie beside it
    return w, meta


def import_pt(path: str | Path) -> dict[str, torch.Tensor]:
    """An upstream-style ``w.pt`` (pickled ``dict[str, Tensor]``) as float32 tensors.

    Read only through ``torch.load(..., weights_only=True)``: a pickle that holds anything
    but plain containers and tensors is refused, and a dict with a non-tensor value too.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refusals come as several types
        raise ValueError(
            f"refusing {path}: it is not a plain dict of tensors loadable with weights_only=True "
            f"({pickle_refusal(e)}). Arbitrary pickles are never executed."
        ) from e
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"refusing {path}: expected a non-empty dict of name -> tensor, got {type(obj).__name__}")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"refusing {path}: entries that are not str -> tensor: {', '.join(bad[:8])}")
    w = {k: v.to(torch.float32).contiguous() for k, v in obj.items()}
    check_finite(w, f"imported diff {path}")
    check_nonzero(w, f"imported diff {path}")
    return w


# ----------------------------------------------------------------------------- per layer
def writer_deltas_by_layer(
    w: Mapping[str, torch.Tensor], n_layers: int, partial: bool = False
) -> list[dict[str, torch.Tensor] | None]:
    """Per layer ``{"oproj": Δo_proj, "downproj": Δdown_proj}`` (each ``[d_model, in]``), or None.

    A layer gets None when the diff touches neither writer. A layer with only one of the
    two raises ``ValueError`` unless ``partial`` (an adapter such as IA3 that never touches
    o_proj): then the layer's dict holds the writer it has, the scores give the missing
    one NaN weight cells (never 0) and ``combined`` is the other alone
    (:func:`missing_writers` lists them for the caveats).
    """
    out: list[dict[str, torch.Tensor] | None] = []
    for i in range(n_layers):
        o, d = (w.get(writer_key(i, t)) for t in WRITER_TAGS)
        if o is None and d is None:
            out.append(None)
            continue
        if (o is None or d is None) and not partial:
            raise ValueError(
                f"layer {i}: the diff has only one of the residual writers "
                f"({WRITERS[WRITER_TAGS[0] if o is not None else WRITER_TAGS[1]]}); a LoRA on the writers should touch both"
            )
        out.append({t: m.to(torch.float32) for t, m in zip(WRITER_TAGS, (o, d), strict=True) if m is not None})
    return out


def missing_writers(deltas: list[dict[str, torch.Tensor] | None]) -> dict[str, list[int]]:
    """``{"oproj": layers, "downproj": layers}``: the touched layers (a delta on either
    writer) that lack that writer's delta; empty lists when every touched layer has both."""
    return {t: [l for l, d in enumerate(deltas) if d is not None and t not in d] for t in WRITER_TAGS}


def diff_norms(w: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Frobenius norm of each tensor (for logs and sanity checks)."""
    return {k: float(t.float().norm()) for k, t in w.items()}


def summary(w: Mapping[str, torch.Tensor]) -> str:
    total = math.sqrt(sum(float(t.float().pow(2).sum()) for t in w.values()))
    layers = sorted({int(k.split(".")[2]) for k in w if k.startswith("model.layers.")})
    span = f"layers {layers[0]}–{layers[-1]}" if layers else "no layers"
    return f"{len(w)} tensors, {span}, ‖w‖ = {total:.4g}"
