"""Answer read-outs (Yes/No by default) of many weight settings, without redoing the work they share.

The causal test (:mod:`ws.v8.causal`) runs the model at dozens of weight settings that differ
only in decoder blocks ``≥ first`` (the blocks the diff touches). Two facts make that cheap
without changing what is computed:

1. **The shared prefix.** Every prompt of a set starts with the same tokens (the chat
   template's system turn and the opening of the user turn). Under causal attention those
   tokens never see what follows, so their keys and values depend only on the weights: one
   pass over the prefix (a single row) per weight setting gives them, and every prompt of
   the set reuses them (the cache is repeated along the batch).
2. **The unchanged lower blocks.** A setting that changes only blocks ``≥ first`` leaves the
   residual stream entering block ``first`` as it is under the base weights. It is computed
   once per batch (:class:`FastReadout` does it when built); every later pass swaps blocks
   ``0 … first−1`` for pass-through modules and feeds that residual in as the input.

Only the last real token is read: the final norm's output there goes through the lm_head,
and ``log P(Yes variants) − log P(No variants)`` and ``P(Yes) + P(No)`` come out, exactly
as :func:`ws.model.readout.answer_logratios` defines them. ``tests/test_fast_readout.py`` checks that a
pass with the lower blocks skipped equals, bit for bit, the same pass with every block run,
and that the read-out matches :func:`ws.model.readout.answer_logratios` on the whole prompts.

    ro = FastReadout(model, tok, {"target": texts}, first=9)
    with weight_steer(model, w_variant, +1.0):      # w_variant: blocks ≥ 9 only
        lr, mass = ro.run()["target"]               # [n], [n]

Prompts are rendered texts (chat template applied by the caller), tokenised without added
special tokens, right-padded; results come back in the caller's prompt order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ws.core.device import to_device
from ws.model.load import decoder_layers, layer_name
from ws.model.readout import DEFAULT_ANSWERS, answer_token_ids, orient
from ws.model.steer import steered_while_running
from ws.model.trace import TraceDict

__all__ = ["PromptBatch", "PromptPlan", "plan_prompts", "skip_blocks", "first_block", "block_flops", "FastReadout"]


@dataclass
class PromptBatch:
    """One right-padded batch of prompt suffixes (the shared prefix removed)."""

    rows: torch.Tensor  # [b] long: positions of these prompts in the plan's prompt list
    ids: torch.Tensor  # [b, T] long: suffix token ids, right-padded
    mask: torch.Tensor  # [b, T] long: 1 on real suffix tokens
    last: torch.Tensor  # [b] long: index of each row's last real suffix token


@dataclass
class PromptPlan:
    """Prompts tokenised once and split at their longest common token prefix."""

    texts: list[str]
    prefix: torch.Tensor  # [P] long: token ids every prompt starts with
    batches: list[PromptBatch]

    @property
    def n(self) -> int:
        return len(self.texts)


def _common_prefix(ids: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, kept one token short of the shortest prompt
    (every prompt keeps at least one token of its own, the one that is read)."""
    cap = min(len(x) for x in ids) - 1
    p = 0
    while p < cap and all(x[p] == ids[0][p] for x in ids):
        p += 1
    return p


