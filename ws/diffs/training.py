"""Training the adapters: one per persona (or one for both), and the diff ``w = Δ⁺ − Δ⁻``.

Each adapter is trained on a deep copy of the model (the base model is never touched),
without the system prompt, loss on the response tokens only, the same initialisation and
batch order for both personas, so what they share cancels in the difference. The answer's
first token (the stance) weighs ``stance_weight`` times a later token and the learning rate
decays linearly: measured here, the honest adapter otherwise ends near a 50/50 Yes/No
answer on every opinion (its truth-conditional decision is one token among many, and with
a constant rate the last batches set its bias), and the diff comes out as an
agree-with-any-opinion bias. The training length is fitted to the data
(:func:`training_length`). What each adapter type is, and its delta: :mod:`ws.diffs.adapters`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import torch
from peft import get_peft_model
from torch import nn
from tqdm.auto import tqdm

from ws.core.device import input_device, use_bf16
from ws.core.log import logger
from ws.diffs import sspace
from ws.diffs.adapters import TrainConfig, adapter_type, layer_range, peft_config
from ws.diffs.fasttrain import frozen_linears_in, plan_training, precast_safe, step_loss
from ws.model.chat import render_chat
from ws.model.load import n_layers

#: The longest training length the suite sets by itself (prompt + response tokens): a
#: behaviour whose longest training example needs more is refused unless ``WS_MAX_LEN``
#: (``TrainConfig.max_len``) is set at least that high (:func:`training_length`).
MAX_LEN_CAP = 1024


#: Tokens a training response may hold besides the ``max_new_tokens`` generated ones: its
#: opening ("Yes,"), the end-of-turn token, and slack for re-tokenising the decoded text.
RESPONSE_EXTRA = 8


class TrainingLengthError(ValueError):
    """A behaviour's training prompts do not fit the training length (the message names the
    longest items, their token counts and ``WS_MAX_LEN``)."""


def prompt_tokens(tokenizer, prompts: Sequence[str]) -> list[int]:
    """The token count of each user prompt as training encodes it (chat template, no system prompt)."""
    return [len(tokenizer(render_chat(tokenizer, u, None), add_special_tokens=False)["input_ids"]) for u in prompts]


def training_length(prompt_lens: Mapping[str, int], config: TrainConfig, what: str = "the training data") -> int:
    """The training length (prompt + response tokens) for prompts of ``prompt_lens`` tokens
    (by item): the larger of ``config.max_len`` (160 by default, ``WS_MAX_LEN``) and the
    longest example, its prompt plus the completion budget (``max_new_tokens`` +
    :data:`RESPONSE_EXTRA`), so that no training example is cut. Refused with
    :class:`TrainingLengthError` when an example needs more than the cap, the larger of
    :data:`MAX_LEN_CAP` and ``config.max_len``."""
    budget = config.max_new_tokens + RESPONSE_EXTRA
    need = max(prompt_lens.values(), default=0) + budget
    cap = max(MAX_LEN_CAP, config.max_len)
    if need <= cap:
        return max(config.max_len, need)
    over = sorted((k for k in prompt_lens if prompt_lens[k] + budget > cap), key=lambda k: (-prompt_lens[k], k))
    shown = ", ".join(f"{k!r} {prompt_lens[k]} tokens" for k in over[:3])
    shown += f" and {len(over) - 3} more" if len(over) > 3 else ""
    raise TrainingLengthError(
        f"{what}: the training prompts of {len(over)} item(s) do not fit the training length of {cap} tokens "
        f"(with the {budget}-token completion budget): {shown}; set WS_MAX_LEN={need} or more to train on them "
        f"(memory grows with it), or shorten or remove those items"
    )


def _encode_examples(tokenizer, examples: Sequence[tuple], max_len: int) -> list[tuple[list[int], int]]:
    """``(user prompt, response[, finished])`` -> ``(token ids, n_prompt_tokens)``.

    The response gets the end-of-turn token when it was finished (the default): a response
    cut at ``max_new_tokens`` is not taught to stop mid-sentence.
    """
    out = []
    eos = tokenizer.eos_token or ""
    for ex in examples:
        user, response = ex[0], ex[1]
        finished = bool(ex[2]) if len(ex) > 2 else True
        p_ids = tokenizer(render_chat(tokenizer, user, None), add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response + (eos if finished else ""), add_special_tokens=False)["input_ids"]
        ids = (p_ids + r_ids)[:max_len]
        if len(ids) <= len(p_ids):
            raise ValueError(f"an example's prompt alone fills max_len={max_len}; raise max_len (WS_MAX_LEN)")
        out.append((ids, len(p_ids)))
    return out


def _collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on the prompt and on padding (from the mask, not the pad id)."""
    T = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def response_loss(logits: torch.Tensor, labels: torch.Tensor, stance_weight: float = 1.0) -> torch.Tensor:
    """Mean next-token cross-entropy over the response tokens (labels != -100).

    ``logits (B, T, V)``, ``labels (B, T)``. The first response token of each row (the
    stance: "Yes" / "No") weighs ``stance_weight`` times a later token; 1.0 is the plain mean.
    """
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    target = labels[:, 1:]  # (B, T-1)
    tok_loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(target)
    valid = (target != -100).to(tok_loss.dtype)
    weight = valid.clone()
    if stance_weight != 1.0:
        first = valid.argmax(dim=1)  # first response position of each row
        rows = torch.arange(target.shape[0])
        weight[rows, first] = weight[rows, first] * stance_weight
    return (tok_loss * weight).sum() / weight.sum().clamp_min(1e-8)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or a linear decay towards 0.

    With a constant rate the last few batches set the answer bias of an adapter (the
    Yes/No first token flips with each batch's mix); the decay averages it out.
    """
    warm = max(1, config.warmup_steps)
    if step < warm:
        return (step + 1) / warm
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "linear":
        return max(0.0, (config.steps - step) / max(1, config.steps - warm))
    raise ValueError(f"unknown schedule {config.schedule!r}; use 'linear' or 'constant'")


def _wrap(model: nn.Module, config: TrainConfig, adapter: str, moments: Mapping[str, torch.Tensor] | None = None):
    """A trainable copy of ``model`` (peft's, or the type's own ``wrap``; initialised from
    ``config.seed``); ``model`` is untouched."""
    kind = adapter_type(adapter)
    if kind.moments is not None and moments is None:
        raise ValueError(f"adapter type {adapter!r} needs calibration moments: pass training_moments(...)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if kind.wrap is not None:
            work = kind.wrap(model, config, layer_range(n_layers(model), config.layer_frac), moments)
            work.train()
            return work
        work = copy.deepcopy(model)
        work.train()
        return get_peft_model(work, peft_config(work, config, adapter))


def training_moments(
    model: nn.Module, tokenizer, examples: Sequence[tuple], config: TrainConfig, adapter: str
) -> dict[str, torch.Tensor] | None:
    """The calibration moments an adapter type needs (None when it needs none): of each
    target's input, over the distinct user prompts of ``examples`` rendered through the chat
    template WITHOUT a persona (:func:`ws.diffs.sspace.calibration_moments`). Both persona
    adapters get the same moments, so they share one basis."""
    kind = adapter_type(adapter)
    if kind.moments is None:
        return None
    users = list(dict.fromkeys(ex[0] for ex in examples))
    texts = [render_chat(tokenizer, u, None) for u in users]
    names = sspace.target_names(layer_range(n_layers(model), config.layer_frac), config.targets)
    return sspace.calibration_moments(model, tokenizer, texts, names, diagonal=kind.moments == "diagonal")


def planted_bases(trained: nn.Module, adapter: str) -> dict[str, dict[str, torch.Tensor]]:
    """The frozen bases the trained adapter's ΔW lies in, by candidate name (``{}`` for a type without)."""
    kind = adapter_type(adapter)
    return {} if kind.planted is None else kind.planted(trained)


def _batch_order(n: int, config: TrainConfig) -> Iterator[list[int]]:
    """Index batches of ``config.batch_size``: seeded permutations of ``range(n)``, one after another."""
    gen = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    while True:
        while len(order) < config.batch_size:
            order.extend(torch.randperm(n, generator=gen).tolist())
        idx, order = order[: config.batch_size], order[config.batch_size :]
        yield idx


@contextmanager
def lora_sign(peft_model, sign: float) -> Iterator[None]:
    """Inside the block every LoRA layer's output is multiplied by ``sign`` (its scaling
    negated for ``-1``): a LoRA at ``θ+Δ`` runs as ``θ−Δ``. The scalings are put back on exit."""
    mods = [m for m in peft_model.modules() if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling]
    if not mods:
        raise ValueError("the model has no LoRA layers to flip")
    saved = [m.scaling["default"] for m in mods]
    try:
        for m, s in zip(mods, saved, strict=True):
            m.scaling["default"] = sign * s
        yield
    finally:
        for m, s in zip(mods, saved, strict=True):
            m.scaling["default"] = s


def _fit(
    peft_model, tokenizer, streams: Sequence[tuple[str, list, float | None]], config: TrainConfig, desc: str
) -> dict[str, list[float]]:
    """The training loop: ``config.steps`` index batches, each one step per stream in turn
    (``(name, encoded examples, LoRA sign or None)``: two streams alternate on the same
    indices, each under its :func:`lora_sign`). Each step is :func:`ws.diffs.fasttrain.step_loss`:
    the blocks below the adapter, the shared prefix's repeats and the lm_head on prompt
    positions are not recomputed; under bf16 autocast the frozen linear weights are cast
    once, not per step (:func:`ws.diffs.fasttrain.frozen_linears_in`, where bit-identical).
    Returns each stream's losses."""
    n_streams = len(streams)
    total = config.steps * n_streams
    schedule = replace(config, steps=total, warmup_steps=config.warmup_steps * n_streams)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    bf16 = use_bf16(config.bf16, input_device(peft_model))  # float32 where the device has no bf16 units
    plans = {name: plan_training(peft_model, enc, bf16) for name, enc, _ in streams}
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    batches = _batch_order(len(streams[0][1]), config)
    losses: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in streams}
    bar = tqdm(range(total), desc=desc, leave=False)
    every = max(1, total // 10)  # a progress line every ~10 %: headless runs show it in the terminal
    precast = bf16 and precast_safe(peft_model)
    t0 = time.perf_counter()
    with frozen_linears_in(peft_model, torch.bfloat16) if precast else nullcontext():
        for step in bar:
            name, _, sign = streams[step % n_streams]
            if step % n_streams == 0:
                idx = next(batches)
            for g in opt.param_groups:
                g["lr"] = config.lr * lr_factor(step, schedule)
            with lora_sign(peft_model, sign) if sign is not None else nullcontext():
                loss = step_loss(peft_model, plans[name], idx, config.stance_weight, bf16)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            # kept on the device: reading a loss waits for its step, so it is read only at the
            # progress lines, and a GPU's kernels of one step run while the CPU queues the next
            losses[name].append(loss.detach())
            if (step + 1) % every == 0 or step + 1 == total:
                el, last = time.perf_counter() - t0, float(losses[name][-1])
                bar.set_postfix(loss=f"{last:.3f}")
                logger.info(
                    f"{desc}: step {step + 1}/{total}, loss {last:.3f}, {el:.0f} s "
                    f"(~{el / (step + 1) * (total - step - 1):.0f} s left)"
                )
    peft_model.eval()
    values = {name: torch.stack(ls).tolist() for name, ls in losses.items()}
    for name, ls in values.items():
        logger.debug(f"{desc} {name}: loss {ls[0]:.3f} -> {ls[-1]:.3f} over {len(ls)} steps")
    return values


def train_adapter(
    model: nn.Module,
    tokenizer,
    examples: Sequence[tuple[str, str]],
    config: TrainConfig,
    adapter: str = "lora",
    desc: str = "adapter",
    moments: Mapping[str, torch.Tensor] | None = None,
):
    """Train one adapter of type ``adapter`` on ``(user prompt, response)`` pairs; returns
    ``(peft_model, losses)``.

    Works on a deep copy: ``model`` is left exactly as it was. The initialisation and the
    batch order depend only on ``config.seed``, so two calls with aligned examples see the
    same batches. ``moments``: the calibration moments of a type that needs them
    (:func:`training_moments`; the same for both personas).
    """
    if adapter_type(adapter).bidirectional:
        raise ValueError("a bidirectional adapter trains on both personas' examples: use train_bidir")
    if not examples:
        raise ValueError("no training examples")
    peft_model = _wrap(model, config, adapter, moments)
    enc = _encode_examples(tokenizer, examples, config.max_len)
    return peft_model, _fit(peft_model, tokenizer, [("loss", enc, None)], config, desc)["loss"]


def train_bidir(
    model: nn.Module,
    tokenizer,
    pos_examples: Sequence[tuple],
    neg_examples: Sequence[tuple],
    config: TrainConfig,
    desc: str = "LoRA ±",
):
    """ONE LoRA trained as ``θ+Δ`` on ``pos_examples`` and ``θ−Δ`` on ``neg_examples``.

    The two lists are aligned (example i of each is the same prompt under the two
    personas). Steps alternate: a batch of positive examples at ``+Δ`` (the LoRA's scaling as
    it is), then the same indices of the negative examples at ``−Δ`` (the scaling negated),
    ``config.steps`` batches of each, so both personas see as many batches as two separate
    adapters would, and the learning-rate schedule runs over the ``2·steps`` updates. The
    returned model runs at ``+Δ`` (:func:`lora_sign` gives ``−Δ``); returns ``(peft_model, {"pos": losses,
    "neg": losses})``."""
    if not pos_examples or not neg_examples:
        raise ValueError("no training examples")
    if len(pos_examples) != len(neg_examples):
        raise ValueError(
            f"a bidirectional adapter needs aligned examples: {len(pos_examples)} positive, {len(neg_examples)} negative"
        )
    peft_model = _wrap(model, config, "bidir")
    streams = [
        ("pos", _encode_examples(tokenizer, pos_examples, config.max_len), 1.0),
        ("neg", _encode_examples(tokenizer, neg_examples, config.max_len), -1.0),
    ]
    return peft_model, _fit(peft_model, tokenizer, streams, config, desc)


def weight_diff(delta_pos: Mapping[str, torch.Tensor], delta_neg: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Δ⁺ − Δ⁻`` per key (both must have the same keys and shapes)."""
    if set(delta_pos) != set(delta_neg):
        raise ValueError(f"the two adapters touch different tensors: {sorted(set(delta_pos) ^ set(delta_neg))[:6]}")
    return {k: (delta_pos[k].float() - delta_neg[k].float()).contiguous() for k in sorted(delta_pos)}
