"""Run a model at ``θ + α·w`` and put ``θ`` back bit-exactly.

    with weight_steer(model, w, alpha=1.0):
        logits = model(**batch).logits

``w`` maps base-model parameter names (``model.layers.12.self_attn.o_proj.weight``) to
tensors of the parameter's shape. Every key and shape is checked before any weight is
touched. ``alpha == 0`` changes nothing.

By default the steered weight exists only while its module runs: a pre-hook puts
``θ + α·Δ`` in place of the parameter's tensor for that call and the post-hook puts the
original back, so the run holds one steered tensor at a time instead of a copy of every
touched weight (13 GiB for half the blocks of an 8B model in float32). The steered tensor is
the same sum, in the same dtype, as an in-place ``add_``, so the outputs are bit for bit
those of ``in_place=True``. That mode adds to the weights themselves for the whole block and
copies the originals back on exit (also when the body raises): for code that reads the
parameters inside the block (saving a merged checkpoint, or a hook that reads a module's weight
after the module ran), and for a parameter that several modules share. The default steers a
parameter when its module is called, as every family the suite loads calls its projections.

:func:`activation_steer` is activation steering in the same form: ``α·v_l`` added to the
residual stream at the OUTPUT of decoder block ``l`` (every position), hooks removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ws.model.load import decoder_layers


class Deferred:
    """A delta made only when it is needed: while its module runs under :func:`weight_steer`
    (dropped after the call), or once for the block where the weights are steered in place.
    For deltas that are cheap to make from what the run holds anyway (a projection of the
    diff), so a steered variant of the whole diff never sits in memory at once.

    Args:
        shape: the delta's shape (the parameter's).
        make: ``() -> torch.Tensor`` of that shape; called again at each use, so it must give
            the same tensor each time.
    """

    def __init__(self, shape: Sequence[int], make: Callable[[], torch.Tensor]):
        self.shape, self._make = torch.Size(shape), make

    def materialize(self) -> torch.Tensor:
        """The delta, made now.

        Returns:
            A tensor of :attr:`shape`.
        """
        return self._make()


def materialize(delta: torch.Tensor | Deferred) -> torch.Tensor:
    """``delta`` as a tensor (a :class:`Deferred` made now)."""
    return delta.materialize() if isinstance(delta, Deferred) else delta


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
def weight_steer(model: nn.Module, w: Mapping[str, torch.Tensor], alpha: float, *, in_place: bool = False) -> Iterator[nn.Module]:
    """Run the model at ``θ + alpha·w`` inside the block; ``θ`` is bit-exactly itself after it.

    Args:
        model: the model; any device and dtype (each delta is cast once to its parameter's).
        w: parameter name -> delta of the parameter's shape (a tensor or a :class:`Deferred`).
        alpha: the strength; 0 changes nothing.
        in_place: add to the parameters themselves for the whole block (their copies restored
            on exit) instead of swapping in the steered tensor while each module runs (the
            module doc). Parameters that several modules share are always steered in place.

    A parameter offloaded by a dispatched model (on the ``meta`` device) is steered through its
    module instead: a forward hook adds ``alpha · x Δᵀ`` to the module's output (the same
    linear map; its weights are never touched).

    Returns:
        A context manager yielding ``model``.
    """
    if alpha == 0 or not w:
        yield model
        return
    check_w_fits(model, w)
    params = dict(model.named_parameters())
    shared = _shared_parameters(model)
    saved: dict[str, torch.Tensor] = {}
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    handles = []
    try:
        with torch.no_grad():
            for key, delta in w.items():
                p = params[key]
                if p.device.type == "meta":
                    handles.append(_steer_by_hook(model, key, materialize(delta), alpha))
                elif in_place or key in shared:
                    saved[key] = p.detach().clone()
                    p.add_(materialize(delta).to(device=p.device, dtype=p.dtype), alpha=alpha)
                else:
                    swapped.append((p, p.data))
                    _RUNNING[id(p)] = _RUNNING.get(id(p), 0) + 1
                    if not isinstance(delta, Deferred):
                        delta = delta.to(device=p.device, dtype=p.dtype)
                    handles.extend(_steer_while_running(model, key, delta, alpha))
        yield model
    finally:
        for h in handles:
            h.remove()
        for p, orig in swapped:
            p.data = orig
            _RUNNING[id(p)] -= 1
            if not _RUNNING[id(p)]:
                del _RUNNING[id(p)]
        with torch.no_grad():
            for key, orig in saved.items():
                params[key].copy_(orig)


#: parameters that open :func:`weight_steer` blocks steer while their modules run: ``id -> count``
_RUNNING: dict[int, int] = {}


def steered_while_running(model: nn.Module) -> list[str]:
    """Names of the model's parameters that a :func:`weight_steer` block steers while their
    modules run: outside a call their tensors are the originals, so a guard that reads the
    weights (a cache of activations computed below a block) must ask here.

    Returns:
        Parameter names, in the model's order.
    """
    return [n for n, p in model.named_parameters() if _RUNNING.get(id(p))]


def _shared_parameters(model: nn.Module) -> set[str]:
    """Names (as ``named_parameters`` gives them) of parameters that more than one module holds
    (tied embeddings)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {n for group in names.values() if len(group) > 1 for n in group}


def _steer_while_running(model: nn.Module, key: str, delta: torch.Tensor | Deferred, alpha: float) -> list:
    """Hooks on the module owning parameter ``key``: before each call its tensor becomes
    ``orig + alpha·delta`` (one steered tensor, freed after the call; a :class:`Deferred` delta
    is made for the call and dropped with it); after it, ``orig`` again.
    ``orig`` is the tensor at the time the hooks are made, so nested steering restores it
    whichever hook runs last. Returns the hook handles."""
    mname, _, pname = key.rpartition(".")
    module = model.get_submodule(mname)
    p = module._parameters[pname]
    orig = p.data

    def before(mod, args):
        d = materialize(delta).to(device=p.device, dtype=p.dtype)
        p.data = torch.add(p.data, d, alpha=alpha)

    def after(mod, args, output):
        p.data = orig

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


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
