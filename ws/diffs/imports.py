"""Bring your own weight diff: PEFT adapter folders and pairs of fully fine-tuned checkpoints.

Each function turns what a researcher trained elsewhere into the suite's weight diff ``w``: a
``dict[str, Tensor]`` keyed by the BASE model's parameter names (``model.layers.3.self_attn.o_proj.weight``),
float32 on the CPU, each tensor of its parameter's shape, plus a JSON-ready provenance ``meta``.

- :func:`adapter_delta`: one adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, as peft's
  ``save_pretrained`` writes it) -> ``Δ = peft's own merge − base weights``, for every peft type that merges
  into the weights (LoRA and its variants, IA³, OFT, BOFT, LoHa, LoKr, VeRA, HRA, …).
- :func:`pair_diff`: two adapters, one per persona -> ``w = Δ⁺ − Δ⁻``.
- :func:`bidir_diff`: one adapter trained as ``θ±Δ`` (endpoints α = ±½) -> ``w = 2Δ``.
- :func:`checkpoint_diff`: two full checkpoint folders -> ``w = θ⁺ − θ⁻`` on the decoder blocks' linear
  weights, read tensor by tensor; every other parameter that differs is listed, never dropped.

Every refusal is an :class:`ImportRefused` (a ``ValueError``) whose message names the folder or file and says
what to do. The adapter is checked (folder, type, base model, weights) before any model work, and the model at
hand is left exactly as it was: peft works on a throwaway copy of the module tree that shares the model's
weights, each adapted layer is merged on its own float32 copy, and a fingerprint of every weight is compared
before and after.

Usage::

    from ws.diffs.imports import pair_diff
    from ws.diffs.store import save_diff

    w, meta = pair_diff(model, "adapters/honest", "adapters/sycophant")
    save_diff(w, "out/imported/w.safetensors", meta)
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper
from safetensors import safe_open
from torch import nn

from ws.core.io import pickle_refusal
from ws.core.log import logger, progress
from ws.core.paths import EMBEDDED_NAMES, model_slug
from ws.diffs.adapters import merged_layer, minus_base
from ws.model.anatomy import PROJECTIONS, param_name
from ws.model.load import model_id, n_layers

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
CHECKPOINT_SAFETENSORS = "model.safetensors"
CHECKPOINT_INDEX = "model.safetensors.index.json"
CHECKPOINT_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
#: The embedded model's names, its Hugging Face id included: an adapter trained on any of them fits it.
EMBEDDED_ALIASES = frozenset(n.lower() for n in (*EMBEDDED_NAMES, "HuggingFaceTB/SmolLM2-135M-Instruct"))
#: peft types that do not merge into weights, with what to bring instead.
NOT_MERGEABLE = {
    "ADAPTION_PROMPT": "adaption prompts add gated attention over learned prompts",
    "XLORA": "X-LoRA mixes several LoRAs with a per-token learned gate",
    "POLY": "Poly routes each task through a learned mix of LoRA skills",
    "CPT": "context-aware prompt tuning learns input embeddings",
    "CARTRIDGE": "a cartridge is a learned key/value prefix",
    "SHADOW": "a shadow adapter is an input-dependent trajectory through the layers, not a weight change",
    "LILY": "peft has no merge for Lily (its projectors are shared across layers and mixed per input)",
}
#: LoRA initialisations whose base weights peft cannot rebuild from the adapter folder alone (randomised, data- or
#: quantisation-dependent); PiSSA with a full SVD and OLoRA are rebuilt exactly and are accepted.
UNREBUILDABLE_INITS = ("pissa_niter_", "corda", "loftq", "lora_ga")
#: LoRA initialisations that rewrite the base weights in place when peft rebuilds them.
REWRITING_INITS = ("pissa", "olora")
#: The config fields a checkpoint must share with the model (checked when both sides have them).
ARCH_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)
ADAPTER = "default"
_BRING = "bring a folder that peft's `save_pretrained` wrote (adapter_config.json + adapter_model.safetensors)"


class ImportRefused(ValueError):
    """An adapter or checkpoint that cannot become a weight diff; the message names it and says what to do."""


# ----------------------------------------------------------------------------- small helpers
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _shown(names: Iterable[str], n: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" … (+{len(names) - n} more)" if len(names) > n else "")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ImportRefused(f"{path} is not readable JSON ({type(e).__name__}: {e}); {what}") from e
    if not isinstance(obj, dict):
        raise ImportRefused(f"{path} holds a {type(obj).__name__}, not a JSON object; {what}")
    return obj


def _nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


# ----------------------------------------------------------------------------- base model names
def same_base(adapter_base: str | None, model_name: str) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` names the model at hand.

    Accepted: no name at all (the caller records a warning), equal names, two names of the embedded model, two
    paths of the same folder, and a last path component equal to the model folder's name (``org/Model`` and a
    local ``…/Model`` folder).
    """
    if not adapter_base:
        return True
    a, m = str(adapter_base).strip().rstrip("/"), str(model_name).strip().rstrip("/")
    if a == m or model_slug(a) == model_slug(m):
        return True

    def is_embedded(s: str) -> bool:
        return s.lower() in EMBEDDED_ALIASES or Path(s).name.lower() in EMBEDDED_ALIASES

    if is_embedded(a) and is_embedded(m):
        return True
    pa, pm = Path(a).expanduser(), Path(m).expanduser()
    if pa.exists() and pm.exists() and pa.resolve() == pm.resolve():
        return True
    return bool(pa.name) and pa.name == pm.name


