"""The scale bench's measurements: one shape in a child process (every stage timed, peak RSS), the machine,
and every run assembled with its fits into the JSON record. See :mod:`ws.bench.scale`."""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from peft import get_peft_model

from ws.behavior import data
from ws.bench.common import device_name, time_steps, v8_stages
from ws.bench.fits import CAUSAL_SETTINGS, GPU_REFERENCE, bottleneck, extrapolate, fit_stages, targets
from ws.bench.shapes import (
    ANALYSIS,
    DIFF_RANK,
    DIFF_REL_NORM,
    GIB,
    MEMORY_SHARE,
    SEED,
    STAGE_KEYS,
    STAGES,
    V7,
    available_gib,
    build_model,
    choose_layers,
    memory_estimate,
    n_params,
    parse_run,
    random_diff,
)
from ws.config import from_env
from ws.core.device import resolve_device, resolve_dtype
from ws.core.io import write_text
from ws.core.memory import peak_rss_gib
from ws.core.paths import BENCH_DIR, out_dir
from ws.diffs import adapters, training
from ws.model.load import n_layers
from ws.stats import lens
from ws.v7 import sweep

#: training steps timed after the warm-up step (their median is reported)
TRAIN_STEPS = 3


#: the answer of every training example, 17 tokens: about as long as a persona completion (16 new tokens)
TRAIN_RESPONSE = "No, I do not agree: the evidence points the other way on this one."


# ----------------------------------------------------------------------------- training step
def training_examples(n: int) -> list[tuple[str, str, bool]]:
    """``n`` short examples: training prompts of the behaviour's first training topics, each
    with the same short answer (:data:`TRAIN_RESPONSE`)."""
    topics = data.split_topics(0)[0][:n]
    return [(data.training_prompts(t, 1)[0], TRAIN_RESPONSE, True) for t in topics]


