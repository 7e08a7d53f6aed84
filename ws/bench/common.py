"""What both benches share: the matrix-product speed, the device's name, the v8 stages and the
training step timed the same way (:mod:`ws.bench.embedded`, :mod:`ws.bench.scale`)."""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import torch

from ws.core.device import input_device, synchronize, use_bf16
from ws.diffs import fasttrain, training
from ws.v7 import sweep
from ws.v8 import sweep as v8


def matmul_gflops(model, seconds: float = 1.0) -> float:
    """Measured matrix-product speed (1e9 FLOP/s) on the model's device and dtype, for a
    product shaped like the model's MLP on a batch of prompt tokens ``[1024, d] @ [d, ff]``."""
    dev, dt = input_device(model), next(model.parameters()).dtype
    d, ff = model.config.hidden_size, model.config.intermediate_size
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(1024, d, generator=g).to(dev, dt)
    b = torch.randn(d, ff, generator=g).to(dev, dt)
    for _ in range(3):
        a @ b
    synchronize(dev)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
        if n % 10 == 0:
            synchronize(dev)
    synchronize(dev)
    return 2 * 1024 * d * ff * n / (time.perf_counter() - t0) / 1e9


def v8_stages(cfg, model, tok, probes, res, w, stages: dict) -> dict:
    """Time v8's block-local label and its causal test (defaults) into ``stages``; the causal
    test's details as a dict."""
    t0 = time.perf_counter()
    v8.block_local(cfg, model, tok, probes, res, w)
    stages["v8 block-local label + scores"] = time.perf_counter() - t0
    names, ranking = v8.causal_candidates(res.summary, sweep.seed_stability([res]).per_candidate, cfg.n_causal)
    t0 = time.perf_counter()
    cr = v8.causal(cfg, model, tok, res, w, names, ranking)
    stages["v8 causal test"] = time.perf_counter() - t0
    speed = matmul_gflops(model)
    return {
        "seconds": stages["v8 causal test"],
        "phases_s": cr.timings,
        "candidates": len(names),
        "null_draws_per_rank_profile": cfg.n_causal_null,
        "rank_profiles": cr.table["null_profile"].n_unique(),
        "prompt_rows": cr.n_rows,
        "first_block": cr.first_block,
        "torch_threads": torch.get_num_threads(),
        # the work itself and what it needs at this device's measured matrix-product speed:
        # the causal test cannot be faster than compute_floor_s without doing less work
        "gflop": cr.gflop,
        "matmul_gflops": speed,
        "compute_floor_s": cr.gflop / speed,
        "achieved_gflops": cr.gflop / stages["v8 causal test"],
    }


def time_steps(work, enc, config, n: int, kind: str = "lora") -> dict:
    """Seconds per training step of the wrapped model ``work`` on the encoded examples ``enc``:
    the median (and range) of ``n`` steps after one warm-up, through the suite's own step
    (:func:`ws.diffs.fasttrain.step_loss`; the bf16 cast-once where the type allows it)."""
    bf16 = use_bf16(config.bf16, input_device(work))  # as the training loop: float32 without bf16 units
    plan = fasttrain.plan_training(work, enc, bf16)
    opt = torch.optim.AdamW([p for p in work.parameters() if p.requires_grad], lr=config.lr)
    batches = training._batch_order(len(enc), config)
    precast = bf16 and fasttrain.precast_safe(work)
    times = []
    with fasttrain.frozen_linears_in(work, torch.bfloat16) if precast else nullcontext():
        for i in range(n + 1):
            t0 = time.perf_counter()
            with training.lora_sign(work, 1.0) if kind == "bidir" else nullcontext():
                loss = fasttrain.step_loss(work, plan, next(batches), config.stance_weight, bf16)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            synchronize(input_device(work))
            if i:
                times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": min(times), "max_s": max(times), "steps": n}


def device_name(model) -> str:
    """The device the model ran on, in words (``cpu`` or the GPU's own name)."""
    dev = input_device(model)
    return f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)