# ----------------------------------------------------------------------------- adapter folder checks
def _adapter_files(folder: Path) -> tuple[Path, Path]:
    """``(adapter_config.json, weights file)`` of an adapter folder, or a refusal naming what it lacks."""
    if not folder.is_dir():
        raise ImportRefused(f"no adapter folder at {folder}: {_BRING}")
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        held = _shown(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ImportRefused(f"{folder} has no {ADAPTER_CONFIG} (it holds: {held}); {_BRING}")
    for name in (ADAPTER_SAFETENSORS, ADAPTER_PICKLE):
        if (folder / name).is_file():
            return config, folder / name
    raise ImportRefused(f"{folder} has no adapter weights ({ADAPTER_SAFETENSORS} or {ADAPTER_PICKLE}); {_BRING}")


def _adapter_config(folder: Path, config_path: Path):
    """The peft config object of the folder, refused when its type has nothing to merge."""
    raw = _read_json(config_path, _BRING)
    kind = str(raw.get("peft_type") or "")
    if kind not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ImportRefused(
            f"{config_path} has peft_type {kind!r}, which peft {peft.__version__} does not know; upgrade peft, or {_BRING}"
        )
    try:
        config = PEFT_TYPE_TO_CONFIG_MAPPING[kind].from_pretrained(str(folder))
    except (TypeError, ValueError) as e:
        raise ImportRefused(f"peft cannot read {config_path} ({type(e).__name__}: {e}); {_BRING}") from e
    if config.is_prompt_learning or kind in NOT_MERGEABLE:
        why = NOT_MERGEABLE.get(kind, "it learns virtual tokens or key/value prefixes fed with the input")
        raise ImportRefused(
            f"{folder} is a {kind} adapter: {why}, which changes no weight, so there is nothing to merge into a weight "
            f"diff. Bring a weight adapter instead (LoRA, DoRA, IA3, OFT, …: any peft type whose `merge_and_unload` "
            f"works), or two fine-tuned checkpoints for checkpoint_diff"
        )
    init = getattr(config, "init_lora_weights", None)
    if isinstance(init, str) and init.lower().startswith(UNREBUILDABLE_INITS):
        raise ImportRefused(
            f"{folder} is a LoRA initialised with {init!r}: it was trained on base weights that peft rewrote at "
            f"initialisation and cannot rebuild from this folder. Save it converted to a plain LoRA on the original "
            f"weights (`save_pretrained(..., path_initial_model_for_weight_conversion=...)`), or bring the merged "
            f"model and the base as two checkpoints for checkpoint_diff"
        )
    return config


def _check_base(folder: Path, config, model: nn.Module) -> list[str]:
    """Refuse an adapter trained on another model; the warnings to record when it names none."""
    base, name = config.base_model_name_or_path, model_id(model)
    if not base:
        return [f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path is empty): assumed to be {name!r}"]
    if not same_base(base, name):
        raise ImportRefused(
            f"the adapter {folder} was trained on {base!r} (base_model_name_or_path in {ADAPTER_CONFIG}), but the "
            f"model at hand is {name!r}. Load {base!r} instead; or, if you know the adapter fits this model (the same "
            f"weights under another name), set base_model_name_or_path in {folder / ADAPTER_CONFIG} to {name!r}"
        )
    return []


def _read_adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors on the CPU: safetensors, or a pickle read only with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ImportRefused(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); {_BRING}") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - weights_only refusals come as several types
            raise ImportRefused(
                f"refusing {path}: it is not a plain dict of tensors loadable with torch.load(weights_only=True) "
                f"({pickle_refusal(e)}). Arbitrary pickles are never executed; {_BRING}"
            ) from e
        if not isinstance(state, dict):
            raise ImportRefused(f"refusing {path}: it holds a {type(state).__name__}, not a dict of tensors; {_BRING}")
    bad = [repr(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ImportRefused(f"refusing {path}: entries that are not name -> tensor: {_shown(bad)}; {_BRING}")
    if not state:
        raise ImportRefused(f"{path} holds no tensors; {_BRING}")
    nonfinite = _nonfinite(state)
    if nonfinite:
        raise ImportRefused(
            f"the adapter weights {path} have NaN/Inf values in {len(nonfinite)} tensor(s): {_shown(sorted(nonfinite))}. "
            f"The training diverged or the file is damaged: retrain or bring another checkpoint of the adapter"
        )
    return state


def _targets(config) -> list[str] | str | None:
    t = getattr(config, "target_modules", None)
    if t is None or isinstance(t, str):
        return t
    return sorted(str(x) for x in t)


def _provenance(folder: Path, weights: Path, config, warnings: list[str]) -> dict[str, Any]:
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    return {
        "folder": str(folder),
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "peft_type": kind,
        "rank": getattr(config, "init_r" if kind == "ADALORA" else "r", None),
        "targets": _targets(config),
        "base_model_name_or_path": config.base_model_name_or_path,
        "peft_version": peft.__version__,
        "warnings": warnings,
    }


# ----------------------------------------------------------------------------- the model stays as it was
def _shell(model: nn.Module, private: bool = False) -> tuple[nn.Module, dict[int, str]]:
    """A copy of the module tree that shares the model's parameters' storage (``private``: with its own copy of
    them), and ``{id of a copy's parameter: its base name}``. The copy's parameters are new Parameter objects, so
    their flags and a reassigned ``.data`` stay on the copy; buffers are copied."""
    memo: dict[int, Any] = {
        id(p): nn.Parameter(p.detach().clone() if private else p.detach(), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    names = {id(memo[id(p)]): n for n, p in model.named_parameters()}
    return copy.deepcopy(model, memo), names


def _rewrites_base(config) -> bool:
    """Whether peft's initialisation writes into the base weights in place (OLoRA, PiSSA): the shell then gets
    its own copy of the weights (the model's memory once more, for the import's duration)."""
    init = getattr(config, "init_lora_weights", None)
    return isinstance(init, str) and init.lower().startswith(REWRITING_INITS)


def _fingerprint(model: nn.Module) -> torch.Tensor:
    """Sum and norm of every parameter in float64: changes if anything writes into the weights."""
    rows = [torch.stack([p.detach().sum(dtype=torch.float64), p.detach().norm(dtype=torch.float64)]) for p in model.parameters()]
    return torch.stack([r.cpu() for r in rows])


def _screen_keys(folder: Path, state: Mapping[str, torch.Tensor], model: nn.Module, config) -> None:
    """Refuse file tensors that would load into a base weight (the shell shares the model's storage); only a
    module-to-save's full copy is saved under its base name."""
    base = dict(model.named_parameters())
    saved = [str(m) for m in (getattr(config, "modules_to_save", None) or [])]
    hits = []
    for key in state:
        rest = key.removeprefix("base_model.model.")
        module = rest.rpartition(".")[0]
        if ".base_layer." in f".{rest}." or ".original_module." in f".{rest}.":
            hits.append(key)
        elif rest in base and not any(module == m or module.endswith(f".{m}") for m in saved):
            hits.append(key)
    if hits:
        raise ImportRefused(
            f"the adapter weights in {folder} hold base-model weights, not adapter weights: {_shown(hits)}. "
            f"An adapter folder holds only the adapter's own tensors; {_BRING}"
        )


def _size_mismatches(peft_model, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = get_peft_model_state_dict(peft_model, adapter_name=ADAPTER)
    return [
        f"{k} {tuple(state[k].shape)} (the model needs {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]


def _really_missing(peft_model, missing: list[str]) -> list[str]:
    """The missing adapter tensors that share no storage with a loaded one (VB-LoRA's vector bank, TinyLoRA's and
    UniLoRA's vectors are one model-level tensor that every layer refers to)."""
    if not missing:
        return []
    sd = peft_model.state_dict(keep_vars=True)
    absent = set(missing)
    loaded = {t.data_ptr() for k, t in sd.items() if k not in absent and t.numel()}
    return [k for k in missing if k not in sd or sd[k].data_ptr() not in loaded]


def _load_on_shell(folder: Path, config, state: dict[str, torch.Tensor], model: nn.Module):
    """``(peft model on a shell of model, shell parameter names)`` with the adapter's weights loaded; refusals
    name what does not fit."""
    config = copy.deepcopy(config)
    config.inference_mode = True
    shell, names = _shell(model, private=_rewrites_base(config))
    with torch.random.fork_rng(devices=[]):  # peft's initialisation must not move the caller's random state
        try:
            peft_model = PeftModel(shell, config, ADAPTER)
        except ImportError as e:
            raise ImportRefused(
                f"peft needs a package it cannot import to rebuild the adapter {folder} ({e}): install it and try again"
            ) from e
        except ValueError as e:
            raise ImportRefused(
                f"the adapter {folder} does not fit the model {model_id(model)!r}: peft cannot place it "
                f"({str(e).splitlines()[0]}). Bring the adapter trained on this model"
            ) from e
    wrong = _size_mismatches(peft_model, state)
    result = None
    if not wrong:
        try:
            result = set_peft_model_state_dict(peft_model, state, adapter_name=ADAPTER)
        except RuntimeError as e:
            wrong = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln] or [str(e).splitlines()[0]]
    if wrong:
        raise ImportRefused(
            f"the adapter weights in {folder} do not fit the model {model_id(model)!r}: {len(wrong)} tensor(s) have "
            f"other shapes, first: {'; '.join(wrong[:3])}. Was it trained on another model? Bring the adapter trained "
            f"on this one"
        )
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type, "")
    missing = _really_missing(peft_model, [k for k in result.missing_keys if prefix in k and ADAPTER in k])
    if result.unexpected_keys or missing:
        raise ImportRefused(
            f"the adapter weights in {folder} do not match its {ADAPTER_CONFIG} on the model {model_id(model)!r}: "
            f"{len(result.unexpected_keys)} tensor(s) name nothing the config adapts ({_shown(result.unexpected_keys, 3)}), "
            f"{len(missing)} adapter tensor(s) are missing ({_shown(missing, 3)}). Bring the folder as save_pretrained "
            f"wrote it, trained on this model"
        )
    return peft_model, names


def _merge_copy(folder: Path, mod: BaseTunerLayer) -> nn.Module:
    """The layer's base module after peft merged the adapter into a float32 copy of the layer."""
    try:
        return merged_layer(mod, [ADAPTER])
    except (NotImplementedError, RuntimeError, ValueError) as e:
        raise ImportRefused(
            f"peft cannot merge the adapter {folder} into the weights ({type(e).__name__}: {str(e).splitlines()[0]}): "
            f"it is no weight diff. Bring an adapter whose `merge_and_unload` works (LoRA, DoRA, IA3, OFT, …), or the "
            f"merged model and the base as two checkpoints for checkpoint_diff"
        ) from e


@torch.no_grad()
def _merged_minus_base(
    folder: Path, peft_model, names: Mapping[int, str], base: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``merged − base`` in float32 per base parameter, each adapted layer merged on its own float32 copy.

    ``names`` maps each shell parameter's id to its base name, ``base`` is the model's own parameters (a shell's
    weight may have been rewritten by peft's initialisation, e.g. PiSSA's residual). The weight of an adapted layer
    is always kept; a bias, or a module-to-save copy's parameters, only where they differ."""
    out: dict[str, torch.Tensor] = {}

    def put(name: str, new: torch.Tensor, always: bool) -> None:
        d = minus_base(new, base[name])
        if always or bool(d.any()):
            out[name] = d

    for mod in peft_model.get_base_model().modules():
        if isinstance(mod, BaseTunerLayer):
            own = dict(mod.get_base_layer().named_parameters(recurse=False))
            merged = dict(_merge_copy(folder, mod).named_parameters(recurse=False))
            for pname, p in own.items():
                put(names[id(p)], merged[pname], pname == "weight")
        elif isinstance(mod, ModulesToSaveWrapper):
            trained = dict(mod.modules_to_save[ADAPTER].named_parameters())
            for pname, p in mod.original_module.named_parameters():
                put(names[id(p)], trained[pname], False)
    return out


def adapter_delta(model: nn.Module, folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """peft's own merge of the adapter in ``folder`` minus the base weights, in float32.

    The folder, the type, the base model and the weights are checked before any model work;
    ``model`` is left exactly as it was.

    Args:
        model: the base model the adapter was trained on.
        folder: a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    Returns:
        ``(Δ, info)``: ``Δ`` keyed by the base model's parameter names; ``info`` the provenance
        (folder, sha256 of the weights file, peft type, rank, targets, base model name, warnings).

    Raises:
        ImportRefused: the folder, its type or its weights cannot be used (named, with what to do).
    """
    folder = Path(folder)
    config_path, weights = _adapter_files(folder)
    config = _adapter_config(folder, config_path)
    warnings = _check_base(folder, config, model)
    state = _read_adapter_weights(weights)
    _screen_keys(folder, state, model, config)
    info = _provenance(folder, weights, config, warnings)
    before = _fingerprint(model)
    peft_model, names = _load_on_shell(folder, config, state, model)
    delta = _merged_minus_base(folder, peft_model, names, dict(model.named_parameters()))
    del peft_model
    if not torch.equal(before, _fingerprint(model)):
        raise RuntimeError(f"importing {folder} changed the model's weights (a peft bug?): reload the model before going on")
    if not delta:
        raise ImportRefused(f"the adapter {folder} adapts no weight of the model {model_id(model)!r}; {_BRING}")
    info["n_tensors"] = len(delta)
    norm = torch.sqrt(sum(d.double().square().sum() for d in delta.values()))
    logger.info(f"imported the {info['peft_type']} adapter {folder}: {len(delta)} weight delta(s), ‖Δ‖ = {norm:.4g}")
    return delta, info


# ----------------------------------------------------------------------------- adapters -> w
def pair_diff(model: nn.Module, pos_folder: str | Path, neg_folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``w = Δ⁺ − Δ⁻`` from two adapter folders (one per persona) on ``model``.

    Where only one adapter touches a tensor, the other's delta there is zero (``w = Δ⁺`` or
    ``−Δ⁻``), and ``meta["caveats"]`` says which tensors (counts and examples).

    Args:
        model: the base model both adapters were trained on.
        pos_folder: the persona-positive adapter's folder.
        neg_folder: the persona-negative adapter's folder.

    Returns:
        ``(w, meta)``: the diff by parameter name and its provenance.

    Raises:
        ImportRefused: either folder cannot be used (see :func:`adapter_delta`)."""
    dp, ip = adapter_delta(model, pos_folder)
    dn, i_n = adapter_delta(model, neg_folder)
    w = {}
    for k in sorted(set(dp) | set(dn)):
        w[k] = (dp[k] if k in dp else torch.zeros_like(dn[k])) - (dn[k] if k in dn else 0.0)
    caveats = [f"positive adapter: {x}" for x in ip["warnings"]] + [f"negative adapter: {x}" for x in i_n["warnings"]]
    for who, only in (("positive", sorted(set(dp) - set(dn))), ("negative", sorted(set(dn) - set(dp)))):
        if only:
            caveats.append(
                f"{len(only)} tensor(s) are adapted by the {who} adapter only (the other's delta there is taken as 0): "
                f"{_shown(only, 4)}"
            )
    logger.info(f"w = Δ⁺ − Δ⁻ from {pos_folder} and {neg_folder}: {len(w)} tensor(s)")
    return w, {"source": "peft-pair", "model": model_id(model), "pos": ip, "neg": i_n, "caveats": caveats}


def bidir_diff(model: nn.Module, folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``w = 2Δ`` from one bidirectional adapter (trained as ``θ+Δ`` on one persona and ``θ−Δ`` on the other, i.e.
    at α = ±½ of ``w``)."""
    delta, info = adapter_delta(model, folder)
    w = {k: (2.0 * d).contiguous() for k, d in delta.items()}
    logger.info(f"w = 2Δ from the bidirectional adapter {folder}: {len(w)} tensor(s)")
    caveats = list(info["warnings"])
    return w, {"source": "peft-bidir", "model": model_id(model), "adapter": info, "unit_alpha": 0.5, "caveats": caveats}


# ----------------------------------------------------------------------------- checkpoints -> w
_CONVERT = (
    "convert it once: `AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)` writes "
    "model.safetensors (on older transformers add `safe_serialization=True`)"
)


def block_linear_names(model: nn.Module) -> list[str]:
    """The decoder blocks' linear weights: ``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`` and
    ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``."""
    names = []
    for i in range(n_layers(model)):
        names += [param_name(i, p) for p in PROJECTIONS]
    return names


def _weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a checkpoint folder (one file or a sharded index)."""
    if not folder.is_dir():
        raise ImportRefused(f"no checkpoint folder at {folder}: bring a folder that `save_pretrained` wrote")
    if not (folder / "config.json").is_file():
        raise ImportRefused(f"{folder} has no config.json: bring the whole folder `save_pretrained` wrote")
    if (folder / CHECKPOINT_INDEX).is_file():
        index = _read_json(folder / CHECKPOINT_INDEX, "bring the folder `save_pretrained` wrote")
        shards = index.get("weight_map")
        if not isinstance(shards, dict) or not shards:
            raise ImportRefused(f"{folder / CHECKPOINT_INDEX} has no weight_map: bring the folder `save_pretrained` wrote")
        lost = sorted({f for f in shards.values() if not (folder / f).is_file()})
        if lost:
            raise ImportRefused(f"{folder} lacks shard(s) its {CHECKPOINT_INDEX} lists: {_shown(lost)}")
        return {k: folder / f for k, f in shards.items()}
    if (folder / CHECKPOINT_SAFETENSORS).is_file():
        with safe_open(str(folder / CHECKPOINT_SAFETENSORS), framework="pt", device="cpu") as f:
            return dict.fromkeys(f.keys(), folder / CHECKPOINT_SAFETENSORS)
    if any((folder / p).is_file() for p in CHECKPOINT_PICKLES) or any(folder.glob("pytorch_model*.bin")):
        raise ImportRefused(
            f"{folder} holds only pickle weights (pytorch_model*.bin), which are never unpickled here: {_CONVERT}"
        )
    raise ImportRefused(f"{folder} has no weights ({CHECKPOINT_SAFETENSORS} or {CHECKPOINT_INDEX}): {_CONVERT}")


def _check_config(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Refuse a checkpoint whose architecture differs from the model's; its config.json."""
    cfg = _read_json(folder / "config.json", "bring the folder `save_pretrained` wrote")
    wrong = []
    for f in ARCH_FIELDS:
        mine, theirs = getattr(model.config, f, None), cfg.get(f)
        if mine is not None and theirs is not None and mine != theirs:
            wrong.append(f"{f} {theirs!r} (the model has {mine!r})")
    if wrong:
        raise ImportRefused(
            f"the checkpoint {folder} is another architecture than the model {model_id(model)!r}: {'; '.join(wrong)}. "
            f"Both checkpoints must be fine-tunes of the model at hand: load their base model"
        )
    return cfg


@dataclass
class _Checkpoint:
    """One checkpoint folder, opened: its config, and each tensor's safetensors file (opened lazily, read one
    tensor at a time)."""

    folder: Path
    config: dict[str, Any]
    index: dict[str, Path]
    handles: dict[Path, Any]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handles[self.index[name]].get_slice(name).get_shape())

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor in float32; refused when it holds NaN/Inf."""
        t = self.handles[self.index[name]].get_tensor(name).to(torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ImportRefused(
                f"the checkpoint {self.folder} has NaN/Inf values in {name}: the training diverged or the file is damaged"
            )
        return t

    def provenance(self) -> dict[str, Any]:
        files = sorted(set(self.index.values()))
        return {
            "folder": str(self.folder),
            "weights_sha256": {p.name: sha256_file(p) for p in files},
            "model_type": self.config.get("model_type"),
            "dtype": self.config.get("dtype", self.config.get("torch_dtype")),
        }


def _open_checkpoint(folder: Path, model: nn.Module) -> _Checkpoint:
    """The checkpoint, its architecture, block linears and every tensor shape checked against ``model``
    (headers only, no tensor read)."""
    index = _weight_map(folder)
    config = _check_config(folder, model)
    lost = [k for k in block_linear_names(model) if k not in index]
    if lost:
        raise ImportRefused(f"the checkpoint {folder} lacks {len(lost)} decoder-block linear weight(s): {_shown(lost, 4)}")
    ckpt = _Checkpoint(folder, config, index, {p: safe_open(str(p), framework="pt", device="cpu") for p in set(index.values())})
    wrong = [
        f"{k} {ckpt.shape(k)} (the model has {tuple(p.shape)})"
        for k, p in model.named_parameters(remove_duplicate=False)
        if k in index and ckpt.shape(k) != tuple(p.shape)
    ]
    if wrong:
        raise ImportRefused(
            f"the checkpoint {folder} does not fit the model's shapes: {len(wrong)} tensor(s), first: {'; '.join(wrong[:3])}. "
            f"Both checkpoints must be fine-tunes of the model at hand"
        )
    return ckpt


def _differences(model: nn.Module, pos: _Checkpoint, neg: _Checkpoint) -> tuple[dict, dict, list[str]]:
    """``(w, other differences, caveats)``: one tensor pair in memory at a time."""
    blocks = set(block_linear_names(model))
    w: dict[str, torch.Tensor] = {}
    other: dict[str, float] = {}
    caveats: list[str] = []
    names = [k for k, _ in model.named_parameters(remove_duplicate=False)]  # a tied lm_head saved apart is compared too
    for k in progress(names, f"checkpoint diff ({len(names)} tensors)"):
        held = [c for c in (pos, neg) if k in c.index]
        if len(held) == 1:
            caveats.append(f"{k} is in one checkpoint only ({held[0].folder}): not compared")
        if len(held) < 2:
            continue
        d = (pos.tensor(k) - neg.tensor(k)).contiguous()
        if not bool(d.any()):
            continue
        if k in blocks:
            w[k] = d
        else:
            other[k] = float(torch.linalg.vector_norm(d.double()))
    return w, other, caveats


def _checkpoint_caveats(model: nn.Module, pos: _Checkpoint, neg: _Checkpoint, w: Mapping, other: Mapping) -> list[str]:
    out = []
    if other:
        shown = ", ".join(f"{k} (‖θ⁺−θ⁻‖ = {v:.3g})" for k, v in list(other.items())[:6])
        more = f" … (+{len(other) - 6} more)" if len(other) > 6 else ""
        out.append(
            f"{len(other)} parameter(s) outside the decoder blocks' linear weights also differ and are NOT in w "
            f"(meta['other_differences']): {shown}{more}"
        )
    extra = sorted((set(pos.index) | set(neg.index)) - {k for k, _ in model.named_parameters(remove_duplicate=False)})
    if extra:
        out.append(f"{len(extra)} checkpoint tensor(s) are no parameter of the model, not compared: {_shown(extra, 4)}")
    n_blocks = len(block_linear_names(model))
    if len(w) < n_blocks:
        out.append(f"{n_blocks - len(w)} of {n_blocks} decoder-block linear weights are equal in both checkpoints: not in w")
    return out


def checkpoint_diff(model: nn.Module, pos_dir: str | Path, neg_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``w = θ⁺ − θ⁻`` on the decoder blocks' linear weights from two full checkpoints of ``model``'s architecture.

    Read tensor by tensor (at most one pair in memory). Block linear weights that differ go into
    ``w``; every other parameter that differs (embeddings, norms, lm_head, biases) is listed in
    ``meta["other_differences"]`` with the Frobenius norm of its difference, and in ``meta["caveats"]``.

    Args:
        model: a model of the checkpoints' architecture (its names and shapes are the reference).
        pos_dir: the persona-positive fine-tune's folder (safetensors).
        neg_dir: the persona-negative fine-tune's folder.

    Returns:
        ``(w, meta)``: the diff by parameter name and its provenance.

    Raises:
        ImportRefused: a folder, a file or a shape that cannot be used (named)."""
    pos_dir, neg_dir = Path(pos_dir), Path(neg_dir)
    if pos_dir.is_dir() and neg_dir.is_dir() and pos_dir.resolve() == neg_dir.resolve():
        raise ImportRefused(f"the positive and the negative checkpoint are the same folder {pos_dir}: bring two")
    pos, neg = _open_checkpoint(pos_dir, model), _open_checkpoint(neg_dir, model)
    w, other, caveats = _differences(model, pos, neg)
    if not w:
        raise ImportRefused(
            f"the two checkpoints {pos_dir} and {neg_dir} are identical on the decoder blocks' linear weights: there "
            f"is no diff. Bring two different fine-tunes"
        )
    caveats += _checkpoint_caveats(model, pos, neg, w, other)
    meta = {
        "source": "checkpoints",
        "model": model_id(model),
        "pos": pos.provenance(),
        "neg": neg.provenance(),
        "other_differences": other,
        "caveats": caveats,
    }
    logger.info(
        f"w = θ⁺ − θ⁻ from {pos_dir} and {neg_dir}: {len(w)} block linear weight(s), {len(other)} other differing parameter(s)"
    )
    return w, meta


def checkpoint_delta(model: nn.Module, folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``Δ = θ − θ₀``: one fine-tuned checkpoint against the base model at hand, on the decoder blocks' linear weights.

    Checked and read as :func:`checkpoint_diff` reads each checkpoint (architecture, shapes, NaN/Inf; one tensor in
    memory at a time); ``θ₀`` is the model's own parameters. Block linear weights that differ go into ``Δ``; the
    other parameters that differ are named in ``meta["other_differences"]`` and the caveats. Used by
    :mod:`ws.monitor` to screen a fine-tune against a found subspace."""
    folder = Path(folder)
    ckpt = _open_checkpoint(folder, model)
    own = dict(model.named_parameters(remove_duplicate=False))
    blocks = set(block_linear_names(model))
    delta: dict[str, torch.Tensor] = {}
    other: dict[str, float] = {}
    names = [k for k in own if k in ckpt.index]
    for k in progress(names, f"checkpoint delta ({len(names)} tensors)"):
        d = (ckpt.tensor(k) - own[k].detach().to("cpu", torch.float32)).contiguous()
        if not bool(d.any()):
            continue
        if k in blocks:
            delta[k] = d
        else:
            other[k] = float(torch.linalg.vector_norm(d.double()))
    if not delta:
        raise ImportRefused(
            f"the checkpoint {folder} equals the model {model_id(model)!r} on the decoder blocks' linear weights: "
            f"there is no fine-tune to screen"
        )
    caveats = []
    if other:
        shown = ", ".join(f"{k} (‖θ−θ₀‖ = {v:.3g})" for k, v in list(other.items())[:6])
        caveats.append(
            f"{len(other)} parameter(s) outside the decoder blocks' linear weights also differ and are NOT in Δ: {shown}"
        )
    meta = {
        "source": "checkpoint",
        "model": model_id(model),
        "pos": ckpt.provenance(),
        "other_differences": other,
        "caveats": caveats,
    }
    logger.info(f"Δ = θ − θ₀ from {folder}: {len(delta)} block linear weight(s), {len(other)} other differing parameter(s)")
    return delta, meta
