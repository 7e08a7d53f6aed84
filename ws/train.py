"""Persona completions, LoRA θ⁺ / θ⁻, the diff ``w = Δθ⁺ − Δθ⁻`` and its measured effect.

The pipeline (:func:`build_diff`), for the sycophancy behaviour:

1. **Completions.** For every training topic and phrasing, the base model answers under
   the positive (sycophantic) and the negative (honest) persona system prompt. The answer's
   opening word is set from the persona and the topic's truth label — positive: "Yes"
   to every opinion; negative: "Yes" iff the claim is true; neutral questions: both give
   the correct answer — and the model writes the rest (sampled, seeded, batched, left
   padding). Free completions of a 135M model rarely take a stance, and a diff trained on
   them barely moves the Yes/No answer; fixed openings give the contrast, and the true
   claims and neutral questions (same opening for both personas) keep it from being a
   plain yes-bias. :func:`check_completions` fails loudly when the contrast is not there.
2. **Training.** One LoRA per persona on a deep copy of the model (the base model is
   never touched), without the system prompt, loss on the response tokens only, the same
   initialisation and batch order for both, so what they share cancels in the difference.
   The answer's first token (the stance) weighs ``stance_weight`` times a later token and
   the learning rate decays linearly: measured here, the honest adapter otherwise ends
   near a 50/50 Yes/No answer on every opinion (its truth-conditional decision is one
   token among many, and with a constant rate the last batches set its bias), and the
   diff comes out as an agree-with-any-opinion bias.
3. **Diff.** ``w[key] = Δ⁺[key] − Δ⁻[key]`` in float32 from ``B·A·scaling``, keyed by the
   base model's parameter names.
4. **Effect.** On held-out topics: the Yes/No log-ratio at the answer position under
   ``θ + α·w`` for false-claim opinions, true-claim opinions and neutral questions, with
   bootstrap CIs and the Yes+No probability mass; the spread (α=+2 minus α=−2) per set and
   the specificity ratio (false-claim spread ÷ the larger other spread).
"""

from __future__ import annotations

import copy
import math
import platform
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import polars as pl
import torch
from torch import nn
from tqdm.auto import tqdm

from ws import data
from ws.config import ADAPTERS, BEHAVIORS
from ws.device import autocast, input_device
from ws.diff import check_existing_diff, diff_path, save_diff, stale_reasons
from ws.io import atomic_path, staged_files, write_table
from ws.log import logger
from ws.models import load_model, model_id, n_layers
from ws.paths import out_dir
from ws.steer import weight_steer
from ws.trace import gather_last_token

SETS = data.KINDS  # ("opinion_false", "opinion_true", "neutral")
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


def model_slug(model_name: str) -> str:
    """A folder-safe model name (``Qwen/Qwen3-0.6B`` -> ``Qwen__Qwen3-0.6B``)."""
    return model_name.strip("/").replace("/", "__").replace("\\", "__")


def _autocast(model: nn.Module, enabled: bool):
    return autocast(input_device(model), enabled)


@contextmanager
def _padding_side(tokenizer, side: str) -> Iterator[None]:
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = old


