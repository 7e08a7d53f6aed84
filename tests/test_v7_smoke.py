"""The v7 notebook end to end in smoke mode (tiny random model), as a user runs it headless.

The tests read the session's shared smoke run (``nbs/hypothesis_sweep_v7.ipynb`` as Jupyter
runs it, see ``tests/smoke_runs.py``). A second, independent run of ``nbs/hypothesis_sweep_v7.py``
through ``make sweep`` (fresh output and cache folders, so the diff is retrained and every
capture recomputed), must give byte-identical tables.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from smoke_env import smoke_env

from ws import stats
from ws.config import Config
from ws.diffs.store import DiffMismatchError
from ws.v7 import sweep

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

# The spec's names, written out here so that a renamed candidate fails a test.
SPEC_NAMES = """lm_head_read logits_null global_read global_write global_write_not_global_read write attn_write
mlp_write write_not_lm_head_read write_not_global_read write_not_downstream_read mlp_up_read mlp_gate_read
attn_qkv_read attn_ov_write mlp_roundtrip_write qk_circuit input_super kv_super attention_sink causally_isolated
input_super_not_lm_read gate_kernel gate_active_written suppressed amplified added_features global_clean_resid_pca
global_persona_resid_pca layer_clean_resid_pca TaskDiff_contrast attn_min_taskdiff attn_max_taskdiff
attn_diff_taskdiff attn_min_x_diffnorm_taskdiff up_proj_input_contrast up_proj_output_written_contrast
chars_clusters churn rotation_contrast qk_x_chars_clusters WNR_union_TaskDiff TaskDiff_lora_ceiling
dW_left_basis_ceiling""".split()


@pytest.fixture(scope="module")
def smoke(smoke_sweeps) -> Path:
    """The session's shared v7 smoke run (tests/smoke_runs.py; v8 ran after it in the same folder)."""
    return smoke_sweeps.base


def v7(base: Path) -> Path:
    """The smoke model (tiny-llama, not the embedded one) writes under out/models/tiny-llama/."""
    return base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v7"


def test_spec_names_count():
    assert len(SPEC_NAMES) == 44 and len(set(SPEC_NAMES)) == 44


