"""Model loading: embedded, tiny, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ws.model.load import ModelLoadError, check_architecture, d_model, load_model, n_layers


def test_tiny_models_are_deterministic_and_gqa():
    a, _ = load_model("tiny-llama")
    b, _ = load_model("tiny-llama")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    q, tok = load_model("tiny-qwen3")
    assert type(q).__name__ == "Qwen3ForCausalLM"
    assert q.config.num_key_value_heads < q.config.num_attention_heads
    assert n_layers(q) == 4 and d_model(q) == 64
    assert tok.chat_template


def test_unknown_name_is_clear():
    with pytest.raises(ModelLoadError, match="tiny-llama"):
        load_model("tiny-gpt")
    with pytest.raises(ModelLoadError, match="no model hub|local folder"):
        load_model("no-such-org/no-such-model-xyz")


def test_model_without_expected_modules_is_refused(tiny_llama):
    model, _ = tiny_llama

    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.layers = nn.ModuleList([nn.Linear(4, 4)])

    with pytest.raises(ModelLoadError, match=r"self_attn.*proj"):
        check_architecture(Bare(), "bare")
    check_architecture(model)  # the real one passes


@pytest.mark.embedded
def test_embedded_model_facts(smollm2):
    model, tok = smollm2
    assert n_layers(model) == 30 and d_model(model) == 576
    assert model.config.num_key_value_heads == 3
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.embedded
def test_embedded_model_knows_paris(smollm2):
    model, tok = smollm2
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.parametrize(
    "contents,lacks",
    [
        ({}, "config.json, weights"),
        ({"notes.txt": "hello", "README.md": "# not a model"}, "config.json, weights"),
        ({"config.json": '{"model_type": "llama"}'}, "lacks weights"),
    ],
)
def test_a_folder_that_is_not_a_model_says_what_it_lacks(tmp_path, contents, lacks):
    for name, text in contents.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ModelLoadError, match=f"is not a model folder: it (lacks )?.*{lacks}"):
        load_model(str(tmp_path))


def test_a_saved_tiny_model_folder_loads_and_a_damaged_one_is_a_model_load_error(tiny_llama, tmp_path):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, _ = load_model(str(tmp_path / "m"))
    assert n_layers(loaded) == n_layers(model)
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="Could not load model"):
        load_model(str(tmp_path / "m"))


def test_a_model_folder_with_a_refused_pickle_is_a_model_load_error_naming_the_global(tiny_llama, tmp_path):
    import os

    model, tok = tiny_llama
    folder = tmp_path / "m"
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "f": os.system}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pickle .*it asks for (posix|nt)\.system") as e:
        load_model(str(folder))
    assert "weights_only=False" not in str(e.value)
