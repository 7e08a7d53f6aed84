"""The scale bench's fits: each stage's time as ``c·d^b·L^c`` (least squares in log space), the cells at the
shapes not measured, the GPU extrapolation and the bottleneck. See :mod:`ws.bench.scale`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ws.bench.shapes import (
    ANALYSIS,
    BY_KEY,
    GIB,
    SHAPES,
    STAGE_KEYS,
    STAGES,
    TARGET_SHAPES,
    Shape,
    memory_estimate,
    n_params,
    stage_depth,
)

#: an exponent counts as faster than its arithmetic beyond this margin (noise of a few runs)
EXPONENT_MARGIN = 0.25


#: the issue's targets for the analysis (v7 + v8, no training) on the 2-core CPU
TARGETS = {"shape": "qwen3-0.6b", "analysis_s": 300.0, "peak_rss_gib": 6.0}

#: the issue's host-memory target at 8B: the analysis beside the float32 weights, by the estimate
BESIDE_WEIGHTS_TARGET = {"shape": "llama-3-8b", "gib": 24.0}


#: The assumption behind every GPU figure of a CPU run (extrapolated, never measured): a
#: device stage's compute time scales by this CPU's measured float32 matrix-product speed
#: over the GPU's bfloat16 one, but never drops below what the stage took on that GPU at the
#: embedded model's shape (it was launch-bound there), scaled with the depth; the captures'
#: second moments stay float64 products on the host; host stages keep this CPU's time.
#: The figures come from ``make bench`` on one H100, 2026-11-23
#: (docs/measured/bench-h100-bf16-2026-11-23.json; the training step from
#: docs/measured/2026-11-23-h100-gpu.md).
GPU_REFERENCE = {
    "gpu": "NVIDIA H100 80GB HBM3",
    "dtype": "bfloat16",
    "memory_gib": 80.0,
    "matmul_gflops": 127276.0,
    "launch_bound_s": {"captures": 3.19, "v8_block_local": 6.39, "v8_causal": 48.3, "train_step": 0.17},
    "launch_bound_layers": 30,
    "source": "docs/measured/bench-h100-bf16-2026-11-23.json, docs/measured/2026-11-23-h100-gpu.md",
}


# ----------------------------------------------------------------------------- fits
def _lstsq(X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> dict:
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ coef
    return {
        **dict(zip(names, map(float, coef), strict=True)),
        "points": len(y),
        "rms_log_residual": float(np.sqrt(np.mean(r**2))),
    }


def fit_joint(d: Sequence[float], L: Sequence[float], t: Sequence[float]) -> dict | None:
    """``log t = a + b·log d + c·log L`` by least squares over the runs ``(d, L, t)``; None
    unless the runs determine it (≥ 4 of them, two widths and two depths at least, rank 3)."""
    d, L, t = (np.asarray(x, dtype=float) for x in (d, L, t))
    if t.size < 4 or np.unique(d).size < 2 or np.unique(L).size < 2:
        return None
    X = np.column_stack([np.ones_like(d), np.log(d), np.log(L)])
    if np.linalg.matrix_rank(X) < 3:
        return None
    return {"form": "t = exp(a)·d^b·L^c", **_lstsq(X, np.log(t), ("a", "b", "c"))}


def fit_per_layer(d: Sequence[float], L: Sequence[float], t: Sequence[float]) -> dict | None:
    """``log(t / L) = a + b·log d`` (the depth exponent fixed at 1, as every stage's
    arithmetic has it); None with fewer than two widths."""
    d, L, t = (np.asarray(x, dtype=float) for x in (d, L, t))
    if np.unique(d).size < 2:
        return None
    X = np.column_stack([np.ones_like(d), np.log(d)])
    return {"form": "t = exp(a)·d^b·L", **_lstsq(X, np.log(t / L), ("a", "b")), "c": 1.0}


def predict(fit: dict, d: float, L: float) -> float:
    """A fit's seconds at width ``d`` and depth ``L``."""
    return float(math.exp(fit["a"] + fit["b"] * math.log(d) + fit["c"] * math.log(L)))


def measured(runs: Sequence[dict]) -> list[dict]:
    return [r for r in runs if "stages_s" in r]


#: the settings that size the causal test: its fit takes only runs that agree on them
CAUSAL_SETTINGS = ("n_causal", "n_causal_null", "causal_null_max", "causal_items", "causal_half_width")


def _agree(a: dict, b: dict) -> bool:
    """Whether two runs' causal settings agree on every key both record (a run measured before a
    key was recorded leaves it out)."""
    sa, sb = a.get("settings", {}), b.get("settings", {})
    return all(sa[k] == sb[k] for k in CAUSAL_SETTINGS if k in sa and k in sb)