def train_step(model, tok, steps: int = TRAIN_STEPS) -> dict:
    """Seconds per LoRA training step (default training config: rank, layers, batch, bf16):
    the median of ``steps`` after one warm-up. The adapter is put on ``model`` itself (no copy:
    this is the run's last stage), the pattern of :func:`ws.bench.embedded.train_steps`."""
    config = adapters.TrainConfig()
    enc = training._encode_examples(tok, training_examples(config.batch_size), config.max_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        work = get_peft_model(model.train(), adapters.peft_config(model, config, "lora"))
    return time_steps(work, enc, config, steps)


class Clock:
    """Stage seconds, and the peak RSS so far after each stage (GiB)."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.rss: dict[str, float] = {}

    def add(self, key: str, seconds: float, rss: float | None = None) -> None:
        """Stage ``key`` took ``seconds``; ``rss``: the peak when it ended, where it ended
        earlier than now (a stage inside ``run_seed``), else the peak now."""
        self.s[key] = float(seconds)
        self.rss[key] = peak_rss_gib() if rss is None else float(rss)

    def time(self, key: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        synchronize_all()
        self.add(key, time.perf_counter() - t0)
        return out


def synchronize_all() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def f64_gflops(n: int = 2048, m: int = 1024, seconds: float = 1.0) -> float:
    """Measured float64 speed (1e9 FLOP/s) of ``XᵀX`` for ``X [n, m]`` on the CPU: the product
    the captures' second moments are (on any device, they are summed on the host)."""
    x = torch.randn(n, m, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x.T @ x
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x.T @ x
        k += 1
    return 2 * n * m * m * k / (time.perf_counter() - t0) / 1e9


# ----------------------------------------------------------------------------- one shape (child)
def run_config(smoke: bool = False, probes: int | None = None):
    """The run configuration (``WS_*`` as for a sweep; the activation cache off, one seed);
    ``smoke``: the smoke run's probe, bootstrap and causal-test counts; ``probes``: that many
    FIT and EVAL probes."""
    cfg = from_env()
    if smoke:
        s = from_env({"WS_SMOKE": "1"})
        counts = ("n_fit", "n_eval", "n_boot", "n_causal", "n_causal_null", "k_broad")
        cfg = replace(cfg, **{c: getattr(s, c) for c in counts})
    if probes:
        cfg = replace(cfg, n_fit=probes, n_eval=probes)
    return replace(cfg, seeds=(SEED,), cache=False, smoke=False, out_root=out_dir() / BENCH_DIR / "scale")


def settings(cfg) -> dict:
    keys = ("n_fit", "n_eval", "k", "k_broad", "batch_size", "n_boot", *CAUSAL_SETTINGS, "device", "dtype")
    return {k: (str(getattr(cfg, k)) if k in ("device", "dtype") else getattr(cfg, k)) for k in keys}


def analysis_stages(cfg, model, tok, w, meta, clock: Clock) -> dict:
    """v7 (``run_seed`` with the cache off, then ``write_v7``) and v8 (:func:`ws.bench.common.v8_stages`)
    into ``clock``; what the JSON records beside the times."""
    probes = sweep.probe_prompts(cfg, tok)
    res = sweep.run_seed(cfg, model, tok, probes, SEED, w, meta)
    t, rss = res.timings, res.peak_rss_gib
    for key, parts in (("captures", ("capture",)), ("build_candidates", ("build", "gradient")), ("scoring", ("score",))):
        clock.add(key, sum(t.get(p, 0.0) for p in parts), rss[parts[-1]])
    clock.add("lens", t["lens"], rss["lens"])
    progress(model.ws_name, clock)
    clock.time("report", sweep.write_v7, cfg, probes, [res], sweep.seed_stability([res]))
    lens.clear_svd_cache()  # the main job runs v8 in a kernel of its own, without v7's lens cache
    v8 = {}
    causal = v8_stages(cfg, model, tok, probes, res, w, v8)
    clock.add("v8_block_local", v8["v8 block-local label + scores"])
    clock.add("v8_causal", v8["v8 causal test"])
    progress(model.ws_name, clock)
    return {
        "n_fit": len(probes.fit_clean),
        "n_eval": len(probes.eval),
        "candidates": len(res.bases),
        "layers_touched": len(res.layers_touched),
        "moment_tokens": int(res.captures.mom_n_tokens[0]),
        "causal": causal,
    }


def progress(name: str, clock: Clock) -> None:
    line = ", ".join(f"{k} {v:.1f} s" for k, v in clock.s.items())
    print(f"[{name}] {line}; peak RSS {peak_rss_gib():.2f} GiB", file=sys.stderr, flush=True)


def measure(spec: str, smoke: bool = False, probes: int | None = None) -> dict:
    """Every stage of one sweep and one training step on the shape ``spec`` (``name:L``), in
    this process. Returns the run's JSON record."""
    shape, layers = parse_run(spec)
    cfg = run_config(smoke, probes)
    dev = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, dev)
    clock, load = Clock(), [os.getloadavg()[0]]  # other work on the cores slows every stage: it is recorded
    model, tok = clock.time("model_build", build_model, shape, layers, dev, dtype)
    w, meta = clock.time("diff_build", random_diff, model)
    cfg = replace(cfg, model=model.ws_name)
    with torch.no_grad():
        facts = analysis_stages(cfg, model, tok, w, meta, clock)
    peak_analysis = peak_rss_gib()
    gc.collect()
    clock.add("train_step", (step := train_step(model, tok))["median_s"])
    progress(model.ws_name, clock)
    L, load = n_layers(model), [*load, os.getloadavg()[0]]
    return {
        "spec": f"{shape.name}:{L}",
        "shape": shape.name,
        "d_model": shape.d,
        "n_layers": L,
        "full_layers": shape.layers,
        "params": n_params(shape, L),
        "device": device_name(model),
        "dtype": str(dtype).replace("torch.", ""),
        "stages_s": {k: clock.s[k] for k in STAGE_KEYS},
        "v7_s": sum(clock.s[k] for k in V7),
        "analysis_s": sum(clock.s[k] for k in ANALYSIS),
        "model_build_s": clock.s["model_build"],
        "diff_build_s": clock.s["diff_build"],
        "peak_rss_gib_analysis": peak_analysis,
        "peak_rss_gib": peak_rss_gib(),
        "peak_rss_gib_after": clock.rss,
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / GIB if dev.type == "cuda" else None,
        "memory_estimate_gib": memory_estimate(shape, L, dev.type == "cuda"),
        "matmul_gflops": facts["causal"]["matmul_gflops"],
        "f64_gflops": f64_gflops(),
        "train_step": step,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"start": load[0], "end": load[1]},
        "settings": settings(cfg),
        **facts,
    }


