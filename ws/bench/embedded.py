"""Benchmark of the v7 sweep on this machine: ``make bench`` (``python -m ws.bench``).

Writes ``<out>/bench/bench.json`` and prints a table:

- wall time of each stage: model load, captures, candidate building, scoring, report;
- the forward-pass floor: the same forward passes the captures need (same prompts, same
  batches, same weight settings), with no hooks and nothing kept;
- peak resident memory of the process;
- the closed-form null against a v7-style Monte Carlo null (120 random QR bases per
  layer × tensor) on the same labels: time of each, speed ratio, and the largest
  difference of null means in units of the closed-form null std.

- bringing a diff (docs/bring-your-own.md): the import time and peak memory of a pair of
  PEFT adapters and of a pair of fine-tuned checkpoints on the embedded model, each in a
  fresh process;

- the training step of every adapter type (median of 8 steps, seconds): ``python -m ws.bench
  --train-steps [type,…]`` runs only that part;

- v8: the block-local label with its scores, and the causal projection test with the
  defaults (``WS_N_CAUSAL`` candidates + ceilings + self-test rows, ``WS_N_CAUSAL_NULL``
  random subspaces per rank), with its phases and the number of prompt rows it ran.

The stages run in the order of :data:`STAGES` (``sweep`` — the v7 and v8 figures above —,
``imports``, ``train_steps``), each inside :func:`kept_process_state`: what a stage changes
in the process (grad mode, threads, default dtype, the random generators) is recorded in
``bench.json`` (``state_leaks``) and put back before the next stage starts. ``bench.json`` is
written after every stage, so a failing stage keeps the figures of the ones before it; its
error goes into ``failures`` and the command exits with status 1. ``WS_SMOKE=1 make bench``
runs every stage on the tiny random model in seconds (the tests do).

Targets (reported, not enforced): sweep ÷ floor ≤ 2; closed form ≥ 100× faster than the
Monte Carlo; peak RSS ≤ 4 GiB; the causal test ≤ 180 s. The diff of seed 0 must exist (it is trained when missing,
which is timed apart and not counted in the sweep).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from ws import stats
from ws.bench.common import device_name, time_steps, v8_stages
from ws.config import Config
from ws.core.columns import WRITER_TAGS
from ws.core.device import bf16_available, input_device, synchronize
from ws.core.io import write_text
from ws.core.linalg import haar_orthonormal
from ws.core.log import logger, setup_logging
from ws.core.memory import peak_rss_gib
from ws.core.paths import BENCH_DIR, out_dir
from ws.diffs import adapters, training
from ws.diffs.imports import checkpoint_diff, pair_diff
from ws.diffs.store import writer_deltas_by_layer
from ws.diffs.train import DiffSpec, persona_examples
from ws.model.anatomy import PROJECTIONS
from ws.model.load import load_model, n_layers
from ws.model.steer import weight_steer
from ws.v7 import sweep

MC_DRAWS = 120  # what upstream v7 drew per cell


TARGETS = {"sweep_over_floor": 2.0, "closed_form_speedup": 100.0, "peak_rss_gib": 4.0, "causal_s": 180.0}


def forward_floor(model, tok, probes, w, batch_size: int) -> float:
    """Seconds for just the forward passes the captures need, without hooks."""
    dev = input_device(model)

    def passes(prompts):
        for s in range(0, len(prompts), batch_size):
            enc = tok(prompts[s : s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            model(**enc.to(dev), use_cache=False)

    t0 = time.perf_counter()
    with torch.no_grad():
        for prompts in (probes.fit_clean, probes.fit_pos, probes.fit_neg):
            passes(prompts)
        for alpha in (1.0, -1.0):
            with weight_steer(model, w, alpha):
                passes(probes.eval)
                passes(probes.fit_clean)
    synchronize(dev)  # a GPU runs the passes asynchronously: the time ends when they do
    return time.perf_counter() - t0


def null_comparison(label: torch.Tensor, deltas: list, layers: list[int], k: int, seed: int = 0) -> dict:
    """Closed-form null moments vs a Monte Carlo of ``MC_DRAWS`` Haar (QR) bases per
    layer × tensor, on the same labels. Returns timings and the worst mean difference in
    units of the closed-form std."""
    d = label.shape[-1]
    targets = []  # (kind, matrix)
    for l in layers:
        targets.append(("act", label[l].double()))
        dl = deltas[l]
        if dl is not None:
            targets += [("w", dl[t].double()) for t in WRITER_TAGS]
            targets.append(("w", stats.combined_delta(*(dl[t] for t in WRITER_TAGS)).double()))
    t0 = time.perf_counter()
    closed = [stats.null_mean_std_act(X, k) if kind == "act" else stats.null_mean_std_w(X, k) for kind, X in targets]
    t_closed = time.perf_counter() - t0

    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    mc = []
    for kind, X in targets:
        fr = []
        for _ in range(MC_DRAWS):
            Q = haar_orthonormal(d, k, g, dtype=torch.float64)
            fr.append(stats.energy_frac_act(Q, X) if kind == "act" else stats.energy_frac_w(Q, X))
        mc.append((float(np.mean(fr)), float(np.std(fr, ddof=1))))
    t_mc = time.perf_counter() - t0
    diffs = [abs(m[0] - c[0]) / c[1] for m, c in zip(mc, closed, strict=True) if c[1] > 0]
    return {
        "cells": len(targets),
        "mc_draws_per_cell": MC_DRAWS,
        "closed_form_s": t_closed,
        "monte_carlo_s": t_mc,
        "closed_form_speedup": t_mc / max(t_closed, 1e-9),
        "max_mean_diff_in_null_std": float(max(diffs)) if diffs else float("nan"),
        "expected_mc_mean_se_in_null_std": 1 / np.sqrt(MC_DRAWS),
    }


def bench_config(model_name: str | None = None, seeds: tuple[int, ...] = (0,)):
    """The run's configuration (``WS_*``) with the activation cache off and the given seeds."""
    cfg = Config.from_env()
    return replace(cfg, seeds=seeds, cache=False, model=model_name or cfg.model)


