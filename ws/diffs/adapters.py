"""Adapter training: one adapter per persona (or one for both) and the diff ``w = Δ⁺ − Δ⁻``.

The adapter types (:data:`ADAPTER_TYPES`, one :func:`register_adapter` call each; ``WS_ADAPTER``): ``lora``, ``dora``, ``pissa``,
``ia3``, ``oft``, ``boft`` and ``delora`` through peft, one adapter per persona; ``bidir``, ONE
LoRA trained as ``θ+Δ`` on the positive persona's completions and ``θ−Δ`` on the negative's
(alternating batches), so that ``Δ⁺ = Δ``, ``Δ⁻ = −Δ`` and ``w = 2Δ``; and the S-space family
of the suite's own (:mod:`ws.diffs.sspace`: ``sspace_gain``, ``sspace_lowrank``,
``sspace_ablate``, ``sspace_corda``, ``sspace_asvd``, ``sspace_rot``), one per persona, whose
Δ is the formula ``U_r D P`` inside a frozen basis that is written beside ``w``.

Each adapter is trained on a deep copy of the model (the base model is never touched),
without the system prompt, loss on the response tokens only, the same initialisation and
batch order for both personas, so what they share cancels in the difference. The answer's
first token (the stance) weighs ``stance_weight`` times a later token and the learning rate
decays linearly: measured here, the honest adapter otherwise ends near a 50/50 Yes/No
answer on every opinion (its truth-conditional decision is one token among many, and with
a constant rate the last batches set its bias), and the diff comes out as an
agree-with-any-opinion bias.

Every type's delta is ``merged weight − base weight`` in float32, keyed by the base model's
parameter names: for LoRA (and ``bidir``) that is ``B·A·scaling`` (:func:`lora_delta`);
for the others each adapted layer is merged on a float32 copy and the base weight
subtracted (:func:`merged_delta`), which also covers the multiplicative ones (IA3, OFT),
DoRA's magnitude and PiSSA's residual base. ``w[key] = Δ⁺[key] − Δ⁻[key]``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

import peft
import torch
from peft import BOFTConfig, DeloraConfig, IA3Config, LoraConfig, OFTConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from tqdm.auto import tqdm

from ws.core.device import input_device, use_bf16
from ws.core.log import logger
from ws.diffs import sspace
from ws.diffs.fasttrain import frozen_linears_in, plan_training, precast_safe, step_loss
from ws.model.chat import render_chat
from ws.model.load import n_layers

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: IA3's own targets (peft's for Llama, used for every model family): the outputs of k_proj
#: and v_proj are scaled, and the input of down_proj (a feed-forward scaling). It never
#: touches o_proj, so a diff's o_proj weight cells are NaN (never 0).
IA3_TARGETS = ("k_proj", "v_proj", "down_proj")
IA3_FEEDFORWARD = ("down_proj",)
#: OFT's block size (peft's default): a block-diagonal rotation of each target's input.
OFT_BLOCK_SIZE = 32
#: BOFT's block size and butterfly factor: 2 butterfly factors of 4 × 4 blocks per input
#: (4 divides every width of the embedded and the tiny models; peft's block-size default is 4).
BOFT_BLOCK_SIZE = 4
BOFT_BUTTERFLY = 2
#: DeLoRA's λ (peft's default): the bound on the norm of each rank-one update.
DELORA_LAMBDA = 15


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
    max_len: int = 160  # prompt + response tokens; raised to fit the longest example (training_length)
    stance_weight: float = 5.0  # loss weight of the answer's first token relative to the rest
    # completions: sampled with their own seed, so every LoRA seed trains on the same data
    # (the base model's completions do not depend on the LoRA seed; one run makes them once)
    completion_seed: int = 0
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


# ----------------------------------------------------------------------------- the adapter types
@dataclass(frozen=True)
class AdapterType:
    """One adapter type: everything the suite needs to know about it, in one registration.

    ``peft_config(targets, layers, config)`` builds the peft config of one adapter on the
    given decoder layers; ``delta(peft_model, base_model)`` is its weight delta
    (``merged − base`` in float32, keyed by the base model's parameter names);
    ``unit_alpha`` is the α of ``θ + α·w`` that moves the model by one trained adapter;
    ``bidirectional``: ONE adapter trained as ``θ+Δ`` on the positive persona and ``θ−Δ`` on
    the negative (``w = 2Δ``) instead of one adapter per persona. A type of the suite's own
    (the S-space family) gives ``wrap`` instead of ``peft_config``, and may need calibration
    ``moments`` and name its ``planted`` bases.
    """

    name: str
    description: str
    peft_config: Callable[[TrainConfig, list[int]], Any] | None
    delta: Callable[[Any, nn.Module], dict[str, torch.Tensor]]
    unit_alpha: float = 1.0
    bidirectional: bool = False
    #: a type that is not peft's: ``wrap(model, config, layers, moments)`` returns the
    #: trainable copy (``model`` untouched; only the adapter's parameters train)
    wrap: Callable[[nn.Module, TrainConfig, list[int], Mapping[str, torch.Tensor] | None], nn.Module] | None = None
    #: calibration moments the wrap needs (``"full"`` E[x xᵀ] or ``"diagonal"`` E[x²] of each
    #: target's input, over the training prompts without a persona); None: none
    moments: str | None = None
    #: ``planted(trained) -> {candidate name: {base parameter name: basis [d_out, r]}}``: the
    #: frozen bases every ΔW of the type lies in (the S-space family's known answer)
    planted: Callable[[nn.Module], dict[str, dict[str, torch.Tensor]]] | None = None


#: Every adapter type by name, in registration order: ``WS_ADAPTER``'s allowed values, the
#: cross-adapter comparison's default set and the README's adapter table all read it.
ADAPTER_TYPES: dict[str, AdapterType] = {}


def register_adapter(kind: AdapterType) -> AdapterType:
    """Add an adapter type to :data:`ADAPTER_TYPES` (its name must be new)."""
    if kind.name in ADAPTER_TYPES:
        raise ValueError(f"adapter type {kind.name!r} is registered twice")
    ADAPTER_TYPES[kind.name] = kind
    return kind


def adapter_type(name: str) -> AdapterType:
    """The registration of ``name``; a clear error for an unknown one."""
    if name not in ADAPTER_TYPES:
        raise ValueError(f"unknown adapter type {name!r}; supported: {', '.join(ADAPTER_TYPES)}")
    return ADAPTER_TYPES[name]


def _where(layers: list[int]) -> dict[str, Any]:
    return dict(layers_to_transform=layers, layers_pattern="layers", task_type="CAUSAL_LM")


def _lora(config: TrainConfig, layers: list[int], **extra: Any):
    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(config.targets),
        **_where(layers),
        **extra,
    )


def _ia3(config: TrainConfig, layers: list[int]):
    """IA3Config has no layers_to_transform: the layers go into a module-name pattern."""
    ls = "|".join(map(str, layers))
    return IA3Config(
        target_modules=rf".*\.layers\.({ls})\.(self_attn|mlp)\.({'|'.join(IA3_TARGETS)})",
        feedforward_modules=rf".*\.layers\.({ls})\.mlp\.({'|'.join(IA3_FEEDFORWARD)})",
        init_ia3_weights=True,
        task_type="CAUSAL_LM",
    )


def _oft(config: TrainConfig, layers: list[int]):
    return OFTConfig(
        r=0,
        oft_block_size=OFT_BLOCK_SIZE,
        target_modules=list(config.targets),
        module_dropout=0.0,
        init_weights=True,
        **_where(layers),
    )


def _boft(config: TrainConfig, layers: list[int]):
    return BOFTConfig(
        boft_block_size=BOFT_BLOCK_SIZE,
        boft_n_butterfly_factor=BOFT_BUTTERFLY,
        target_modules=list(config.targets),
        boft_dropout=0.0,
        bias="none",
        init_weights=True,
        **_where(layers),
    )


def _delora(config: TrainConfig, layers: list[int]):
    return DeloraConfig(
        r=config.rank,
        delora_lambda=DELORA_LAMBDA,
        target_modules=list(config.targets),
        module_dropout=0.0,
        bias="none",
        **_where(layers),
    )


def _lora_delta(peft_model, base_model: nn.Module) -> dict[str, torch.Tensor]:
    return lora_delta(peft_model)


def peft_config(model: nn.Module, config: TrainConfig, adapter: str = "lora"):
    """The peft config of an adapter type on the layers (``config.layer_frac``) and targets of ``config``."""
    kind = adapter_type(adapter)
    if kind.peft_config is None:
        raise ValueError(f"adapter type {adapter!r} is not a peft type: it has no peft config")
    return kind.peft_config(config, layer_range(n_layers(model), config.layer_frac))


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


@torch.no_grad()
def merged_delta(peft_model, base_model: nn.Module) -> dict[str, torch.Tensor]:
    """``{base parameter name: merged weight − base weight}`` in float32 for every adapted layer.

    Each adapted layer is copied to float32 on the CPU, merged there by peft, and the weight
    of ``base_model`` (the model before any adapter: PiSSA rewrites the copy's base weight)
    subtracted. Works for every peft type, additive or multiplicative."""
    base = dict(base_model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, mod in peft_model.get_base_model().named_modules():
        if not isinstance(mod, BaseTunerLayer):
            continue
        key = f"{name}.weight"
        if key not in base:
            raise ValueError(f"adapted layer {name!r} has no weight {key!r} in the base model")
        layer = copy.deepcopy(mod).to("cpu", torch.float32)
        layer.merge()
        merged = layer.get_base_layer().weight.detach()
        out[key] = (merged - base[key].detach().to("cpu", torch.float32)).contiguous()
    if not out:
        raise ValueError("the model has no adapted layers")
    return out


def adapter_delta(peft_model, base_model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's weight delta, as its registration computes it (:func:`lora_delta` for
    the LoRA types whose delta is ``B·A·scaling``, :func:`merged_delta` for the others)."""
    return adapter_type(adapter).delta(peft_model, base_model)


def _plain(v: Any) -> Any:
    """A peft config value as JSON: sets sorted, enums by value, tuples as lists."""
    if isinstance(v, (set, frozenset)):
        return sorted(_plain(x) for x in v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    return str(getattr(v, "value", v))


def adapter_settings(peft_model, adapter: str) -> dict[str, Any]:
    """The adapter's own config for the diff's metadata: its type, what it is, ``w``'s
    relation to it, and peft's config (entries that are None left out) or, for an S-space
    type, its rank per target and what its basis was computed from."""
    if not hasattr(peft_model, "peft_config"):
        layers = peft_model.sspace_layers()
        return {
            "type": adapter,
            "what": adapter_type(adapter).description,
            "unit_alpha": unit_alpha(adapter),
            "sspace": {
                "kind": peft_model.kind,
                "rank": {n: m.r for n, m in layers.items()},
                "k": next(iter(layers.values())).k,
                "targets": sorted(layers),
                "basis": sspace.BASIS_SOURCE[peft_model.kind],
            },
        }
    raw = peft_model.peft_config["default"].to_dict()
    return {
        "type": adapter,
        "what": adapter_type(adapter).description,
        "unit_alpha": unit_alpha(adapter),
        "peft_version": peft.__version__,
        "peft_config": {k: _plain(v) for k, v in sorted(raw.items()) if v is not None},
    }


def unit_alpha(adapter: str) -> float:
    """The α of ``θ + α·w`` that moves the model by one trained adapter (its registration's)."""
    return adapter_type(adapter).unit_alpha


def adapter_table() -> str:
    """The README's adapter table (name, what it trains, unit α), from :data:`ADAPTER_TYPES`."""
    rows = ["| type | what it trains | unit α |", "|---|---|---|"]
    rows += [f"| `{k.name}` | {k.description} | {k.unit_alpha:g} |" for k in ADAPTER_TYPES.values()]
    return "\n".join(rows)


def eval_alphas(adapter: str, config: TrainConfig) -> tuple[float, ...]:
    """The effect eval's α: ``config.eval_alphas`` and ``±`` the adapter's unit α."""
    a = unit_alpha(adapter)
    return tuple(sorted({float(x) for x in config.eval_alphas} | {a, -a}))


# ----------------------------------------------------------------------------- the registrations
register_adapter(
    AdapterType("lora", "LoRA, one per persona: ΔW = B·A·(α/r)", lambda c, ls: _lora(c, ls, init_lora_weights=True), _lora_delta)
)
register_adapter(
    AdapterType(
        "dora",
        "DoRA, one per persona: LoRA with a learned magnitude per output row (peft `use_dora`)",
        lambda c, ls: _lora(c, ls, use_dora=True, init_lora_weights=True),
        merged_delta,
    )
)
register_adapter(
    AdapterType(
        "pissa",
        "PiSSA, one per persona: LoRA started on the top-r singular directions of W, the residual frozen "
        '(peft `init_lora_weights="pissa"`)',
        lambda c, ls: _lora(c, ls, use_dora=False, init_lora_weights="pissa"),
        merged_delta,
    )
)
register_adapter(
    AdapterType(
        "ia3",
        "IA3, one per persona: learned scalings of the k_proj / v_proj outputs and the down_proj input "
        "(peft's Llama targets); no o_proj",
        _ia3,
        merged_delta,
    )
)
register_adapter(
    AdapterType(
        "oft",
        f"OFT, one per persona: a learned block-diagonal rotation (block size {OFT_BLOCK_SIZE}) of each target's input",
        _oft,
        merged_delta,
    )
)
register_adapter(
    AdapterType(
        "boft",
        f"BOFT, one per persona: a learned butterfly-factorised orthogonal rotation ({BOFT_BUTTERFLY} factors of "
        f"{BOFT_BLOCK_SIZE} × {BOFT_BLOCK_SIZE} blocks) of each target's input",
        _boft,
        merged_delta,
    )
)
register_adapter(
    AdapterType(
        "delora",
        f"DeLoRA, one per persona: a LoRA whose rank-one updates are normalised and scaled by a learned, bounded "
        f"norm (λ {DELORA_LAMBDA})",
        _delora,
        merged_delta,
    )
)
register_adapter(
    AdapterType(
        "bidir",
        "one LoRA for both personas: θ+Δ on the positive completions, θ−Δ on the negative ones (alternating batches); w = 2Δ",
        lambda c, ls: _lora(c, ls, init_lora_weights=True),
        _lora_delta,
        unit_alpha=0.5,
        bidirectional=True,
    )
)


# ----------------------------------------------------------------------------- the S-space family
def _sspace(name: str, what: str) -> AdapterType:
    """An S-space type (:mod:`ws.diffs.sspace`): trained only inside each target's frozen
    top-r singular (or data-oriented) subspace, ΔW from the formula; rank
    :func:`ws.diffs.sspace.default_rank` (16 on the embedded model and the tiny ones)."""
    oriented = name in sspace.ORIENTED_KINDS
    return AdapterType(
        name,
        f"S-space, one per persona: {what}; ΔW confined to a frozen rank-r basis "
        f"({'of W·C^½, C from the training prompts' if oriented else 'the top-r singular vectors of W'}; r = 16)",
        None,
        lambda m, _base: sspace.sspace_delta(m),
        wrap=lambda model, c, layers, moments: sspace.wrap_sspace(model, name, layers, c.targets, moments=moments, seed=c.seed),
        moments={"sspace_corda": "full", "sspace_asvd": "diagonal"}.get(name),
        planted=sspace.planted,
    )


register_adapter(_sspace("sspace_gain", "a gain per singular value, S ⊙ (1 + ELU(g))"))
register_adapter(_sspace("sspace_lowrank", "gains and a rank-8 LoRA core B·A inside the top-r coordinates"))
register_adapter(_sspace("sspace_ablate", "a clamped directional ablation (a contraction) of the top-r output coordinates"))
register_adapter(_sspace("sspace_corda", "gains on the singular values of W·C^½, C = E[x xᵀ] of the input (covariance-oriented)"))
register_adapter(
    _sspace("sspace_asvd", "gains on the singular values of W·C^½, C = diag(E[x²]) of the input (activation-scaled)")
)
register_adapter(
    _sspace("sspace_rot", "a bounded block rotation (Cayley, blocks of 4) of the top-r input coordinates and a shift of S")
)
