"""Every ``make`` target the README names runs here in smoke mode on the tiny model, through
``make`` itself in a throw-away checkout (tests/make_targets.py), so that no target can rot
unseen. ``make sweep`` and ``make cross-adapter`` run in their own end-to-end modules (the
table :data:`make_targets.TESTED_TARGETS` says where)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from make_targets import ROOT, TESTED_TARGETS, checkout, ok, run_make

pytestmark = pytest.mark.slow

DIFF = Path("out", "models", "tiny-llama", "sycophancy", "lora", "seed0", "w.safetensors")


def test_every_target_the_readme_names_is_run_by_a_test():
    named = set(re.findall(r"`make ([a-z][a-z-]*)", (ROOT / "README.md").read_text()))
    phony = set(re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split())
    assert named <= set(TESTED_TARGETS), f"README targets without a smoke run: {sorted(named - set(TESTED_TARGETS))}"
    assert phony <= set(TESTED_TARGETS), f"Makefile targets without a smoke run: {sorted(phony - set(TESTED_TARGETS))}"
    for target, where in TESTED_TARGETS.items():
        if where.startswith("tests/"):
            calls = re.search(rf'run_make\(.*"{re.escape(target)}"', (ROOT / where).read_text())
            assert calls, f"{where} does not run make {target}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return checkout(tmp_path_factory.mktemp("make") / "repo")


@pytest.fixture(scope="module")
def diff_made(repo) -> Path:
    """``make diff`` once (the tiny diff of seed 0); ``make bench`` reuses it."""
    ok(run_make(repo, "diff"))
    return repo


def test_make_diff_builds_the_diff_and_keeps_it(diff_made):
    path = diff_made / DIFF
    assert path.stat().st_size > 0
    assert (path.parent / "effect.csv").exists()
    assert (diff_made / "logs" / "train_diff.executed.ipynb").exists()


def test_make_export_writes_a_peft_folder_peft_loads(diff_made):
    from peft import PeftModel

    from ws.model.load import load_model

    out = diff_made / "exports" / "tiny"
    r = run_make(diff_made, "export")
    assert r.returncode == 2 and "EXPORT_ARGS=" in r.stdout + r.stderr
    ok(run_make(diff_made, "export", f"EXPORT_ARGS=--diff {diff_made / DIFF} --alpha 1 --format peft --out {out}"))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert PeftModel.from_pretrained(load_model("tiny-llama")[0], str(out)) is not None
    r = run_make(diff_made, "export", f"EXPORT_ARGS=--diff {diff_made / DIFF} --alpha 1 --format peft --out {out}")
    assert r.returncode != 0 and "WS_REBUILD=1" in r.stdout + r.stderr  # never over an existing export


def test_make_bench_runs_every_stage_in_order_and_restores_the_process(diff_made):
    diff = (diff_made / DIFF).read_bytes()
    out = ok(run_make(diff_made, "bench"))
    r = json.loads((diff_made / "out" / "bench" / "bench.json").read_text())
    assert r["status"] == "complete" and not r["failures"], r["failures"]
    assert r["stages_done"] == ["sweep", "imports", "train_steps"]
    assert r["causal"]["prompt_rows"] > 0 and r["forward_floor_s"] > 0
    assert set(r["imports"]) == {"adapter_pair", "checkpoint_pair"}
    assert set(r["train_step_s"]) == {"lora", "bidir"} and all(m["median_s"] > 0 for m in r["train_step_s"].values())
    # seeding a generator is put back by the stage's guard; nothing else may change
    leaks = {stage: sorted(set(d) - {"torch_rng", "numpy_rng", "python_rng"}) for stage, d in r["state_leaks"].items()}
    assert not any(leaks.values()), f"stages changed the process: {leaks}"
    assert "training step lora" in out and "written:" in out
    assert (diff_made / DIFF).read_bytes() == diff, "make bench retrained the diff"


def test_make_grid_on_a_finished_grid_does_nothing_again(smoke_grid):
    """``make grid`` from the user's folder (the smoke grid's own, after its run): every cell
    that finished is done, its files untouched."""
    base = smoke_grid.base
    v7 = base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v7"
    before = {p.name: p.stat().st_mtime_ns for p in v7.iterdir() if p.is_file()}
    checkout(base)
    out = ok(run_make(base, "grid", f"GRID={smoke_grid.grid.name}", base=base))
    assert "done" in out
    assert {p.name: p.stat().st_mtime_ns for p in v7.iterdir() if p.is_file()} == before
    r = run_make(base, "grid", base=base)
    assert r.returncode != 0 and "make grid GRID=<file>" in r.stdout + r.stderr


def test_make_sync_nbs_brings_a_changed_script_into_its_notebook(repo):
    py, nb = repo / "nbs" / "train_diff.py", repo / "nbs" / "train_diff.ipynb"
    others = {p.name: p.read_bytes() for p in (repo / "nbs").glob("*.ipynb") if p != nb}
    py.write_text(py.read_text() + "\n# %% [markdown]\n# A cell added by the test.\n")
    ok(run_make(repo, "sync-nbs"))
    assert "A cell added by the test." in nb.read_text()
    assert {p.name: p.read_bytes() for p in (repo / "nbs").glob("*.ipynb") if p != nb} == others


def test_make_clean_cache_removes_the_activations_only(tmp_path):
    repo = checkout(tmp_path / "repo")
    for sub in ("activations/x", "models/keep"):
        (repo / "cache" / sub).mkdir(parents=True)
    ok(run_make(repo, "clean-cache"))
    assert not (repo / "cache" / "activations").exists() and (repo / "cache" / "models" / "keep").is_dir()


def test_make_lab_installs_and_reaches_the_server_command(tmp_path):
    """``make lab`` up to the server start: the lab packages installed, the kernel registered,
    and ``jupyter lab`` started with the Makefile's options (``--version`` stops it there)."""
    repo = checkout(tmp_path / "repo")
    out = ok(run_make(repo, "lab", "LAB_ARGS=--version", timeout=600))
    assert re.search(r"^\d+\.\d+\.\d+$", out, re.M), out[-2000:]


def test_make_test_fast_runs_the_named_tests(tmp_path):
    repo = checkout(tmp_path / "repo")
    (repo / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    out = ok(run_make(repo, "test-fast", "PYTEST_ARGS=tests/test_linalg.py -p no:cacheprovider"))
    assert re.search(r"\d+ passed", out), out[-2000:]


def test_a_headless_run_that_stops_ends_with_the_suites_message(tmp_path):
    """A bad value stops ``make sweep`` in its first cell: the last lines are the suite's own
    message, not the kernel's traceback, and the executed notebook keeps the traceback."""
    repo = checkout(tmp_path / "repo")
    r = run_make(repo, "sweep", WS_SEEDS="0,abc")
    assert r.returncode != 0
    tail = r.stderr.strip().splitlines()[-6:]
    assert any(line.startswith("ConfigError: WS_SEEDS=") for line in tail), "\n".join(tail)
    assert "Traceback" not in r.stdout + r.stderr
    executed = repo / "logs" / "hypothesis_sweep_v7.executed.ipynb"
    assert "ConfigError" in executed.read_text() and str(executed.relative_to(repo)) in r.stderr