def run(model_name: str | None = None, seeds: tuple[int, ...] = (0,), cfg=None) -> dict:
    """The sweep stage: model load, the diff (trained when missing, timed apart), the v7
    stages, the forward floor, the null comparison and v8's stages, as one dict."""
    setup_logging("bench")
    cfg = cfg or bench_config(model_name, seeds)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, **cfg.model_kwargs())
    stages["model_load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    diffs = sweep.get_diffs(cfg, model)
    stages["diff_ready (training if missing; not part of the sweep)"] = time.perf_counter() - t0
    seed = cfg.seeds[0]
    w, dmeta = diffs[seed]
    probes = sweep.probe_prompts(cfg, tok)
    with torch.no_grad():  # the analysis needs no gradients (and leaves the grad mode as it was)
        return _analysis(cfg, model, tok, probes, seed, w, dmeta, stages)


def _analysis(cfg, model, tok, probes, seed: int, w: dict, dmeta: dict, stages: dict[str, float]) -> dict:
    floor = forward_floor(model, tok, probes, w, cfg.batch_size)
    res = sweep.run_seed(cfg, model, tok, probes, seed, w, dmeta)  # cache off: every stage runs
    stages["captures"] = res.timings["capture"]
    stages["build_candidates"] = res.timings["build"]
    stages["scoring (+bootstrap, q-values)"] = res.timings["score"]
    bench_cfg = replace(cfg, out_root=Path(cfg.out_root) / BENCH_DIR / "run")
    t0 = time.perf_counter()
    sweep.write_v7(bench_cfg, probes, [res], sweep.seed_stability([res]))
    stages["report"] = time.perf_counter() - t0
    caps, bases = res.captures, res.bases
    deltas = writer_deltas_by_layer(w, n_layers(model))
    touched = res.layers_touched

    sweep_s = stages["captures"] + stages["build_candidates"] + stages["scoring (+bootstrap, q-values)"] + stages["report"]
    nulls = null_comparison(caps.label_eval, deltas, touched, cfg.k)
    causal = v8_stages(cfg, model, tok, probes, res, w, stages)
    result = {
        "model": cfg.model,
        "n_fit": len(probes.fit_clean),
        "n_eval": len(probes.eval),
        "layers": n_layers(model),
        "candidates": len(bases),
        "stages_s": stages,
        "sweep_s (captures+build+score+report)": sweep_s,
        "forward_floor_s": floor,
        "sweep_over_floor": sweep_s / floor,
        "non_forward_s (build+score+report)": sweep_s - stages["captures"],
        "peak_rss_gib": peak_rss_gib(),
        "null": nulls,
        "causal": causal,
        "targets": TARGETS,
        "device": device_name(model),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    return result


# ----------------------------------------------------------------------------- imports
def _import_sources(model, root: Path) -> dict[str, tuple[Path, Path]]:
    """A LoRA pair (rank 8 on every linear layer, non-zero weights, saved by peft) and a
    checkpoint pair ``θ ± w/2`` (saved by ``save_pretrained``) of ``model`` under ``root``."""
    pairs = {}
    w = {}
    for persona, seed in (("pos", 1), ("neg", 2)):
        torch.manual_seed(seed)
        targets = list(PROJECTIONS)
        pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False))
        pm.save_pretrained(str(root / f"adapter_{persona}"))
        if persona == "pos":
            w = {k: 0.01 * torch.randn(v.shape) for k, v in model.named_parameters() if k.endswith("proj.weight")}
        del pm
    pairs["adapter_pair"] = (root / "adapter_pos", root / "adapter_neg")
    for persona, sign in (("pos", 0.5), ("neg", -0.5)):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in m.named_parameters():
                if k in w:
                    p.add_(sign * w[k])
        m.save_pretrained(str(root / f"ckpt_{persona}"))
        del m
    pairs["checkpoint_pair"] = (root / "ckpt_pos", root / "ckpt_neg")
    return pairs


