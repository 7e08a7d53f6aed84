"""The grid on Ray (ws/grid): the grid file, its cells, resumption, failures and the summary.

The end-to-end tests read the session's smoke grid (tests/smoke_runs.py): tiny-llama and a
model that cannot load × the built-in behaviour and a bad behaviour file × lora × v7, v8,
through a local Ray; killed (SIGKILL) once its first cell finished, then run again to the
end as Jupyter runs ``nbs/grid.ipynb``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from ws.behavior import data
from ws.config import ADAPTERS, MAX_SEED, ConfigError, from_env
from ws.core.io import hold_run_lock
from ws.diffs.store import read_meta
from ws.grid import cells as C
from ws.grid.runner import cell_resources, prepare
from ws.grid.spec import MAX_CELLS, MAX_SEEDS, GridError, _cell, base_env, dependencies, load_grid, plan
from ws.stats.summaries import ranked
from ws.v7 import sweep
from ws.v8.results import V8_FILES

LORA = Path("out") / "models" / "tiny-llama" / "sycophancy" / "lora"
ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _plan(tmp_path: Path, text: str, **shell: str):
    g = load_grid(_write(tmp_path, text))
    root = from_env({"WS_OUT": str(tmp_path / "out"), "WS_CACHE": str(tmp_path / "cache"), "WS_LOGS": str(tmp_path / "logs")})
    return g, plan(g, base_env(shell, g, root))


# ----------------------------------------------------------------------------- the grid file
def test_the_issues_example_plans_one_cell_per_sweep_and_the_comparison_after_the_rest(tmp_path):
    text = json.dumps(
        {"behaviors": ["sycophancy"], "adapters": ["lora", "bidir"], "seeds": [0, 1, 2], "models": ["tiny-llama"],
         "sweeps": ["v7", "v8", "cross_adapter"]}
    )  # fmt: skip
    g, cells = _plan(tmp_path, text)
    assert [(c.sweep, c.adapter) for c in cells] == [
        ("v7", "lora"), ("v8", "lora"), ("v7", "bidir"), ("v8", "bidir"), ("cross_adapter", "cross_adapter")
    ]  # fmt: skip
    assert all(c.error is None for c in cells)
    v8_lora, cross = cells[1], cells[4]
    assert [d.key for d in dependencies(v8_lora, cells)] == [cells[0].key]
    assert {d.key for d in dependencies(cross, cells)} == {c.key for c in cells[:4]}
    assert cross.env_dict["WS_ADAPTERS"] == "lora,bidir" and cells[0].env_dict["WS_SEEDS"] == "0,1,2"
    assert cells[0].folder == tmp_path / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v7"
    assert cells[0].lock == cells[0].folder.parent and cross.lock == cross.folder


def test_an_imported_diff_is_a_cell_with_its_import_variables_and_one_seed(tmp_path):
    folder = tmp_path / "pos"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (tmp_path / "neg").mkdir()
    (tmp_path / "neg" / "adapter_config.json").write_text("{}")
    text = f"behaviors: [sycophancy]\nadapters: [{{pos_adapter: {folder}, neg_adapter: {tmp_path / 'neg'}}}]\nsweeps: [v7]\n"
    _, cells = _plan(tmp_path, text)
    (c,) = cells
    assert c.error is None and c.config.imported == "peft" and c.config.seeds == (0,)
    assert "WS_SEEDS" not in c.env_dict and c.env_dict["WS_POS_ADAPTER"] == str(folder)
    assert c.adapter.startswith("peft-")


@pytest.mark.parametrize(
    "text, match",
    [
        ("behaviours: [sycophancy]\nadapters: [lora]\n", "did you mean behaviors"),
        ("behaviors: [sycophancy]\nadapters: [lora]\nsweeps: [v9]\n", "sweeps v9 unknown"),
        ("behaviors: [sycophancy]\nadapters: [lora]\nseeds: [0, 0]\n", "repeats an entry"),
        ("behaviors: [sycophancy]\nadapters: [lora]\nseeds: [-1]\n", "integers ≥ 0"),
        ("behaviors: []\nadapters: [lora]\n", "`behaviors` is empty"),
        ("adapters: [lora]\n", "`behaviors` is missing"),
        ("behaviors: [sycophancy]\nadapters: [lora]\nenv: {WS_MODEL: tiny-llama}\n", "sets per cell"),
        ("behaviors: [sycophancy]\nadapters: [lora]\nenv: {WS_STEP: 3}\n", "did you mean WS_STEPS"),
        ("behaviors: [sycophancy]\nadapters: [{pos: x}]\n", "neither an adapter type nor an imported diff"),
        ("behaviors: [sycophancy]\nadapters: [lora]\nresources: {cpus_per_cell: 0}\n", "must be a number > 0"),
        ("[1, 2]\n", "must hold a mapping"),
        ("behaviors: [sycophancy\n", "is not YAML or JSON"),
    ],
)
def test_a_bad_grid_file_is_refused_naming_what_is_wrong(tmp_path, text, match):
    with pytest.raises(GridError, match=match):
        load_grid(_write(tmp_path, text))


def test_a_per_cell_variable_in_the_shell_is_refused(tmp_path):
    with pytest.raises(GridError, match="WS_MODEL set in the shell"):
        _plan(tmp_path, "behaviors: [sycophancy]\nadapters: [lora]\n", WS_MODEL="tiny-llama")


def test_a_cell_that_cannot_run_carries_its_error_and_the_others_are_planned(tmp_path):
    _write(tmp_path, '{"name": "bad"}', "bad.json")
    text = f"behaviors: [sycophancy, {tmp_path / 'bad.json'}]\nadapters: [lora, no_such_type]\nsweeps: [v7]\n"
    _, cells = _plan(tmp_path, text)
    ok = [c for c in cells if c.error is None]
    assert [(c.behavior, c.adapter) for c in ok] == [("sycophancy", "lora")]
    # each cell names its first problem (the behaviour is read before the adapter type)
    assert sum("no_such_type" in (c.error or "") for c in cells) == 1
    assert sum("bad.json" in (c.error or "") for c in cells) == 2


def test_the_fingerprint_is_the_settings_not_the_folders(tmp_path):
    text = "behaviors: [sycophancy]\nadapters: [lora]\nsweeps: [v7]\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (a,) = _plan(tmp_path / "a", text)[1]
    (b,) = _plan(tmp_path / "b", text)[1]
    (c,) = _plan(tmp_path / "a", text.replace("sweeps", "env: {WS_STEPS: 5}\nsweeps"))[1]
    assert a.folder != b.folder and a.fingerprint == b.fingerprint and a.fingerprint != c.fingerprint


# ----------------------------------------------------------------------------- hostile grid files
@pytest.mark.parametrize("name", ["../../../ESCAPED", "/tmp/ESCAPED-abs", "ok/../../ESCAPED"])
def test_a_grid_name_that_climbs_is_refused_before_anything_is_written(tmp_path, monkeypatch, name):
    run = tmp_path / "a" / "b" / "c"
    run.mkdir(parents=True)
    monkeypatch.setenv("WS_RUN_DIR", str(run))
    monkeypatch.chdir(run)
    g = _write(run, json.dumps({"name": name, "behaviors": ["sycophancy"], "adapters": ["lora"]}))
    env = {"WS_OUT": str(run / "out"), "WS_LOGS": str(run / "logs"), "WS_CACHE": str(run / "cache")}
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(GridError, match=r"(path separator|absolute path).*it cannot be the grid's name"):
        prepare(g, env)
    assert sorted(tmp_path.rglob("*")) == before, "the refused grid wrote a file"
    assert not Path("/tmp/ESCAPED-abs").exists() and not (ROOT / "ESCAPED").exists()


def _clash(tmp_path: Path, text: str) -> str:
    with pytest.raises(GridError, match="would write the same folder") as e:
        _plan(tmp_path, text)
    return str(e.value)


def test_a_built_in_behaviour_and_its_file_by_path_are_one_folder_and_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WS_RUN_DIR", str(ROOT))
    msg = _clash(tmp_path, "behaviors: [sycophancy, behaviors/sycophancy.json]\nadapters: [lora]\nsweeps: [v7]\n")
    assert "behaviour 'sycophancy'" in msg and "behaviour 'behaviors/sycophancy.json'" in msg
    assert str(tmp_path / "out" / "sycophancy" / "lora" / "v7") in msg


def test_two_behaviour_files_of_one_name_in_different_folders_are_refused(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "mine.jsonl").write_bytes((ROOT / "behaviors" / "ab" / "sycophancy-ab.jsonl").read_bytes())
    a, b = tmp_path / "a" / "mine.jsonl", tmp_path / "b" / "mine.jsonl"
    msg = _clash(tmp_path, f"behaviors: [{a}, {b}]\nadapters: [lora]\nsweeps: [v7]\n")
    assert f"behaviour '{a}'" in msg and f"behaviour '{b}'" in msg


def test_adapter_names_that_differ_only_in_spaces_are_refused_naming_both(tmp_path):
    with pytest.raises(GridError, match=r"`adapters` entries 'lora' and ' lora' would write the same folder"):
        _plan(tmp_path, 'behaviors: [sycophancy]\nadapters: [lora, " lora"]\n')


def test_two_spellings_of_one_model_are_refused_naming_both(tmp_path):
    msg = _clash(tmp_path, "behaviors: [sycophancy]\nadapters: [lora]\nmodels: [org/m, org__m]\nsweeps: [v7]\n")
    assert "model 'org/m'" in msg and "model 'org__m'" in msg


def test_seeds_out_of_range_are_refused_at_parse_time_naming_the_range(tmp_path):
    big = "99999999999999999999999"
    for env in ({"WS_SEEDS": f"0,{big}"}, {"WS_SEED": big}, {"WS_SEEDS": str(MAX_SEED + 1)}):
        (name,) = env
        with pytest.raises(ConfigError, match=rf"^{name}=.* has a seed out of range .*from 0 to {MAX_SEED} \(below 2\*\*32"):
            from_env(env)
    assert from_env({"WS_SEEDS": f"0,{MAX_SEED}", "WS_SEED": str(MAX_SEED)}).seeds == (0, MAX_SEED)
    with pytest.raises(GridError, match=rf"seeds must be integers ≥ 0 and at most {MAX_SEED} .*got {big}"):
        load_grid(_write(tmp_path, f"behaviors: [sycophancy]\nadapters: [lora]\nseeds: [0, {big}]\n"))


def test_a_grid_larger_than_its_guard_is_refused_saying_how_many_and_how_to_allow_it(tmp_path):
    models = [f"org/m{i}" for i in range(4)]
    text = json.dumps({"behaviors": ["sycophancy", "refusal"], "adapters": list(ADAPTERS), "models": models})
    n = 4 * 2 * len(ADAPTERS) * 2
    assert n > MAX_CELLS == 200
    with pytest.raises(GridError, match=rf"the grid plans {n} cells .*more than max_cells=200: .*`max_cells: {n}`"):
        load_grid(_write(tmp_path, text))
    assert load_grid(_write(tmp_path, text[:-1] + f', "max_cells": {n}}}')).n_cells == n
    seeds = list(range(MAX_SEEDS + 1))
    few = json.dumps({"behaviors": ["sycophancy"], "adapters": ["lora"], "seeds": seeds})
    with pytest.raises(GridError, match=r"`seeds` lists 51 seeds, more than max_seeds=50 .*`max_seeds: 51`"):
        load_grid(_write(tmp_path, few))
    assert load_grid(_write(tmp_path, few[:-1] + ', "max_seeds": 51}')).seeds == tuple(seeds)
    with pytest.raises(GridError, match=r"max_cells=0 must be a whole number ≥ 1"):
        load_grid(_write(tmp_path, "behaviors: [sycophancy]\nadapters: [lora]\nmax_cells: 0\n"))


def test_the_planned_count_is_the_plans_length(tmp_path):
    text = "behaviors: [sycophancy]\nadapters: [lora, bidir]\nmodels: [tiny-llama]\nsweeps: [v7, v8, cross_adapter]\n"
    g, cells = _plan(tmp_path, text)
    assert g.n_cells == len(cells) == 5


# ----------------------------------------------------------------------------- resources and locks
def test_what_a_cell_asks_ray_for(tmp_path):
    g, (cell,) = _plan(tmp_path, "behaviors: [sycophancy]\nadapters: [lora]\nsweeps: [v7]\n")
    assert cell_resources(g, cell, cpus=2, gpus=0) == (2.0, 0.0)  # a 2-core machine: one model job at a time
    assert cell_resources(g, cell, cpus=16, gpus=2) == (8.0, 1.0)  # one cell per GPU
    g2, (auto,) = _plan(tmp_path, "behaviors: [sycophancy]\nadapters: [lora]\nsweeps: [v7]\nenv: {WS_DEVICE_MAP: auto}\n")
    assert cell_resources(g2, auto, cpus=16, gpus=2) == (16.0, 2.0)  # a model spread over the node's GPUs
    g3, (own,) = _plan(tmp_path, "behaviors: [sycophancy]\nadapters: [lora]\nsweeps: [v7]\nresources: {cpus_per_cell: 1}\n")
    assert cell_resources(g3, own, cpus=2, gpus=0) == (1.0, 0.0)


def test_cells_share_the_output_folder_and_a_plain_run_does_not(tmp_path):
    hold = "import sys; from ws.core.io import hold_run_lock; hold_run_lock(sys.argv[1], 'cell', shared=True);"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold + " print('held', flush=True); sys.stdin.readline()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        check = "import sys; from ws.core.io import hold_run_lock; hold_run_lock(sys.argv[1], 'x', shared=sys.argv[2] == '1')"
        shared = subprocess.run([sys.executable, "-c", check, str(tmp_path), "1"], capture_output=True, text=True)
        alone = subprocess.run([sys.executable, "-c", check, str(tmp_path), "0"], capture_output=True, text=True)
        assert shared.returncode == 0, shared.stderr
        assert alone.returncode != 0 and "RunLockedError" in alone.stderr and ", pid " in alone.stderr
    finally:
        holder.communicate("\n")
    hold_run_lock(tmp_path / "after", "x")  # released with its holder: free again


# ----------------------------------------------------------------------------- done, kept, todo
def test_a_set_made_outside_the_grid_is_done_with_its_seeds_and_kept_with_others(smoke_sweeps, tmp_path):
    def cell(seeds: str):
        env = {"WS_OUT": str(smoke_sweeps.base / "out"), "WS_SMOKE": "1", "WS_MODEL": "tiny-llama", "WS_BEHAVIOR": "sycophancy"}
        env.update(WS_ADAPTER="lora", WS_SEEDS=seeds)
        return _cell("v7", "tiny-llama", "sycophancy", "lora", env)

    assert C.state(cell("0"))[0] == "done"
    st, why = C.state(cell("0,1"))
    assert st == "kept" and "made outside this grid" in why and "WS_OUT" in why
    assert C.state(cell("0"))[0] == "done"  # nothing was changed by asking


# ----------------------------------------------------------------------------- the smoke grid, end to end
def _summary(smoke_grid) -> pl.DataFrame:
    return pl.read_csv(smoke_grid.base / "out" / "grids" / "smoke" / "grid_summary.tsv", separator="\t")


def _row(df: pl.DataFrame, sweep_: str, model: str, behavior: str) -> dict:
    return df.filter((pl.col("sweep") == sweep_) & (pl.col("model") == model) & (pl.col("behavior") == behavior)).row(
        0, named=True
    )


def test_the_killed_grid_rerun_does_only_the_missing_cells(smoke_grid):
    df = _summary(smoke_grid)
    assert df.height == 8
    v7 = _row(df, "v7", "tiny-llama", "sycophancy")
    assert v7["status"] == "done", v7  # finished before the kill: not run again
    assert _row(df, "v8", "tiny-llama", "sycophancy")["status"] == "ran"
    folder = smoke_grid.base / LORA / "v7"
    now = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir() if p.is_file()}
    assert now == smoke_grid.after_kill, "the rerun touched a finished cell's files"
    # the kill left no half set: the v8 folder held nothing, or the whole set
    assert smoke_grid.v8_after_kill in ([], sorted(V8_FILES))


def test_a_failing_cell_is_reported_and_the_others_finish(smoke_grid):
    df = _summary(smoke_grid)
    missing = _row(df, "v7", "no-such-org/no-such-model", "sycophancy")
    assert missing["status"] == "failed" and "no-such-org/no-such-model" in missing["error"]
    after = _row(df, "v8", "no-such-org/no-such-model", "sycophancy")
    assert after["status"] == "skipped" and "did not finish" in after["error"]
    bad = df.filter(pl.col("behavior").str.contains("bad_behavior"))
    assert bad.height == 4 and set(bad["status"]) == {"failed"}
    assert all("bad_behavior.json" in e for e in bad["error"])
    page = (smoke_grid.base / "out" / "grids" / "smoke" / "grid_summary.md").read_text()
    assert "## Cells that did not run" in page and "no-such-org/no-such-model" in page
    assert not (smoke_grid.base / "out" / "models" / "no-such-org__no-such-model" / "sycophancy" / "lora" / "v7").exists()


def test_the_grids_cells_give_the_notebooks_tables_byte_for_byte(smoke_grid, smoke_sweeps):
    """Same inputs and seeds as the session's smoke notebooks: the same tables."""
    for sub, names in (("v7", sweep.V7_FILES + sweep.EXTRA_FILES), ("v8", V8_FILES)):
        for n in (n for n in names if n.endswith((".csv", ".tsv"))):
            a = (smoke_grid.base / LORA / sub / n).read_bytes()
            assert a == (smoke_sweeps.base / LORA / sub / n).read_bytes(), f"{sub}/{n}"


