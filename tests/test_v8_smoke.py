"""The v8 notebook end to end in smoke mode (tiny random model), as `make sweep` runs it:
v7 first, then v8 into the same folders. A second, independent v8 run (fresh output and
cache folders, no v7 before it) must write byte-identical tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from smoke_env import smoke_env

from ws import stats
from ws.core.markdown import fmt_num
from ws.v8 import blocklocal as BL
from ws.v8 import causal
from ws.v8 import sweep as v8
from ws.v8.report import pct
from ws.v8.results import V8_FILES

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _run(base: Path, name: str) -> None:
    cmd = [
        str(BIN / "jupytext"),
        "--to",
        "ipynb",
        "--output",
        str(base / f"{name}.ipynb"),
        "--execute",
        str(ROOT / "nbs" / f"{name}.py"),
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=smoke_env(base), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"


@pytest.fixture(scope="module")
def smoke(smoke_sweeps) -> Path:
    """The session's shared smoke run: v7, then v8 in the same folder (tests/smoke_runs.py)."""
    return smoke_sweeps.base


def d8(base: Path) -> Path:
    return base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v8"


def _tsv(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, separator="\t" if path.suffix == ".tsv" else ",", infer_schema_length=100_000)


def test_every_file_of_the_set_exists(smoke):
    for name in V8_FILES:
        p = d8(smoke) / name
        assert p.exists() and p.stat().st_size > 0, name
    assert not [p.name for p in d8(smoke).iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert (smoke / "logs" / "hypothesis_sweep_v8.verbose.log").exists()


def test_tables_keep_v7s_columns_and_numbers_and_add_v8s(smoke):
    v7d = smoke / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v7"
    pl8, pl7 = _tsv(d8(smoke) / "v8_per_layer.csv"), _tsv(v7d / "v7_per_layer.csv")
    assert pl8.columns[: len(pl7.columns)] == pl7.columns and set(BL.BLOCK_COLUMNS) <= set(pl8.columns)
    assert pl8.select(pl7.columns).equals(pl7), "v8's v7 columns are not v7's numbers"
    s8, s7 = _tsv(d8(smoke) / "v8_summary.tsv"), _tsv(v7d / "v7_summary_pct.tsv")
    assert s8.columns[: len(stats.SUMMARY_PCT_COLUMNS)] == stats.SUMMARY_PCT_COLUMNS
    assert s8.select(s7.columns).equals(s7)
    assert set(BL.BLOCK_SUMMARY_COLUMNS) <= set(s8.columns) and {"retention_inside", "carries"} <= set(s8.columns)
    ct = _tsv(d8(smoke) / "v8_causal.tsv")
    assert ct.columns == causal.CAUSAL_COLUMNS
    assert ct.height == 3 + 2 + 2  # WS_N_CAUSAL=3 in smoke mode, both ceilings, both self-test rows
    assert _tsv(d8(smoke) / "v8_causal_variants.tsv").columns == causal.VARIANT_COLUMNS
    assert _tsv(d8(smoke) / "v8_scope.tsv").columns == BL.SCOPE_COLUMNS


def test_conclusion_numbers_come_from_the_tables(smoke):
    text = (d8(smoke) / "v8_conclusion.md").read_text()
    var = _tsv(d8(smoke) / "v8_causal_variants.tsv")
    wo = var.filter((pl.col("variant") == "writers_only") & (pl.col("set") == causal.TARGET)).row(0, named=True)
    assert f"writers-only {fmt_num(wo['spread'])} nats" in text
    ct = _tsv(d8(smoke) / "v8_causal.tsv")
    for r in ct.iter_rows(named=True):
        assert f"`{r['subspace']}`" in text
        assert f"{pct(r['retention_inside'])} [{pct(r['retention_inside_ci_lo'])}, {pct(r['retention_inside_ci_hi'])}]" in text
    for s in (
        "## Which claims survive",
        "## The causal test",
        "## Scope per touched layer",
        "SMOKE MODE",
        "random_orthonormal (causal)",
        "v8_causal.tsv",
    ):
        assert s in text
    plan = (d8(smoke) / "v8_plan_merge.md").read_text()
    assert "upstream v9" in plan and "upstream v10" in plan and "differs from v7's by 0" in plan


def test_a_v8_run_alone_gives_byte_identical_tables(smoke, tmp_path):
    _run(tmp_path, "hypothesis_sweep_v8")  # fresh output and cache: diff, captures, bases all rebuilt
    for n in V8_FILES:
        if n.endswith((".csv", ".tsv")):
            assert (d8(smoke) / n).read_bytes() == (d8(tmp_path) / n).read_bytes(), f"{n} differs between runs"


def test_a_failed_write_leaves_the_previous_files(smoke, monkeypatch):
    from ws.config import from_env
    from ws.model.load import load_model
    from ws.v7 import sweep
    from ws.v8 import report as R8

    for k, v in smoke_env(smoke).items():
        monkeypatch.setenv(k, v)
    cfg = from_env()
    model, tok = load_model(cfg.model)
    diffs = sweep.get_diffs(cfg, model)
    probes = sweep.probe_prompts(cfg, tok)
    res = sweep.run_seed(cfg, model, tok, probes, 0, *diffs[0])
    stab = sweep.seed_stability([res])
    bl = v8.block_local(cfg, model, tok, probes, res, diffs[0][0])
    names, ranking = v8.causal_candidates(res.summary, stab.per_candidate, 1)
    cr = v8.causal(cfg, model, tok, res, diffs[0][0], names, ranking)
    before = {p.name: p.read_bytes() for p in d8(smoke).iterdir()}

    def boom(*a, **k):
        raise RuntimeError("report stage failed")

    monkeypatch.setattr(R8, "conclusion_v8_md", boom)
    with pytest.raises(RuntimeError, match="report stage failed"):
        v8.write_v8(cfg, probes, [res], stab, bl, cr)
    assert {p.name: p.read_bytes() for p in d8(smoke).iterdir()} == before, "a failed write changed files"
