"""``ws.bench``'s stage machinery: what a stage changes in the process is recorded and put
back, and a failing stage keeps the figures of the others (the whole ``make bench`` runs in
tests/test_make_targets.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from ws.bench import embedded


def _meddle() -> dict:
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    return {"meddled": True}


def _draws() -> tuple:
    return float(torch.rand(1)), float(np.random.rand()), random.random()


def test_a_stage_that_changes_the_process_is_recorded_and_put_back():
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    expected = _draws()  # what the generators give next, before the stage
    torch.set_rng_state(states[0]), np.random.set_state(states[1]), random.setstate(states[2])
    before = embedded.process_state()
    with embedded.kept_process_state() as leaks:
        _meddle()
    assert embedded.process_state() == before
    assert _draws() == expected, "the generators were not put back"
    changed = {"grad_enabled", "default_dtype", "torch_rng", "numpy_rng", "python_rng"}
    assert set(leaks) == changed | ({"num_threads"} if before["num_threads"] != 1 else set())
    assert leaks["grad_enabled"] == [True, False] and leaks["default_dtype"][1] == "torch.float64"
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32


def test_a_stage_that_changes_nothing_records_nothing():
    with embedded.kept_process_state() as leaks:
        with torch.no_grad():
            torch.ones(2).sum()
    assert leaks == {}


def test_a_failing_stage_keeps_the_others_figures_and_is_named(tmp_path):
    path = tmp_path / "bench.json"
    seen = []

    def first(cfg):
        seen.append(json.loads(path.read_text()) if path.exists() else None)
        return {"first": 1.0}

    def broken(cfg):
        raise RuntimeError("element 0 of tensors does not require grad")

    def last(cfg):
        seen.append(json.loads(path.read_text()))
        return {"last": 2.0}

    r = embedded.run_stages(None, path, {"first": first, "meddle": lambda cfg: _meddle(), "broken": broken, "last": last})
    assert seen[0] is None and seen[1]["first"] == 1.0 and seen[1]["status"] == "running"  # written after every stage
    assert r == json.loads(path.read_text())
    assert r["status"] == "failed" and r["stages_done"] == ["first", "meddle", "broken", "last"]
    assert r["failures"] == {"broken": "RuntimeError: element 0 of tensors does not require grad"}
    assert r["first"] == 1.0 and r["last"] == 2.0 and r["meddled"] is True
    assert set(r["state_leaks"]) == {"meddle"} and torch.is_grad_enabled()
    assert "stage broken FAILED" in embedded.format_table(r)
    assert r["machine"]["cpus"] >= 1 and isinstance(r["machine"]["avx512_bf16"], bool)