def test_the_summarys_figures_are_the_cells_own(smoke_grid):
    df = _summary(smoke_grid)
    v7r, v8r = _row(df, "v7", "tiny-llama", "sycophancy"), _row(df, "v8", "tiny-llama", "sycophancy")
    target = data.get_behavior("sycophancy").target
    meta = read_meta(smoke_grid.base / LORA / "seed0" / "w.safetensors")
    assert v7r["target_set"] == target and v7r["target_spread"] == pytest.approx(meta["effect_spread"][target], abs=1e-5)
    assert v7r["specificity"] == pytest.approx(meta["specificity_ratio"], abs=1e-5)
    conclusion = (smoke_grid.base / LORA / "v7" / "v7_conclusion.md").read_text()
    assert f"{target} {meta['effect_spread'][target]:+.2f} nats" in conclusion
    top = ranked(pl.read_csv(smoke_grid.base / LORA / "v7" / "v7_summary.tsv", separator="\t"))["subspace"][0]
    assert v7r["v7_answer"] == top and v7r["v7_stable"] and f"`{top}`" in conclusion  # one seed: its winner
    causal = pl.read_csv(smoke_grid.base / LORA / "v8" / "v8_causal.tsv", separator="\t")
    yes = causal.filter((pl.col("kind") == "A-hypothesis") & pl.col("carries").fill_null(False))
    v8c = (smoke_grid.base / LORA / "v8" / "v8_conclusion.md").read_text()
    if yes.height:
        assert v8r["v8_carrier"] in yes["subspace"].to_list() and f"**`{v8r['v8_carrier']}` carries the behaviour**" in v8c
        best = yes.sort("retention_inside", descending=True).row(0, named=True)
        assert v8r["v8_retention_inside"] == pytest.approx(best["retention_inside"], rel=1e-6)
    else:
        assert v8r["v8_carrier"] == "none" and "No tested write/mixed candidate carries the behaviour" in v8c
    assert (smoke_grid.base / "out" / "grids" / "smoke" / "grid_summary.png").stat().st_size > 0


def test_the_notebook_shows_the_plan_the_summary_and_its_figure(smoke_grid):
    text = "\n".join(o.get("text", "") for c in smoke_grid.nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "grid smoke: 8 cells, 3 to run" in text
    assert sum("image/png" in o.get("data", {}) for c in smoke_grid.nb.cells for o in c.get("outputs", [])) >= 1