def test_every_file_of_the_set_exists_and_is_not_empty(smoke):
    for name in sweep.V7_FILES + sweep.EXTRA_FILES:
        p = v7(smoke) / name
        assert p.exists(), f"missing {name}"
        assert p.stat().st_size > 0, f"empty {name}"
    log = smoke / "logs" / "hypothesis_sweep_v7.verbose.log"
    assert log.exists() and "DEBUG" in log.read_text()
    leftovers = [p.name for p in v7(smoke).iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_tables_have_the_spec_columns_and_one_row_per_candidate(smoke):
    from ws.bases import REGISTRY
    from ws.bases.gradient import DEFINITIONS as GRADIENT

    n_cand = len(REGISTRY) + len(GRADIENT)  # the registry's rows and the base-gradient rows of every run
    per_layer = pl.read_csv(v7(smoke) / "v7_per_layer.csv")
    assert per_layer.columns[: len(stats.PER_LAYER_COLUMNS)] == stats.PER_LAYER_COLUMNS
    assert per_layer.height == n_cand * per_layer["layer"].n_unique()
    for name, cols in (
        ("v7_summary.tsv", stats.SUMMARY_COLUMNS),
        ("v7_summary_pct.tsv", stats.SUMMARY_PCT_COLUMNS),
        ("v7_specific_summary.tsv", stats.SPECIFIC_SUMMARY_COLUMNS),
    ):
        df = pl.read_csv(v7(smoke) / name, separator="\t")
        assert df.columns[: len(cols)] == cols, name
        assert df.height == n_cand and df["subspace"].n_unique() == n_cand, name
    spec = pl.read_csv(v7(smoke) / "v7_specific_per_layer.csv")
    assert spec.columns[: len(stats.SPECIFIC_COLUMNS)] == stats.SPECIFIC_COLUMNS
    summ = pl.read_csv(v7(smoke) / "v7_summary.tsv", separator="\t")
    assert set(SPEC_NAMES) <= set(summ["subspace"].to_list())
    js = summ["joint_score"].drop_nans().drop_nulls().to_list()
    assert js == sorted(js, reverse=True), "summary not sorted by joint_score"


def test_conclusion_numbers_come_from_the_tables(smoke):
    text = (v7(smoke) / "v7_conclusion.md").read_text()
    summ = pl.read_csv(v7(smoke) / "v7_summary_pct.tsv", separator="\t")
    best = (
        summ.filter((pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(["write", "mixed"]))
        .filter(pl.col("joint_score").is_not_nan())
        .sort("joint_score", descending=True)
        .row(0, named=True)
    )
    assert f"`{best['subspace']}`" in text
    from ws.core.markdown import fmt_num

    assert fmt_num(best["joint_score"]) in text
    assert "SMOKE MODE" in text
    for a in ("v7_per_layer.csv", "v7_summary.tsv", "../seed0/w.safetensors"):
        assert a in text


def test_make_sweep_gives_byte_identical_tables(smoke, tmp_path):
    """``make sweep`` from a user's folder (a checkout, tests/make_targets.py) with relative
    WS_OUT / WS_CACHE / WS_LOGS: a second, independent run (the diff retrained, every capture
    recomputed) writes the shared run's v7 and v8 tables byte for byte."""
    from make_targets import checkout, ok, run_make

    repo = checkout(tmp_path / "repo")
    ok(run_make(repo, "sweep", WS_OUT="out", WS_CACHE="cache", WS_LOGS="logs"))
    assert (repo / "logs" / "hypothesis_sweep_v7.executed.ipynb").exists()
    assert (repo / "logs" / "hypothesis_sweep_v8.executed.ipynb").exists()
    assert not (repo / "logs" / "out").exists(), "a relative WS_OUT landed under the kernel's folder"
    assert (repo / "logs" / "hypothesis_sweep_v7.verbose.log").exists()
    names = [n for n in sweep.V7_FILES + sweep.EXTRA_FILES if n.endswith((".csv", ".tsv"))]
    for n in names:
        a = (v7(smoke) / n).read_bytes()
        b = (v7(repo) / n).read_bytes()
        assert a == b, f"{n} differs between two runs with the same inputs"
    v8_tables = [p.name for p in (v7(smoke).parent / "v8").iterdir() if p.suffix in (".csv", ".tsv")]
    assert v8_tables
    for n in v8_tables:
        assert (v7(smoke).parent / "v8" / n).read_bytes() == (v7(repo).parent / "v8" / n).read_bytes(), f"v8 {n} differs"


def _cfg(base: Path, monkeypatch) -> Config:
    for k, v in smoke_env(base).items():
        monkeypatch.setenv(k, v)
    return Config.from_env()


def test_second_capture_is_a_cache_hit_and_a_report_failure_loses_nothing(smoke, monkeypatch):
    from ws.captures import capture
    from ws.model.load import load_model
    from ws.v7 import report

    cfg = _cfg(smoke, monkeypatch)
    model, tok = load_model(cfg.model)
    diffs = sweep.get_diffs(cfg, model)  # exists: no training
    probes = sweep.probe_prompts(cfg, tok)
    calls = []
    real = capture._forward_capture
    monkeypatch.setattr(capture, "_forward_capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    seed, (w, meta) = next(iter(diffs.items()))
    res = sweep.run_seed(cfg, model, tok, probes, seed, w, meta)
    assert calls == [], "the cached captures were recomputed"

    before = {p.name: p.read_bytes() for p in v7(smoke).iterdir()}

    def boom(*a, **k):
        raise RuntimeError("report stage failed")

    monkeypatch.setattr(report, "conclusion_md", boom)
    with pytest.raises(RuntimeError, match="report stage failed"):
        sweep.write_v7(cfg, probes, [res], sweep.seed_stability([res]))
    after = {p.name: p.read_bytes() for p in v7(smoke).iterdir()}
    assert after == before, "a failed report changed or added files"


def test_each_stage_records_the_peak_memory_where_it_ends(smoke, monkeypatch):
    """``run_seed`` reads the peak RSS as each stage ends: 0.5 GiB touched inside the lens
    raises the lens's figure and leaves the earlier stages' as they were (read after the
    seed, as the scale bench once did, every stage would carry the lens's peak)."""
    import numpy as np

    from ws.core.memory import peak_rss_gib
    from ws.model.load import load_model

    def rss_gib() -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 2**20

    cfg = _cfg(smoke, monkeypatch)
    model, tok = load_model(cfg.model)
    seed, (w, meta) = next(iter(sweep.get_diffs(cfg, model).items()))
    real = sweep.sspace_lens
    held = []

    def lens_with_a_big_buffer(*a, **k):
        # enough to lift this process's peak (earlier tests in this worker may have set it) by 0.5 GiB
        gib = peak_rss_gib() - rss_gib() + 0.5
        held.append(np.ones(int(gib * 2**30) // 8))  # float64, touched
        return real(*a, **k)

    monkeypatch.setattr(sweep, "sspace_lens", lens_with_a_big_buffer)
    res = sweep.run_seed(cfg, model, tok, sweep.probe_prompts(cfg, tok), seed, w, meta)
    p = res.peak_rss_gib
    assert list(p) == ["capture", "build", "gradient", "score", "lens"]
    assert p["capture"] <= p["build"] <= p["gradient"] <= p["score"] <= p["lens"]
    assert p["lens"] - p["score"] > 0.4, p


def test_diff_for_another_model_stops_the_run(smoke, tmp_path, monkeypatch):
    """Each model has its own diff path; a diff of another model found at it (copied there
    by hand) is refused, never used or replaced."""
    import shutil

    from ws.diffs.store import diff_path
    from ws.model.load import load_model

    cfg = replace(_cfg(smoke, monkeypatch), model="tiny-qwen3", out_root=tmp_path / "out")
    path = cfg.diff_path(0)
    assert path == tmp_path / "out" / "models" / "tiny-qwen3" / "sycophancy" / "lora" / "seed0" / "w.safetensors"
    path.parent.mkdir(parents=True)
    shutil.copy(diff_path("sycophancy", "lora", 0, smoke / "out", model="tiny-llama"), path)
    before = path.read_bytes()
    model, _ = load_model("tiny-qwen3")
    with pytest.raises(DiffMismatchError, match="made for model 'tiny-llama'"):
        sweep.get_diffs(cfg, model)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]


def test_an_imported_w_pt_is_analysed_not_replaced(smoke, tmp_path, monkeypatch):
    """The import workflow of docs/outputs.md: a w.pt saved as the diff is what the next sweep analyses."""
    import shutil

    import torch

    from ws.diffs.store import diff_path, import_pt, load_diff, save_diff
    from ws.model.load import load_model

    base = tmp_path / "copy"
    shutil.copytree(smoke / "out", base / "out")
    cfg = _cfg(base, monkeypatch)
    model, tok = load_model(cfg.model)
    w0, _ = load_diff(diff_path("sycophancy", "lora", 0, base / "out", model=cfg.model), model)
    torch.save({k: 2 * v for k, v in w0.items()}, tmp_path / "w.pt")
    # exactly the lines of docs/outputs.md
    w = import_pt(tmp_path / "w.pt")
    path = save_diff(
        w, diff_path("sycophancy", "lora", 0, base / "out", model=cfg.model), {"model": cfg.model, "source": "upstream w.pt"}
    )
    imported = path.read_bytes()
    diffs = sweep.get_diffs(cfg, model)
    assert path.read_bytes() == imported, "the imported diff was replaced"
    assert all(torch.equal(diffs[0][0][k], 2 * w0[k]) for k in w0)
    probes = sweep.probe_prompts(cfg, tok)
    res = sweep.run_seed(cfg, model, tok, probes, 0, *diffs[0])
    sweep.write_v7(cfg, probes, [res], sweep.seed_stability([res]))
    assert (v7(base) / "v7_per_layer.csv").read_bytes() != (v7(smoke) / "v7_per_layer.csv").read_bytes(), (
        "the tables describe the old diff, not the imported one"
    )
    text = (v7(base) / "v7_conclusion.md").read_text()
    assert "upstream w.pt" in text and "records no data version" in text
