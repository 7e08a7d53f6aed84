"""The recorders behind :mod:`ws.captures.capture`: one object per capture kind, and the batched passes that feed them.

A recorder hooks one module per layer (``names[l]``) and is given, in every batch, each module's
OUTPUT as the module returns it (a tensor or a tuple: :func:`ws.model.trace.untuple` takes the
hidden states out) or its first positional INPUT (``reads``). Its hook keeps what the capture
needs as CPU tensors; its :meth:`~Recorder.finalise` turns what the batches kept into named
tensors (float32, or bool for a mask).

- :class:`LastToken`: a module's input or output at each prompt's last real token, ``[L, n, d]``
  (block outputs, block inputs, ``up_proj`` inputs).
- :class:`Embedding`: block 0's input (the token embedding) at the last real token, ``[n, d]``.
- :class:`UpWritten`: ``up_proj``'s output at the last real token through ``W_down``, ``[L, n, d]``.
- :class:`SuffixOutputs`, :class:`AttentionRows`: block outputs ``[L, n, T, d]`` and the final
  token's head-averaged attention row ``[L, n, T]`` over each prompt's shared suffix, with its
  mask ``[n, T]`` (the token axis right-aligned on the last real token; see :mod:`ws.captures.capture`).
- :class:`SecondMoment`: an uncentred second moment of a module's input or output over all
  real tokens: ``E[xxᵀ]`` ``[L, d', d']``, its diagonal ``[L, d']``, or the written moment
  ``W E[xxᵀ] Wᵀ`` ``[L, d, d]`` (summed in float64, float32 at the end), and the token count.

:func:`record` runs the batched forward passes of the decoder stack (no lm_head) with every
recorder hooked in: output hooks run during the pass; inputs are retained (detached) and
handed to their recorders after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from ws.core.device import input_device, module_weight
from ws.core.log import Bar
from ws.model.load import decoder_layers, layer_name, n_layers
from ws.model.trace import TraceDict, last_token_index, untuple

__all__ = [
    "Batch",
    "Recorder",
    "LastToken",
    "Embedding",
    "UpWritten",
    "SuffixOutputs",
    "AttentionRows",
    "SecondMoment",
    "per_layer",
    "encode",
    "position_ids",
    "prompt_list",
    "record",
]


# ----------------------------------------------------------------------------- batches
def encode(tok, prompts: Sequence[str]) -> tuple[Int[Tensor, "B T_in"], Int[Tensor, "B T_in"]]:
    """``(input_ids, attention_mask)`` of rendered prompts: no special tokens added, padded on the tokenizer's side."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def position_ids(mask: Int[Tensor, "B T_in"]) -> Int[Tensor, "B T_in"]:
    """Positions counted over real tokens only (left padding sees the positions of no padding)."""
    return (mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def prompt_list(prompts: Sequence[str]) -> list[str]:
    """The prompts as a list; ``ValueError`` when there are none."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to capture")
    return prompts


@dataclass
class Batch:
    """One batch of prompts, tokenised, with the indices the recorders' hooks share."""

    start: int  # index of its first prompt among all the prompts
    ids: Int[Tensor, "B T_in"]
    mask: Int[Tensor, "B T_in"]
    rows: Int[Tensor, " B"]  # 0 … B−1
    last: Int[Tensor, " B"]  # each row's last real token
    real: Bool[Tensor, "B T_in"]  # real (not padding) tokens

    @classmethod
    def of(cls, tok, prompts: Sequence[str], start: int) -> Batch:
        """The batch of ``prompts``, the first of which is prompt ``start`` of all."""
        ids, mask = encode(tok, prompts)
        return cls(start, ids, mask, torch.arange(ids.shape[0]), last_token_index(mask), mask.bool())


def per_layer(model: nn.Module, part: str = "") -> list[str]:
    """Module names of ``part`` in every decoder block: ``model.layers.<l><part>``."""
    return [f"{layer_name(l)}{part}" for l in range(n_layers(model))]


# ----------------------------------------------------------------------------- recorders
class Recorder:
    """One capture kind: hooks ``names[l]`` (one module per layer) and reads its output or its
    first positional input (``reads``). Per batch: :meth:`new_batch`, :meth:`hook` once per layer,
    :meth:`end_batch`; after the last batch :meth:`finalise` gives the named tensors."""

    reads: Literal["output", "input"] = "output"

    def __init__(self, names: Sequence[str]):
        self.names = list(names)

    def new_batch(self, b: Batch) -> None:
        self.b = b

    def hook(self, l: int, x: Any) -> None:
        """``x``: module ``names[l]``'s output as returned (maybe a tuple), or its first positional input."""
        raise NotImplementedError

    def end_batch(self) -> None:
        pass

    def finalise(self) -> dict[str, Tensor]:
        raise NotImplementedError


class _Stacked(Recorder):
    """A recorder that keeps one tensor per layer and batch, ``[B, ...]``, stacked to ``[L, B, ...]``."""

    def __init__(self, names: Sequence[str]):
        super().__init__(names)
        self.batches: list[Tensor] = []

    def new_batch(self, b: Batch) -> None:
        super().new_batch(b)
        self.kept: list[Tensor | None] = [None] * len(self.names)

    def hook(self, l: int, x: Any) -> None:
        self.kept[l] = self.keep(l, x)

    def keep(self, l: int, x: Any) -> Tensor:
        raise NotImplementedError

    def end_batch(self) -> None:
        self.batches.append(torch.stack(self.kept))  # [L, B, ...]


class LastToken(_Stacked):
    """``key``: each module's output (or input) at each prompt's last real token, ``[L, n, d]``."""

    def __init__(self, key: str, names: Sequence[str], reads: Literal["output", "input"] = "output"):
        super().__init__(names)
        self.key, self.reads = key, reads

    def keep(self, l: int, x: Any) -> Float[Tensor, "B d"]:
        return untuple(x)[self.b.rows, self.b.last].float().cpu()

    def finalise(self) -> dict[str, Float[Tensor, "L n d"]]:
        return {self.key: torch.cat(self.batches, dim=1)}


class Embedding(LastToken):
    """``embed``: block 0's input (the token embedding) at each prompt's last real token, ``[n, d]``."""

    def __init__(self):
        super().__init__("embed", [layer_name(0)], reads="input")

    def finalise(self) -> dict[str, Float[Tensor, "n d"]]:
        return {"embed": torch.cat([kept[0] for kept in self.batches], dim=0)}


class UpWritten(LastToken):
    """``up_written``: ``up_proj``'s output ``u`` at the last real token mapped back to the
    residual stream through ``W_down``: ``u @ W_downᵀ``, ``[L, n, d]``."""

    def __init__(self, model: nn.Module):
        super().__init__("up_written", per_layer(model, ".mlp.up_proj"))
        self.W_down: list[Float[Tensor, "d d_mlp"]] = [module_weight(b.mlp.down_proj).cpu() for b in decoder_layers(model)]

    def keep(self, l: int, x: Any) -> Float[Tensor, "B d"]:
        return super().keep(l, x) @ self.W_down[l].float().T


class _OverSuffix(_Stacked):
    """Base of the token-level recorders: each prompt's shared suffix (``lens[j]`` tokens),
    right-aligned on its last real token over ``T = max(lens)`` positions."""

    def __init__(self, names: Sequence[str], lens: Sequence[int]):
        super().__init__(names)
        self.lens, self.T = list(lens), max(lens)

    def new_batch(self, b: Batch) -> None:
        super().new_batch(b)
        lens = torch.as_tensor(self.lens[b.start : b.start + len(b.rows)], dtype=torch.long)  # [B]
        back = (self.T - 1 - torch.arange(self.T))[None, :]  # [1, T]: steps back from the last token
        self.valid: Bool[Tensor, "B T"] = back < lens[:, None]
        self.idx: Int[Tensor, "B T"] = (self.b.last[:, None] - back).clamp(min=0)


class SuffixOutputs(_OverSuffix):
    """``tok``: block outputs over the shared suffix, ``[L, n, T, d]`` (zeros where padded), and
    ``mask [n, T]``: which positions are real."""

    def __init__(self, model: nn.Module, lens: Sequence[int]):
        super().__init__(per_layer(model), lens)
        self.masks: list[Bool[Tensor, "B T"]] = []

    def keep(self, l: int, x: Any) -> Float[Tensor, "B T d"]:
        return untuple(x)[self.b.rows[:, None], self.idx].float().cpu() * self.valid[..., None]

    def end_batch(self) -> None:
        super().end_batch()
        self.masks.append(self.valid)

    def finalise(self) -> dict[str, Tensor]:
        return {"tok": torch.cat(self.batches, dim=1), "mask": torch.cat(self.masks, dim=0)}


class AttentionRows(_OverSuffix):
    """``attn``: the final token's head-averaged attention row over the shared suffix, ``[L, n, T]``
    (not renormalised; needs eager attention, which returns the softmax weights)."""

    def __init__(self, model: nn.Module, lens: Sequence[int]):
        super().__init__(per_layer(model, ".self_attn"), lens)

    def keep(self, l: int, x: Any) -> Float[Tensor, "B T"]:
        w = x[1] if isinstance(x, (tuple, list)) and len(x) > 1 else None  # [B, heads, T_in, T_in]
        if w is None:
            raise RuntimeError(
                f"{self.names[l]} returned no attention weights: token-level captures need eager attention "
                f"(model.config._attn_implementation = 'eager')"
            )
        row = w[self.b.rows, :, self.b.last, :].mean(dim=1)  # [B, T_in]: head-averaged final-token row
        return row.float().cpu().gather(1, self.idx) * self.valid

    def finalise(self) -> dict[str, Float[Tensor, "L n T"]]:
        return {"attn": torch.cat(self.batches, dim=1)}


class SecondMoment(Recorder):
    """``key``: an uncentred second moment of each module's input (or output) over all real
    tokens, summed in float64 batch by batch and float32 at the end; also ``mom_n_tokens [1]``,
    the number of tokens (the same for every moment of a pass). ``kind``:

    - ``"full"``: ``E[xxᵀ]``, ``[L, d', d']``;
    - ``"diag"``: its diagonal ``E[x²]`` per channel, ``[L, d']`` (never the ``d' × d'`` matrix:
      for ``down_proj``'s input that is ``d_ff × d_ff`` per layer, 49 GiB in float64 at 8B);
    - ``"written"``: ``E[(Wx)(Wx)ᵀ] = W E[xxᵀ] Wᵀ`` of the module's input ``x`` and its weight
      ``W`` (``weights[l]``, bias left out), ``[L, d, d]``: the input mapped through ``W`` in
      float64 on the input's device, for a model whose outputs are rounded (bfloat16) or biased.
    """

    def __init__(
        self,
        key: str,
        names: Sequence[str],
        reads: Literal["output", "input"],
        kind: Literal["full", "diag", "written"] = "full",
        weights: Sequence[Tensor] | None = None,
    ):
        super().__init__(names)
        if kind == "written" and (reads != "input" or weights is None or len(weights) != len(self.names)):
            raise ValueError("a 'written' moment reads the modules' inputs and needs one weight per module")
        self.key, self.reads, self.kind, self.weights = key, reads, kind, weights
        self.sums: list[Tensor | None] = [None] * len(self.names)
        self.pending: list[list[Tensor]] = [[] for _ in self.names]  # per layer: float64 [N_b, d'] not yet summed
        self.rows = [0] * len(self.names)
        self.n_tok = 0

    def new_batch(self, b: Batch) -> None:
        super().new_batch(b)
        self.n_tok += int(b.real.sum())

    def hook(self, l: int, x: Any) -> None:
        """Adds this batch's ``fᵀf`` (``f`` the rows whose Gram the moment sums: the real tokens'
        inputs or outputs, or the inputs mapped through ``W``), or, on the CPU while a layer's
        rows number at most their width, keeps ``f`` to sum later: ``N × d'`` float64 values
        instead of ``d' × d'`` (at 8B, 1,748 probe tokens against ``d`` = 4096). The sums are
        formed in batch order either way, so they are the same bit for bit."""
        y = untuple(x)
        y = y[self.b.real.to(y.device)]  # [N, d']
        if self.kind == "diag":
            y = y.to("cpu", torch.float64)
            self._add(l, (y * y).sum(dim=0))
            return
        if self.kind == "written":
            f = y.to(torch.float64) @ self.weights[l].detach().to(y.device, torch.float64).T  # [N, d]
        else:
            f = y.to("cpu", torch.float64)
        if f.device.type == "cpu" and self.sums[l] is None and self.rows[l] + f.shape[0] <= f.shape[1]:
            self.pending[l].append(f)
            self.rows[l] += f.shape[0]
            return
        self._sum_pending(l)
        self._add(l, (f.T @ f).cpu())

    def _add(self, l: int, g: Tensor) -> None:
        self.sums[l] = g if self.sums[l] is None else self.sums[l].add_(g)

    def _sum_pending(self, l: int) -> None:
        """Layer ``l``'s kept rows into its sum, in the order they came, then dropped."""
        for f in self.pending[l]:
            self._add(l, f.T @ f)
        self.pending[l] = []

    def finalise(self) -> dict[str, Tensor]:
        # layer by layer into one float32 tensor, each float64 sum freed once converted: the
        # peak is the float64 sums (or the rows kept in their place), not those plus two float32
        # copies (a list, then its stack)
        self._sum_pending(0)  # a sum's shape
        mean = torch.empty((len(self.sums), *self.sums[0].shape), dtype=torch.float32)
        for l in range(len(self.sums)):
            self._sum_pending(l)
            mean[l] = (self.sums[l] / self.n_tok).float()
            self.sums[l] = None
        return {self.key: mean, "mom_n_tokens": torch.tensor([float(self.n_tok)])}


# ----------------------------------------------------------------------------- passes
def _sites(recorders: Sequence[Recorder], reads: str) -> dict[str, list[tuple[Recorder, int]]]:
    """Module name -> the ``(recorder, layer)`` pairs that read its ``reads`` ("output" / "input")."""
    sites: dict[str, list[tuple[Recorder, int]]] = {}
    for r in recorders:
        if r.reads == reads:
            for l, name in enumerate(r.names):
                sites.setdefault(name, []).append((r, l))
    return sites


def _hooked_pass(model: nn.Module, b: Batch, recorders: Sequence[Recorder]) -> None:
    """One forward pass of the decoder stack over batch ``b``, every recorder's hooks in place.
    Inputs and outputs are read as each module runs: no layer's tensors outlive their reading."""
    outs, ins = _sites(recorders, "output"), _sites(recorders, "input")

    def edit(output: Any, name: str) -> Any:
        for r, l in outs[name]:
            r.hook(l, output)
        return output

    def read(x: Any, name: str) -> None:
        for r, l in ins[name]:
            r.hook(l, x)

    ctx_out = TraceDict(model, outs, retain_output=False, edit_output=edit) if outs else nullcontext({})
    ctx_in = TraceDict(model, ins, retain_output=False, read_input=read) if ins else nullcontext({})
    dev = input_device(model)
    with ctx_out, ctx_in:
        # the decoder stack only: no logits are needed (the lm_head is ~20 % of a 135M model's work)
        getattr(model, "model", model)(
            input_ids=b.ids.to(dev), attention_mask=b.mask.to(dev), position_ids=position_ids(b.mask).to(dev), use_cache=False
        )


@torch.no_grad()
def record(
    model: nn.Module,
    tok,
    prompts: Sequence[str],
    batch_size: int,
    recorders: Sequence[Recorder],
    pbar: Bar | None = None,
) -> dict[str, Tensor]:
    """Batched passes over ``prompts`` (``batch_size`` at a time) feeding every recorder; their
    finalised captures by name. ``pbar`` advances by one per batch."""
    prompts = prompt_list(prompts)
    for start in range(0, len(prompts), batch_size):
        b = Batch.of(tok, prompts[start : start + batch_size], start)
        for r in recorders:
            r.new_batch(b)
        _hooked_pass(model, b, recorders)
        for r in recorders:
            r.end_batch()
        if pbar is not None:
            pbar.update(1)
    return {k: v for r in recorders for k, v in r.finalise().items()}
