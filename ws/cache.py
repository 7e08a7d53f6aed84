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
from pathlib import Path
from typing import Mapping

import torch

from ws.paths import cache_dir, repo_root

# Source files whose code determines what a capture contains.
CODE_FILES = ("ws/capture.py", "ws/trace.py", "ws/data.py")


def activation_cache_dir() -> Path:
    return cache_dir() / "activations"


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of the tensors (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hash_model(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer of the model (~0.5 s for 135M parameters)."""
    tensors = dict(model.named_parameters())
    tensors.update({f"buffer:{k}": v for k, v in model.named_buffers()})
    return hash_tensors(tensors)


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
