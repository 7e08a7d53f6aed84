"""Imported weight diffs (:mod:`ws.diffs.imports`) against known answers on the tiny random models.

Adapters: for every peft type that merges, an adapter with non-trivial weights is saved by peft's
``save_pretrained``; :func:`adapter_delta` on a fresh base model must equal peft's own
``merge_and_unload()`` minus the base (``|Δ − Δ_ref| ≤ 1e-6·max|Δ_ref|``; measured: exactly equal), and the
base model must be bit-identical afterwards. Checkpoints: ``θ ± w/2`` saved by ``save_pretrained`` give back
``w`` (``|w − w_ref| ≤ 1e-7`` absolute for entries of ~1e-2, float32 rounding of ``θ ± w/2``). Every refusal
is an :class:`ImportRefused` whose message names the folder and the facts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch
from peft import get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from ws.diffs.imports import (
    EMBEDDED_ALIASES,
    ImportRefused,
    adapter_delta,
    bidir_diff,
    block_linear_names,
    checkpoint_diff,
    pair_diff,
    same_base,
)
from ws.diffs.store import load_diff, save_diff
from ws.model.load import load_model

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]
OTHER_TARGETS = ["k_proj", "o_proj", "gate_proj", "down_proj"]
REL_TOL = 1e-6  # adapters: |Δ − Δ_ref| ≤ REL_TOL · max|Δ_ref|
CKPT_ATOL = 1e-7  # checkpoints: |w − w_ref| ≤ CKPT_ATOL
CAUSAL = {"task_type": "CAUSAL_LM"}


def _kw(targets: list[str]) -> dict:
    return {"target_modules": list(targets), **CAUSAL}


#: Every peft type that merges into weights and runs on CPU here (peft 0.21.2), as a config on ``targets``.
MERGING: dict[str, Callable[[list[str]], peft.PeftConfig]] = {
    "lora": lambda t: peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **_kw(t)),
    "rslora": lambda t: peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, init_lora_weights=False, **_kw(t)),
    "dora": lambda t: peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights=False, **_kw(t)),
    "pissa": lambda t: peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="pissa", **_kw(t)),
    "olora": lambda t: peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="olora", **_kw(t)),
    "lora+modules_to_save": lambda t: peft.LoraConfig(r=4, init_lora_weights=False, modules_to_save=["model.norm"], **_kw(t)),
    "adalora": lambda t: peft.AdaLoraConfig(r=4, total_step=10, init_lora_weights=False, **_kw(t)),
    "ia3": lambda t: peft.IA3Config(feedforward_modules=["down_proj"], **_kw(t)),
    "oft": lambda t: peft.OFTConfig(r=0, oft_block_size=16, **_kw(t)),
    "boft": lambda t: peft.BOFTConfig(boft_block_size=16, **_kw(t)),
    "loha": lambda t: peft.LoHaConfig(r=4, alpha=8, init_weights=False, **_kw(t)),
    "lokr": lambda t: peft.LoKrConfig(r=4, alpha=8, init_weights=False, **_kw(t)),
    "vera": lambda t: peft.VeraConfig(r=8, **_kw(t)),
    "pvera": lambda t: peft.PveraConfig(r=8, **_kw(t)),
    "hra": lambda t: peft.HRAConfig(r=4, **_kw(t)),
    "delora": lambda t: peft.DeloraConfig(r=4, **_kw(t)),
    "fourierft": lambda t: peft.FourierFTConfig(n_frequency=50, **_kw(t)),
    "waveft": lambda t: peft.WaveFTConfig(n_frequency=50, **_kw(t)),
    "vblora": lambda t: peft.VBLoRAConfig(r=4, num_vectors=16, vector_length=16, **_kw(t)),
    "miss": lambda t: peft.MissConfig(r=4, **_kw(t)),
    "randlora": lambda t: peft.RandLoraConfig(r=4, **_kw(t)),
    "shira": lambda t: peft.ShiraConfig(r=4, **_kw(t)),
    "c3a": lambda t: peft.C3AConfig(block_size=16, **_kw(t)),
    "road": lambda t: peft.RoadConfig(group_size=16, **_kw(t)),
    "gralora": lambda t: peft.GraloraConfig(r=8, **_kw(t)),
    "hira": lambda t: peft.HiraConfig(r=4, **_kw(t)),
    "unilora": lambda t: peft.UniLoraConfig(r=4, **_kw(t)),
    "tinylora": lambda t: peft.TinyLoraConfig(r=4, **_kw(t)),
    "frod": lambda t: peft.FrodConfig(**_kw(t)),
    "glora": lambda t: peft.GloraConfig(r=4, **_kw(t)),
    "osf": lambda t: peft.OSFConfig(**_kw(t)),
    "psoft": lambda t: peft.PsoftConfig(r=4, **_kw(t)),
    "peanut": lambda t: peft.PeanutConfig(r=4, **_kw(t)),
    "supertuning": lambda t: peft.SupertuningConfig(r=4, **_kw(t)),
    "deft": lambda t: peft.DeftConfig(r=4, **_kw(t)),
    "ln_tuning": lambda t: peft.LNTuningConfig(target_modules=["input_layernorm"], **CAUSAL),
    "trainable_tokens": lambda t: peft.TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=[1, 5, 9]),
}
#: peft types whose adapters do not merge into the weights: refused, with the reason.
UNMERGEABLE: dict[str, Callable[[list[str]], peft.PeftConfig]] = {
    "lora_bias": lambda t: peft.LoraConfig(r=4, init_lora_weights=False, lora_bias=True, **_kw(t)),  # no base bias
    "beft": lambda t: peft.BeftConfig(**_kw(t)),  # a bias adapter on bias-free layers
    "lily": lambda t: peft.LilyConfig(r=4, **_kw(t)),
    "shadow": lambda t: peft.ShadowConfig(r=4, **_kw(t)),
}
PROMPT_LEARNING: dict[str, Callable[[], peft.PeftConfig]] = {
    "PROMPT_TUNING": lambda: peft.PromptTuningConfig(num_virtual_tokens=4, **CAUSAL),
    "PREFIX_TUNING": lambda: peft.PrefixTuningConfig(num_virtual_tokens=4, **CAUSAL),
    "P_TUNING": lambda: peft.PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=16, **CAUSAL),
    "ADAPTION_PROMPT": lambda: peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=1, **CAUSAL),
}


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")[0]


@pytest.fixture(scope="module")
def qwen3():
    return load_model("tiny-qwen3")[0]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model, before: dict[str, torch.Tensor], flags: dict[str, bool]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before), "the model's weights changed"
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules()), "peft layers were left in the model"
    assert not hasattr(model, "peft_config")


def save_adapter(model, config: peft.PeftConfig, folder: Path, base: str | None = "tiny-llama", seed: int = 0, **save):
    """A peft model of ``config`` on a copy of ``model``, every trainable tensor moved by a seeded 0.05·randn
    (the delta is non-zero whatever the type's initialisation), saved into ``folder``. Returns the peft model."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        pm = get_peft_model(copy.deepcopy(model), config)
        pm.peft_config["default"].base_model_name_or_path = base  # get_peft_model sets the model's own name
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in pm.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=gen))
        pm.save_pretrained(str(folder), **save)
    return pm


