"""The "Errors and what they mean" table of docs/errors.md matches what the code raises: each error
below is raised for real, and its type and message must fit a row of that table (and every
row of the table is raised here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _rows() -> dict[str, re.Pattern]:
    """docs/errors.md row text (first cell) -> a regex for ``"<Type>: <message>"``."""
    text = (ROOT / "docs" / "errors.md").read_text()
    section = text[text.index("## Errors and what they mean") :]
    rows = {}
    for cell in re.findall(r"^\| `([A-Za-z]+(?:Error|Exception|Refused): [^`]+)`", section, re.M):
        pat = re.escape(cell)
        for ph, rx in (
            ("'X'", "'[^']+'"),
            ("'Y'", "'[^']+'"),
            ("WS_X", "WS_[A-Z_]+"),
            (r"\ N\ ", r" \d+ "),
            (r"\(N\ ", r"\(\d+ "),
            (r"layer\ L", r"layer \d+"),
            (r"\[N\]", r"\[\d+\]"),
            ("…", ".*"),
            ("'…'", "'.*'"),
        ):
            pat = pat.replace(ph, rx)
        rows[cell] = re.compile(pat, re.S)
    return rows


def _raise(fn) -> str:
    with pytest.raises(Exception) as e:
        fn()
    return f"{type(e.value).__name__}: {e.value}"


def _cases(tmp_path, model, tok):
    from ws import config
    from ws.behavior import data
    from ws.core import linalg
    from ws.diffs import completions
    from ws.diffs import store as diff
    from ws.model import load as models

    p = dict(model.named_parameters())
    good = {k: torch.randn(v.shape) for k, v in p.items() if k.endswith("layers.1.self_attn.o_proj.weight")}
    d = tmp_path / "d"
    d.mkdir()
    out = {}
    out["config"] = _raise(lambda: config.from_env({"WS_N_EVAL": "0"}))
    out["empty"] = _raise(lambda: config.from_env({"WS_SEEDS": ""}))
    out["unknown variable"] = _raise(lambda: config.from_env({"WS_BEHAVIOUR": "refusal"}))
    (tmp_path / "f").write_text("x")
    out["writable"] = _raise(lambda: config.start_run("t", {"WS_OUT": str(tmp_path / "f" / "o")}))
    out["missing"] = _raise(lambda: diff.load_diff(d / "none.safetensors"))
    (d / "bad.safetensors").write_bytes(b"\x00" * 64)
    out["corrupt"] = _raise(lambda: diff.load_diff(d / "bad.safetensors"))
    diff.save_diff(good, d / "q.safetensors", {"model": "tiny-qwen3"})
    out["mismatch"] = _raise(lambda: diff.check_diff_model(d / "q.safetensors", "tiny-llama"))
    diff.save_diff(good, d / "nometa.safetensors", {})
    out["metadata"] = _raise(lambda: diff.check_diff_model(d / "nometa.safetensors", "tiny-llama"))
    diff.save_diff({**good, "model.layers.1.mlp.nope.weight": torch.ones(2)}, d / "x.safetensors", {})
    out["fit"] = _raise(lambda: diff.load_diff(d / "x.safetensors", model))
    out["nan"] = _raise(lambda: diff.check_finite({"a": torch.tensor([float("nan")])}, "weight diff x"))
    out["zero"] = _raise(lambda: diff.check_nonzero({"a": torch.zeros(2)}, "weight diff x"))
    torch.save({"a": torch.ones(2), "b": Path("an object, not a tensor")}, tmp_path / "w.pt")
    out["pickle"] = _raise(lambda: diff.import_pt(tmp_path / "w.pt"))
    out["orthonormal"] = _raise(lambda: linalg.check_orthonormal(torch.ones(4, 2, dtype=torch.float64), "X", 3))
    out["not a model"] = _raise(lambda: models.load_model(str(d)))
    bare = torch.nn.Module()
    bare.model = torch.nn.Module()
    bare.model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    out["layout"] = _raise(lambda: models.check_architecture(bare, "m"))
    out["unknown"] = _raise(lambda: models.load_model("no-such-org/no-such-model-xyz"))
    out["topics"] = _raise(lambda: data.split_topics(0, topics=[]))
    from ws.behavior import files as behavior

    spec = json.loads((ROOT / "behaviors" / "refusal.json").read_text())
    spec["name"] = "mine"
    broken = {
        "item": lambda s: s["items"][3].pop("text"),
        "set": lambda s: s["sets"][1].update(role="extra"),
        "top": lambda s: s.pop("persona_pairs"),
    }
    for what, change in broken.items():
        bad = json.loads(json.dumps(spec))
        change(bad)
        (tmp_path / f"{what}.json").write_text(json.dumps(bad))
        out[f"behaviour {what}"] = _raise(lambda what=what: behavior.load(tmp_path / f"{what}.json"))
    out["behaviour config"] = _raise(lambda: config.from_env({"WS_BEHAVIOR": str(tmp_path / "item.json")}))
    (tmp_path / "syntax.json").write_text('{"name": "mine",\n "sets": [}')
    out["behaviour syntax"] = _raise(lambda: behavior.load(tmp_path / "syntax.json"))
    out["behaviour unknown"] = _raise(lambda: data.get_behavior("no-such-behaviour"))
    out["behaviour missing"] = _raise(lambda: behavior.load(tmp_path / "absent.json"))
    (tmp_path / "mine.txt").write_text("{}")
    out["behaviour suffix"] = _raise(lambda: behavior.load(tmp_path / "mine.txt"))
    empty = pl.DataFrame(schema={"continuation": pl.String, "response": pl.String})
    out["completions"] = _raise(lambda: completions.check_completions(empty))
    diff.save_diff(good, diff.diff_path("sycophancy", "lora", 0, tmp_path / "old"), {"model": "tiny-qwen3"})
    env = {
        "WS_MODEL": "tiny-qwen3",
        "WS_OUT": str(tmp_path / "old"),
        "WS_CACHE": str(tmp_path / "c"),
        "WS_LOGS": str(tmp_path / "l"),
    }
    out["misplaced"] = _raise(lambda: config.start_run("t", env))
    # bring your own (docs/bring-your-own.md)
    import copy as _copy

    import numpy as np
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    from ws.behavior import files as _files
    from ws.diffs import imports
    from ws.model import readout, vectors

    pm = get_peft_model(_copy.deepcopy(model), LoraConfig(r=2, target_modules=["o_proj"], init_lora_weights=False))
    pm.save_pretrained(str(tmp_path / "lora"))
    pt = get_peft_model(_copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    pt.save_pretrained(str(tmp_path / "prompt"))
    out["peft prompt"] = _raise(lambda: imports.adapter_delta(model, tmp_path / "prompt"))
    cfgj = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps({**cfgj, "base_model_name_or_path": "some-org/another-model"}))
    (other / "adapter_model.safetensors").write_bytes((tmp_path / "lora" / "adapter_model.safetensors").read_bytes())
    out["peft base"] = _raise(lambda: imports.adapter_delta(model, other))
    out["peft pair"] = _raise(lambda: config.from_env({"WS_POS_ADAPTER": str(tmp_path / "lora")}))
    np.save(tmp_path / "wide.npy", np.ones((2, 7), dtype=np.float32))
    out["vector"] = _raise(lambda: vectors.read_vectors(tmp_path / "wide.npy", 4, 64))
    out["readout"] = _raise(lambda: readout.check_answers(tok, ("Absolutely", "Nope")))
    ab = [{"question": f"Q{a}?", "answer_matching_behavior": a, "answer_not_matching_behavior": " (B)"} for a in (" (A)", " (C)")]
    (tmp_path / "ab.jsonl").write_text("".join(json.dumps(x) + "\n" for x in ab))
    out["ab labels"] = _raise(lambda: _files.load(tmp_path / "ab.jsonl"))
    (tmp_path / "ab-item.jsonl").write_text(json.dumps(ab[0]) + "\n" + json.dumps(["(A)", "(B)"]) + "\n")
    out["ab item"] = _raise(lambda: _files.load(tmp_path / "ab-item.jsonl"))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9?"}\n')
    out["behaviour utf8"] = _raise(lambda: _files.load(tmp_path / "latin1.jsonl"))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    out["behaviour nesting"] = _raise(lambda: _files.load(tmp_path / "deep.json"))
    from ws.diffs import adapters, training

    long_prompt = training.prompt_tokens(tok, ["word " * 1100])[0]
    out["training length"] = _raise(
        lambda: training.training_length({"ab-0001": long_prompt}, adapters.TrainConfig(), "behaviour 'long'")
    )
    q, _ = models.load_model("tiny-qwen3")
    for name in ("q1", "q2"):
        q.save_pretrained(str(tmp_path / name))
    out["checkpoint architecture"] = _raise(lambda: imports.checkpoint_diff(model, tmp_path / "q1", tmp_path / "q2"))
    (tmp_path / "lora" / "adapter_model.safetensors").rename(tmp_path / "lora" / "moved.safetensors")
    out["peft weights"] = _raise(lambda: imports.adapter_delta(model, tmp_path / "lora"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from ws.core.io import hold_run_lock; "
            "hold_run_lock(sys.argv[1]); print('held', flush=True); sys.stdin.readline()",
            str(tmp_path / "locked"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        out["lock"] = _raise(
            lambda: config.start_run(
                "t", {"WS_OUT": str(tmp_path / "locked"), "WS_CACHE": str(tmp_path / "c"), "WS_LOGS": str(tmp_path / "l")}
            )
        )
    finally:
        holder.communicate("\n", timeout=60)
    from ws.grid import spec as grid

    (tmp_path / "g1.yaml").write_text("behaviours: [sycophancy]\nadapters: [lora]\n")
    out["grid key"] = _raise(lambda: grid.load_grid(tmp_path / "g1.yaml"))
    (tmp_path / "g2.yaml").write_text("behaviors: [sycophancy]\n")
    out["grid missing"] = _raise(lambda: grid.load_grid(tmp_path / "g2.yaml"))
    g3 = tmp_path / "g3.yaml"
    g3.write_text("behaviors: [sycophancy]\nadapters: [lora]\n")
    out["grid shell"] = _raise(lambda: grid.base_env({"WS_MODEL": "tiny-llama"}, grid.load_grid(g3), config.Config()))
    # hostile inputs never reach the disk
    from ws.core import paths

    out["unsafe name"] = _raise(lambda: paths.model_slug(".."))
    out["unsafe model"] = _raise(lambda: config.from_env({"WS_MODEL": "a\x00b"}))
    out["seed range"] = _raise(lambda: config.from_env({"WS_SEEDS": "0,99999999999999999999999"}))
    (tmp_path / "g4.yaml").write_text("name: ../../../ESCAPED\nbehaviors: [sycophancy]\nadapters: [lora]\n")
    out["grid name"] = _raise(lambda: grid.load_grid(tmp_path / "g4.yaml"))
    g5 = tmp_path / "g5.yaml"
    g5.write_text(f"behaviors: [sycophancy, {ROOT / 'behaviors' / 'sycophancy.json'}]\nadapters: [lora]\nsweeps: [v7]\n")
    root = config.from_env({"WS_OUT": str(tmp_path / "o5")})
    out["grid folder"] = _raise(lambda: grid.plan(grid.load_grid(g5), grid.base_env({}, grid.load_grid(g5), root)))
    (tmp_path / "g6.yaml").write_text("behaviors: [sycophancy]\nadapters: [lora]\nseeds: [0, 99999999999999999999999]\n")
    out["grid seeds"] = _raise(lambda: grid.load_grid(tmp_path / "g6.yaml"))
    many = json.dumps({"behaviors": ["sycophancy"], "adapters": ["lora"], "models": [f"org/m{i}" for i in range(101)]})
    (tmp_path / "g7.yaml").write_text(many)
    out["grid cells"] = _raise(lambda: grid.load_grid(tmp_path / "g7.yaml"))
    (tmp_path / "g8.yaml").write_text(json.dumps({"behaviors": ["sycophancy"], "adapters": ["lora"], "seeds": list(range(51))}))
    out["grid seed count"] = _raise(lambda: grid.load_grid(tmp_path / "g8.yaml"))
    # export (docs/using-results.md)
    from ws.diffs import export

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("x")
    out["export folder"] = _raise(lambda: export.export_diff(model, good, 1.0, tmp_path / "taken"))
    norm = {"model.layers.1.input_layernorm.weight": torch.ones(p["model.layers.1.input_layernorm.weight"].shape)}
    out["export other"] = _raise(lambda: export.export_diff(model, norm, 1.0, tmp_path / "exp"))
    # screen a diff against a found subspace (docs/using-results.md)
    from ws import monitor
    from ws.v8 import carrier

    eye = torch.eye(64, 4, dtype=torch.float64)
    sub = carrier.CarrierBasis({1: eye}, "c", "carries", "tiny-qwen3", "sycophancy", "lora", 0, 64)
    carrier.save_carrier(sub, tmp_path / "other.safetensors")
    out["subspace model"] = _raise(lambda: monitor.read_subspace(tmp_path / "other.safetensors", model))
    carrier.save_carrier(
        carrier.CarrierBasis({9: eye}, "c", "carries", "tiny-llama", "s", "lora", 0, 64), tmp_path / "s9.safetensors"
    )
    out["subspace shapes"] = _raise(lambda: monitor.read_subspace(tmp_path / "s9.safetensors", model))
    skew = carrier.CarrierBasis({1: 2 * eye}, "c", "carries", "tiny-llama", "s", "lora", 0, 64)
    carrier.save_carrier(skew, tmp_path / "skew.safetensors")
    out["subspace basis"] = _raise(lambda: monitor.read_subspace(tmp_path / "skew.safetensors", model))
    out["subspace file"] = _raise(lambda: monitor.read_subspace(d / "bad.safetensors", model))
    ok = carrier.CarrierBasis({1: eye}, "c", "carries", "tiny-llama", "s", "lora", 0, 64)
    carrier.save_carrier(ok, tmp_path / "ok.safetensors")
    screened = monitor.monitor(model, good, tmp_path / "ok.safetensors")
    screened.write(tmp_path / "screen")
    out["screening exists"] = _raise(lambda: screened.write(tmp_path / "screen"))
    syc = json.loads((ROOT / "behaviors" / "sycophancy.json").read_text())
    for i, it in enumerate(x for x in syc["items"] if x["set"] == "opinion_false"):
        it["group"] = f"third{i % 3}"  # three groups of 20: a cap of 30 keeps one, which cannot be split
    syc["name"] = "three-groups"
    (tmp_path / "three-groups.json").write_text(json.dumps(syc))
    out["cap"] = _raise(lambda: config.from_env({"WS_BEHAVIOR": str(tmp_path / "three-groups.json"), "WS_MAX_ITEMS": "30"}))
    return out


def test_every_raised_error_has_its_readme_row_and_every_row_is_raised(tiny_llama, tmp_path):
    model, tok = tiny_llama
    rows = _rows()
    assert len(rows) >= 15, rows
    used = set()
    for what, msg in _cases(tmp_path, model, tok).items():
        hits = [cell for cell, rx in rows.items() if rx.search(msg) and msg.startswith(cell.split(":")[0])]
        assert hits, f"{what}: no docs/errors.md row fits what the code raised:\n{msg[:400]}"
        used.update(hits)
    assert set(rows) == used, f"docs/errors.md rows no test raised: {set(rows) - used}"
