"""Where the model runs: device and dtype choice, inputs on the model's device, real weights.

The model's forward and backward passes (completions, LoRA training, the effect eval, every
capture) run on the chosen device in the chosen dtype. Everything the subspace math sees is
moved to the CPU first: captures as float32, weights as float64, so bases, scores and nulls
are computed in float64 on the CPU wherever the model ran (reproducible across devices).

    device = resolve_device("auto")          # cuda if present, else mps, else cpu
    dtype = resolve_dtype("auto", device)    # bfloat16 on cuda, float32 elsewhere
    ids = ids.to(input_device(model))

A model dispatched across devices (``WS_DEVICE_MAP=auto``, accelerate) may hold some
weights off-device (offloaded to the CPU or disk; their parameters then sit on the ``meta``
device): :func:`module_weight` returns the real weight of such a module.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_problem(spec: str) -> str | None:
    """Why ``spec`` cannot be used here (None when it can)."""
    s = spec.strip().lower()
    if s in ("auto", "cpu"):
        return None
    m = re.fullmatch(r"cuda(?::(\d+))?", s)
    if m:
        if not torch.cuda.is_available():
            return "no CUDA device is visible to this torch build (a CPU build, or no GPU): use WS_DEVICE=cpu or auto"
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
        return None
    if s == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if ok else "Apple MPS is not available here: use WS_DEVICE=cpu or auto"
    return f"not a device: choose one of {DEVICE_CHOICES}"


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else Apple MPS, else the CPU; otherwise the named device."""
    s = spec.strip().lower()
    why = device_problem(s)
    if why:
        raise ValueError(f"device {spec!r}: {why}")
    if s == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")
    return torch.device(s)


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 elsewhere; or one of :data:`DTYPES` by name."""
    s = spec.strip().lower()
    if s == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if s not in DTYPES:
        raise ValueError(f"dtype {spec!r}: choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[s]


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: its embedding's device (the first block of a dispatched model)."""
    w = model.get_input_embeddings().weight
    if w.device.type == "meta":
        hook = getattr(model.get_input_embeddings(), "_hf_hook", None)
        dev = getattr(hook, "execution_device", None)
        return torch.device(dev) if dev is not None else torch.device("cpu")
    return w.device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs kernels asynchronously; a timer read
    before this measures only their launch). A no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (a CPU tensor) on ``device``. To a GPU through pinned memory and without waiting:
    a copy from ordinary (pageable) memory first waits for every kernel already queued."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def is_offloaded(p: torch.Tensor) -> bool:
    """A parameter whose data lives elsewhere (offloaded by a dispatched model)."""
    return p.device.type == "meta"


def module_weight(module: nn.Module) -> torch.Tensor:
    """The module's real ``weight`` (detached): its parameter, or for an offloaded module the
    tensor its dispatch hook loads before each forward pass."""
    w = module.weight
    if not is_offloaded(w):
        return w.detach()
    hook = getattr(module, "_hf_hook", None)
    wmap = getattr(hook, "weights_map", None)
    if wmap is None:
        raise RuntimeError(f"{type(module).__name__}.weight is on the meta device and no dispatch hook holds it")
    return wmap["weight"].detach()


def bf16_available(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU that supports it, or a
    CPU with bf16 units (avx512_bf16 or AMX, from the CPU's own flags). Elsewhere torch
    emulates bf16 and it is slower than float32 (measured: 2.8× for generation on a 2-core
    AVX2-only EPYC, docs/measured/2026-12-06-cpu-bench.md)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return device.type == "cpu" and _cpu_has_bf16()


@lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    """avx512_bf16 or AMX in the CPU's flags (read once per process)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:  # no /proc (not Linux): oneDNN's answer, which also counts AVX-512 without bf16 units
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(requested: bool, device: torch.device) -> bool:
    """The bf16 setting a run actually uses: ``requested`` (a training config's ``bf16``) and
    only where :func:`bf16_available`; float32 on a device without bf16 units."""
    return bool(requested) and bf16_available(device)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on the CPU or CUDA when ``enabled`` (a no-op elsewhere or when off)."""
    if enabled and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def real_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` as ``named_parameters`` gives them (tied ones once), each with its
    real data: an offloaded parameter's comes from its module's dispatch hook."""
    out = {}
    for name, p in model.named_parameters():
        if is_offloaded(p):
            mname, _, pname = name.rpartition(".")
            out[name] = model.get_submodule(mname)._hf_hook.weights_map[pname].detach()
        else:
            out[name] = p.detach()
    return out
