"""``ws.bench.scale`` (``shapes``, ``measure``, ``fits``, ``report``): the fits recover planted
exponents, the extrapolation of a planted power law is its closed form, the shapes are the
families' shapes (parameter counts from the published numbers), the random diff is a LoRA
diff's shape, and the tiniest run goes end to end (a 2-layer random model through the child's
entry point, the JSON, the report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from ws.bench import fits, measure, report, shapes
from ws.diffs import adapters
from ws.diffs.store import check_against_model, writer_deltas_by_layer
from ws.model.load import check_architecture

#: the families' published shapes: d, L, ff, heads, KV heads, head dim, vocab, tied, q/k norms
PUBLISHED = {
    "smollm2-135m": (576, 30, 1536, 9, 3, 64, 49152, True, False),
    "qwen3-0.6b": (1024, 28, 3072, 16, 8, 128, 151936, True, True),
    "qwen3-1.7b": (2048, 28, 6144, 16, 8, 128, 151936, True, True),
    "llama-3-8b": (4096, 32, 14336, 32, 8, 128, 128256, False, False),
    "llama-3-70b": (8192, 80, 28672, 64, 8, 128, 128256, False, False),
}


def published_count(name: str, layers: int) -> int:
    """Parameters from the published numbers: per block q, k, v, o, gate, up, down and two
    norms (+ the per-head q/k norms), the embedding (twice when untied), the final norm."""
    d, _, ff, H, kv, hd, V, tied, qk = PUBLISHED[name]
    block = 2 * d * H * hd + 2 * d * kv * hd + 3 * d * ff + 2 * d + (2 * hd if qk else 0)
    return layers * block + V * d * (1 if tied else 2) + d


def test_the_shapes_are_the_published_ones():
    for name, (d, L, ff, H, kv, hd, V, tied, _) in PUBLISHED.items():
        s = shapes.SHAPES[name]
        assert (s.d, s.layers, s.ff, s.heads, s.kv_heads, s.hd, s.vocab, s.tied) == (d, L, ff, H, kv, hd, V, tied), name
    # the counts the families publish for the whole models
    assert shapes.n_params(shapes.SHAPES["llama-3-8b"]) == 8_030_261_248
    assert shapes.n_params(shapes.SHAPES["llama-3-70b"]) == 70_553_706_496
    assert round(shapes.n_params(shapes.SHAPES["smollm2-135m"]) / 1e6, 1) == 134.5


@pytest.mark.parametrize("name", [n for n in PUBLISHED if shapes.SHAPES[n].build])
@pytest.mark.parametrize("layers", [1, 2])
def test_configs_build_models_with_the_families_parameter_counts(name, layers):
    with torch.device("meta"):  # the structure without the memory
        model = AutoModelForCausalLM.from_config(shapes.SHAPES[name].config(layers))
    check_architecture(model, name)
    assert sum(p.numel() for p in model.parameters()) == published_count(name, layers)
    assert model.config.hidden_size == PUBLISHED[name][0] and len(model.model.layers) == layers


def planted(d: np.ndarray, L: np.ndarray, c: float = 0.37, b: float = 2.6, e: float = 0.8) -> np.ndarray:
    return c * d**b * L**e


def test_the_joint_fit_recovers_planted_exponents_exactly():
    d = np.array([64.0, 128, 256, 512, 1024])
    L = np.array([2.0, 7, 3, 12, 5])
    f = fits.fit_joint(d, L, planted(d, L))
    assert f["b"] == pytest.approx(2.6, abs=1e-9) and f["c"] == pytest.approx(0.8, abs=1e-9)
    assert f["a"] == pytest.approx(math.log(0.37), abs=1e-9) and f["rms_log_residual"] < 1e-9
    per = fits.fit_per_layer(d, L, planted(d, L, e=1.0))
    assert per["b"] == pytest.approx(2.6, abs=1e-9) and per["c"] == 1.0
    # too few runs, or one depth only: not determined
    assert fits.fit_joint(d[:3], L[:3], planted(d[:3], L[:3])) is None
    assert fits.fit_joint(d, np.full(5, 4.0), planted(d, np.full(5, 4.0))) is None
    assert fits.fit_per_layer(np.full(3, 64.0), L[:3], planted(np.full(3, 64.0), L[:3])) is None


#: a planted law per stage, (c, b, e): t = c·d^b·depth^e, b at or below its arithmetic's
#: exponent except scoring's, which grows faster than its arithmetic requires
LAWS = {s.key: (1e-6 * (i + 1), s.d_exp - 0.1 * (i % 3), 1.0 - 0.05 * i) for i, s in enumerate(shapes.STAGES)}
LAWS["scoring"] = (1e-7, 3.6, 1.0)


def synthetic_runs() -> list[dict]:
    runs = []
    for d, L in ((96, 4), (96, 12), (192, 10), (384, 3), (768, 6)):
        st = {k: c * d**b * shapes.stage_depth(shapes.BY_KEY[k], L) ** e for k, (c, b, e) in LAWS.items()}
        runs.append(
            {
                "spec": f"synthetic:{L}",
                "shape": "synthetic",
                "d_model": d,
                "n_layers": L,
                "full_layers": L,
                "params": 1,
                "stages_s": st,
                "analysis_s": sum(st[k] for k in shapes.ANALYSIS),
                "peak_rss_gib_analysis": 1.0,
                "peak_rss_gib": 1.0,
                "memory_estimate_gib": {"peak": 1.0},
                "matmul_gflops": 150.0,
                "f64_gflops": 60.0,
                "moment_tokens": 1700,
            }
        )
    return runs


def test_the_extrapolation_of_a_planted_power_law_is_its_closed_form(tmp_path):
    runs = synthetic_runs()
    machine = {"kind": "cpu", "named": "CPU synthetic"}
    r = measure.assemble(runs, machine, measure.settings(measure.run_config()), smoke=False, probes=None)
    for key, (_, b, e) in LAWS.items():
        f = r["fits"][key]
        if shapes.BY_KEY[key].depth == "none":  # a fixed cost: one depth, so the per-layer fit, exact in d
            assert f["used"] == "per_layer" and f["b"] == pytest.approx(b, abs=1e-9)
            assert shapes.stage_depth(shapes.BY_KEY[key], 80) == 1
            continue
        assert f["used"] == "joint" and f["b"] == pytest.approx(b, abs=1e-9) and f["c"] == pytest.approx(e, abs=1e-9)
        assert f["faster_than_required"] == (key == "scoring")
    for name in shapes.TARGET_SHAPES:
        s, cell = shapes.SHAPES[name], r["extrapolated"][name]
        closed = {k: c * s.d**b * shapes.stage_depth(shapes.BY_KEY[k], s.layers) ** e for k, (c, b, e) in LAWS.items()}
        assert cell["cpu"]["how"] == "extrapolated"
        for k, v in closed.items():
            assert cell["cpu"]["stages_s"][k] == pytest.approx(v, rel=1e-9), (name, k)
        assert cell["cpu"]["analysis_s"] == pytest.approx(sum(closed[k] for k in shapes.ANALYSIS), rel=1e-9)
        gpu = cell["gpu"]
        assert gpu["how"] == "extrapolated" and gpu["stages_s"]["build_candidates"] == cell["cpu"]["stages_s"]["build_candidates"]
        assert gpu["stages_s"]["v8_causal"] >= fits.GPU_REFERENCE["launch_bound_s"]["v8_causal"] * 0.99 * (
            shapes.stage_depth(shapes.BY_KEY["v8_causal"], s.layers) / shapes.stage_depth(shapes.BY_KEY["v8_causal"], 30)
        )
    assert r["bottleneck"]["llama-3-70b"]["stage"] == "scoring"
    assert r["targets"]["analysis_how"] == "extrapolated"
    path = tmp_path / "bench_scale.json"
    path.write_text(json.dumps(r, default=float))
    md, png = report.write_report(path, tmp_path / "report")
    text = md.read_text()
    assert png.stat().st_size > 10_000 and png.name in text and "extrapolated" in text and "**yes**" in text


def test_the_depth_is_the_full_one_or_the_deepest_that_fits():
    s = shapes.SHAPES["qwen3-1.7b"]
    assert shapes.choose_layers(s, None, None, False)[0] == 28
    assert shapes.choose_layers(s, 3, 1.0, False) == (3, "asked for")
    L, why = shapes.choose_layers(s, None, 10.0, False)
    assert shapes.memory_estimate(s, L)["peak"] <= 10.0 < shapes.memory_estimate(s, L + 1)["peak"] and "full depth is 28" in why


def test_the_random_diff_is_a_lora_diff(tiny_llama):
    model, _ = tiny_llama
    w, meta = shapes.random_diff(model)
    assert sorted(w) == sorted(shapes.lora_keys(model)) and len(w) == 7 * len(adapters.layer_range(4, (0.3, 0.8)))
    check_against_model(w, model)  # every key and shape fits
    params = dict(model.named_parameters())
    for k, t in w.items():
        assert torch.linalg.matrix_rank(t) <= shapes.DIFF_RANK
        assert float(t.norm()) == pytest.approx(shapes.DIFF_REL_NORM * float(params[k].detach().norm()), rel=1e-5)
    assert all(x is None or set(x) == {"oproj", "downproj"} for x in writer_deltas_by_layer(w, 4))
    assert shapes.random_diff(model)[0].keys() == w.keys() and all(torch.equal(w[k], shapes.random_diff(model)[0][k]) for k in w)


def test_the_tiniest_run_end_to_end_through_make(tmp_path):
    """``make bench-scale`` on the tiny shape (tests/make_targets.py): the child process's
    record, the assembled JSON, then the report from it."""
    from make_targets import checkout, ok, run_make

    repo = checkout(tmp_path / "repo")
    ok(run_make(repo, "bench-scale", "BENCH_SCALE_ARGS=--shapes tiny:2 --smoke", base=tmp_path))
    r = json.loads((tmp_path / "out" / "bench" / "bench_scale.json").read_text())
    [rec] = r["runs"]
    assert rec["spec"] == "tiny:2" and rec["n_layers"] == 2 and rec["device"] == "cpu"
    assert set(rec["stages_s"]) == set(shapes.STAGE_KEYS) and all(v > 0 for v in rec["stages_s"].values())
    assert rec["peak_rss_gib"] >= rec["peak_rss_gib_analysis"] > 0 and rec["train_step"]["steps"] == measure.TRAIN_STEPS
    assert r["device"].startswith("CPU ") and r["date"] and r["fits"]["captures"]["used"] is None  # one width: no fit
    ok(run_make(repo, "bench-scale", f"BENCH_SCALE_ARGS=--report {tmp_path / 'measured'}", base=tmp_path))
    md = tmp_path / "measured" / f"{r['date']}-cpu-scale.md"
    after = rec["peak_rss_gib_after"]  # read where each stage ended: v7's inside run_seed
    assert 0 < after["captures"] <= after["lens"] <= after["v8_causal"] <= rec["peak_rss_gib_analysis"]
    assert "captures: measured / estimate" in md.read_text()
    assert "`tiny:2`" in md.read_text() and (tmp_path / "measured" / f"{r['date']}-cpu-scale.png").stat().st_size > 10_000


def test_the_estimate_error_is_read_against_the_measured_peak():
    run = {"peak_rss_gib": 2.5, "memory_estimate_gib": {"peak": 2.0}}
    assert (
        report.estimate_error(run) == pytest.approx(-0.2) and report.estimate_error({"memory_estimate_gib": {"peak": 1}}) is None
    )
    s = shapes.SHAPES["qwen3-0.6b"]
    e = shapes.memory_estimate(s)
    more = shapes.memory_estimate(s, n_fit=2 * shapes.PROBES_FIT)
    assert more["captures"] > e["captures"] and more["build"] > e["build"]  # the captures are kept through the build
    assert shapes.memory_estimate(s, tokens=4096)["captures"] > e["captures"]
    assert shapes.memory_estimate(s, on_gpu=True)["peak"] < e["peak"] - 0.9 * e["weights"]


def test_each_phase_of_the_estimate_is_read_against_the_peak_when_it_ended():
    """A peak only grows: a phase is measured by the peak so far when its last stage ended,
    and estimated by the largest estimate of the phases up to it."""
    after = {"captures": 8.0, "build_candidates": 10.0, "scoring": 10.0, "lens": 10.5, "v8_causal": 10.6}
    run = {"peak_rss_gib_after": after, "memory_estimate_gib": {"captures": 8.5, "build": 10.0, "v8": 9.0}}
    assert report.phase_errors(run) == {"captures": (8.0, 8.5), "build": (10.5, 10.0), "v8": (10.6, 10.0)}
    assert report.phase_errors({"memory_estimate_gib": run["memory_estimate_gib"]}) is None
    run["peak_rss_gib_after"] = {**after, "captures": 5.0}  # the estimate 70 % over: flagged
    lines = report.phases_table({"runs": [{"spec": "x:2", "stages_s": {}, **run}]})
    assert "5.00 / 8.50 GiB (+70%) **off**" in lines[-1] and "10.50 / 10.00 GiB (-5%) |" in lines[-1]


#: runs in docs/measured taken with today's memory behaviour (the seventh session's streaming on)
CURRENT_RUNS = ("qwen3-0.6b-streaming", "llama-3-8b-2layers-after-hash", "llama-3-8b-2layers-phases")


@pytest.mark.parametrize("name", CURRENT_RUNS)
def test_the_estimate_of_this_code_is_within_20_percent_of_the_measured_runs(name):
    """The known answers of the memory estimate are measured peaks: the analysis' peak of
    every run taken with today's memory behaviour, and each phase where the run read them
    where they ended. A change of the estimate (or of what the analysis holds) that moves it
    more than 20 % off these fails here."""
    path = Path(__file__).resolve().parents[1] / "docs" / "measured" / f"bench-scale-cpu-2026-12-06-{name}.json"
    [run] = json.loads(path.read_text())["runs"]
    est = shapes.memory_estimate(shapes.SHAPES[run["shape"]], run["n_layers"], n_fit=run["n_fit"], n_eval=run["n_eval"])
    assert abs(est["analysis_peak"] / run["peak_rss_gib_analysis"] - 1) <= report.ESTIMATE_TOL
    if name.endswith("phases"):
        for phase, (got, want) in report.phase_errors({**run, "memory_estimate_gib": est}).items():
            assert abs(want / got - 1) <= report.ESTIMATE_TOL, phase


def test_runs_measured_one_at_a_time_merge_and_fit_as_one(tmp_path):
    """Two JSONs of one machine fit together to the planted law; a run whose causal test was
    bounded (other causal settings) stays out of the causal fit only, and is named there;
    JSONs of two machines are refused."""
    runs = synthetic_runs()
    machine = {"kind": "cpu", "named": "CPU synthetic"}
    own = measure.settings(measure.run_config())
    for r in runs:
        r["settings"] = dict(own)
    bounded = {**runs[-1], "spec": "synthetic:bounded", "settings": {**own, "n_causal": 4, "n_causal_null": 5}}
    bounded["stages_s"] = {**bounded["stages_s"], "v8_causal": 1e6}
    paths = []
    for i, part in enumerate((runs[:3], [*runs[3:], bounded])):
        paths.append(tmp_path / f"part{i}.json")
        paths[-1].write_text(json.dumps(measure.assemble(part, machine, own, smoke=False, probes=None), default=float))
    r = measure.merge(paths)
    assert len(r["runs"]) == 6 and r["merged_from"] == ["part0.json", "part1.json"]
    for key, (_, b, _) in LAWS.items():  # the bounded run's other stages follow the law: every fit is exact
        assert r["fits"][key]["b"] == pytest.approx(b, abs=1e-9), key
    assert r["fits"]["v8_causal"]["left_out"] == ["synthetic:bounded"] and r["fits"]["captures"]["left_out"] == []
    assert r["fits"]["captures"]["joint"]["points"] == 6 and r["fits"]["v8_causal"]["joint"]["points"] == 5
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps(measure.assemble(runs[:2], {"kind": "cpu", "named": "CPU other"}, own, False, None), default=float)
    )
    with pytest.raises(SystemExit, match="different machines"):
        measure.merge([paths[0], other])


def test_the_host_memory_target_at_8b_is_the_analysis_beside_the_weights(tmp_path):
    """The estimate's analysis peak is its captures, build and v8 phases' largest (not the
    training step's); beside the weights is that minus the float32 weights; the JSON's targets
    and the report carry it against the 24 GiB target."""
    e = shapes.memory_estimate(shapes.SHAPES["llama-3-8b"])
    assert e["analysis_peak"] == max(e["captures"], e["build"], e["v8"]) < e["train_step"] == e["peak"]
    assert e["beside_weights"] == pytest.approx(e["analysis_peak"] - e["weights"])
    gpu = shapes.memory_estimate(shapes.SHAPES["llama-3-8b"], on_gpu=True)
    assert gpu["beside_weights"] == gpu["analysis_peak"]  # no weights on the host
    own = measure.settings(measure.run_config())
    r = measure.assemble(synthetic_runs(), {"kind": "cpu", "named": "CPU synthetic"}, own, smoke=False, probes=None)
    h = r["targets"]["beside_weights"]
    assert h["got_gib"] == e["beside_weights"] and h["met"] == (e["beside_weights"] <= 24.0) and h["gib"] == 24.0
    path = tmp_path / "bench_scale.json"
    path.write_text(json.dumps(r, default=float))
    md, _ = report.write_report(path, tmp_path / "report")
    assert f"{e['beside_weights']:.1f} GiB (estimated from the arithmetic)" in md.read_text()


def test_causal_settings_a_run_did_not_record_do_not_split_it_from_its_group():
    """A run measured before ``causal_items`` was recorded joins the runs it agrees with on the
    keys both record; a run that disagrees on a recorded key stays out."""
    base = synthetic_runs()[:4]
    own = measure.settings(measure.run_config())
    bounded = {**own, "n_causal": 4, "n_causal_null": 5, "causal_items": 16}
    old = {k: v for k, v in bounded.items() if k not in ("causal_items", "causal_null_max", "causal_half_width")}
    for r, st in zip(base, (own, bounded, old, bounded), strict=True):
        r["settings"] = st
    ok, left = fits.comparable(base, "v8_causal")
    assert [r["spec"] for r in ok] == [base[i]["spec"] for i in (1, 2, 3)] and left == [base[0]["spec"]]
    assert fits.comparable(base, "captures") == (base, [])