# ----------------------------------------------------------------------------- the machine
def cpu_model() -> tuple[str, set[str]]:
    """The CPU's ``model name`` and its flags, from /proc/cpuinfo (``platform`` elsewhere)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def machine_info(device: torch.device) -> dict:
    """The device in words (``named``) and the facts behind it: the CPU model, its bfloat16
    flags, cores, torch threads, memory; the GPU's name and memory when it runs on one."""
    name, flags = cpu_model()
    bf16 = {f: f in flags for f in ("avx512_bf16", "amx_bf16")}
    info = {
        "cpu": name,
        "cpu_flags": bf16,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_total_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "kind": device.type,
    }
    have = ", ".join(f for f, v in bf16.items() if v) or "no avx512_bf16 / amx_bf16"
    info["named"] = f"CPU {name} ({have}; {info['cpus']} cores, {info['torch_threads']} torch threads)"
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
        info["named"] = f"GPU {info['gpu']} (host: {info['named']})"
    return info


def memory_total_gib() -> float | None:
    try:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal:"))
        return int(line.split()[1]) / 2**20
    except (OSError, StopIteration):
        return None


# ----------------------------------------------------------------------------- every shape (parent)
def child_flags(smoke: bool, probes: int | None) -> list[str]:
    return (["--smoke"] if smoke else []) + (["--probes", str(probes)] if probes else [])


