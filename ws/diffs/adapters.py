"""The adapter types and what defines a diff: one registration per type, its peft config and its delta.

The adapter types (:data:`ADAPTER_TYPES`, one :func:`register_adapter` call each; ``WS_ADAPTER``): ``lora``, ``dora``, ``pissa``,
``ia3``, ``oft``, ``boft`` and ``delora`` through peft, one adapter per persona; ``bidir``, ONE
LoRA trained as ``θ+Δ`` on the positive persona's completions and ``θ−Δ`` on the negative's
(alternating batches), so that ``Δ⁺ = Δ``, ``Δ⁻ = −Δ`` and ``w = 2Δ``; and the S-space family
of the suite's own (:mod:`ws.diffs.sspace`: ``sspace_gain``, ``sspace_lowrank``,
``sspace_ablate``, ``sspace_corda``, ``sspace_asvd``, ``sspace_rot``), one per persona, whose
Δ is the formula ``U_r D P`` inside a frozen basis that is written beside ``w``.

How they are trained (a deep copy per adapter, the loss on the response, the same batches for
both personas): :mod:`ws.diffs.training`. :class:`TrainConfig` holds everything that defines a
diff besides the model and the data.

Every type's delta is ``merged weight − base weight`` in float32, keyed by the base model's
parameter names: for LoRA (and ``bidir``) that is ``B·A·scaling`` (:func:`lora_delta`);
for the others each adapted layer is merged on a float32 copy and the base weight
subtracted (:func:`merged_delta`), which also covers the multiplicative ones (IA3, OFT),
DoRA's magnitude and PiSSA's residual base. ``w[key] = Δ⁺[key] − Δ⁻[key]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import peft
import torch
from peft import BOFTConfig, DeloraConfig, IA3Config, LoraConfig, OFTConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ws.diffs import sspace
from ws.model.anatomy import PROJECTIONS
from ws.model.load import n_layers

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
    targets: tuple[str, ...] = PROJECTIONS
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


@torch.no_grad()
def merged_layer(mod: BaseTunerLayer, adapter_names: list[str] | None = None) -> nn.Module:
    """The adapted layer's base module after peft merged the adapter(s) (``adapter_names``, default
    the active ones) into a float32 CPU copy of the layer; ``mod`` itself is left as it is."""
    layer = copy.deepcopy(mod).to("cpu", torch.float32)
    layer.merge(adapter_names=adapter_names)
    return layer.get_base_layer()


def minus_base(new: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``new − base`` in float32 on the CPU (contiguous): a merged parameter's delta."""
    return (new.detach().to("cpu", torch.float32) - base.detach().to("cpu", torch.float32)).contiguous()


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
        out[key] = minus_base(merged_layer(mod).weight, base[key])
    if not out:
        raise ValueError("the model has no adapted layers")
    return out


def trained_delta(peft_model, base_model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
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
    base = raw.get("base_model_name_or_path")
    if base and Path(base).is_absolute():
        # a folder on the machine that trained it: the diff names the model instead (a shared
        # diff carries no path of the machine it was made on)
        raw["base_model_name_or_path"] = getattr(peft_model.get_base_model(), "ws_name", None) or Path(base).name
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