def comparable(runs: Sequence[dict], stage: str) -> tuple[list[dict], list[str]]:
    """The runs whose times one fit of ``stage`` may join, and the specs left out: for the causal
    test, the largest group of runs that agree with one run on :data:`CAUSAL_SETTINGS` and with
    each other (a tie: the earlier run's group); every run for the other stages (they run at the
    sweep's settings)."""
    ok = measured(runs)
    if stage != "v8_causal" or not ok:
        return ok, []
    groups = []
    for r in ok:
        group = [r]
        for x in ok:
            if x is not r and all(_agree(x, y) for y in group):
                group.append(x)
        groups.append(group)
    best = max(groups, key=len)
    return [r for r in ok if any(r is g for g in best)], [r["spec"] for r in ok if not any(r is g for g in best)]


def fit_stages(runs: Sequence[dict]) -> dict:
    """Per stage: both fits over the measured runs (``L`` = the layers the stage runs over,
    :func:`stage_depth`; :func:`comparable`), the one used (the joint fit where the runs
    determine it, else the per-layer one), its exponents, what the arithmetic requires, and
    whether the stage grows faster than that (``b`` over the required exponent by more than
    :data:`EXPONENT_MARGIN`)."""
    out = {}
    for s in STAGES:
        ok, left_out = comparable(runs, s.key)
        pts = [(r["d_model"], stage_depth(s, r["n_layers"]), r["stages_s"][s.key]) for r in ok if r["stages_s"][s.key] > 0]
        d, L, t = zip(*pts, strict=True) if pts else ((), (), ())
        joint, per = fit_joint(d, L, t), fit_per_layer(d, L, t)
        fit = joint or per
        out[s.key] = {
            "joint": joint,
            "per_layer": per,
            "used": "joint" if joint else "per_layer" if per else None,
            "b": fit["b"] if fit else None,
            "c": fit["c"] if fit else None,
            "required_d": s.d_exp,
            "required_L": 0 if s.depth == "none" else 1,
            "depth": s.depth,
            "why": s.why,
            "faster_than_required": bool(fit["b"] > s.d_exp + EXPONENT_MARGIN) if fit else None,
            "left_out": left_out,
        }
    return out


# ----------------------------------------------------------------------------- extrapolation
def full_run(runs: Sequence[dict], name: str) -> dict | None:
    """The run of shape ``name`` at its full depth, if there is one."""
    return next((r for r in measured(runs) if r["shape"] == name and r["n_layers"] == r["full_layers"]), None)


def cell_here(fits: dict, runs: Sequence[dict], s: Shape) -> dict | None:
    """One cell at shape ``s`` on this run's device: measured where a full-depth run exists,
    else extrapolated with each stage's fit (the range: both fits, where both exist)."""
    run = full_run(runs, s.name)
    if run is not None:
        st = run["stages_s"]
        return {"how": "measured", "stages_s": st, "analysis_s": run["analysis_s"], "train_step_s": st["train_step"]}
    stages, ranges = {}, {}
    for key in STAGE_KEYS:
        f = fits[key]
        if f["used"] is None:
            return None
        depth = stage_depth(BY_KEY[key], s.layers)
        stages[key] = predict(f[f["used"]], s.d, depth)
        ranges[key] = [predict(f[k], s.d, depth) for k in ("joint", "per_layer") if f[k]]
    return {
        "how": "extrapolated",
        "stages_s": stages,
        "analysis_s": sum(stages[k] for k in ANALYSIS),
        "analysis_range_s": [sum(min(ranges[k]) for k in ANALYSIS), sum(max(ranges[k]) for k in ANALYSIS)],
        "train_step_s": stages["train_step"],
        "train_step_range_s": [min(ranges["train_step"]), max(ranges["train_step"])],
    }


def moment_seconds(s: Shape, tokens: float, f64: float) -> float:
    """Seconds of the captures' second moments at shape ``s``: ``2·tokens·L·(a + ff + 2d²)``
    float64 FLOPs at ``f64`` GFLOP/s (the inputs' diagonals and the outputs' ``[d, d]`` moments)."""
    a = s.heads * s.hd
    return 2 * tokens * s.layers * (a + s.ff + 2 * s.d * s.d) / (f64 * 1e9)


