"""Adapter training steps that skip the work an adapter cannot change.

An adapter of this suite lives on decoder blocks ``first … L−1`` only (``layer_range``).
Three facts make a training step cheaper without changing what it computes:

1. **The unchanged lower blocks.** The residual entering block ``first`` does not depend on
   the adapter: it is computed once per example when the plan is built, and every step
   swaps blocks ``0 … first−1`` for pass-throughs (:func:`ws.model.fast_readout.skip_blocks`) and
   feeds it in.
2. **The shared prefix.** Every example starts with the same tokens (the chat template's
   system turn and the opening of the user turn). Under causal attention they never see
   what follows, so one row over the prefix per step gives their keys and values (with
   gradients: they do depend on the adapter), repeated along the batch. On the CPU only
   (:func:`shares_prefix`): on a GPU the step is launch-bound, and whole sequences from
   block ``first`` need fewer passes.
3. **The read positions.** The loss reads only the response tokens, so the lm_head and the
   softmax over the vocabulary run on those positions alone (about a quarter of them).

And one fact makes the bf16-autocast step cheaper: autocast casts every frozen linear
weight to bfloat16 anew on every forward (about 160 M values per step on the embedded
model, a sixth of the step on the CPU). :func:`frozen_linears_in` stores them in bfloat16
for the whole training instead; autocast would have made exactly those values, so the step
is bit-identical (tested), for adapters whose base layers enter only as ``F.linear``
(:func:`precast_safe`: LoRA, its sign-flipped and PiSSA forms).

:func:`step_loss` is the same weighted cross-entropy as :func:`ws.diffs.training.response_loss`
on a full forward; ``tests/test_fasttrain.py`` checks the loss and every gradient against
that plain step on the tiny models (float32, to 1e-5), for a plain and a sign-flipped
LoRA and for IA³.

    plan = plan_training(peft_model, tok, encoded, first=9)
    loss = step_loss(peft_model, plan, [3, 17, 42, …], stance_weight=5.0, bf16=True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from ws.core.device import autocast, input_device, to_device
from ws.model.fast_readout import _common_prefix as _prompt_prefix
from ws.model.fast_readout import skip_blocks, suffix_mask_positions
from ws.model.load import layer_name
from ws.model.trace import TraceDict

__all__ = ["TrainPlan", "plan_training", "step_loss", "adapted_blocks", "frozen_linears_in", "precast_safe"]


@dataclass
class TrainPlan:
    """The encoded examples split at their common prefix, with the residual entering block
    ``first`` of each suffix under the base weights."""

    first: int
    prefix: Tensor  # [P] long: the token ids every example starts with
    suffixes: list[Tensor]  # per example [T_i] long: its tokens after the prefix
    n_prompt: list[int]  # per example: how many of its suffix tokens are prompt (not trained on)
    resid: list[Float[Tensor, "T d"]]  # per example: residual entering block `first`, on the model's device


def adapted_blocks(peft_model: nn.Module) -> set[int]:
    """The decoder blocks holding a trainable parameter; raises when one lies outside the
    blocks (embedding, final norm, lm_head), where nothing below could be skipped."""
    blocks = set()
    for name, p in peft_model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        if "layers" not in parts or not parts[parts.index("layers") + 1].isdigit():
            raise ValueError(
                f"{name}: a trainable parameter outside the decoder blocks; the fast step needs adapters on blocks only"
            )
        blocks.add(int(parts[parts.index("layers") + 1]))
    if not blocks:
        raise ValueError("the model has no trainable parameters")
    return blocks


def _common_prefix(encoded: Sequence[tuple[list[int], int]]) -> int:
    """Longest common token prefix of the prompts, kept one token short of the shortest
    prompt (:func:`ws.model.fast_readout._common_prefix` on the prompt parts): the token that predicts
    the first response token stays in every suffix."""
    return _prompt_prefix([ids[:n_prompt] for ids, n_prompt in encoded])


def shares_prefix(device: torch.device) -> bool:
    """Whether a training step on ``device`` runs the shared prefix once (fact 2 of the
    module's docstring): on the CPU, where a step costs its FLOPs. On a GPU a step of the
    embedded model costs its kernel launches, not its FLOPs (0.25 s per step on an H100,
    close to a 64-wide model's 0.19 s on a 2-core CPU), and whole sequences through blocks
    ``first …`` make 42 block passes forward and back where the prefix pass through every
    block plus the suffix pass make 93 (measured on the H100: 0.25 → 0.17 s per step with
    the step's waits removed as well)."""
    return device.type == "cpu"


@torch.no_grad()
def plan_training(
    peft_model: nn.Module,
    encoded: Sequence[tuple[list[int], int]],
    bf16: bool = False,
    batch_size: int = 16,
    share_prefix: bool | None = None,
) -> TrainPlan:
    """Split ``encoded`` (``(token ids, n_prompt_tokens)`` per example) at the common prefix
    and run blocks ``0 … first−1`` once over every example (``first`` = the lowest adapted
    block), under the same autocast as the training steps."""
    base = peft_model.get_base_model()
    first = min(adapted_blocks(peft_model))
    dev = input_device(peft_model)
    share = shares_prefix(dev) if share_prefix is None else share_prefix
    P = _common_prefix(encoded) if share else 0
    resid: list[Tensor] = []
    name = layer_name(first)
    for s in range(0, len(encoded), batch_size):
        chunk = [ids for ids, _ in encoded[s : s + batch_size]]
        T = max(len(x) for x in chunk)
        ids = torch.zeros((len(chunk), T), dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for j, x in enumerate(chunk):
            ids[j, : len(x)], mask[j, : len(x)] = torch.tensor(x), 1
        with autocast(dev, bf16), TraceDict(base, [name], retain_input=True, retain_output=False, detach=True, stop=True) as td:
            base.model(input_ids=ids.to(dev), attention_mask=mask.to(dev))
        h = td[name].input
        resid.extend(h[j, P : len(x)].clone() for j, x in enumerate(chunk))
    return TrainPlan(
        first=first,
        prefix=torch.tensor(encoded[0][0][:P], dtype=torch.long),
        suffixes=[torch.tensor(ids[P:], dtype=torch.long) for ids, _ in encoded],
        n_prompt=[n - P for _, n in encoded],
        resid=resid,
    )


def _prefix_cache(backbone: nn.Module, prefix: Tensor, dev: torch.device, repeats: int):
    """Keys/values of the prefix under the current weights (with gradients), one row
    repeated ``repeats`` times; None without a prefix."""
    P = prefix.numel()
    if P == 0:
        return None
    ids = prefix[None].to(dev)
    out = backbone(
        input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(P, device=dev)[None], use_cache=True
    )
    cache = out.past_key_values
    cache.batch_repeat_interleave(repeats)
    return cache


def _suffix_batch(plan: TrainPlan, idx: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Right-padded residuals ``[b, T, d]``, mask ``[b, T]`` and next-token targets ``[b, T]``
    (-100 on the prompt and padding)."""
    T = max(plan.suffixes[i].numel() for i in idx)
    d = plan.resid[idx[0]].shape[-1]
    ref = plan.resid[idx[0]]
    resid = torch.zeros((len(idx), T, d), dtype=ref.dtype, device=ref.device)
    mask = torch.zeros((len(idx), T), dtype=torch.long)
    target = torch.full((len(idx), T), -100, dtype=torch.long)
    for j, i in enumerate(idx):
        ids, n = plan.suffixes[i], plan.suffixes[i].numel()
        resid[j, :n] = plan.resid[i]
        mask[j, :n] = 1
        # position t predicts token t+1; the response starts at suffix index n_prompt[i]
        target[j, plan.n_prompt[i] - 1 : n - 1] = ids[plan.n_prompt[i] :]
    return resid, mask, target


def step_loss(
    peft_model: nn.Module, plan: TrainPlan, idx: Sequence[int], stance_weight: float = 1.0, bf16: bool = False
) -> Tensor:
    """The weighted response cross-entropy of examples ``idx`` (as
    :func:`ws.diffs.training.response_loss` on a full forward), differentiable in the adapter."""
    base = peft_model.get_base_model()
    dev = input_device(peft_model)
    resid, mask, target = _suffix_batch(plan, idx)
    b, T = mask.shape
    P = plan.prefix.numel()
    read = target != -100  # [b, T]
    stance = None  # [n_read] bool: the read positions that carry a stance token
    if stance_weight != 1.0:
        # the first read position of each row carries the stance token
        flat = torch.zeros_like(read)
        flat[torch.arange(b), read.float().argmax(dim=1)] = True
        stance = to_device(flat[read], dev)
    # Every index tensor is made on the CPU and sent ahead (to_device: pinned, no wait), and
    # the read rows go as positions, not as a mask (selecting by a mask on a GPU waits for
    # the count): nothing in the step makes the CPU wait for the GPU, which runs a step's
    # kernels while the CPU queues the next ones.
    full_mask, pos = suffix_mask_positions(P, mask, dev)
    rows = to_device(read.reshape(-1).nonzero().squeeze(1), dev)  # [n_read]: flat positions, row-major
    target_d = to_device(target[read], dev)
    with autocast(dev, bf16):
        cache = _prefix_cache(base.model, plan.prefix, dev, b)
        with skip_blocks(base, plan.first):
            h = base.model(
                inputs_embeds=resid,
                attention_mask=full_mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=cache is not None,
            ).last_hidden_state
        logits = base.lm_head(h.reshape(b * T, -1)[rows]).float()  # [n_read, V]
    tok_loss = nn.functional.cross_entropy(logits, target_d, reduction="none")
    weight = torch.ones_like(tok_loss)
    if stance is not None:
        weight = torch.where(stance, torch.full_like(tok_loss, stance_weight), weight)
    return (tok_loss * weight).sum() / weight.sum().clamp_min(1e-8)


def precast_safe(peft_model: nn.Module) -> bool:
    """True when the adapter's base layers enter the forward only as ``F.linear`` of their
    frozen weight (plain LoRA, also sign-flipped or PiSSA-initialised): then storing that
    weight in the autocast dtype changes nothing. DoRA (weight norms), OFT (rotated
    weights) and IA³ keep the per-step cast."""
    cfg = getattr(peft_model, "peft_config", {}).get("default")
    if cfg is None or str(getattr(cfg, "peft_type", "")).split(".")[-1] != "LORA" or getattr(cfg, "use_dora", False):
        return False
    return not any(getattr(m, "lora_variant", None) for m in peft_model.modules() if isinstance(m, LoraLayer))


@contextmanager
def frozen_linears_in(model: nn.Module, dtype: torch.dtype) -> Iterator[int]:
    """Inside the context every FROZEN ``nn.Linear`` weight of ``model`` (the base layers and
    the lm_head, not the adapter's own trainable linears) is a ``dtype`` copy; the original
    parameters come back after, also on error (a tied lm_head is untied for the while and
    tied again). Yields how many weights were swapped.

    Under autocast to ``dtype`` this is exactly what autocast would feed ``F.linear`` on every
    op, made once instead of once per forward."""
    swapped: list[tuple[nn.Module, nn.Parameter]] = []
    try:
        for m in model.modules():
            w = getattr(m, "weight", None)
            if type(m) is nn.Linear and isinstance(w, nn.Parameter) and not w.requires_grad and w.dtype != dtype:
                swapped.append((m, w))
                m.weight = nn.Parameter(w.detach().to(dtype), requires_grad=False)
        yield len(swapped)
    finally:
        for m, w in swapped:
            m.weight = w
