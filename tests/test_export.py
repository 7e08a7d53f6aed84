"""Known answers of ws.diffs.export on the tiny random Llama, with real peft (no mocks)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from ws.core.io import umask
from ws.core.linalg import haar_orthonormal
from ws.diffs.export import ExportRefused, export_diff, lora_factors, main, project_writers, read_subspace
from ws.diffs.imports import adapter_delta
from ws.diffs.store import save_diff
from ws.model.steer import weight_steer
from ws.v8.causal import variant_diff, writers_only

ALPHA = 2.5
LAYERS = (1, 2)
PROJ = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def _diff(model, seed: int = 0, layers=LAYERS) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """A random diff of rank ≤ 16 on all seven projections of ``layers``, and each tensor's rank."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    w, ranks = {}, {}
    for i, l in enumerate(layers):
        for j, p in enumerate(PROJ):
            key = f"model.layers.{l}.{p}.weight"
            out, inn = params[key].shape
            r = 1 + (3 * i + 5 * j) % 16
            w[key] = (torch.randn(out, r, generator=g) @ torch.randn(r, inn, generator=g)) * (0.02 / r**0.5)
            ranks[key] = r
    return w, ranks


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.fixture(scope="module")
def lora_export(tiny_llama, tmp_path_factory):
    model, _ = tiny_llama
    w, ranks = _diff(model)
    folder = export_diff(model, w, ALPHA, tmp_path_factory.mktemp("x") / "lora", provenance={"diff": "random, in memory"})
    return w, ranks, folder


def test_factors_are_exact_and_keep_only_the_nonzero_singular_values():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(64, 4, generator=g) @ torch.randn(4, 128, generator=g)
    neg = torch.randn(64, 4, generator=g) @ torch.randn(4, 128, generator=g)
    B, A, info = lora_factors(pos - neg)  # a difference of two rank-4 LoRAs: rank 2r = 8
    assert info["rank"] == 8 and B.shape == (64, 8) and A.shape == (8, 128)
    assert info["rel_err"] < 1e-6 and info["s_dropped"] < info["rtol"] * info["s_max"]
    full = torch.randn(64, 128, generator=g)
    assert lora_factors(full)[2]["rank"] == 64


def test_peft_folder_holds_the_exact_ranks(lora_export):
    w, ranks, folder = lora_export
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == "tiny-llama"
    modules = {k.removesuffix(".weight"): r for k, r in ranks.items()}
    assert cfg["rank_pattern"] == modules and cfg["alpha_pattern"] == modules
    assert cfg["r"] == cfg["lora_alpha"] == max(ranks.values()) and not cfg["use_rslora"]
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        for m, r in modules.items():
            assert f.get_slice(f"base_model.model.{m}.lora_A.weight").get_shape()[0] == r
    assert len(keys) == 2 * len(w)
    info = json.loads((folder / "ws_export.json").read_text())
    assert info["max_rel_err"] < 1e-5 and {t["tensor"]: t["rank"] for t in info["tensors"]} == ranks
    readme = (folder / "README.md").read_text()
    assert "random, in memory" in readme and "2.5" in readme and "adapter_delta" in readme


def test_a_peft_merge_minus_base_is_alpha_delta(tiny_llama, lora_export):
    model, _ = tiny_llama
    w, _, folder = lora_export
    merged = PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).merge_and_unload()
    got, base = dict(merged.named_parameters()), dict(model.named_parameters())
    for k, p in base.items():
        if k in w:
            assert _rel(got[k] - p, ALPHA * w[k]) < 1e-5, k
        else:
            assert torch.equal(got[k], p), k


