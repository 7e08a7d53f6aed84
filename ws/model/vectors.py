"""Steering vectors brought from outside: read, validate, and turn into per-layer bases.

A researcher's activation steering vectors (one direction or ``k`` directions per layer: a
contrastive activation-addition mean difference, PCA control vectors, a refusal direction)
become candidate subspaces for the sweep. :func:`read_vectors` reads a file, checks every
direction against the model's numbers (``n_layers``, ``d``) and returns
:class:`SteeringVectors`, whose :meth:`SteeringVectors.bases` gives one ``[d, r]`` orthonormal
basis per layer. Every refusal is a :class:`VectorError` naming the file, the layer and what
to do.

Layer conventions
-----------------
Inside this suite a layer is a BLOCK index ``l`` in ``0..n_layers-1``: the residual stream
right after decoder block ``l`` (its output, where an additive steering vector acts).

- ``convention="block"``: the file's index ``l`` is block ``l``'s output (used as is).
- ``convention="hidden"``: the file's index ``i`` is ``hidden_states[i]`` of a forward pass
  that returns all hidden states: ``i = 0`` is the embeddings, ``i`` = the output of block
  ``i - 1``; so block = ``i - 1``. Index 0 (the embeddings, no block's output) is dropped when
  all its rows are zero (the usual placeholder) and refused otherwise.
- ``shift`` is added to the block index afterwards (an escape hatch for files whose indices
  are off by a constant); the result must lie in ``0..n_layers-1``.

Defaults (``convention=None``):

- ``.gguf`` control vectors: ``"block"``. In the GGUF control-vector format the tensor
  ``direction.N`` is added, by the runtime that consumes these files, to the output of
  decoder block ``N`` (0-based; the addition sits at the end of block ``N``'s loop
  iteration); there is never a tensor for layer 0 and the runtime's loader refuses
  ``direction.0``. The steering-library writer keys its directions by block index as well
  (measured on ``hidden_states[N + 1]``, applied to block ``N``'s output). Note: a generator
  that measures ``direction.N`` at block ``N - 1``'s output still means "add after block
  ``N``"; pass ``shift=-1`` to score it where it was measured instead. ``direction.0`` is
  accepted here as block 0.
- per-layer keys (``.safetensors``, ``.pt``/``.pth`` dicts): ``"block"``.
- a full-stack array ``[L, d]`` or ``[L, k, d]`` (any format but ``.gguf``): its length
  decides: ``L == n_layers`` is block indexing (``"block"``), ``L == n_layers + 1`` is
  hidden-states indexing (``"hidden"``, row 0 = embeddings, dropped if zero); any other ``L``
  is refused. An explicit ``convention`` overrides the guess (the range check still applies).

Accepted files
--------------
- ``.safetensors``: one tensor ``[L, d]``/``[L, k, d]`` (any name that is not a layer key),
  or one tensor per layer keyed ``"12"``, ``"layer.12"``, ``"layers.12"``, ``"direction.12"``
  or ``"directions.12"``, each ``[d]`` or ``[k, d]``.
- ``.pt``/``.pth``: read only with ``torch.load(weights_only=True)``: a tensor
  ``[L, d]``/``[L, k, d]`` or a dict ``{layer (int or key as above): tensor [d] or [k, d]}``;
  anything else is refused (arbitrary pickled objects are never executed).
- ``.npy``: ``np.load(allow_pickle=False)``, ``[L, d]`` or ``[L, k, d]``.
- ``.gguf``: the GGUF control-vector format: ``general.architecture = "controlvector"``,
  ``controlvector.model_hint`` (the model family; recorded, never checked),
  ``controlvector.layer_count`` (the number of direction tensors; checked when present) and
  one float tensor ``direction.<N>`` of shape ``[d]`` per layer.

Saving a vector from one's own code (``v``: a ``[d]`` or ``[k, d]`` float tensor)::

    import safetensors.torch
    safetensors.torch.save_file({"direction.12": v.contiguous()}, "refusal.safetensors")

    import torch
    torch.save({12: v}, "refusal.pt")

    import numpy as np
    np.save("caa.npy", np.stack([v_l.numpy() for v_l in per_layer]))  # [n_layers, d]: row l = block l

    import gguf, numpy as np
    w = gguf.GGUFWriter("refusal.gguf", "controlvector")
    w.add_string("controlvector.model_hint", "smollm2"); w.add_uint32("controlvector.layer_count", 1)
    w.add_tensor("direction.12", v.numpy().astype(np.float32))  # [d], added after block 12
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

Usage::

    sv = read_vectors("refusal.safetensors", n_layers=30, d=576)
    sv.layers                  # [12]
    B = sv.bases()[12]         # [576, r] float64, orthonormal columns
    json.dumps(sv.to_meta())
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import safetensors.torch
import torch

from ws.core.io import pickle_refusal
from ws.core.linalg import DEFAULT_RTOL, f64, orthonormalize
from ws.core.paths import UnsafeNameError, safe_component

__all__ = ["VectorError", "SteeringVectors", "read_vectors", "SUFFIXES", "CONVENTIONS"]

#: file suffix -> format name
SUFFIXES = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".npy": "npy", ".gguf": "gguf"}
CONVENTIONS = ("block", "hidden")
#: a direction whose norm is at most this times the file's largest norm counts as zero
ZERO_RTOL = 1e-12
GGUF_ARCH = "controlvector"
_LAYER_KEY = re.compile(r"^(?:(?:layer|layers|direction|directions)\.)?(\d+)$")
_FLOAT_NP = (np.float16, np.float32, np.float64)


class VectorError(ValueError):
    """A steering-vector file that cannot be used; the message names the file, layer and fix."""


@dataclass(frozen=True, eq=False)
class SteeringVectors:
    """Validated steering directions of one file.

    ``directions`` maps a BLOCK index ``l`` (``0..n_layers-1``: the output of decoder block
    ``l``) to a float32 ``[k, d]`` tensor (``k ≥ 1`` directions at that layer, ``k ≤ d``).
    ``convention`` and ``shift`` are the ones used to map the file's indices to blocks.
    """

    name: str
    path: str
    sha256: str
    format: str
    convention: str
    shift: int
    directions: dict[int, torch.Tensor]
    model_hint: str = ""
    d: int = 0

    @property
    def layers(self) -> list[int]:
        """The block indices that carry directions, ascending."""
        return sorted(self.directions)

    def basis(self, l: int) -> torch.Tensor:
        """Orthonormal ``[d, r]`` float64 basis of the span of layer ``l``'s directions.

        Numerically dependent directions (singular value ≤ ``DEFAULT_RTOL`` × the largest)
        are dropped, so ``r ≤ k``; columns are ordered by singular value.
        """
        if l not in self.directions:
            raise KeyError(f"{self.name}: no directions at block {l}; layers with directions: {self.layers}")
        return orthonormalize(f64(self.directions[l]).T, DEFAULT_RTOL)

    def rank(self, l: int) -> int:
        """Dimension ``r`` of the span of layer ``l``'s directions (``≤ k``)."""
        return int(self.basis(l).shape[1])

    def bases(self) -> dict[int, torch.Tensor]:
        """``{block l: [d, r] float64 orthonormal basis}`` for every layer with directions."""
        return {l: self.basis(l) for l in self.layers}

    def to_meta(self) -> dict[str, Any]:
        """JSON-serialisable summary (``ranks``/``n_directions`` align with ``layers``)."""
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.sha256,
            "format": self.format,
            "convention": self.convention,
            "shift": self.shift,
            "model_hint": self.model_hint,
            "d": self.d,
            "layers": self.layers,
            "ranks": [self.rank(l) for l in self.layers],
            "n_directions": [int(self.directions[l].shape[0]) for l in self.layers],
        }


