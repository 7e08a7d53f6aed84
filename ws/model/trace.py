"""TraceDict-style hooks, written for this suite, plus a padding-proof last-token gather.

Interface and semantics follow the well-known ``Trace`` / ``TraceDict`` pattern:

    with TraceDict(model, ["model.layers.3", "model.layers.7.mlp.up_proj"],
                   retain_input=True) as td:
        model(**batch)
    td["model.layers.3"].output   # the block's output (first element if it returns a tuple)
    td["model.layers.7.mlp.up_proj"].input   # the first positional input

- ``retain_output`` / ``retain_input``: keep the module's output / first positional input.
- ``clone`` / ``detach``: copy / detach what is kept (so later in-place edits do not change it).
- ``edit_output(output, layer_name) -> new_output``: replace the module's output (the value
  the module returns, a tensor or tuple; return it unchanged to only read it).
- ``read_input(input, layer_name)``: read the module's first positional input as the module
  runs (a streaming reader keeps nothing: unlike ``retain_input``, no layer's input outlives
  its use, so a pass over many layers holds one at a time).
- ``stop=True``: raise :class:`StopForward` after the LAST listed layer has run; the context
  manager swallows it, so the rest of the forward pass is skipped.
- Hooks are added on entering the ``with`` block and removed on leaving it, also when the
  body raises; an object made without ``with`` hooks nothing. An unknown layer name
  raises ``KeyError`` when the object is made, before any hook exists.

:func:`untuple` is the one place a module's output loses its tuple (its first element), for
these traces and for every hand-written hook of the suite.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; caught by Trace / TraceDict."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; ``KeyError`` listing close names if there is none."""
    for n, m in model.named_modules():
        if n == name:
            return m
    prefix = name.rsplit(".", 1)[0]
    near = [n for n, _ in model.named_modules() if n.startswith(prefix)][:6]
    raise KeyError(f"model has no module named {name!r}" + (f"; modules near it: {near}" if near else ""))


def untuple(output: Any) -> Any:
    """A module's output without its tuple: the first element of a (non-empty) tuple or list, else
    the output itself. A decoder block returns ``(hidden [B, T, d], ...)`` or, in newer
    transformers, ``hidden`` alone; attention returns ``(out, weights)``; a linear layer a tensor."""
    return output[0] if isinstance(output, (tuple, list)) and len(output) > 0 else output


def _keep(x: Any, clone: bool, detach: bool) -> Any:
    if isinstance(x, torch.Tensor):
        if detach:
            x = x.detach()
        if clone:
            x = x.clone()
        return x
    if isinstance(x, (tuple, list)):
        return type(x)(_keep(v, clone, detach) for v in x)
    return x


def _call_edit(fn: Callable, output: Any, layer: str) -> Any:
    try:
        n_params = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n_params = 2
    return fn(output, layer) if n_params >= 2 else fn(output)


class Trace:
    """Hook one module. Use as a context manager; see the module docstring."""

    def __init__(
        self,
        module: nn.Module,
        layer: str | None = None,
        retain_output: bool = True,
        retain_input: bool = False,
        clone: bool = False,
        detach: bool = False,
        edit_output: Callable | None = None,
        stop: bool = False,
        read_input: Callable | None = None,
    ):
        self.layer = layer
        self._target = get_module(module, layer) if layer is not None else module
        self.output: Any = None
        self.input: Any = None
        self._handle = None

        def hook(mod: nn.Module, inputs: tuple, output: Any) -> Any:
            if retain_input:
                self.input = _keep(untuple(inputs), clone, detach)
            if read_input is not None:
                _call_edit(read_input, _keep(untuple(inputs), False, True), layer)
            if edit_output is not None:
                output = _call_edit(edit_output, output, layer)
            if retain_output:
                self.output = _keep(untuple(output), clone, detach)
            if stop:
                raise StopForward()
            return output

        hook._ws_trace = True  # lets has_hooks() tell our hooks from the library's own
        self._hook = hook

    def open(self) -> None:
        """Add the hook (once); :meth:`close` removes it."""
        if self._handle is None:
            self._handle = self._target.register_forward_hook(self._hook)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> Trace:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)


class TraceDict(OrderedDict):
    """An ordered dict ``layer name -> Trace`` over many modules at once."""

    def __init__(
        self,
        module: nn.Module,
        layers: Iterable[str],
        retain_output: bool = True,
        retain_input: bool = False,
        clone: bool = False,
        detach: bool = False,
        edit_output: Callable | None = None,
        stop: bool = False,
        read_input: Callable | None = None,
    ):
        super().__init__()
        layers = list(dict.fromkeys(layers))  # keep order, drop repeats
        for i, name in enumerate(layers):  # every name is checked here; hooks come on entering
            self[name] = Trace(
                module,
                name,
                retain_output=retain_output,
                retain_input=retain_input,
                clone=clone,
                detach=detach,
                edit_output=edit_output,
                stop=stop and i == len(layers) - 1,
                read_input=read_input,
            )

    def close(self) -> None:
        for t in self.values():
            t.close()

    def __enter__(self) -> TraceDict:
        try:
            for t in self.values():
                t.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left OR right padding.

    attention_mask: ``[B, T]`` of 0/1 -> ``[B]`` long. A row with no real token raises.
    """
    mask = attention_mask.to(torch.long)
    if (mask.sum(dim=1) == 0).any():
        raise ValueError("a row of the batch has no real token (attention mask all zero)")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask).argmax(dim=1)


def gather_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``hidden [B, T, ...]`` at each row's last real token -> ``[B, ...]``."""
    idx = last_token_index(attention_mask).to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def has_hooks(model: nn.Module) -> bool:
    """True if any submodule still carries a hook installed by Trace / TraceDict.

    transformers installs persistent hooks of its own (to record hidden states); those
    are not counted.
    """
    return any(getattr(h, "_ws_trace", False) for m in model.modules() for h in m._forward_hooks.values())