def test_b_logits_with_the_adapter_equal_weight_steering(tiny_llama, lora_export):
    model, tok = tiny_llama
    w, _, folder = lora_export
    ids = tok(["The weather today is", "Tell me honestly:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**ids).logits
        with weight_steer(model, w, ALPHA):
            steered = model(**ids).logits
        adapted = PeftModel.from_pretrained(copy.deepcopy(model), str(folder))(**ids).logits
    assert (steered - plain).abs().max() > 1e-3  # the diff does something
    torch.testing.assert_close(adapted, steered, atol=1e-4, rtol=1e-4)


def test_c_the_suite_imports_it_back(tiny_llama, lora_export):
    model, _ = tiny_llama
    w, _, folder = lora_export
    delta, meta = adapter_delta(model, folder)
    assert set(delta) == set(w)
    back = {k: t / ALPHA for k, t in delta.items()}  # the recipe: adapter_delta / α
    for k in w:
        assert _rel(back[k], w[k]) < 1e-5, k


def test_d_merged_checkpoint_reloads(tiny_llama, tmp_path):
    model, tok = tiny_llama
    w, _ = _diff(model, seed=3)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    folder = export_diff(model, w, ALPHA, tmp_path / "merged", fmt="merged", tokenizer=tok, provenance={"diff": "x"})
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())  # restored bit-exactly
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
    got = dict(reloaded.named_parameters())
    for k, p in before.items():
        if k in w:
            assert _rel(got[k] - p, ALPHA * w[k]) < 1e-5, k
        else:
            assert torch.equal(got[k], p), k
    assert "merged checkpoint" in (folder / "README.md").read_text()


def test_e_an_existing_folder_is_refused_without_rebuild(tiny_llama, tmp_path):
    model, _ = tiny_llama
    w, _ = _diff(model, seed=4, layers=(0,))
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ExportRefused, match=r"taken is not empty.*WS_REBUILD=1"):
        export_diff(model, w, 1.0, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    export_diff(model, w, 1.0, out, rebuild=True)
    assert not (out / "mine.txt").exists() and (out / "adapter_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask()
    assert (out / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask()
    stale = tmp_path / ".staging-999999999-taken-x"  # a killed export's stage (no such process)
    stale.mkdir()
    export_diff(model, w, 1.0, out, rebuild=True)
    assert not stale.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_diff(model, w, 1.0, empty) / "adapter_model.safetensors").is_file()


def test_f_subspace_export_is_the_projection(tiny_llama, tmp_path):
    model, _ = tiny_llama
    w, _ = _diff(model, seed=5, layers=(0, 1, 3))
    g = torch.Generator().manual_seed(7)
    bases = {0: haar_orthonormal(64, 5, g, dtype=torch.float64), 1: haar_orthonormal(64, 12, g, dtype=torch.float64)}
    proj = project_writers(w, bases)
    ref, _ = variant_diff(writers_only(w, [0, 1, 3]), bases, "inside")  # v8's own 'inside'
    assert set(proj) == set(ref) and len(proj) == 6
    for k in ref:
        torch.testing.assert_close(proj[k], ref[k], atol=1e-7, rtol=1e-6)
    save_file({str(l): B.contiguous() for l, B in bases.items()}, str(tmp_path / "bases.safetensors"))
    folder = export_diff(model, w, ALPHA, tmp_path / "sub", subspace=read_subspace(tmp_path / "bases.safetensors"))
    delta, _ = adapter_delta(model, folder)
    assert set(delta) == {k for k in proj if not k.startswith("model.layers.3.")}  # layer 3: no basis, zero, skipped
    for k, t in delta.items():
        assert _rel(t, ALPHA * proj[k]) < 1e-5, k
    info = json.loads((folder / "ws_export.json").read_text())
    assert info["subspace"]["ranks"] == {"0": 5, "1": 12}
    assert {t["tensor"]: t["rank"] for t in info["tensors"]}["model.layers.0.self_attn.o_proj.weight"] <= 5


def test_refusals(tiny_llama, tmp_path):
    model, _ = tiny_llama
    w, _ = _diff(model, seed=6, layers=(0,))
    with pytest.raises(ExportRefused, match="not a linear layer's weight"):
        export_diff(model, {"model.layers.0.input_layernorm.weight": torch.ones(64)}, 1.0, tmp_path / "a")
    with pytest.raises(ExportRefused, match="zero on every tensor"):
        export_diff(model, w, 0.0, tmp_path / "b")
    with pytest.raises(ExportRefused, match=r"not \[d_model=64, k\]"):
        export_diff(model, w, 1.0, tmp_path / "c", subspace={0: torch.eye(64)[:, :3].T})
    with pytest.raises(ExportRefused, match="does not fit"):
        export_diff(model, {"model.layers.9.mlp.down_proj.weight": torch.ones(64, 128)}, 1.0, tmp_path / "d")
    with pytest.raises(ExportRefused, match="unknown export format"):
        export_diff(model, w, 1.0, tmp_path / "e", fmt="gguf")
    assert not list(tmp_path.iterdir())


def test_command_line(tiny_llama, tmp_path, capsys):
    model, _ = tiny_llama
    w, _ = _diff(model, seed=8, layers=(2,))
    save_diff(w, tmp_path / "w.safetensors", {"model": "tiny-llama", "behavior": "sycophancy"})
    out = tmp_path / "cli"
    assert main(["--diff", str(tmp_path / "w.safetensors"), "--alpha", "-1.5", "--format", "peft", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    delta, _ = adapter_delta(model, out)
    for k in w:
        assert _rel(delta[k], -1.5 * w[k]) < 1e-5, k
    readme = (out / "README.md").read_text()
    assert str((tmp_path / "w.safetensors").resolve()) in readme and "sycophancy" in readme
    # a refusal is the suite's one-line message and exit status 2, never a traceback
    assert main(["--diff", str(tmp_path / "w.safetensors"), "--alpha", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ExportRefused: ") and "WS_REBUILD=1" in err and "Traceback" not in err


def test_command_line_paths_are_the_users_folders(tiny_llama, tmp_path, monkeypatch):
    """Relative paths resolve against the folder the user ran the command in (``WS_RUN_DIR``,
    as ``make`` sets it), not the process's working folder."""
    model, _ = tiny_llama
    save_diff(_diff(model, seed=9, layers=(1,))[0], tmp_path / "w.safetensors", {"model": "tiny-llama"})
    monkeypatch.setenv("WS_RUN_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert main(["--diff", "w.safetensors", "--alpha", "1", "--out", "exported"]) == 0
    assert (tmp_path / "exported" / "adapter_config.json").is_file()