# ----------------------------------------------------------------------------- small helpers
def _sanitise(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._") or "vectors"
    return clean


def _vector_name(raw: str, where: str) -> str:
    """``raw`` sanitised (:func:`_sanitise`), then checked as one file name
    (:func:`ws.core.paths.safe_component`: e.g. ``data`` is refused); else :class:`VectorError`."""
    try:
        return safe_component(_sanitise(raw), "a steering-vector file's name (its candidate is vector:<name>)")
    except UnsafeNameError as e:
        raise VectorError(f"{where}: {e}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _short(err: BaseException) -> str:
    """The first line of an error message, without terminal colour codes (at most 300 characters)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _layer_index(key: object, where: str) -> int | None:
    """The layer number in a per-layer key (``12``, ``"12"``, ``"layer.12"`` …), else ``None``."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        if key < 0:
            raise VectorError(f"{where}: layer key {key} is negative. Key each tensor by its layer index (0 or more).")
        return key
    if isinstance(key, str):
        m = _LAYER_KEY.match(key)
        return int(m.group(1)) if m else None
    return None


def _as_tensor(x: object, where: str, label: str) -> torch.Tensor:
    """A float32 CPU tensor from a tensor/array of a floating dtype; refuse anything else."""
    if isinstance(x, np.ndarray):
        if x.dtype.type not in _FLOAT_NP:
            raise VectorError(f"{where}: {label} has dtype {x.dtype}, not a float. Save the directions as float32.")
        return torch.from_numpy(np.array(x, dtype=np.float32))
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise VectorError(f"{where}: {label} has dtype {x.dtype}, not a float. Save the directions as float32.")
        return x.detach().to(device="cpu", dtype=torch.float32).clone()
    raise VectorError(
        f"{where}: {label} is a {type(x).__name__}, not a tensor. Save a tensor [d] or [k, d] per layer "
        "(or one [n_layers, d] / [n_layers, k, d] tensor)."
    )


# ----------------------------------------------------------------------------- per-format readers
# Each reader returns (entries, model_hint, is_stack): entries = [(label, file index, tensor)].
Entry = tuple[str, int, torch.Tensor]


def _stack_entries(t: torch.Tensor, where: str, label: str) -> list[Entry]:
    """Rows of a full-stack tensor ``[L, d]`` / ``[L, k, d]`` as entries ``(label[i], i, [k, d])``."""
    if t.ndim not in (2, 3):
        raise VectorError(
            f"{where}: {label} has shape {tuple(t.shape)}; a full stack must be [L, d] or [L, k, d]. "
            "Key a single layer's vector by its layer (e.g. 'direction.12') instead."
        )
    rows = t if t.ndim == 3 else t[:, None, :]
    return [(f"{label}[{i}]", i, rows[i]) for i in range(rows.shape[0])]


def _keyed_entries(items: dict[object, object], where: str) -> list[Entry]:
    """Per-layer entries from ``{layer key: tensor [d] or [k, d]}``."""
    entries: list[Entry] = []
    for key, value in items.items():
        index = _layer_index(key, where)
        if index is None:
            raise VectorError(
                f"{where}: key {key!r} names no layer. Use the layer index as key: 12, '12', 'layer.12', "
                "'layers.12' or 'direction.12'."
            )
        t = _as_tensor(value, where, f"layer key {key!r}")
        if t.ndim not in (1, 2):
            raise VectorError(
                f"{where}: layer key {key!r} has shape {tuple(t.shape)}; a layer's directions must be [d] or [k, d]."
            )
        entries.append((f"layer key {key!r}", index, t if t.ndim == 2 else t[None, :]))
    return entries


def _from_mapping(items: dict[object, object], where: str) -> tuple[list[Entry], bool]:
    """Per-layer keys, or one full-stack tensor under a non-layer name."""
    if len(items) == 1:
        ((key, value),) = items.items()
        if _layer_index(key, where) is None:
            return _stack_entries(_as_tensor(value, where, f"tensor {key!r}"), where, f"tensor {key!r}"), True
    return _keyed_entries(items, where), False


def _read_safetensors(path: Path, where: str) -> tuple[list[Entry], str, bool]:
    try:
        items = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:
        msg = f"{where}: cannot be read as safetensors ({_short(err)}). Re-save it with safetensors.torch.save_file."
        raise VectorError(msg) from err
    entries, is_stack = _from_mapping(dict(items), where)
    return entries, "", is_stack


def _read_pt(path: Path, where: str) -> tuple[list[Entry], str, bool]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise VectorError(
            f"{where}: refused by torch.load(weights_only=True) ({pickle_refusal(err)}). Only a tensor or a dict "
            "{layer: tensor} is read; arbitrary pickled objects are never executed. Save plain tensors "
            "(torch.save({12: v}, ...)) or use safetensors."
        ) from err
    if isinstance(obj, torch.Tensor):
        return _stack_entries(_as_tensor(obj, where, "the tensor"), where, "the tensor"), "", True
    if isinstance(obj, dict):
        entries, is_stack = _from_mapping(obj, where)
        return entries, "", is_stack
    raise VectorError(
        f"{where}: holds a {type(obj).__name__}; expected a tensor [L, d] / [L, k, d] or a dict {{layer: tensor}}. "
        "Re-save it as one of those (torch.save({12: v}, ...))."
    )


def _read_npy(path: Path, where: str) -> tuple[list[Entry], str, bool]:
    try:
        arr = np.load(str(path), allow_pickle=False)
    except Exception as err:
        msg = f"{where}: cannot be read as .npy without pickle ({_short(err)}). Save a float array with np.save."
        raise VectorError(msg) from err
    if not isinstance(arr, np.ndarray):
        raise VectorError(f"{where}: holds a {type(arr).__name__}, not one array. Save one [L, d] array with np.save.")
    return _stack_entries(_as_tensor(arr, where, "the array"), where, "the array"), "", True


def _gguf_str(reader: gguf.GGUFReader, key: str) -> str | None:
    f = reader.get_field(key)
    return None if f is None else str(f.contents())


def _gguf_check_meta(reader: gguf.GGUFReader, n_dirs: int, where: str) -> str:
    arch = _gguf_str(reader, "general.architecture")
    if arch is not None and arch != GGUF_ARCH:
        raise VectorError(
            f"{where}: GGUF architecture is {arch!r}, not {GGUF_ARCH!r}: this is not a control-vector file "
            "(a model file?). Pass the control-vector .gguf."
        )
    count = reader.get_field(f"{GGUF_ARCH}.layer_count")
    if count is not None and int(count.contents()) != n_dirs:
        raise VectorError(
            f"{where}: {GGUF_ARCH}.layer_count says {int(count.contents())} direction tensors but the file holds "
            f"{n_dirs}: the file is inconsistent (truncated or badly written). Re-export it."
        )
    return _gguf_str(reader, f"{GGUF_ARCH}.model_hint") or ""


def _gguf_entry(t: Any, where: str) -> Entry:
    m = re.fullmatch(r"direction\.(\d+)", t.name)
    if m is None:
        raise VectorError(f"{where}: tensor {t.name!r} is not named 'direction.<layer>'. A control-vector file holds only those.")
    data = np.asarray(t.data)
    if len(t.shape) != 1:
        shape = tuple(int(s) for s in t.shape)
        raise VectorError(f"{where}: tensor {t.name!r} has shape {shape}; a control vector is [d] per layer.")
    if data.dtype.type not in _FLOAT_NP:
        raise VectorError(f"{where}: tensor {t.name!r} has GGML type {t.tensor_type.name}, not a float. Re-export as F32.")
    return (f"tensor {t.name!r}", int(m.group(1)), torch.from_numpy(np.array(data, dtype=np.float32).reshape(1, -1)))


def _read_gguf(path: Path, where: str) -> tuple[list[Entry], str, bool]:
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:
        raise VectorError(f"{where}: cannot be read as GGUF ({_short(err)}). Re-export the control vector.") from err
    entries = [_gguf_entry(t, where) for t in reader.tensors]
    hint = _gguf_check_meta(reader, len(entries), where)
    del reader  # releases the memory map; the entries hold copies
    return entries, hint, False


_READERS = {"safetensors": _read_safetensors, "pt": _read_pt, "npy": _read_npy, "gguf": _read_gguf}


# ----------------------------------------------------------------------------- validation
def _check_entry(label: str, t: torch.Tensor, d: int, where: str) -> None:
    """Shape ``[k, d]`` with ``1 ≤ k ≤ d`` and finite values."""
    k, width = t.shape
    if width != d:
        raise VectorError(f"{where}: {label} has width {width} but the model's d is {d}. Are these vectors for another model?")
    if k == 0:
        raise VectorError(f"{where}: {label} holds no directions (shape {tuple(t.shape)}). Drop the layer or add a direction.")
    if k > d:
        raise VectorError(f"{where}: {label} holds k={k} directions but d={d}: more than d cannot be independent. Keep ≤ d.")
    if not bool(torch.isfinite(t).all()):
        raise VectorError(f"{where}: {label} has NaN or Inf values. Recompute the direction from finite activations.")


def _is_zero(t: torch.Tensor, top: float) -> torch.Tensor:
    """Per row: is the norm 0 or at most ``ZERO_RTOL`` × ``top``?"""
    norms = f64(t).norm(dim=1)
    return (norms == 0) | (norms <= ZERO_RTOL * top)


def _to_block(label: str, index: int, convention: str, shift: int, n_layers: int, where: str) -> int:
    block = (index if convention == "block" else index - 1) + shift
    if not 0 <= block < n_layers:
        raise VectorError(
            f"{where}: {label} (index {index}, convention {convention!r}, shift {shift}) maps to block {block}, "
            f"outside 0..{n_layers - 1} (n_layers={n_layers}). Check the convention/shift or the model."
        )
    return block


def _stack_convention(n_rows: int, n_layers: int, where: str) -> str:
    """The convention a full stack's length implies; refuse any other length."""
    if n_rows == n_layers:
        return "block"
    if n_rows == n_layers + 1:
        return "hidden"
    raise VectorError(
        f"{where}: a full stack of L={n_rows} layers does not fit n_layers={n_layers}: expected L = {n_layers} "
        f"(block outputs) or {n_layers + 1} (hidden states incl. embeddings). Save {n_layers} rows, or key layers individually."
    )


def _placed(entries: list[Entry], convention: str, shift: int, n_layers: int, top: float, where: str) -> dict[int, torch.Tensor]:
    """Map checked entries to block indices; drop a zero embeddings row; refuse zeros and clashes."""
    out: dict[int, torch.Tensor] = {}
    labels: dict[int, str] = {}
    for label, index, t in entries:
        zero = _is_zero(t, top)
        if convention == "hidden" and index == 0:
            if bool(zero.all()):
                continue
            raise VectorError(
                f"{where}: {label} is hidden_states[0], the embeddings, not a block output, and is not zero. "
                "Drop it (save hidden states 1..n_layers only) or key the vectors by block index."
            )
        if bool(zero.any()):
            rows = zero.nonzero().flatten().tolist()
            raise VectorError(f"{where}: {label} has zero direction(s) at row(s) {rows}. Remove them or recompute the direction.")
        block = _to_block(label, index, convention, shift, n_layers, where)
        if block in out:
            raise VectorError(f"{where}: {labels[block]} and {label} both map to block {block}. Keep one key per layer.")
        out[block], labels[block] = t.contiguous(), label
    return out


def _check_args(path: Path, n_layers: int, d: int, convention: str | None, where: str) -> str:
    if not path.exists():
        raise VectorError(f"{where}: no such file. Check the path (relative paths start at the working folder).")
    if not path.is_file():
        raise VectorError(f"{where}: not a file. Pass the vectors file itself.")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise VectorError(f"{where}: unknown suffix {path.suffix!r}; accepted: {', '.join(SUFFIXES)}. Re-save in one of those.")
    if path.stat().st_size == 0:
        raise VectorError(f"{where}: the file is empty (0 bytes). Re-save the vectors.")
    if convention is not None and convention not in CONVENTIONS:
        raise VectorError(f"{where}: convention {convention!r} is not one of {CONVENTIONS}.")
    if n_layers < 1 or d < 1:
        raise VectorError(f"{where}: n_layers={n_layers} and d={d} must both be positive (pass the model's numbers).")
    return fmt


# ----------------------------------------------------------------------------- the reader
def read_vectors(
    path: str | Path,
    n_layers: int,
    d: int,
    *,
    convention: str | None = None,
    shift: int = 0,
    name: str | None = None,
) -> SteeringVectors:
    """Read and validate the steering vectors in ``path`` for a model of ``n_layers`` blocks of width ``d``.

    Args:
        path: a safetensors, ``.pt`` (read with ``weights_only``), ``.npy`` or GGUF control-vector file.
        n_layers: the model's decoder blocks.
        d: the model's residual width.
        convention: ``"block"`` or ``"hidden"`` (how the file's indices name layers; default per
            format, see the module docstring).
        shift: added to the block index afterwards.
        name: the candidates' name; default the file stem (sanitised to ``[A-Za-z0-9_.-]``, then
            checked by :func:`ws.core.paths.safe_component`).

    Returns:
        A :class:`SteeringVectors` whose ``directions`` are ``{block l: float32 [k, d]}``.

    Raises:
        VectorError: the file is unreadable or does not fit the model (named).
    """
    path = Path(path)
    where = f"steering vectors {str(path)!r}"
    vname = _vector_name(name if name is not None else path.stem, where)
    fmt = _check_args(path, n_layers, d, convention, where)
    entries, hint, is_stack = _READERS[fmt](path, where)
    if not entries:
        raise VectorError(f"{where}: holds no vectors. Save at least one direction.")
    for label, _, t in entries:
        _check_entry(label, t, d, where)
    implied = _stack_convention(len(entries), n_layers, where) if is_stack else "block"
    conv = convention or implied
    top = max(float(f64(t).norm(dim=1).max()) for _, _, t in entries)
    directions = _placed(entries, conv, int(shift), n_layers, top, where)
    if not directions:
        raise VectorError(f"{where}: holds no vectors besides a zero embeddings row. Save at least one direction.")
    return SteeringVectors(
        name=vname,
        path=str(path),
        sha256=_sha256(path),
        format=fmt,
        convention=conv,
        shift=int(shift),
        directions=dict(sorted(directions.items())),
        model_hint=hint,
        d=d,
    )