def _import_child(kind: str, a: str, b: str, model_name: str | None = None) -> None:
    """In a fresh process: load the model (default: the embedded one), import one pair, print
    the timings as JSON."""
    t0 = time.perf_counter()
    model, _ = load_model(model_name) if model_name else load_model()
    loaded, rss_model = time.perf_counter() - t0, peak_rss_gib()
    t0 = time.perf_counter()
    w, _ = (pair_diff if kind == "adapter_pair" else checkpoint_diff)(model, Path(a), Path(b))
    print(
        json.dumps(
            {
                "load_s": loaded,
                "import_s": time.perf_counter() - t0,
                "peak_rss_gib_after_load": rss_model,
                "peak_rss_gib": peak_rss_gib(),
                "tensors": len(w),
            }
        )
    )


def import_costs(root: Path, model_name: str | None = None) -> dict:
    """Import time and peak memory of a pair of adapters and of a checkpoint pair on the
    model (default: the embedded one), each in a fresh process (so its peak resident memory
    is its own)."""
    model, _ = load_model(model_name) if model_name else load_model()
    out = {}
    for kind, (a, b) in _import_sources(model, root).items():
        cmd = [sys.executable, "-m", "ws.bench", "--import-child", kind, str(a), str(b), *([model_name] if model_name else [])]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"importing the {kind.replace('_', ' ')} failed in its child process:\n{r.stderr[-3000:]}")
        out[kind] = json.loads(r.stdout.strip().splitlines()[-1])
        out[kind]["weights_mib_each"] = sum(f.stat().st_size for f in a.glob("*.safetensors")) / 2**20
    return out


