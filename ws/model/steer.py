"""Run a model at ``θ + α·w`` and put ``θ`` back bit-exactly.

    with weight_steer(model, w, alpha=1.0):
        logits = model(**batch).logits

``w`` maps base-model parameter names (``model.layers.12.self_attn.o_proj.weight``) to
tensors of the parameter's shape. Every key and shape is checked before any weight is
touched; the originals are copied and restored on exit, also when the body raises.
``alpha == 0`` changes nothing.

:func:`activation_steer` is activation steering in the same form: ``α·v_l`` added to the
residual stream at the OUTPUT of decoder block ``l`` (every position), hooks removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ws.model.load import decoder_layers


def w_mismatches(model: nn.Module, w: Mapping[str, torch.Tensor]) -> list[str]:
    """One line per key of ``w`` that the model lacks or whose shape differs."""
    params = dict(model.named_parameters())
    problems = []
    for key, t in w.items():
        if key not in params:
            problems.append(f"{key}: not a parameter of the model")
        elif tuple(params[key].shape) != tuple(t.shape):
            problems.append(f"{key}: diff shape {tuple(t.shape)} != model shape {tuple(params[key].shape)}")
    return problems


def check_w_fits(model: nn.Module, w: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming every key of ``w`` the model lacks or whose shape differs."""
    problems = w_mismatches(model, w)
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  … (+{len(problems) - 10} more)" if len(problems) > 10 else "")
        raise ValueError(
            f"the weight diff does not fit this model ({len(problems)} problem(s)):\n  {shown}\n"
            "Was it trained on another model? Rebuild it for this model (nbs/train_diff.py)."
        )


@contextmanager
def weight_steer(model: nn.Module, w: Mapping[str, torch.Tensor], alpha: float) -> Iterator[nn.Module]:
    """Add ``alpha * w`` to the model's weights inside the block; restore them bit-exactly.

    Works on any device and dtype: each delta is cast to its parameter's device and dtype,
    the original is copied and copied back. A parameter offloaded by a dispatched model
    (on the ``meta`` device) is steered through its module instead: a forward hook adds
    ``alpha · x Δᵀ`` to the module's output (the same linear map; its weights are never
    touched, so nothing needs restoring).
    """
    if alpha == 0 or not w:
        yield model
        return
    check_w_fits(model, w)
    params = dict(model.named_parameters())
    saved: dict[str, torch.Tensor] = {}
    handles = []
    try:
        with torch.no_grad():
            for key, delta in w.items():
                p = params[key]
                if p.device.type == "meta":
                    handles.append(_steer_by_hook(model, key, delta, alpha))
                    continue
                saved[key] = p.detach().clone()
                p.add_(delta.to(device=p.device, dtype=p.dtype), alpha=alpha)
        yield model
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for key, orig in saved.items():
                params[key].copy_(orig)


def _steer_by_hook(model: nn.Module, key: str, delta: torch.Tensor, alpha: float):
    """A forward hook on the linear module owning ``key`` (``….weight``) that adds ``alpha · x Δᵀ``."""
    mname, _, pname = key.rpartition(".")
    if pname != "weight":
        raise ValueError(f"{key}: only the weights of offloaded linear layers can be steered, not {pname!r}")
    module = model.get_submodule(mname)

    def hook(mod, args, output):
        x = args[0].to(device=output.device, dtype=output.dtype)
        return output + alpha * torch.nn.functional.linear(x, delta.to(device=output.device, dtype=output.dtype))

    return module.register_forward_hook(hook)


@contextmanager
def activation_steer(model: nn.Module, vectors: Mapping[int, torch.Tensor], alpha: float) -> Iterator[nn.Module]:
    """Add ``alpha · vectors[l]`` to the output of decoder block ``l`` (the residual stream after
    it, at every position, generated tokens included) inside the block; the hooks are removed
    on exit, also when the body raises. ``vectors``: block index -> ``[d]``. ``alpha == 0``
    changes nothing. The convention of :mod:`ws.model.vectors` (a vector for block ``l`` acts
    on its output)."""
    blocks = decoder_layers(model)
    for l, v in vectors.items():
        if not 0 <= int(l) < len(blocks):
            raise ValueError(f"activation steering at block {l}: the model has blocks 0..{len(blocks) - 1}")
        if v.ndim != 1 or v.shape[0] != model.config.hidden_size:
            raise ValueError(
                f"activation steering at block {l}: a vector of shape {tuple(v.shape)}, not [{model.config.hidden_size}]"
            )
    if alpha == 0 or not vectors:
        yield model
        return
    handles = []

    def hook_for(v: torch.Tensor):
        def hook(mod, args, output):
            if isinstance(output, tuple):
                h = output[0]
                return (h + (alpha * v).to(device=h.device, dtype=h.dtype), *output[1:])
            return output + (alpha * v).to(device=output.device, dtype=output.dtype)

        return hook

    try:
        for l, v in vectors.items():
            handles.append(blocks[int(l)].register_forward_hook(hook_for(v.detach())))
        yield model
    finally:
        for h in handles:
            h.remove()