def reference_delta(pm, model) -> dict[str, torch.Tensor]:
    """peft's own ``merge_and_unload()`` on a copy, minus the base: every parameter that changed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = dict(copy.deepcopy(pm).merge_and_unload().named_parameters())
    base = dict(model.named_parameters())
    return {k: (merged[k] - p).detach() for k, p in base.items() if not torch.equal(merged[k], p)}


def assert_matches(delta: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert set(ref) <= set(delta), sorted(set(ref) - set(delta))[:4]
    scale = max(r.abs().max().item() for r in ref.values())
    assert scale > 1e-4, "the reference delta is trivial"
    for k, d in delta.items():
        assert d.dtype == torch.float32 and d.device.type == "cpu"
        torch.testing.assert_close(d, ref.get(k, torch.zeros_like(d)), rtol=0, atol=REL_TOL * scale, msg=k)


def _rewrite(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _refused(match_all: list[str], fn, *args) -> str:
    with pytest.raises(ImportRefused) as e:
        fn(*args)
    msg = str(e.value)
    for s in match_all:
        assert s in msg, f"{s!r} not in: {msg}"
    return msg


# ----------------------------------------------------------------------------- adapters: known answers
@pytest.mark.parametrize("kind", list(MERGING))
def test_adapter_delta_is_peft_merge_minus_base(llama, tmp_path, kind):
    pm = save_adapter(llama, MERGING[kind](TARGETS), tmp_path / kind)
    ref = reference_delta(pm, llama)
    before, flags, rng = _state(llama), {k: p.requires_grad for k, p in llama.named_parameters()}, torch.get_rng_state()
    delta, info = adapter_delta(llama, tmp_path / kind)
    assert_matches(delta, ref)
    _assert_untouched(llama, before, flags)
    assert torch.equal(torch.get_rng_state(), rng), "peft's initialisation moved the caller's random state"
    params = dict(llama.named_parameters())
    assert all(d.shape == params[k].shape for k, d in delta.items())
    json.dumps(info)
    assert info["folder"] == str(tmp_path / kind) and info["warnings"] == []
    weights = tmp_path / kind / "adapter_model.safetensors"
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["peft_type"] == str(pm.peft_config["default"].peft_type.value)
    assert info["base_model_name_or_path"] == "tiny-llama"


def test_adapter_info_of_a_lora(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a")
    delta, info = adapter_delta(llama, tmp_path / "a")
    assert info["rank"] == 4 and info["targets"] == sorted(TARGETS) and info["n_tensors"] == 16
    assert info["peft_type"] == "LORA" and info["peft_version"] == peft.__version__
    assert set(delta) == {
        f"model.layers.{i}.{m}.weight"
        for i in range(4)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj")
    }


def test_adapter_delta_on_qwen3(qwen3, tmp_path):
    pm = save_adapter(qwen3, MERGING["dora"](TARGETS), tmp_path / "q", base="tiny-qwen3")
    before, flags = _state(qwen3), {k: p.requires_grad for k, p in qwen3.named_parameters()}
    delta, _ = adapter_delta(qwen3, tmp_path / "q")
    assert_matches(delta, reference_delta(pm, qwen3))
    _assert_untouched(qwen3, before, flags)


def test_a_pickle_adapter_written_by_peft_is_read_with_weights_only(llama, tmp_path):
    pm = save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    assert not (tmp_path / "bin" / "adapter_model.safetensors").exists()
    delta, info = adapter_delta(llama, tmp_path / "bin")
    assert_matches(delta, reference_delta(pm, llama))
    assert info["weights_file"] == "adapter_model.bin"


def test_no_base_name_is_accepted_with_a_warning(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a", base=None)
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    _, info = adapter_delta(llama, tmp_path / "a")
    assert len(info["warnings"]) == 1 and "names no base model" in info["warnings"][0]


# ----------------------------------------------------------------------------- pairs and bidirectional adapters
def test_pair_diff_is_delta_pos_minus_delta_neg(llama, tmp_path):
    save_adapter(llama, MERGING["dora"](TARGETS), tmp_path / "pos", seed=1)
    save_adapter(llama, MERGING["dora"](TARGETS), tmp_path / "neg", seed=2)
    dp, _ = adapter_delta(llama, tmp_path / "pos")
    dn, _ = adapter_delta(llama, tmp_path / "neg")
    w, meta = pair_diff(llama, tmp_path / "pos", tmp_path / "neg")
    assert set(w) == set(dp) == set(dn)
    assert all(torch.equal(w[k], dp[k] - dn[k]) for k in w)
    assert meta["source"] == "peft-pair" and meta["caveats"] == []
    assert meta["pos"]["folder"] == str(tmp_path / "pos") and meta["neg"]["folder"] == str(tmp_path / "neg")
    json.dumps(meta)


def test_pair_diff_of_adapters_on_different_modules_is_the_union(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "pos", seed=1)
    save_adapter(llama, MERGING["lora"](OTHER_TARGETS), tmp_path / "neg", seed=2)
    dp, _ = adapter_delta(llama, tmp_path / "pos")
    dn, _ = adapter_delta(llama, tmp_path / "neg")
    w, meta = pair_diff(llama, tmp_path / "pos", tmp_path / "neg")
    assert set(w) == set(dp) | set(dn) and len(w) == 24
    for k in w:
        want = dp.get(k, torch.zeros_like(w[k])) - dn.get(k, torch.zeros_like(w[k]))
        assert torch.equal(w[k], want), k
    caveats = " | ".join(meta["caveats"])
    assert "8 tensor(s) are adapted by the positive adapter only" in caveats and "q_proj" in caveats
    assert "8 tensor(s) are adapted by the negative adapter only" in caveats and "gate_proj" in caveats
    back, back_meta = load_diff(save_diff(w, tmp_path / "w.safetensors", meta), llama)  # the suite's own store takes it
    assert set(back) == set(w) and back_meta["caveats"] == meta["caveats"] and back_meta["pos"] == meta["pos"]


def test_bidir_diff_is_twice_the_delta(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "bi")
    delta, _ = adapter_delta(llama, tmp_path / "bi")
    w, meta = bidir_diff(llama, tmp_path / "bi")
    assert set(w) == set(delta) and all(torch.equal(w[k], 2 * delta[k]) for k in w)
    assert meta["source"] == "peft-bidir" and meta["unit_alpha"] == 0.5 and meta["adapter"]["folder"] == str(tmp_path / "bi")
    json.dumps(meta)


# ----------------------------------------------------------------------------- adapters: refusals
def test_same_base():
    assert same_base("tiny-llama", "tiny-llama")
    assert same_base(None, "tiny-llama") and same_base("", "tiny-llama")
    assert not same_base("tiny-qwen3", "tiny-llama")
    assert "huggingfacetb/smollm2-135m-instruct" in EMBEDDED_ALIASES
    assert same_base("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m")
    assert same_base("SmolLM2-135M-Instruct", "smollm2") and same_base("cache/models/smollm2-135m", "smollm2-135m")
    assert same_base("Qwen/Qwen3-0.6B", "models/Qwen3-0.6B") and same_base("Qwen/Qwen3-0.6B", "Qwen__Qwen3-0.6B")
    assert not same_base("Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B")


def test_same_base_by_resolved_folder(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "m")
    assert same_base(str(tmp_path / "link"), str(tmp_path / "m"))
    monkeypatch.chdir(tmp_path)
    assert same_base("m", str(tmp_path / "m"))


def test_folder_config_and_weights_must_exist(llama, tmp_path):
    _refused([str(tmp_path / "nope"), "save_pretrained"], adapter_delta, llama, tmp_path / "nope")
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").unlink()
    _refused([str(tmp_path / "a"), "no adapter_config.json", "adapter_model.safetensors"], adapter_delta, llama, tmp_path / "a")
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "b")
    (tmp_path / "b" / "adapter_model.safetensors").unlink()
    _refused([str(tmp_path / "b"), "no adapter weights", "adapter_model.bin"], adapter_delta, llama, tmp_path / "b")


@pytest.mark.parametrize("kind", list(PROMPT_LEARNING))
def test_prompt_learning_types_are_refused(llama, tmp_path, kind):
    save_adapter(llama, PROMPT_LEARNING[kind](), tmp_path / kind)
    msg = _refused(
        [str(tmp_path / kind), kind, "nothing to merge", "LoRA", "checkpoint_diff"], adapter_delta, llama, tmp_path / kind
    )
    assert "changes no weight" in msg


@pytest.mark.parametrize("kind", list(UNMERGEABLE))
def test_types_peft_cannot_merge_are_refused(llama, tmp_path, kind):
    save_adapter(llama, UNMERGEABLE[kind](TARGETS), tmp_path / kind)
    before, flags = _state(llama), {k: p.requires_grad for k, p in llama.named_parameters()}
    msg = _refused([str(tmp_path / kind)], adapter_delta, llama, tmp_path / kind)
    assert "merge" in msg and "checkpoint_diff" in msg
    _assert_untouched(llama, before, flags)


def test_an_init_peft_cannot_rebuild_is_refused(llama, tmp_path):
    save_adapter(llama, peft.LoraConfig(r=4, init_lora_weights="pissa_niter_2", **_kw(TARGETS)), tmp_path / "p")
    _refused(
        [str(tmp_path / "p"), "pissa_niter_2", "path_initial_model_for_weight_conversion"], adapter_delta, llama, tmp_path / "p"
    )


def test_an_adapter_of_another_model_is_refused(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a", base="tiny-qwen3")
    msg = _refused(
        [str(tmp_path / "a"), "'tiny-qwen3'", "'tiny-llama'", "base_model_name_or_path", "adapter_config.json"],
        adapter_delta,
        llama,
        tmp_path / "a",
    )
    assert "if you know the adapter fits" in msg


def test_weights_of_other_shapes_are_refused(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a")
    key = "base_model.model.model.layers.2.self_attn.o_proj.lora_A.weight"
    _rewrite(tmp_path / "a" / "adapter_model.safetensors", lambda t: t.update({key: torch.randn(4, 32)}))
    before, flags = _state(llama), {k: p.requires_grad for k, p in llama.named_parameters()}
    _refused([str(tmp_path / "a"), key, "(4, 32)", "(4, 64)", "do not fit"], adapter_delta, llama, tmp_path / "a")
    _assert_untouched(llama, before, flags)


def test_an_adapter_of_modules_the_model_lacks_is_refused(llama, qwen3, tmp_path):
    # Qwen3's q_norm does not exist in Llama: the adapter (its base name edited to fit) cannot be placed
    save_adapter(qwen3, peft.LNTuningConfig(target_modules=["q_norm"], **CAUSAL), tmp_path / "q", base="tiny-llama")
    _refused([str(tmp_path / "q"), "does not fit", "q_norm"], adapter_delta, llama, tmp_path / "q")


def test_same_shapes_on_another_model_are_caught_by_the_name_only(llama, qwen3, tmp_path):
    # tiny-qwen3's linear layers have tiny-llama's shapes: with its base name edited, only the name could tell
    save_adapter(qwen3, MERGING["lora"](TARGETS), tmp_path / "q", base="tiny-qwen3")
    _refused(["'tiny-qwen3'", "'tiny-llama'"], adapter_delta, llama, tmp_path / "q")
    cfg = json.loads((tmp_path / "q" / "adapter_config.json").read_text())
    (tmp_path / "q" / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "tiny-llama"}))
    delta, _ = adapter_delta(llama, tmp_path / "q")
    assert len(delta) == 16


def test_missing_adapter_tensors_are_refused(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a")
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    _rewrite(tmp_path / "a" / "adapter_model.safetensors", lambda t: t.pop(key))
    _refused(
        [str(tmp_path / "a"), "1 adapter tensor(s) are missing", "layers.1.mlp.down_proj.lora_B"],
        adapter_delta,
        llama,
        tmp_path / "a",
    )


def test_base_weights_in_an_adapter_file_are_refused(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a")
    key = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    _rewrite(tmp_path / "a" / "adapter_model.safetensors", lambda t: t.update({key: torch.zeros(64, 64)}))
    before, flags = _state(llama), {k: p.requires_grad for k, p in llama.named_parameters()}
    _refused([str(tmp_path / "a"), key, "base-model weights"], adapter_delta, llama, tmp_path / "a")
    _assert_untouched(llama, before, flags)


def test_nan_or_inf_in_the_adapter_is_refused(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a")
    key = "base_model.model.model.layers.3.self_attn.v_proj.lora_B.weight"

    def poison(t):
        t[key] = t[key].clone()
        t[key][0, 0] = float("nan")

    _rewrite(tmp_path / "a" / "adapter_model.safetensors", poison)
    _refused([str(tmp_path / "a"), "NaN/Inf", key], adapter_delta, llama, tmp_path / "a")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_an_arbitrary_pickle_is_never_executed(llama, tmp_path, capsys):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    with open(tmp_path / "a" / "adapter_model.bin", "wb") as f:
        pickle.dump({"base_model.model.x.lora_A.weight": torch.zeros(2, 2), "x": _Evil()}, f, protocol=2)
    _refused(
        [str(tmp_path / "a" / "adapter_model.bin"), "weights_only=True", "it asks for", "never executed"],
        adapter_delta,
        llama,
        tmp_path / "a",
    )
    assert "must never run" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoints(llama, tmp_path_factory):
    """``θ + w/2`` and ``θ − w/2`` of tiny-llama (and the positive's layer-0 input norm moved by 0.1), saved
    whole and sharded; ``(root, w)``."""
    root = tmp_path_factory.mktemp("checkpoints")
    gen = torch.Generator().manual_seed(0)
    params = dict(llama.named_parameters())
    keys = [
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.2.self_attn.q_proj.weight",
        "model.layers.3.mlp.gate_proj.weight",
    ]
    w = {k: 0.01 * torch.randn(params[k].shape, generator=gen) for k in keys}
    norm = "model.layers.0.input_layernorm.weight"
    for sign, name in ((1.0, "pos"), (-1.0, "neg")):
        m = copy.deepcopy(llama)
        mp = dict(m.named_parameters())
        with torch.no_grad():
            for k, d in w.items():
                mp[k].add_(sign * d / 2)
            if sign > 0:
                mp[norm].add_(0.1)
        m.save_pretrained(str(root / name))
        m.save_pretrained(str(root / f"{name}_sharded"), max_shard_size="200KB")
    return root, w


@pytest.mark.parametrize("layout", ["", "_sharded"])
def test_checkpoint_diff_gives_back_w(llama, checkpoints, layout):
    root, want = checkpoints
    if layout:
        assert (root / "pos_sharded" / "model.safetensors.index.json").is_file()
    before, flags = _state(llama), {k: p.requires_grad for k, p in llama.named_parameters()}
    w, meta = checkpoint_diff(llama, root / f"pos{layout}", root / f"neg{layout}")
    assert set(w) == set(want)
    for k in want:
        assert w[k].dtype == torch.float32
        torch.testing.assert_close(w[k], want[k], rtol=0, atol=CKPT_ATOL)
    norm = "model.layers.0.input_layernorm.weight"
    assert set(meta["other_differences"]) == {norm}
    assert meta["other_differences"][norm] == pytest.approx(0.1 * 64**0.5, rel=1e-4)
    assert any(norm in c and "NOT in w" in c for c in meta["caveats"])
    assert meta["source"] == "checkpoints" and meta["pos"]["folder"] == str(root / f"pos{layout}")
    files = sorted((root / f"pos{layout}").glob("*.safetensors"))
    assert meta["pos"]["weights_sha256"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    json.dumps(meta)
    _assert_untouched(llama, before, flags)


def _copy_ckpt(root: Path, name: str, dest: Path) -> Path:
    shutil.copytree(root / name, dest)
    return dest


def test_checkpoint_folders_must_hold_config_and_safetensors(llama, checkpoints, tmp_path):
    root, _ = checkpoints
    pos = root / "pos"
    _refused([str(tmp_path / "nope"), "no checkpoint folder"], checkpoint_diff, llama, pos, tmp_path / "nope")
    bad = _copy_ckpt(root, "neg", tmp_path / "noconfig")
    (bad / "config.json").unlink()
    _refused([str(bad), "no config.json"], checkpoint_diff, llama, pos, bad)
    pickles = _copy_ckpt(root, "neg", tmp_path / "bin")
    torch.save(load_file(str(pickles / "model.safetensors")), pickles / "pytorch_model.bin")
    (pickles / "model.safetensors").unlink()
    _refused([str(pickles), "pytorch_model", "save_pretrained", "safe_serialization=True"], checkpoint_diff, llama, pos, pickles)
    empty = _copy_ckpt(root, "neg", tmp_path / "empty")
    (empty / "model.safetensors").unlink()
    _refused([str(empty), "has no weights"], checkpoint_diff, llama, pos, empty)
    _refused([str(pos), "same folder"], checkpoint_diff, llama, pos, pos)


def test_a_checkpoint_of_another_architecture_is_refused(llama, qwen3, checkpoints, tmp_path):
    root, _ = checkpoints
    qwen3.save_pretrained(str(tmp_path / "qwen3"))
    _refused(
        [str(tmp_path / "qwen3"), "model_type 'qwen3' (the model has 'llama')"],
        checkpoint_diff,
        llama,
        root / "pos",
        tmp_path / "qwen3",
    )
    wide = _copy_ckpt(root, "neg", tmp_path / "wide")
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "hidden_size": 96, "num_hidden_layers": 6}))
    _refused(
        [str(wide), "hidden_size 96 (the model has 64)", "num_hidden_layers 6 (the model has 4)"],
        checkpoint_diff,
        llama,
        root / "pos",
        wide,
    )


def test_checkpoint_tensors_of_other_shapes_or_missing_are_refused(llama, checkpoints, tmp_path):
    root, _ = checkpoints
    key = "model.layers.2.mlp.up_proj.weight"
    shaped = _copy_ckpt(root, "neg", tmp_path / "shaped")
    _rewrite(shaped / "model.safetensors", lambda t: t.update({key: torch.zeros(64, 64)}))
    _refused([str(shaped), key, "(64, 64)", "(128, 64)"], checkpoint_diff, llama, root / "pos", shaped)
    lacking = _copy_ckpt(root, "neg", tmp_path / "lacking")
    _rewrite(lacking / "model.safetensors", lambda t: t.pop(key))
    _refused([str(lacking), "lacks 1 decoder-block linear weight", key], checkpoint_diff, llama, root / "pos", lacking)


def test_nan_in_a_checkpoint_is_refused(llama, checkpoints, tmp_path):
    root, _ = checkpoints
    key = "model.layers.0.self_attn.k_proj.weight"
    bad = _copy_ckpt(root, "neg", tmp_path / "nan")

    def poison(t):
        t[key] = t[key].clone()
        t[key][1, 1] = float("inf")

    _rewrite(bad / "model.safetensors", poison)
    _refused([str(bad), "NaN/Inf", key], checkpoint_diff, llama, root / "pos", bad)


def test_identical_checkpoints_are_refused(llama, checkpoints, tmp_path):
    root, _ = checkpoints
    twin = _copy_ckpt(root, "pos", tmp_path / "twin")
    _refused([str(root / "pos"), str(twin), "identical on the decoder blocks"], checkpoint_diff, llama, root / "pos", twin)


def test_block_linear_names(llama):
    names = block_linear_names(llama)
    assert len(names) == 4 * 7 and names[0] == "model.layers.0.self_attn.q_proj.weight"
    assert names[-1] == "model.layers.3.mlp.down_proj.weight"


def test_a_tied_lm_head_saved_apart_is_compared(llama, checkpoints, tmp_path):
    root, want = checkpoints
    pos, neg = _copy_ckpt(root, "pos", tmp_path / "pos"), _copy_ckpt(root, "neg", tmp_path / "neg")
    emb = "model.embed_tokens.weight"
    _rewrite(pos / "model.safetensors", lambda t: t.update({"lm_head.weight": t[emb] + 0.01}))
    _rewrite(neg / "model.safetensors", lambda t: t.update({"lm_head.weight": t[emb].clone()}))
    w, meta = checkpoint_diff(llama, pos, neg)
    assert set(w) == set(want) and "lm_head.weight" in meta["other_differences"]


def test_an_unknown_peft_type_is_refused(llama, tmp_path):
    save_adapter(llama, MERGING["lora"](TARGETS), tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "NOPE"}))
    _refused([str(tmp_path / "a" / "adapter_config.json"), "'NOPE'", "upgrade peft"], adapter_delta, llama, tmp_path / "a")