def train_steps(kinds: tuple[str, ...] | None = None, n: int = 8, cfg=None) -> dict:
    """Seconds per training step of each adapter type: the median of ``n`` steps after one
    warm-up step, the run's training config and the real persona completions (made first
    when missing), through the suite's own step (:func:`ws.diffs.fasttrain.step_loss`; the
    bf16 cast-once where the type allows it). ``cfg`` (default: the embedded model with the
    default training config) names the model, behaviour, training config and output root."""
    if cfg is None:
        model, tok = load_model()
        spec = DiffSpec()
    else:
        model, tok = load_model(cfg.model, **cfg.model_kwargs())
        spec = DiffSpec(cfg.model, cfg.behavior, cfg.adapter, cfg.seeds[0], cfg.train_config(), cfg.out_root, cfg.model_kwargs())
    config = spec.train_config
    pos = persona_examples(spec, model, tok)["pos"]
    enc = training._encode_examples(tok, pos, config.max_len)
    out = {}
    for kind in kinds or tuple(adapters.ADAPTER_TYPES):
        if kind not in adapters.ADAPTER_TYPES:
            raise ValueError(f"no adapter type {kind!r}; the types are {', '.join(adapters.ADAPTER_TYPES)}")
        moments = training.training_moments(model, tok, pos, config, kind)
        work = training._wrap(model, config, kind, moments)
        out[kind] = time_steps(work, enc, config, n, kind)
        print(f"{kind}: {out[kind]['median_s']:.3f} s per step (median of {n})", flush=True)
        del work
    return out


def format_table(r: dict) -> str:
    """bench.json as a two-column table (the stages that ran; a failed one is named)."""
    rows = _sweep_rows(r) if "stages_s" in r else []
    for kind, m in r.get("imports", {}).items():
        rows.append(
            (
                f"import {kind.replace('_', ' ')} ({m['tensors']} tensors; peak RSS {m['peak_rss_gib']:.2f} GiB, "
                f"{m['peak_rss_gib_after_load']:.2f} after the model load) s",
                f"{m['import_s']:.2f}",
            )
        )
    for kind, m in r.get("train_step_s", {}).items():
        rows.append((f"training step {kind} s (median of {m['steps']})", f"{m['median_s']:.3f}"))
    rows += [(f"stage {name} FAILED", err.splitlines()[0][:60]) for name, err in r.get("failures", {}).items()]
    w = max((len(a) for a, _ in rows), default=0)
    return "\n".join(f"{a:<{w}}  {b:>10}" for a, b in rows)


def _sweep_rows(r: dict) -> list[tuple[str, str]]:
    rows = [("device", f"{r['device']} · {r['dtype']}"), ("stage", "seconds")]
    rows += [(k, f"{v:.2f}") for k, v in r["stages_s"].items()]
    rows += [
        ("sweep (captures+build+score+report)", f"{r['sweep_s (captures+build+score+report)']:.2f}"),
        ("forward-pass floor", f"{r['forward_floor_s']:.2f}"),
        ("sweep ÷ floor (target ≤ 2)", f"{r['sweep_over_floor']:.2f}"),
        ("peak RSS GiB (target ≤ 4)", f"{r['peak_rss_gib']:.2f}"),
        ("closed-form null s", f"{r['null']['closed_form_s']:.4f}"),
        (
            f"Monte Carlo null s ({r['null']['mc_draws_per_cell']} draws × {r['null']['cells']} cells)",
            f"{r['null']['monte_carlo_s']:.2f}",
        ),
        ("closed-form speed-up (target ≥ 100)", f"{r['null']['closed_form_speedup']:.0f}"),
        ("max |mean_MC − mean_closed| / std_closed", f"{r['null']['max_mean_diff_in_null_std']:.3f}"),
        (
            f"v8 causal test s ({r['causal']['candidates']} candidates, {r['causal']['prompt_rows']} prompt rows; "
            f"target ≤ {TARGETS['causal_s']:.0f})",
            f"{r['causal']['seconds']:.1f}",
        ),
        (
            f"  its matrix-product work {r['causal']['gflop']:.0f} GFLOP at the measured "
            f"{r['causal']['matmul_gflops']:.0f} GFLOP/s: compute floor s",
            f"{r['causal']['compute_floor_s']:.1f}",
        ),
    ]
    return rows


# ----------------------------------------------------------------------------- the stages
def process_state() -> dict[str, object]:
    """What a stage could change for every later one: grad mode, inference mode, threads,
    the default dtype, deterministic algorithms, and the random generators (as digests)."""

    def digest(*parts) -> str:
        h = hashlib.sha256()
        for x in parts:
            h.update(x.tobytes() if hasattr(x, "tobytes") else repr(x).encode())
        return h.hexdigest()[:16]

    np_state = np.random.get_state()

    return {
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "num_threads": torch.get_num_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "torch_rng": digest(torch.get_rng_state().numpy()),
        "numpy_rng": digest(np_state[0], np_state[1], *np_state[2:]),
        "python_rng": digest(random.getstate()),
    }


