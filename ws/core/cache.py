"""On-disk cache for activation captures, keyed by everything that determines them.

A capture depends on the model's weights, the prompts, the weight diff (for the label),
the layers and the code that captures. :func:`cache_key` hashes all of those; a change to
any of them gives a new key and so a recomputation. Files live under
``<cache>/activations/`` (``WS_CACHE``, default ``<repo>/cache``); ``make clean-cache``
removes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ws.core.device import real_parameters
from ws.core.io import save_safetensors
from ws.core.log import logger
from ws.core.paths import cache_dir, repo_root

# Source files whose code determines what a capture contains.
CODE_FILES = (
    "ws/captures/capture.py",
    "ws/captures/recorders.py",
    "ws/model/trace.py",
    "ws/model/chat.py",
    "ws/behavior/data.py",
    "ws/model/steer.py",
    "ws/core/device.py",
)


def activation_cache_dir() -> Path:
    return cache_dir() / "activations"


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of the tensors (sorted by name). The bytes
    are read in place (no copy: at 8B the embedding alone is 2 GiB)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def hash_model(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer of the model (~0.5 s for 135M parameters)."""
    tensors = real_parameters(model)
    tensors.update({f"buffer:{k}": v for k, v in model.named_buffers()})
    return hash_tensors(tensors)


def placement(model: torch.nn.Module) -> dict[str, object]:
    """Where and in what dtypes the model computes: the devices and dtypes of its parameters
    and its dispatch map, if any. Part of every activation-cache key: the same weights on
    another device (or offloaded) give the same numbers only within rounding, and a cached
    capture must be the one this run would have made."""
    params = list(model.parameters())
    return {
        "devices": sorted({str(p.device) for p in params}),
        "dtypes": sorted({str(p.dtype) for p in params}),
        "device_map": {str(k): str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()},
    }


def hash_code(files: tuple[str, ...] = CODE_FILES) -> str:
    h = hashlib.sha256()
    for rel in files:
        p = repo_root() / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.exists() else b"<missing>")
    return h.hexdigest()


def cache_key(parts: Mapping[str, object]) -> str:
    """A short hex key from JSON-serialisable parts (sorted, so order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def save_entry(path: str | Path, tensors: Mapping[str, torch.Tensor], key: str, meta: Mapping[str, str] | None = None) -> Path:
    """Store ``tensors`` as a cache entry, atomically. Its metadata records its own ``key`` and
    a checksum of its contents (:func:`hash_tensors`), which :func:`load_entry` verifies."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    md = {**(meta or {}), "ws_key": key, "ws_sha256": hash_tensors(tensors)}
    return save_safetensors(tensors, path, md)


def load_entry(path: str | Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """``(tensors, metadata)`` of a cache entry that is what ``key`` names, else None.

    None (with a warning: the caller recomputes) when the file is missing or unreadable,
    records another key (a file copied over another), or its contents do not match the
    checksum it recorded (damaged bytes). Never trusts a file it cannot verify.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            md = dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - any unreadable file is recomputed
        logger.warning(f"cache entry {path.name} is unreadable ({type(e).__name__}: {e}); recomputing")
        return None
    if md.get("ws_key") != key:
        logger.warning(f"cache entry {path.name} records key {md.get('ws_key')!r}, not {key!r}; recomputing")
        return None
    if md.get("ws_sha256") != hash_tensors(tensors):
        logger.warning(f"cache entry {path.name} does not match its checksum (damaged); recomputing")
        return None
    return tensors, md