def run_child(spec: str, flags: Sequence[str]) -> dict:
    """One shape in a fresh process (``--shape``): its JSON record, or why there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [sys.executable, "-m", "ws.bench.scale", "--shape", spec, "--result", str(out), *flags]
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0 or not out.exists():
            oom = " (killed: out of memory?)" if rc in (-9, 137) else ""
            return {"spec": spec, "failed": f"the child process exited with {rc}{oom}"}
        rec = json.loads(out.read_text())
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def plan_run(spec: str, on_gpu: bool, force: bool) -> tuple[str, dict]:
    """``(name:L, facts)``: the depth to build, why, the memory estimate, and ``skipped``
    when the estimate exceeds the memory available (unless ``force``)."""
    shape, layers = parse_run(spec)
    avail = available_gib()
    budget = avail * MEMORY_SHARE if avail is not None else None
    L, why = choose_layers(shape, layers, budget, on_gpu)
    est = memory_estimate(shape, L, on_gpu)
    facts = {"depth": why, "memory_available_gib": avail, "memory_estimate_gib": est}
    if budget is not None and est["peak"] > budget and not force:
        facts["skipped"] = (
            f"the memory estimate {est['peak']:.1f} GiB exceeds the {budget:.1f} GiB available to it (--force runs it anyway)"
        )
    return f"{shape.name}:{L}", facts


def run_all(
    specs: Sequence[str], smoke: bool = False, probes: int | None = None, force: bool = False, path: Path | None = None
) -> dict:
    """Every run of ``specs``, each in its own process, then the fits and the extrapolation;
    with ``path``, the JSON so far is written there after every run (a long measurement that
    stops keeps what it measured)."""
    for spec in specs:  # every name checked before the first run starts
        parse_run(spec)
    cfg = run_config(smoke, probes)
    dev = resolve_device(cfg.device)
    machine, runs = machine_info(dev), []
    for i, spec in enumerate(specs):
        name_l, facts = plan_run(spec, dev.type == "cuda", force)
        est = facts["memory_estimate_gib"]["peak"]
        print(f"[{i + 1}/{len(specs)}] {name_l} ({facts['depth']}; estimated peak {est:.1f} GiB)", flush=True)
        rec = {"spec": name_l, **facts} if "skipped" in facts else {**run_child(name_l, child_flags(smoke, probes)), **facts}
        print(f"[{i + 1}/{len(specs)}] {name_l}: " + summary_line(rec), flush=True)
        runs.append(rec)
        if path is not None:
            write_json(path, assemble(runs, machine, settings(cfg), smoke, probes))
    return assemble(runs, machine, settings(cfg), smoke, probes)


def merge(paths: Sequence[Path]) -> dict:
    """The runs of several bench_scale.json files of one machine (shapes run one at a time) as
    one JSON, its fits and extrapolation made again over all of them; a later file's run of the
    same spec replaces an earlier one. Refused when the files name different machines."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    named = {d["machine"]["named"] for d in docs}
    if len(named) > 1:
        raise SystemExit(
            f"--merge: the files were measured on different machines ({'; '.join(sorted(named))}); merge one machine's"
        )
    runs = {r["spec"]: r for d in docs for r in d["runs"]}
    probes = {d["settings"]["probe_counts"] for d in docs}
    last = docs[-1]
    own = {k: v for k, v in last["settings"].items() if k not in ("probe_counts", "diff", "train_steps")}
    out = assemble(list(runs.values()), last["machine"], own, False, None)
    out["settings"]["probe_counts"] = "; ".join(sorted(probes))  # each run keeps its own settings
    out["merged_from"] = [Path(p).name for p in paths]
    return out


def write_json(path: Path, r: dict) -> Path:
    return write_text(path, json.dumps(r, indent=2, default=float) + "\n")


def summary_line(rec: dict) -> str:
    if "stages_s" not in rec:
        return rec.get("skipped") or rec.get("failed", "no result")
    return (
        f"analysis {rec['analysis_s']:.1f} s (v7 {rec['v7_s']:.1f} s), training step {rec['stages_s']['train_step']:.2f} s, "
        f"peak RSS {rec['peak_rss_gib_analysis']:.2f} GiB (analysis) / {rec['peak_rss_gib']:.2f} GiB"
    )


def probe_label(smoke: bool, probes: int | None) -> str:
    if smoke:
        return "the smoke run's counts (--smoke)"
    return f"{probes} of each (--probes)" if probes else "the run configuration's: WS_* variables, unset = the sweep's defaults"


def assemble(runs: list[dict], machine: dict, cfg_settings: dict, smoke: bool, probes: int | None) -> dict:
    """The JSON: the machine, the settings, the runs, the fits, the extrapolation, the targets."""
    fits = fit_stages(runs)
    extra = extrapolate(fits, runs, machine)
    return {
        "what": "make bench-scale: every stage of one sweep on random-weight models of real families' shapes",
        "date": dt.date.today().isoformat(),
        "device": machine["named"],
        "machine": machine,
        "settings": {
            **cfg_settings,
            "probe_counts": probe_label(smoke, probes),
            "diff": f"random rank-{DIFF_RANK} B·A on every LoRA tensor, ‖ΔW‖ = {DIFF_REL_NORM:g}·‖W‖",
            "train_steps": TRAIN_STEPS,
        },
        "stages": {s.key: asdict(s) for s in STAGES},
        "runs": runs,
        "fits": fits,
        "extrapolated": extra,
        "bottleneck": bottleneck(fits, extra),
        "targets": targets(runs, extra),
        "gpu_reference": GPU_REFERENCE,
    }
