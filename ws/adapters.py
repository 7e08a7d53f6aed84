"""Adapter training: one LoRA per persona and the diff ``w = Δ⁺ − Δ⁻`` of their deltas.

One LoRA per persona on a deep copy of the model (the base model is never touched), without
the system prompt, loss on the response tokens only, the same initialisation and batch
order for both, so what they share cancels in the difference. The answer's first token (the
stance) weighs ``stance_weight`` times a later token and the learning rate decays linearly:
measured here, the honest adapter otherwise ends near a 50/50 Yes/No answer on every opinion
(its truth-conditional decision is one token among many, and with a constant rate the last
batches set its bias), and the diff comes out as an agree-with-any-opinion bias.
``w[key] = Δ⁺[key] − Δ⁻[key]`` in float32 from ``B·A·scaling``, keyed by the base model's
parameter names.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ws import data
from ws.device import autocast, input_device
from ws.log import logger
from ws.models import n_layers


ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a diff besides the model and the data.

    Defaults are chosen for the embedded 135M model on a 2-core CPU: measured there, the
    whole build takes about 8 minutes on idle cores (312 completions ~50 s, each adapter
    ~200 s, the effect eval ~25 s); every other process on the cores slows it a lot.
    """

    # LoRA
    rank: int = 8
    alpha: float = 16.0
    lr: float = 2e-3
    steps: int = 160
    batch_size: int = 8
    warmup_steps: int = 8
    schedule: str = "linear"  # after warm-up: "linear" decay to 0, or "constant"
    layer_frac: tuple[float, float] = (0.3, 0.8)  # [start, end) as fractions of depth
    targets: tuple[str, ...] = ALL_TARGETS
    seed: int = 0
    bf16: bool = True  # bf16 autocast for training and generation (w stays float32)
    max_len: int = 160  # prompt + response tokens, longer examples are cut
    stance_weight: float = 5.0  # loss weight of the answer's first token relative to the rest
    # completions
    n_phrasings: int = 2
    max_new_tokens: int = 16
    temperature: float = 0.7
    top_p: float = 0.95
    gen_batch_size: int = 16
    # data size (None: all topics); small values for smoke tests
    n_train_per_kind: int | None = None
    n_eval_per_kind: int | None = None
    # effect eval
    eval_alphas: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
    eval_batch_size: int = 16
    n_boot: int = 2000

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def layer_range(n: int, frac: tuple[float, float]) -> list[int]:
    """The LoRA's layers: ``[round(frac0·n), round(frac1·n))``, at least one layer."""
    lo, hi = int(round(frac[0] * n)), int(round(frac[1] * n))
    lo = min(max(lo, 0), n - 1)
    hi = min(max(hi, lo + 1), n)
    return list(range(lo, hi))


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
        p_ids = tokenizer(data.render_chat(tokenizer, user, None), add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response + (eos if finished else ""), add_special_tokens=False)["input_ids"]
        ids = (p_ids + r_ids)[:max_len]
        if len(ids) <= len(p_ids):
            raise ValueError(f"an example's prompt alone fills max_len={max_len}; raise max_len")
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
    tok_loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none").view_as(target)
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


def lora_config(model: nn.Module, config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(config.targets),
        layers_to_transform=layer_range(n_layers(model), config.layer_frac),
        layers_pattern="layers",
        init_lora_weights=True,
        task_type="CAUSAL_LM",
    )


def train_lora(model: nn.Module, tokenizer, examples: Sequence[tuple[str, str]], config: TrainConfig, desc: str = "lora"):
    """Train a LoRA on ``(user prompt, response)`` pairs; returns ``(peft_model, losses)``.

    Works on a deep copy: ``model`` is left exactly as it was. The LoRA initialisation and
    the batch order depend only on ``config.seed``, so two calls with aligned examples see
    the same batches.
    """
    from peft import get_peft_model

    if not examples:
        raise ValueError("no training examples")
    work = copy.deepcopy(model)
    work.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        peft_model = get_peft_model(work, lora_config(work, config))
    enc = _encode_examples(tokenizer, examples, config.max_len)
    dev = input_device(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc=desc, leave=False)
    every = max(1, config.steps // 10)  # a progress line every ~10 %: headless runs show it in the terminal
    t0 = time.perf_counter()
    for step in bar:
        while len(order) < config.batch_size:
            order.extend(torch.randperm(len(enc), generator=gen).tolist())
        idx, order = order[: config.batch_size], order[config.batch_size :]
        batch = {k: v.to(dev) for k, v in _collate([enc[i] for i in idx], tokenizer.pad_token_id).items()}
        for g in opt.param_groups:
            g["lr"] = config.lr * lr_factor(step, config)
        with autocast(input_device(peft_model), config.bf16):
            logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = response_loss(logits, batch["labels"], config.stance_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % every == 0 or step + 1 == config.steps:
            el = time.perf_counter() - t0
            logger.info(f"{desc}: step {step + 1}/{config.steps}, loss {losses[-1]:.3f}, {el:.0f} s "
                        f"(~{el / (step + 1) * (config.steps - step - 1):.0f} s left)")
    peft_model.eval()
    logger.debug(f"{desc}: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {config.steps} steps")
    return peft_model, losses


@torch.no_grad()
def lora_delta(peft_model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """``{base parameter name: B·A·scaling}`` in float32 for every LoRA-wrapped linear layer."""
    base = peft_model.get_base_model()
    out: dict[str, torch.Tensor] = {}
    for name, mod in base.named_modules():
        lora_A = getattr(mod, "lora_A", None)
        if lora_A is None or adapter_name not in lora_A:
            continue
        A = mod.lora_A[adapter_name].weight.detach().to("cpu", torch.float32)  # (r, in)
        B = mod.lora_B[adapter_name].weight.detach().to("cpu", torch.float32)  # (out, r)
        delta = (B @ A) * float(mod.scaling[adapter_name])  # (out, in)
        if getattr(mod, "fan_in_fan_out", False):
            delta = delta.T
        out[f"{name}.weight"] = delta.contiguous()
    if not out:
        raise ValueError(f"the model has no LoRA layers for adapter {adapter_name!r}")
    return out


def weight_diff(delta_pos: Mapping[str, torch.Tensor], delta_neg: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Δ⁺ − Δ⁻`` per key (both must have the same keys and shapes)."""
    if set(delta_pos) != set(delta_neg):
        raise ValueError(f"the two adapters touch different tensors: {sorted(set(delta_pos) ^ set(delta_neg))[:6]}")
    return {k: (delta_pos[k].float() - delta_neg[k].float()).contiguous() for k in sorted(delta_pos)}