@contextmanager
def kept_process_state() -> Iterator[dict[str, list]]:
    """Run a stage and put the process back as it was: yields a dict that, on exit, holds
    ``name -> (before, after)`` for everything the stage changed (:func:`process_state`),
    which is then restored."""
    before = process_state()
    rngs = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()
    deterministic = torch.are_deterministic_algorithms_enabled()
    leaks: dict[str, list] = {}
    try:
        yield leaks
    finally:
        after = process_state()
        leaks.update({k: [before[k], after[k]] for k in before if before[k] != after[k]})
        torch.set_rng_state(rngs[0])
        np.random.set_state(rngs[1])
        random.setstate(rngs[2])
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.use_deterministic_algorithms(deterministic)


def _imports_stage(cfg) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return {"imports": import_costs(Path(tmp), cfg.model)}


def _train_stage(cfg) -> dict:
    kinds, n = (("lora", "bidir"), 2) if cfg.smoke else (None, 8)
    return {"train_step_s": train_steps(kinds, n, cfg)}


#: ``make bench``'s stages in order: name -> function of the run's configuration returning
#: the figures it adds to ``bench.json``.
STAGES: dict[str, Callable[..., dict]] = {
    "sweep": lambda cfg: run(cfg=cfg),
    "imports": _imports_stage,
    "train_steps": _train_stage,
}


def run_stages(cfg, path: Path, stages: dict[str, Callable[..., dict]] | None = None) -> dict:
    """Run ``stages`` (default :data:`STAGES`) in order, each in :func:`kept_process_state`,
    writing ``path`` (bench.json) after every stage: a failing stage's error goes into
    ``failures`` and the next stage still runs; what a stage changed in the process goes into
    ``state_leaks``. Returns the result as written."""
    result: dict = {"status": "running", "stages_done": [], "failures": {}, "state_leaks": {}, "machine": machine()}
    for name, fn in (stages or STAGES).items():
        logger.info(f"bench: stage {name} …")
        t0 = time.perf_counter()
        with kept_process_state() as leaks:
            try:
                result.update(fn(cfg))
            except Exception as e:  # recorded, and the next stage runs: one failure loses no figure
                logger.exception(f"bench: stage {name} failed")
                result["failures"][name] = f"{type(e).__name__}: {e}"
        if leaks:
            result["state_leaks"][name] = leaks
        result["stages_done"].append(name)
        result.setdefault("stage_wall_s", {})[name] = time.perf_counter() - t0
        write_text(path, json.dumps(result, indent=2, default=float) + "\n")
    result["status"] = "failed" if result["failures"] else "complete"
    write_text(path, json.dumps(result, indent=2, default=float) + "\n")
    return result


def machine() -> dict:
    """The machine in words: CPU model, cores, bf16/AMX units, Python and torch versions."""
    flags, name, ident = set(), platform.processor() or platform.machine(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (x.strip() for x in line.partition(":"))
            if key == "model name":
                name = value
            elif key in ("cpu family", "model") and key not in ident:
                ident[key] = value
            elif key == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": name + (f" (family {ident['cpu family']}, model {ident['model']})" if len(ident) == 2 else ""),
        "cpus": os.cpu_count(),
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "bf16_used": bf16_available(torch.device("cpu")),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--import-child":
        _import_child(*sys.argv[2:6])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--train-steps":  # only the training step, of the named types
        kinds = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else None
        print(json.dumps(train_steps(kinds), indent=2))
        return
    cfg = bench_config()
    path = out_dir() / BENCH_DIR / "bench.json"
    r = run_stages(cfg, path)
    print(format_table(r))
    print(f"\nwritten: {path}")
    if r["failures"]:
        for name, err in r["failures"].items():
            print(f"stage {name} failed: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