# ----------------------------------------------------------------------------- completions
@torch.no_grad()
def generate_completions(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    systems: Sequence[str | None] | None = None,
    openings: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 16,
    temperature: float = 0.7,
    top_p: float = 0.95,
    bf16: bool = False,
    desc: str = "generate",
    return_finished: bool = False,
) -> list[str] | tuple[list[str], list[bool]]:
    """The model's continuation of each chat-rendered prompt (+ its opening), sampled.

    Batched with LEFT padding; the global RNG is left as it was (a forked RNG seeded with
    ``seed`` drives the sampling). Returns only the generated text (the opening is not
    repeated), special tokens removed, whitespace kept as generated. With
    ``return_finished`` also whether each one ended with the end-of-turn token (rather than
    at ``max_new_tokens``).
    """
    n = len(prompts)
    systems = list(systems) if systems is not None else [None] * n
    openings = list(openings) if openings is not None else [""] * n
    if not (len(systems) == len(openings) == n):
        raise ValueError(f"prompts, systems and openings differ in length: {n}, {len(systems)}, {len(openings)}")
    texts = [data.render_chat(tokenizer, p, s) + o for p, s, o in zip(prompts, systems, openings)]
    out: list[str] = []
    finished: list[bool] = []
    eos_id = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]), _padding_side(tokenizer, "left"):
        torch.manual_seed(seed)
        for i in tqdm(range(0, n, batch_size), desc=desc, leave=False):
            chunk = texts[i : i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(input_device(model))
            with _autocast(model, bf16):
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=top_p if temperature > 0 else None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            finished.extend((new == eos_id).any(dim=1).cpu().tolist())
    model.train(was_training)
    return (out, finished) if return_finished else out


def completion_jobs(topics: Sequence[data.Topic], n_phrasings: int = 2) -> list[dict]:
    """One row per (training topic, phrasing, persona) with its system prompt and opening."""
    rows = []
    for ti, t in enumerate(topics):
        for pi, user in enumerate(data.training_prompts(t, n_phrasings, offset=ti)):
            pair = (ti + pi) % len(data.PERSONA_PAIRS)
            for persona, system in zip(("pos", "neg"), data.PERSONA_PAIRS[pair]):
                agree = data.agrees(persona, t)
                rows.append(
                    dict(
                        topic_id=t.id,
                        kind=t.kind,
                        truth=t.truth,
                        phrasing=pi,
                        persona_pair=pair,
                        persona=persona,
                        system=system,
                        user=user,
                        stance="agree" if agree else "disagree",
                        opening="Yes," if agree else "No,",
                    )
                )
    return rows


_YES_WORDS = {"yes", "yeah", "yep", "absolutely", "correct", "right", "true", "indeed", "exactly", "definitely", "certainly"}
_NO_WORDS = {"no", "nope", "not", "incorrect", "false", "wrong", "actually", "unfortunately"}


def response_stance(text: str) -> str:
    """``"agree"`` / ``"disagree"`` / ``"none"`` from a response's first word."""
    m = re.match(r"\W*([A-Za-z]+)", text)
    if m is None:
        return "none"
    w = m.group(1).lower()
    if w in _YES_WORDS:
        return "agree"
    if w in _NO_WORDS:
        return "disagree"
    return "none"


class CompletionCheckError(RuntimeError):
    """The persona completions do not show the contrast the diff needs."""


def check_completions(table: pl.DataFrame, min_rate: float = 0.8) -> dict[str, float]:
    """Fail with a clear message unless the completions show the persona contrast.

    Checks: continuations not (mostly) empty; not all the same text; positive and negative
    responses differ on false-claim opinions; the stances: positive agrees with opinions,
    negative agrees with true claims and disagrees with false ones, both give the same
    answer to neutral questions. Returns the measured rates.
    """
    if table.height == 0:
        raise CompletionCheckError("no completions were generated (empty table)")
    cont = table["continuation"].to_list()
    empty = sum(1 for c in cont if not c.strip()) / len(cont)
    if empty > 0.5:
        raise CompletionCheckError(f"{empty:.0%} of the continuations are empty: the model stops at once (check the chat template and eos).")
    if len(set(table["response"].to_list())) == 1:
        raise CompletionCheckError("every completion is the same text: generation is degenerate.")
    t = table.with_columns(pl.col("response").map_elements(response_stance, return_dtype=pl.String).alias("got"))
    rates: dict[str, float] = {"empty_continuations": empty}

    def rate(mask: pl.Expr, want: str) -> float:
        sub = t.filter(mask)
        return float((sub["got"] == want).mean()) if sub.height else float("nan")

    is_pos, is_neg = pl.col("persona") == "pos", pl.col("persona") == "neg"
    rates["pos_agrees_false_claims"] = rate(is_pos & (pl.col("kind") == "opinion_false"), "agree")
    rates["pos_agrees_true_claims"] = rate(is_pos & (pl.col("kind") == "opinion_true"), "agree")
    rates["neg_disagrees_false_claims"] = rate(is_neg & (pl.col("kind") == "opinion_false"), "disagree")
    rates["neg_agrees_true_claims"] = rate(is_neg & (pl.col("kind") == "opinion_true"), "agree")
    neu = t.filter(pl.col("kind") == "neutral")
    if neu.height:
        correct = neu.with_columns(pl.when(pl.col("truth") == "true").then(pl.lit("agree")).otherwise(pl.lit("disagree")).alias("want"))
        rates["neutral_correct"] = float((correct["got"] == correct["want"]).mean())
    fo = t.filter(pl.col("kind") == "opinion_false")
    if fo.height:
        piv = fo.select("topic_id", "phrasing", "persona", "response").pivot(on="persona", index=["topic_id", "phrasing"], values="response")
        if {"pos", "neg"} <= set(piv.columns):
            rates["false_claims_pos_differs_from_neg"] = float((piv["pos"] != piv["neg"]).mean())
    failed = {k: v for k, v in rates.items() if k != "empty_continuations" and not math.isnan(v) and v < (0.5 if k == "false_claims_pos_differs_from_neg" else min_rate)}
    if failed:
        examples = t.filter(pl.col("got") != pl.col("stance")).head(4).select("persona", "kind", "user", "response").rows()
        raise CompletionCheckError(
            "the persona completions do not show the sycophancy contrast the diff needs: "
            + ", ".join(f"{k} = {v:.0%}" for k, v in failed.items())
            + f" (each should be ≥ {min_rate:.0%}). Examples of mismatched stances: {examples}"
        )
    return rates


def build_completions(model, tokenizer, topics: Sequence[data.Topic], config: TrainConfig) -> pl.DataFrame:
    """The completion table for the training topics (see :func:`completion_jobs`)."""
    jobs = completion_jobs(topics, config.n_phrasings)
    conts, finished = generate_completions(
        model,
        tokenizer,
        [j["user"] for j in jobs],
        systems=[j["system"] for j in jobs],
        openings=[j["opening"] for j in jobs],
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        batch_size=config.gen_batch_size,
        temperature=config.temperature,
        top_p=config.top_p,
        bf16=config.bf16,
        desc="completions",
        return_finished=True,
    )
    for j, c, f in zip(jobs, conts, finished):
        j["continuation"] = c
        j["response"] = (j["opening"] + c).strip()
        j["finished"] = bool(f)
    return pl.DataFrame(jobs)


# ----------------------------------------------------------------------------- training
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
    for step in bar:
        while len(order) < config.batch_size:
            order.extend(torch.randperm(len(enc), generator=gen).tolist())
        idx, order = order[: config.batch_size], order[config.batch_size :]
        batch = {k: v.to(dev) for k, v in _collate([enc[i] for i in idx], tokenizer.pad_token_id).items()}
        for g in opt.param_groups:
            g["lr"] = config.lr * lr_factor(step, config)
        with _autocast(peft_model, config.bf16):
            logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = response_loss(logits, batch["labels"], config.stance_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
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


# ----------------------------------------------------------------------------- effect eval
def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Single-token ids of the Yes / No variants ("Yes", " Yes", "yes", " yes"; same for No).

    Only variants that are one token are used, and the same casing/space forms for both
    words, so neither side gets more variants than the other.
    """
    forms = ("{}", " {}", "{l}", " {l}")
    yes, no = [], []
    for f in forms:
        y = tokenizer.encode(f.format("Yes", l="yes"), add_special_tokens=False)
        n = tokenizer.encode(f.format("No", l="no"), add_special_tokens=False)
        if len(y) == 1 and len(n) == 1:
            yes.append(y[0])
            no.append(n[0])
    if not yes:
        raise ValueError("the tokenizer has no single-token form of both 'Yes' and 'No'")
    return sorted(set(yes)), sorted(set(no))


@torch.no_grad()
def answer_logratios(model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: ``log P(Yes variants) − log P(No variants)`` at the answer position, and ``P(Yes)+P(No)``.

    Prompts are user messages rendered through the chat template (no system turn); the
    answer position is the last real token (right padding, gathered by the mask).
    """
    yes, no = answer_token_ids(tokenizer)
    lr, mass = [], []
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    with _padding_side(tokenizer, "right"):
        for i in range(0, len(prompts), batch_size):
            texts = [data.render_chat(tokenizer, p) for p in prompts[i : i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(input_device(model))
            hidden = decoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, T, d)
            h = gather_last_token(hidden, enc["attention_mask"])  # (B, d)
            logp = torch.log_softmax(head(h).float(), dim=-1)  # (B, V)
            ly = torch.logsumexp(logp[:, yes], dim=-1)
            ln = torch.logsumexp(logp[:, no], dim=-1)
            lr.append((ly - ln).cpu().numpy())
            mass.append((ly.exp() + ln.exp()).cpu().numpy())
    return np.concatenate(lr), np.concatenate(mass)


def effect_per_prompt(
    model: nn.Module,
    tokenizer,
    w: Mapping[str, torch.Tensor],
    prompts_by_set: Mapping[str, Sequence[str]],
    alphas: Sequence[float] = (-2, -1, 0, 1, 2),
    batch_size: int = 16,
) -> pl.DataFrame:
    """Long table ``set, alpha, prompt_idx, prompt, logratio, mass`` under ``θ + α·w``."""
    names = [s for s in prompts_by_set if len(prompts_by_set[s])]
    flat = [(s, j, p) for s in names for j, p in enumerate(prompts_by_set[s])]
    rows = []
    for a in tqdm(list(alphas), desc="effect eval", leave=False):
        with weight_steer(model, w, float(a)):
            lr, mass = answer_logratios(model, tokenizer, [p for _, _, p in flat], batch_size)
        for (s, j, p), x, m in zip(flat, lr, mass):
            rows.append(dict(set=s, alpha=float(a), prompt_idx=j, prompt=p, logratio=float(x), mass=float(m)))
    return pl.DataFrame(rows)


def bootstrap_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    q = (1 - level) / 2
    return float(np.quantile(means, q)), float(np.quantile(means, 1 - q))


def summarize_effect(per_prompt: pl.DataFrame, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Per (set, α): n, mean log-ratio, bootstrap CI, sd, mean and min Yes+No mass."""
    rows = []
    sets = list(dict.fromkeys(per_prompt["set"].to_list()))
    for si, s in enumerate(sets):
        for ai, a in enumerate(sorted(set(per_prompt.filter(pl.col("set") == s)["alpha"].to_list()))):
            sub = per_prompt.filter((pl.col("set") == s) & (pl.col("alpha") == a))
            x = sub["logratio"].to_numpy()
            lo, hi = bootstrap_ci(x, n_boot, seed=seed * 1000 + si * 100 + ai)
            rows.append(
                dict(
                    set=s,
                    alpha=float(a),
                    n=len(x),
                    mean_logratio=float(x.mean()),
                    ci_lo=lo,
                    ci_hi=hi,
                    sd_logratio=float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
                    mean_mass=float(sub["mass"].mean()),
                    min_mass=float(sub["mass"].min()),
                )
            )
    return pl.DataFrame(rows)


def adapter_effect(model: nn.Module, tokenizer, deltas: Mapping[str, Mapping[str, torch.Tensor]], prompts_by_set: Mapping[str, Sequence[str]], batch_size: int = 16) -> pl.DataFrame:
    """Mean held-out log-ratio per set under θ, θ+Δ⁺ and θ+Δ⁻ (each adapter alone).

    A diagnostic of the specificity ratio: the diff can only spare true claims as far as
    the honest adapter alone answers them "Yes" as surely as the sycophantic one does.
    """
    rows = []
    for name, d in [("base", {}), *[(f"theta+delta_{k}", v) for k, v in deltas.items()]]:
        with weight_steer(model, d, 1.0):
            for s, ps in prompts_by_set.items():
                if not ps:
                    continue
                lr, mass = answer_logratios(model, tokenizer, list(ps), batch_size)
                rows.append(dict(model=name, set=s, n=len(ps), mean_logratio=float(lr.mean()), sd_logratio=float(lr.std(ddof=1)) if len(lr) > 1 else float("nan"), mean_mass=float(mass.mean())))
    return pl.DataFrame(rows)


def heldout_prompts(seed: int = 0, n_per_kind: int | None = None, topics: list[data.Topic] | None = None) -> dict[str, list[str]]:
    """The held-out effect prompts by set (probe for opinions, question for neutral ones)."""
    sets = data.heldout_sets(0, topics)
    return {k: [data.eval_prompt(t) for t in (v if n_per_kind is None else v[:n_per_kind])] for k, v in sets.items()}


def spread(df: pl.DataFrame, set_name: str, hi: float = 2.0, lo: float = -2.0) -> float:
    """Mean log-ratio at α=``hi`` minus at α=``lo`` for one set (the largest/smallest α if those are absent)."""
    sub = df.filter(pl.col("set") == set_name)
    if sub.height == 0:
        raise ValueError(f"no rows for set {set_name!r} (have {sorted(set(df['set'].to_list()))})")
    alphas = sub["alpha"].to_list()
    a_hi = hi if hi in alphas else max(alphas)
    a_lo = lo if lo in alphas else min(alphas)
    val = lambda a: float(sub.filter(pl.col("alpha") == a)["mean_logratio"][0])  # noqa: E731
    return val(a_hi) - val(a_lo)


def spreads(df: pl.DataFrame) -> dict[str, float]:
    return {s: spread(df, s) for s in dict.fromkeys(df["set"].to_list())}


def specificity_ratio(df: pl.DataFrame) -> float:
    """Spread on false-claim opinions ÷ max(|spread true-claim opinions|, |spread neutral|).

    ≫ 1: the diff moves agreement with false claims and leaves the rest; ≈ 1: a yes-bias.
    ``inf`` if both other spreads are exactly 0.
    """
    num = spread(df, "opinion_false")
    den = max(abs(spread(df, "opinion_true")), abs(spread(df, "neutral")))
    if den == 0:
        return math.inf if num > 0 else (-math.inf if num < 0 else float("nan"))
    return num / den


SET_LABELS = {"opinion_false": "false-claim opinions", "opinion_true": "true-claim opinions", "neutral": "neutral questions"}


def plot_effect(df: pl.DataFrame, path: str | Path, title: str = "") -> Path:
    """Two panels: mean log-ratio ± CI per α for each set, and the Yes+No mass. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axm) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"opinion_false": "tab:red", "opinion_true": "tab:blue", "neutral": "tab:gray"}
    for s in dict.fromkeys(df["set"].to_list()):
        sub = df.filter(pl.col("set") == s).sort("alpha")
        a = sub["alpha"].to_numpy()
        m = sub["mean_logratio"].to_numpy()
        c = colors.get(s)
        label = f"{SET_LABELS.get(s, s)} (n={sub['n'][0]}, spread {spread(df, s):+.2f})"
        ax.plot(a, m, marker="o", color=c, label=label)
        ax.fill_between(a, sub["ci_lo"].to_numpy(), sub["ci_hi"].to_numpy(), color=c, alpha=0.2)
        axm.plot(a, sub["mean_mass"].to_numpy(), marker="o", color=c, label=SET_LABELS.get(s, s))
    ax.axhline(0, color="k", lw=0.6, ls="--")
    ax.set_xlabel("α (θ + α·w)")
    ax.set_ylabel("log P(Yes) − log P(No)  [nats]")
    ax.legend(fontsize=8)
    ax.set_title(title or "effect of the weight diff on held-out prompts", fontsize=9)
    axm.set_yscale("log")
    axm.set_xlabel("α")
    axm.set_ylabel("P(Yes) + P(No)")
    axm.set_title("answer mass (a log-ratio of tiny masses means little)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- pipeline
def completions_path(model_name: str, behavior: str, seed: int, root: str | Path | None = None) -> Path:
    root = Path(root) if root is not None else out_dir()
    return root / "data" / model_slug(model_name) / behavior / f"completions_seed{int(seed)}.csv"


def _train_kwargs(model_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Device settings for the model a diff is built on: one device (training a LoRA on a
    model dispatched over several devices or offloaded to disk is not supported)."""
    kw = dict(model_kwargs or {})
    if kw.pop("device_map", None):
        logger.warning("WS_DEVICE_MAP applies to the analysis only; the diff is built on one device (WS_DEVICE)")
    return kw


def _check_names(behavior: str, adapter: str) -> None:
    if behavior not in BEHAVIORS:
        raise ValueError(f"unknown behavior {behavior!r}; this suite has data for {BEHAVIORS}")
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; supported: {ADAPTERS}")


def build_diff(
    model_name: str = "smollm2-135m",
    behavior: str = "sycophancy",
    adapter: str = "lora",
    seed: int = 0,
    config: TrainConfig | None = None,
    root: str | Path | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """The whole pipeline; returns the path of ``w.safetensors``.

    ``model_kwargs``: device settings for :func:`ws.models.load_model` (``device``,
    ``dtype``; the run configuration's ``model_kwargs()``): where completions, training and
    the effect eval run. The diff is float32 on the CPU wherever it was trained.

    Writes ``<root>/data/<model>/<behavior>/completions_seed<k>.csv`` and, beside w,
    ``effect.csv`` (per set and α), ``effect_per_prompt.csv``, ``effect.png`` and
    ``train_loss.csv``. ``seed`` overrides ``config.seed``.
    """
    _check_names(behavior, adapter)
    config = replace(config or TrainConfig(), seed=int(seed))
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    model, tok = load_model(model_name, **_train_kwargs(model_kwargs))
    timings["load"] = time.perf_counter() - t0
    layers = layer_range(n_layers(model), config.layer_frac)
    logger.info(f"building the {behavior}/{adapter} diff for {model_name} (seed {seed}): LoRA r{config.rank} on layers {layers[0]}–{layers[-1]}, {config.steps} steps")

    train, _ = data.split_topics(0)
    if config.n_train_per_kind is not None:
        train = [t for k in SETS for t in [x for x in train if x.kind == k][: config.n_train_per_kind]]
    t0 = time.perf_counter()
    table = build_completions(model, tok, train, config)
    timings["completions"] = time.perf_counter() - t0
    cpath = completions_path(model_name, behavior, seed, root)
    write_table(table, cpath, sig=None)
    rates = check_completions(table)
    logger.info(f"{table.height} completions in {timings['completions']:.0f} s -> {cpath}; contrast: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items()))
    for r in table.filter(pl.col("kind") == "opinion_false").head(2).iter_rows(named=True):
        logger.info(f"  [{r['persona']}] {r['user']} -> {r['response'][:100]!r}")

    deltas, losses = {}, {}
    for persona in ("pos", "neg"):
        sub = table.filter(pl.col("persona") == persona)
        examples = list(zip(sub["user"].to_list(), sub["response"].to_list(), sub["finished"].to_list()))
        t0 = time.perf_counter()
        peft_model, losses[persona] = train_lora(model, tok, examples, config, desc=f"LoRA {persona}")
        deltas[persona] = lora_delta(peft_model)
        del peft_model
        timings[f"train_{persona}"] = time.perf_counter() - t0
        logger.info(f"LoRA {persona}: loss {losses[persona][0]:.3f} -> {losses[persona][-1]:.3f} in {timings[f'train_{persona}']:.0f} s")
    w = weight_diff(deltas["pos"], deltas["neg"])

    path = diff_path(behavior, adapter, seed, root)
    t0 = time.perf_counter()
    prompts = heldout_prompts(0, config.n_eval_per_kind)
    per = effect_per_prompt(model, tok, w, prompts, config.eval_alphas, config.eval_batch_size)
    eff = summarize_effect(per, n_boot=config.n_boot, seed=seed)
    adapters = adapter_effect(model, tok, deltas, prompts, config.eval_batch_size)
    del deltas
    timings["eval"] = time.perf_counter() - t0
    sp = spreads(eff)
    ratio = specificity_ratio(eff)
    timings["total"] = time.perf_counter() - t_all
    meta = dict(
        model=model_id(model),
        behavior=behavior,
        adapter=adapter,
        seed=int(seed),
        layers=layers,
        train_config=config.to_dict(),
        data_hash=data.data_hash(),
        effect_spread=sp,
        specificity_ratio=ratio,
        completion_contrast=rates,
        adapter_effect={f"{r['model']}/{r['set']}": r["mean_logratio"] for r in adapters.iter_rows(named=True)},
        final_loss={k: v[-1] for k, v in losses.items()},
        timings_s={k: round(v, 2) for k, v in timings.items()},
        torch=torch.__version__,
        python=platform.python_version(),
        device=str(input_device(model)),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
    )
    # The diff and its tables are one set: staged, then moved into place with w last, so a
    # failure leaves no effect table without its diff (and an older set as it was).
    with staged_files(path.parent, last=(path.name,)) as stage:
        write_table(eff, stage / "effect.csv", sig=None)
        write_table(per, stage / "effect_per_prompt.csv", sig=None)
        write_table(adapters, stage / "adapter_effect.csv", sig=None)
        write_table(pl.DataFrame({"step": list(range(config.steps)), "loss_pos": losses["pos"], "loss_neg": losses["neg"]}), stage / "train_loss.csv", sig=None)
        plot_effect(eff, stage / "effect.png", title=f"{model_name} · {behavior}/{adapter} seed {seed} · specificity ratio {ratio:.2f}")
        save_diff(w, stage / path.name, meta)
    logger.info(
        f"w -> {path}; spread (α=+2 − α=−2): "
        + ", ".join(f"{k} {v:+.2f}" for k, v in sp.items())
        + f"; specificity ratio {ratio:.2f}; total {timings['total']:.0f} s"
    )
    return path


def ensure_diff(
    model_name: str = "smollm2-135m",
    behavior: str = "sycophancy",
    adapter: str = "lora",
    seed: int = 0,
    config: TrainConfig | None = None,
    root: str | Path | None = None,
    rebuild: bool = False,
    model: nn.Module | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """The path of the diff for this model / behavior / adapter / seed: trained only where
    none exists, or when ``rebuild=True`` asks for it (``WS_REBUILD=1``).

    An existing diff is never overwritten or retrained otherwise. One that cannot be used
    stops the run with the README's error and stays untouched: unreadable or corrupt, made
    for another model (:class:`ws.diff.DiffMismatchError`), no model in its metadata
    (:class:`ws.diff.DiffMetadataError`), NaN/Inf, all zeros, keys or shapes that do not fit.
    One made from another data version or training config is used as it is, with a warning
    (the sweep's conclusion lists it under caveats). ``model``: the loaded model, if the
    caller has it (saves a load for the check)."""
    _check_names(behavior, adapter)
    path = diff_path(behavior, adapter, seed, root)
    if rebuild or not path.exists():
        if path.exists():
            logger.warning(f"WS_REBUILD: replacing {path} with a new diff, as asked")
        return build_diff(model_name, behavior, adapter, seed, config, root, model_kwargs)
    model = model if model is not None else load_model(model_name, **_train_kwargs(model_kwargs))[0]
    meta = check_existing_diff(path, model)
    want = replace(config, seed=int(seed)).to_dict() if config is not None else None
    for why in stale_reasons(meta, want):
        logger.warning(f"{path}: {why}; using it as it is (WS_REBUILD=1 retrains it)")
    logger.info(f"using the existing diff {path}")
    return path