def gpu_cell(cpu: dict, runs: Sequence[dict], s: Shape, ref: dict = GPU_REFERENCE) -> dict:
    """One cell at ``s`` on one GPU, from this CPU's cell ``cpu`` under :data:`GPU_REFERENCE`'s
    assumption (extrapolated, always)."""
    ok = measured(runs)
    ratio = float(np.median([r["matmul_gflops"] for r in ok])) / ref["matmul_gflops"]
    host_moments = moment_seconds(
        s, float(np.median([r["moment_tokens"] for r in ok])), float(np.median([r["f64_gflops"] for r in ok]))
    )
    stages = {}
    for st in STAGES:
        t = cpu["stages_s"][st.key]
        if st.where == "host":
            stages[st.key] = t
            continue
        host = min(host_moments, t) if st.key == "captures" else 0.0
        depth = stage_depth(st, s.layers) / stage_depth(st, ref["launch_bound_layers"])
        launch = ref["launch_bound_s"][st.key] * depth
        stages[st.key] = host + max(launch, (t - host) * ratio)
    return {
        "how": "extrapolated",
        "assumption": "device stages: this CPU's time × its float32 matmul speed / the GPU's bfloat16 one, at least "
        "the GPU's launch-bound time at the embedded shape × L/30; the captures' second moments and the host "
        f"stages keep this CPU's float64 time (reference: {ref['gpu']}, {ref['source']})",
        "speed_ratio": ratio,
        "stages_s": stages,
        "analysis_s": sum(stages[k] for k in ANALYSIS),
        "train_step_s": stages["train_step"],
    }


def extrapolate(fits: dict, runs: Sequence[dict], machine: dict) -> dict:
    """One cell (the analysis and one training step) at every shape of :data:`TARGET_SHAPES`,
    on this device (measured or extrapolated) and, from a CPU run, on one GPU (extrapolated),
    with the memory the arithmetic says it needs."""
    here = "gpu" if machine["kind"] == "cuda" else "cpu"
    out = {}
    for name in TARGET_SHAPES:
        s = SHAPES[name]
        cell = cell_here(fits, runs, s)
        gpu_weights = 2 * n_params(s) / GIB  # bfloat16
        out[name] = {
            "d_model": s.d,
            "n_layers": s.layers,
            "params": n_params(s),
            here: cell,
            "memory_estimate_gib": memory_estimate(s, on_gpu=here == "gpu")["peak"],
            "gpu_weights_gib_bf16": gpu_weights,
            "fits_one_gpu": gpu_weights < 0.9 * GPU_REFERENCE["memory_gib"],
        }
        if here == "cpu" and cell is not None and measured(runs):
            out[name]["gpu"] = gpu_cell(cell, runs, s)
            out[name]["gpu_host_memory_estimate_gib"] = memory_estimate(s, on_gpu=True)["peak"]
    return out


def bottleneck(fits: dict, extra: dict) -> dict:
    """Per target shape: the analysis stage that takes the largest share, with its exponents."""
    out = {}
    for name, cell in extra.items():
        here = cell.get("cpu") if cell.get("cpu") is not None else cell.get("gpu")
        if not here:
            continue
        key = max(ANALYSIS, key=lambda k: here["stages_s"][k])
        f = fits[key]
        share = here["stages_s"][key] / here["analysis_s"]
        out[name] = {"stage": key, "share": share, "how": here["how"], "b": f["b"], "c": f["c"], "required_d": f["required_d"]}
    return out


def targets(runs: Sequence[dict], extra: dict) -> dict:
    """The issue's targets at the 0.6B shape (:data:`TARGETS`): what this run got, and how
    (measured at the full depth, else extrapolated / estimated from the arithmetic)."""
    name = TARGETS["shape"]
    cell = (extra.get(name) or {}).get("cpu")
    big = BESIDE_WEIGHTS_TARGET
    beside = memory_estimate(SHAPES[big["shape"]])["beside_weights"]
    host = {"beside_weights": {**big, "got_gib": beside, "how": "estimated from the arithmetic", "met": beside <= big["gib"]}}
    if cell is None:
        return {**TARGETS, **host, "note": "no CPU figure for the shape in this run"}
    run = full_run(runs, name)
    est = memory_estimate(SHAPES[name])
    rss = run["peak_rss_gib_analysis"] if run else est["analysis_peak"]
    return {
        **TARGETS,
        "analysis_s_got": cell["analysis_s"],
        "analysis_how": cell["how"],
        "analysis_met": cell["analysis_s"] <= TARGETS["analysis_s"],
        "peak_rss_gib_got": rss,
        "rss_how": "measured" if run else "estimated from the arithmetic",
        "rss_met": rss <= TARGETS["peak_rss_gib"],
        **host,
    }