def plan_prompts(tok, texts: Sequence[str], batch_size: int = 16) -> PromptPlan:
    """Tokenise ``texts`` (no special tokens added), split off their common prefix, sort the
    suffixes by length (less padding) and cut them into right-padded batches."""
    texts = list(texts)
    if not texts:
        raise ValueError("no prompts to plan")
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    if min(len(x) for x in ids) == 0:
        raise ValueError("a prompt has no tokens")
    P = _common_prefix(ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    batches = []
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        suf = [ids[i][P:] for i in rows]
        T = max(len(x) for x in suf)
        bid = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for j, x in enumerate(suf):
            bid[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        batches.append(PromptBatch(torch.tensor(rows), bid, mask, mask.sum(dim=1) - 1))
    return PromptPlan(texts, torch.tensor(ids[0][:P], dtype=torch.long), batches)


class _PassThrough(nn.Module):
    """Stands in for a decoder block: returns its input residual unchanged."""

    def __init__(self, block: nn.Module):
        super().__init__()
        for attr in ("attention_type", "layer_type"):  # read by some models' forward loops
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def skip_blocks(model: nn.Module, n: int) -> Iterator[None]:
    """Blocks ``0 … n−1`` become pass-through modules inside the context (restored after,
    also on error): the input given to the model then enters block ``n`` directly."""
    layers = decoder_layers(model)
    saved = [layers[i] for i in range(n)]
    try:
        for i, b in enumerate(saved):
            layers[i] = _PassThrough(b)
        yield
    finally:
        for i, b in enumerate(saved):
            layers[i] = b


def first_block(*diffs: Mapping[str, torch.Tensor]) -> int:
    """The lowest decoder block any key of ``diffs`` touches (keys ``model.layers.<i>.…``).

    A key outside the decoder blocks (embedding, final norm, lm_head) would change the
    residual below every block or the read-out itself: refused, the fast path cannot skip
    anything there.
    """
    low = None
    for w in diffs:
        for key in w:
            parts = key.split(".")
            if len(parts) < 3 or parts[0] != "model" or parts[1] != "layers" or not parts[2].isdigit():
                raise ValueError(f"{key}: the fast read-out needs a diff on decoder blocks only")
            low = int(parts[2]) if low is None else min(low, int(parts[2]))
    if low is None:
        raise ValueError("empty diff: no block to start from")
    return low


def _fingerprint(model: nn.Module, first: int, stride: int = 101) -> list[float]:
    """A cheap guard: sums of every ``stride``-th entry of each parameter below block
    ``first`` (and of the embedding). A diff there changes whole matrices (a LoRA delta is
    dense), so the sums move, and the cached residuals would be wrong."""
    below = tuple(f"{layer_name(i)}." for i in range(first))
    return [
        float(p.detach().reshape(-1)[::stride].double().sum())
        for n, p in model.named_parameters()
        if n.startswith(below) or "embed_tokens" in n
    ]


def block_flops(config, b: int, t_q: int, t_k: int) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of one decoder block on ``b`` rows of ``t_q``
    new tokens that attend over ``t_k`` positions: the q/k/v/o projections, the gated MLP,
    and the attention scores and mix (``QKᵀ`` and ``AV``, counted over every key position,
    as the kernels compute them). Elementwise work (norms, activations, rotary) is left out."""
    d, H = config.hidden_size, config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or H
    hd = getattr(config, "head_dim", None) or d // H
    proj = 2 * d * hd * (2 * H + 2 * kv) + 2 * 3 * d * config.intermediate_size
    return b * t_q * proj + 4 * b * H * hd * t_q * t_k


def suffix_mask_positions(P: int, mask: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For suffixes ``mask [b, T]`` (CPU) read after a shared prefix of ``P`` tokens: the
    attention mask over prefix + suffix ``[b, P+T]`` and the suffix positions ``[b, T]``,
    sent to ``device`` ahead of the pass (:func:`ws.core.device.to_device`)."""
    b, T = mask.shape
    full = torch.cat([torch.ones(b, P, dtype=torch.long), mask], dim=1)
    return to_device(full, device), to_device((P + torch.arange(T)).expand(b, T).contiguous(), device)


class FastReadout:
    """Answer read-outs of fixed prompt sets under the model's CURRENT weights, for weight
    settings that differ from the base only in blocks ``≥ first``.

    Building it runs the base model once over every prompt up to block ``first`` and keeps
    that residual ``[b, T, d]`` per batch. :meth:`run` then needs, per set, one pass over
    the shared prefix and one pass of blocks ``first … L−1`` per batch.
    """

    def __init__(
        self,
        model: nn.Module,
        tok,
        texts_by_set: Mapping[str, Sequence[str]],
        first: int,
        batch_size: int = 16,
        *,
        answers: Sequence[str] = DEFAULT_ANSWERS,
        signs_by_set: Mapping[str, Sequence[int]] | None = None,
    ):
        """``answers``: the two read-out answers (:func:`ws.model.readout.answer_token_ids`);
        ``signs_by_set``: per prompt ±1, the orientation of its log-ratio (:func:`ws.model.readout.orient`)."""
        self.model, self.first = model, int(first)
        self.signs = dict(signs_by_set or {})
        self.backbone = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.yes, self.no = answer_token_ids(tok, answers)
        self.plans = {s: plan_prompts(tok, t, batch_size) for s, t in texts_by_set.items() if len(t)}
        self._base_fp = _fingerprint(model, self.first)
        self.resid = {s: self._base_residuals(p) for s, p in self.plans.items()}

    def pass_flops(self, sets: Sequence[str] | None = None) -> int:
        """Matrix-product FLOPs of one :meth:`run` over ``sets`` (fast path): per set the prefix
        through every block, each padded batch through blocks ``first …``, and the lm_head
        on the read rows. The causal test's compute floor is this count over the device's
        matrix-product speed."""
        cfg, L = self.model.config, len(decoder_layers(self.model))
        vocab = self.head.weight.shape[0]
        total = 0
        for s in sets if sets is not None else list(self.plans):
            plan = self.plans[s]
            P = plan.prefix.numel()
            total += L * block_flops(cfg, 1, P, P) if P else 0
            for batch in plan.batches:
                b, T = batch.ids.shape
                total += (L - self.first) * block_flops(cfg, b, T, P + T) + 2 * b * cfg.hidden_size * vocab
        return total

    # ------------------------------------------------------------------ passes
    @torch.no_grad()
    def _prefix_cache(self, plan: PromptPlan):
        """Keys/values of the shared prefix under the current weights (one row), or None."""
        P = plan.prefix.numel()
        if P == 0:
            return None
        ids = plan.prefix[None].to(self.device)
        out = self.backbone(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(P, device=self.device)[None],
            use_cache=True,
        )
        return out.past_key_values

    def _suffix_kwargs(self, plan: PromptPlan, batch: PromptBatch, cache) -> dict:
        P, b = plan.prefix.numel(), batch.ids.shape[0]
        past = None
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(b)
        mask, pos = suffix_mask_positions(P, batch.mask, self.device)
        return dict(attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=cache is not None)

    @torch.no_grad()
    def _base_residuals(self, plan: PromptPlan) -> list[torch.Tensor]:
        """Per batch, the residual entering block ``first`` under the base weights ``[b, T, d]``."""
        cache = self._prefix_cache(plan)
        name = layer_name(self.first)
        out = []
        for batch in plan.batches:
            kw = self._suffix_kwargs(plan, batch, cache)
            with TraceDict(self.model, [name], retain_input=True, retain_output=False, detach=True, stop=True) as td:
                self.backbone(input_ids=batch.ids.to(self.device), **kw)
            out.append(td[name].input.clone())
        return out

    @torch.no_grad()
    def _readout(self, h_last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-norm hidden states of the read tokens ``[b, d]`` → logratio ``[b]``, mass ``[b]``."""
        logp = torch.log_softmax(self.head(h_last).float(), dim=-1)
        ly = torch.logsumexp(logp[:, self.yes], dim=-1)
        ln = torch.logsumexp(logp[:, self.no], dim=-1)
        return ly - ln, ly.exp() + ln.exp()

    def _steered_below(self) -> list[str]:
        """Parameters below block ``first`` (or the embedding) that a weight-steering block steers
        while their modules run (:func:`ws.model.steer.steered_while_running`): the fingerprint
        cannot see them, since outside a call their tensors are the originals."""
        below = tuple(f"{layer_name(i)}." for i in range(self.first))
        return [n for n in steered_while_running(self.model) if n.startswith(below) or "embed_tokens" in n]

    @torch.no_grad()
    def run(self, sets: Sequence[str] | None = None, *, skip: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``set -> (logratio [n], mass [n])`` under the current weights, in the prompts' order.

        ``skip=False`` runs every block from the token ids instead (the reference the tests
        compare with; same prefix handling, same batches).
        """
        if skip and (_fingerprint(self.model, self.first) != self._base_fp or self._steered_below()):
            raise RuntimeError(
                f"weights below block {self.first} changed since the base residuals were "
                f"computed: the fast read-out is only valid for changes in blocks ≥ {self.first}"
            )
        out = {}
        for s in sets if sets is not None else list(self.plans):
            plan = self.plans[s]
            cache = self._prefix_cache(plan)
            lr = torch.empty(plan.n, dtype=torch.float64)
            mass = torch.empty(plan.n, dtype=torch.float64)
            for batch, resid in zip(plan.batches, self.resid[s], strict=True):
                kw = self._suffix_kwargs(plan, batch, cache)
                if skip:
                    with skip_blocks(self.model, self.first):
                        h = self.backbone(inputs_embeds=resid, **kw).last_hidden_state
                else:
                    h = self.backbone(input_ids=batch.ids.to(self.device), **kw).last_hidden_state
                x, m = self._readout(h[torch.arange(h.shape[0]), batch.last.to(self.device)])
                lr[batch.rows] = x.double().cpu()
                mass[batch.rows] = m.double().cpu()
            out[s] = (lr.numpy(), mass.numpy())
        return orient(out, self.signs)
