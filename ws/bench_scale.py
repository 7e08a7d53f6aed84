"""What one sweep costs as the model grows: ``make bench-scale`` (``python -m ws.bench_scale``).

Random-weight models built from the configurations of real model families (no weights are
downloaded; float32, seeded) run every stage of one sweep on this machine, each shape in a
fresh child process so that its peak resident memory is its own:

- v7: the captures, the candidate building (no steering-vector, planted or gradient rows: a
  random diff has none of their files), the scoring with the closed-form null, the
  bootstrap and the q-values, the S-space lens, the report (``ws.v7.sweep.run_seed`` with the
  activation cache off, then ``write_v7``);
- v8: the block-local label with its scores, and the causal projection test with the
  run's defaults (:func:`ws.bench.v8_stages`);
- one LoRA training step (the median of a few, after one warm-up step), through the suite's
  own step (:func:`ws.diffs.fasttrain.step_loss`), on a few short examples;
- the peak RSS after the analysis (v7 + v8) and after the training step.

The diff is not trained: a random rank-8 ``B·A`` on every tensor a LoRA diff touches (the
seven projections of the LoRA's layers, :func:`ws.diffs.adapters.layer_range`), each scaled
to 2 % of its weight's Frobenius norm. The stages' work does not depend on what the diff
learnt, only on its shape.

The shapes (:data:`SHAPES`; the numbers are those of each family's published ``config.json``;
rotary and norm constants are left at the library's defaults, they do not change the cost):

======================  ======  ======  =====  =====  ===  ========  ======  ====
name                    family  d       L      ff     H    KV heads  vocab   tied
======================  ======  ======  =====  =====  ===  ========  ======  ====
``smollm2-135m``        Llama   576     30     1536   9    3         49152   yes
``qwen3-0.6b``          Qwen3   1024    28     3072   16   8         151936  yes
``qwen3-1.7b``          Qwen3   2048    28     6144   16   8         151936  yes
``llama-3-8b``          Llama   4096    32     14336  32   8         128256  no
``llama-3-70b``         Llama   8192    80     28672  64   8         128256  no
``tiny``                Llama   64      2      128    4    2         49152   yes
======================  ======  ======  =====  =====  ===  ========  ======  ====

Qwen3's head dimension is 128 (so its attention width 16 · 128 = 2048 exceeds d at 0.6B);
the Llamas' is d / H. ``llama-3-70b`` is never built: its shape is a target of the
extrapolation. ``tiny`` is for the tests. A run names a shape, optionally with the number of
layers to build (``llama-3-8b:2``); without one the parent builds the full depth when the
memory estimate (:func:`memory_estimate`) fits the memory available, else the deepest
model that does, and says so.

From the measured shapes the parent fits how each stage grows (:func:`fit_stages`), with
``L`` the number of layers the stage's work runs over (all of them, the LoRA's touched
layers, or the blocks from its first: :func:`stage_depth`):
``log t = a + b·log d + c·log L`` by least squares when the shapes determine it (≥ 4 runs,
two distinct depths and widths), and always the per-layer fit ``t / L = e^a · d^b``; compares
each exponent ``b`` with what the stage's arithmetic requires (:data:`STAGES`); names the
bottleneck; and extrapolates one cell (the analysis, and one training step) to the 0.6B, 8B
and 70B shapes on this CPU and on one GPU (:func:`extrapolate`). Every such figure is
labelled ``extrapolated``; the GPU figures rest on the assumption stated in
:data:`GPU_REFERENCE`. ``python -m ws.bench_scale --report <folder>`` writes the markdown
table and the log-log figure (docs/scale.md says how to read them).

    python -m ws.bench_scale                          # every default shape → <out>/bench/bench_scale.json
    python -m ws.bench_scale --shapes qwen3-0.6b,llama-3-8b:2
    python -m ws.bench_scale --shapes tiny --smoke    # the smoke run's probe counts: seconds
    python -m ws.bench_scale --report docs/measured   # <date>-<cpu|gpu>-scale.md and .png from the JSON

Options: ``--probes N`` (N FIT and EVAL probes), ``--force`` (run a shape whose memory
estimate exceeds the memory available), ``--json PATH`` (the JSON to write, or to read with
``--report``). ``WS_DEVICE`` / ``WS_DTYPE`` apply as in a sweep (on a GPU: bfloat16 weights).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from ws.behavior import data
from ws.bench import device_name, peak_rss_gib, time_steps, v8_stages
from ws.captures.capture import TOKEN_WINDOW
from ws.config import from_env
from ws.core.device import resolve_device, resolve_dtype
from ws.core.io import write_text
from ws.core.log import setup_logging
from ws.core.paths import BENCH_DIR, out_dir, resolve_user_path
from ws.diffs import adapters
from ws.model.load import ATTN_PROJ, MLP_PROJ, check_architecture, n_layers, tiny_tokenizer
from ws.stats.lens import SVD_CACHE_BYTES
from ws.v7 import sweep

GIB = 2**30
SEED = 0
#: the random diff: a LoRA's rank, and each tensor's ‖ΔW‖_F / ‖W‖_F
DIFF_RANK = 8
DIFF_REL_NORM = 0.02
#: training steps timed after the warm-up step (their median is reported)
TRAIN_STEPS = 3
#: the answer of every training example, 17 tokens: about as long as a persona completion (16 new tokens)
TRAIN_RESPONSE = "No, I do not agree: the evidence points the other way on this one."
#: an exponent counts as faster than its arithmetic beyond this margin (noise of a few runs)
EXPONENT_MARGIN = 0.25
#: the share of the memory available (at each child's start) a run's estimate may take
MEMORY_SHARE = 0.9


# ----------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Shape:
    """A model family's shape: width ``d``, depth ``layers``, MLP width ``ff``, heads, KV
    heads, head dimension (None: ``d / heads``), vocabulary, tied embeddings or not."""

    name: str
    family: str  # "llama" or "qwen3"
    d: int
    layers: int
    ff: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int | None = None
    build: bool = True  # False: a target of the extrapolation only

    @property
    def hd(self) -> int:
        return self.head_dim or self.d // self.heads

    def config(self, layers: int | None = None):
        """The transformers config of this shape with ``layers`` blocks (default: all)."""
        kw = dict(
            vocab_size=self.vocab,
            hidden_size=self.d,
            intermediate_size=self.ff,
            num_hidden_layers=layers or self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.hd,
            max_position_embeddings=4096,
            tie_word_embeddings=self.tied,
            bos_token_id=1,  # the embedded tokenizer's ids: every shape reads its prompts
            eos_token_id=2,
            pad_token_id=2,
        )
        return Qwen3Config(**kw) if self.family == "qwen3" else LlamaConfig(**kw)


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("smollm2-135m", "llama", 576, 30, 1536, 9, 3, 49152, True),
        Shape("qwen3-0.6b", "qwen3", 1024, 28, 3072, 16, 8, 151936, True, head_dim=128),
        Shape("qwen3-1.7b", "qwen3", 2048, 28, 6144, 16, 8, 151936, True, head_dim=128),
        Shape("llama-3-8b", "llama", 4096, 32, 14336, 32, 8, 128256, False),
        Shape("llama-3-70b", "llama", 8192, 80, 28672, 64, 8, 128256, False, build=False),
        Shape("tiny", "llama", 64, 2, 128, 4, 2, 49152, True),
    )
}
#: What ``make bench-scale`` runs: two depths of the embedded model's shape (the depth
#: exponent measured at one width), the 0.6B shape whole, and as many layers of the 1.7B and
#: 8B shapes as keep each run near half an hour on the 2-core CPU and inside 24 GiB (the full
#: 1.7B needs ~31 GiB by :func:`memory_estimate`, four 8B layers ~25 GiB).
DEFAULT_RUNS = ("smollm2-135m:8", "smollm2-135m", "qwen3-0.6b", "qwen3-1.7b:8", "llama-3-8b:2")
#: the shapes one cell's cost is extrapolated to
TARGET_SHAPES = ("qwen3-0.6b", "llama-3-8b", "llama-3-70b")


def parse_run(spec: str) -> tuple[Shape, int | None]:
    """``"name"`` or ``"name:L"`` → (shape, layers or None)."""
    name, _, layers = spec.partition(":")
    if name not in SHAPES or not SHAPES[name].build:
        buildable = [n for n, s in SHAPES.items() if s.build]
        raise SystemExit(f"unknown shape {name!r}: choose from {', '.join(buildable)} (optionally name:layers)")
    if layers and not (layers.isdigit() and 1 <= int(layers) <= SHAPES[name].layers):
        raise SystemExit(f"{spec!r}: the layers after ':' must be a whole number from 1 to {SHAPES[name].layers}")
    return SHAPES[name], int(layers) if layers else None


def layer_params(s: Shape) -> int:
    """Parameters of one block: q, k, v, o, gate, up, down, two norms (+ Qwen3's q/k norms)."""
    attn = s.d * s.heads * s.hd * 2 + s.d * s.kv_heads * s.hd * 2
    return attn + 3 * s.d * s.ff + 2 * s.d + (2 * s.hd if s.family == "qwen3" else 0)


def n_params(s: Shape, layers: int | None = None) -> int:
    """Parameters of the model with ``layers`` blocks (tied embeddings counted once)."""
    return (layers or s.layers) * layer_params(s) + s.vocab * s.d * (1 if s.tied else 2) + s.d


#: ``d × d`` float64 matrices the candidate build holds at once: two layers' intermediates (about
#: eight each: the read and write Grams, their sums) while it goes layer by layer
#: (:meth:`ws.bases.registry.BuildContext.at_layer`), and about six sums over layers (lm_head's
#: Gram and eigenvectors, the global read and write Grams, the downstream running sum)
GRAMS_HELD = 2 * 8 + 6


#: the probe counts and the padded prompt length of the bench's runs (the sweep's defaults on the
#: built-in behaviour: 36 FIT and 24 EVAL probes of 45–63 tokens), and the capture batch
PROBES_FIT, PROBES_EVAL, PROBE_TOKENS, CAPTURE_BATCH = 36, 24, 64, 16


def memory_estimate(
    s: Shape,
    layers: int | None = None,
    on_gpu: bool = False,
    n_fit: int = PROBES_FIT,
    n_eval: int = PROBES_EVAL,
    tokens: int = PROBE_TOKENS,
) -> dict[str, float]:
    """Host memory of one run from its arithmetic, GiB (an estimate; the JSON puts the measured
    peak beside it). The large parts: the float32 weights (on the host unless ``on_gpu``) and
    the diff; the captures, kept for the whole run: the token-level block outputs of both
    personas ``2·L·n_fit·T·d`` (``T`` at most :data:`ws.captures.capture.TOKEN_WINDOW`), about
    a dozen last-token ``[L, n, d]`` tensors and the writers' moments ``L·(a + ff + 2d²)`` (float32;
    float64 while they are summed); during a capture pass, every hooked module's input retained
    until the pass ends, ``L·b·T·(a + ff + 2d)``; the candidate builder's float64 ``d × d`` Grams
    (:data:`GRAMS_HELD`); the lens's float64 SVDs of the touched weights (its cache, at most
    :data:`ws.stats.lens.SVD_CACHE_BYTES`, and one SVD past it), kept to the end of the run; the
    steering's saved copy of the touched weights (:func:`ws.model.steer.weight_steer`: the
    label's passes at ±w, v8); the training step's bfloat16 copies."""
    L = layers or s.layers
    touched = len(adapters.layer_range(L, adapters.TrainConfig().layer_frac))
    P, a = n_params(s, L), s.heads * s.hd
    weights = 0 if on_gpu else 4 * P
    diff = 4 * touched * layer_params(s)
    moments = L * (a + s.ff + 2 * s.d * s.d)  # the inputs' diagonals and the two [d, d] written moments
    T = min(tokens, TOKEN_WINDOW)
    kept = 4 * L * s.d * (2 * n_fit * T + 12 * n_fit + 2 * n_eval) + 4 * moments
    retained = 4 * L * CAPTURE_BATCH * tokens * (a + s.ff + 2 * s.d)
    tensors = ((a, s.d), (s.kv_heads * s.hd, s.d), (s.kv_heads * s.hd, s.d), (s.d, a), (s.ff, s.d), (s.ff, s.d), (s.d, s.ff))
    per_tensor = [8 * min(o, i) * (o + i) for o, i in tensors]
    lens = min(touched * sum(per_tensor), SVD_CACHE_BYTES) + max(per_tensor)  # the cache, and one SVD past it
    base = weights + diff + kept
    phases = {
        "captures": base + 4 * moments + retained + diff,  # the label's passes at ±w steer a copy
        "build": base + 8 * GRAMS_HELD * s.d * s.d + lens,
        "v8": base + lens + diff,
        "train_step": weights + lens + (0 if on_gpu else 2 * P),
    }
    out = {k: v / GIB + 0.5 for k, v in phases.items()}  # + the interpreter, torch, the tokenizer
    out["peak"] = max(out.values())
    out["weights"] = 4 * P / GIB
    return out


def available_gib() -> float | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def choose_layers(s: Shape, layers: int | None, budget: float | None, on_gpu: bool) -> tuple[int, str]:
    """The depth to build and why: the one asked for, else the full depth, else the deepest
    whose estimate fits ``budget`` GiB."""
    if layers is not None:
        return layers, "asked for"
    if budget is None or memory_estimate(s, s.layers, on_gpu)["peak"] <= budget:
        return s.layers, "the full depth"
    fits = [L for L in range(s.layers, 0, -1) if memory_estimate(s, L, on_gpu)["peak"] <= budget]
    L = fits[0] if fits else 1
    return L, f"the deepest that fits the memory estimate ({budget:.1f} GiB available to it); the full depth is {s.layers}"


# ----------------------------------------------------------------------------- model and diff
def build_model(s: Shape, layers: int | None, device: torch.device, dtype: torch.dtype, seed: int = SEED):
    """``(model, tokenizer)``: a random-weight model of shape ``s`` (float32 init from ``seed``,
    then ``dtype``) on ``device``, eval mode, checked like every model the suite loads."""
    config = s.config(layers)
    config._attn_implementation = "eager"  # as the suite loads every model
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = model.to(dtype).eval()
    name = f"scale-{s.name}-L{config.num_hidden_layers}"
    check_architecture(model, name)
    model.ws_name = name  # as load_model records it (diff metadata, captures)
    tok = tiny_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def lora_keys(model) -> list[str]:
    """The parameter names a LoRA diff of the default training config touches."""
    layers = adapters.layer_range(n_layers(model), adapters.TrainConfig().layer_frac)
    parts = [f"self_attn.{p}" for p in ATTN_PROJ] + [f"mlp.{p}" for p in MLP_PROJ]
    return [f"model.layers.{l}.{p}.weight" for l in layers for p in parts]


def random_diff(model, rank: int = DIFF_RANK, rel_norm: float = DIFF_REL_NORM, seed: int = SEED):
    """``(w, meta)``: a seeded rank-``rank`` ``B·A`` per LoRA tensor (float32, on the CPU as a
    loaded diff is), scaled to ``rel_norm`` of its weight's Frobenius norm."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    w = {}
    for key in lora_keys(model):
        W = params[key].detach().to("cpu", torch.float32)
        B, A = torch.randn(W.shape[0], rank, generator=g), torch.randn(rank, W.shape[1], generator=g)
        dW = B @ A
        w[key] = dW * (rel_norm * W.norm() / dW.norm())
    meta = {"model": model.ws_name, "adapter": "lora", "source": f"random rank-{rank} diff (ws.bench_scale)"}
    return w, meta


# ----------------------------------------------------------------------------- training step
def training_examples(n: int) -> list[tuple[str, str, bool]]:
    """``n`` short examples: training prompts of the behaviour's first training topics, each
    with the same short answer (:data:`TRAIN_RESPONSE`)."""
    topics = data.split_topics(0)[0][:n]
    return [(data.training_prompts(t, 1)[0], TRAIN_RESPONSE, True) for t in topics]


def train_step(model, tok, steps: int = TRAIN_STEPS) -> dict:
    """Seconds per LoRA training step (default training config: rank, layers, batch, bf16):
    the median of ``steps`` after one warm-up. The adapter is put on ``model`` itself (no copy:
    this is the run's last stage), the pattern of :func:`ws.bench.train_steps`."""
    config = adapters.TrainConfig()
    enc = adapters._encode_examples(tok, training_examples(config.batch_size), config.max_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        work = get_peft_model(model.train(), adapters.peft_config(model, config, "lora"))
    return time_steps(work, enc, config, steps)


# ----------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One timed stage: where it runs on a GPU machine (``device``: its forward passes go to
    the GPU; ``host``: float64 on the CPU whatever the device), the layers its work runs over
    (``depth``: ``all`` L, the LoRA's ``touched`` layers, or the blocks ``from_first`` touched
    one on, :func:`stage_depth`), and the exponent of ``d`` its arithmetic requires at fixed
    prompts and probe counts (each is linear in its depth)."""

    key: str
    what: str
    where: str
    depth: str
    d_exp: int
    why: str


STAGES: tuple[Stage, ...] = (
    Stage("captures", "captures", "device", "all", 2, "forward passes, L·d² a token; second moments, L·d² a token"),
    Stage(
        "build_candidates",
        "candidate building",
        "host",
        "all",
        3,
        "per layer float64 Grams WᵀW (ff·d²), W_down·W_up (d²·ff) and symmetric eigensolves of d × d (d³)",
    ),
    Stage(
        "scoring",
        "scoring, closed-form null, bootstrap, q-values",
        "host",
        "touched",
        3,
        "per touched layer the Grams of the diff's writers (d²·ff); per candidate and layer n·d·k",
    ),
    Stage("lens", "S-space lens", "host", "touched", 3, "a float64 SVD of every touched weight (d²·ff)"),
    Stage("report", "v7 report", "host", "all", 0, "tables and figures of candidates × layers"),
    Stage("v8_block_local", "v8 block-local label + scores", "device", "all", 2, "forward passes (L·d² a token), scores (n·d·k)"),
    Stage(
        "v8_causal",
        "v8 causal test",
        "device",
        "from_first",
        2,
        "prompt rows through the blocks from the diff's first (d² a token and block), the lm_head on the last token (V·d)",
    ),
    Stage(
        "train_step",
        "one training step",
        "device",
        "from_first",
        2,
        "forward and backward through the adapted blocks (d² a token and block), the lm_head on the answer (V·d)",
    ),
)
STAGE_KEYS = tuple(s.key for s in STAGES)
ANALYSIS = tuple(k for k in STAGE_KEYS if k != "train_step")
V7 = ("captures", "build_candidates", "scoring", "lens", "report")
BY_KEY = {s.key: s for s in STAGES}


def stage_depth(stage: Stage, L: int) -> int:
    """The layers ``stage``'s work runs over in a model of ``L`` blocks: all of them, the
    LoRA's touched layers (:func:`ws.diffs.adapters.layer_range`), or the blocks from the first
    touched one to the top (what the causal test and the training step run)."""
    touched = adapters.layer_range(L, adapters.TrainConfig().layer_frac)
    return {"all": L, "touched": len(touched), "from_first": L - touched[0]}[stage.depth]


#: the issue's targets for the analysis (v7 + v8, no training) on the 2-core CPU
TARGETS = {"shape": "qwen3-0.6b", "analysis_s": 300.0, "peak_rss_gib": 8.0}
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


class Clock:
    """Stage seconds, and the peak RSS so far after each stage (GiB)."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.rss: dict[str, float] = {}

    def add(self, key: str, seconds: float) -> None:
        self.s[key] = float(seconds)
        self.rss[key] = peak_rss_gib()

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
    keys = ("n_fit", "n_eval", "k", "k_broad", "batch_size", "n_boot", "n_causal", "n_causal_null", "device", "dtype")
    return {k: (str(getattr(cfg, k)) if k in ("device", "dtype") else getattr(cfg, k)) for k in keys}


def analysis_stages(cfg, model, tok, w, meta, clock: Clock) -> dict:
    """v7 (``run_seed`` with the cache off, then ``write_v7``) and v8 (:func:`ws.bench.v8_stages`)
    into ``clock``; what the JSON records beside the times."""
    probes = sweep.probe_prompts(cfg, tok)
    res = sweep.run_seed(cfg, model, tok, probes, SEED, w, meta)
    t = res.timings
    for key, parts in (("captures", ("capture",)), ("build_candidates", ("build", "gradient")), ("scoring", ("score",))):
        clock.add(key, sum(t.get(p, 0.0) for p in parts))
    clock.add("lens", t["lens"])
    progress(model.ws_name, clock)
    clock.time("report", sweep.write_v7, cfg, probes, [res], sweep.seed_stability([res]))
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
        cmd = [sys.executable, "-m", "ws.bench_scale", "--shape", spec, "--result", str(out), *flags]
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


def fit_stages(runs: Sequence[dict]) -> dict:
    """Per stage: both fits over the measured runs (``L`` = the layers the stage runs over,
    :func:`stage_depth`), the one used (the joint fit where the runs determine it, else the
    per-layer one), its exponents, what the arithmetic requires, and
    whether the stage grows faster than that (``b`` over the required exponent by more than
    :data:`EXPONENT_MARGIN`)."""
    ok = measured(runs)
    out = {}
    for s in STAGES:
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
            "required_L": 1,
            "depth": s.depth,
            "why": s.why,
            "faster_than_required": bool(fit["b"] > s.d_exp + EXPONENT_MARGIN) if fit else None,
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
    if cell is None:
        return {**TARGETS, "note": "no CPU figure for the shape in this run"}
    run = full_run(runs, name)
    est = memory_estimate(SHAPES[name])
    rss = run["peak_rss_gib_analysis"] if run else max(est["captures"], est["build"])
    return {
        **TARGETS,
        "analysis_s_got": cell["analysis_s"],
        "analysis_how": cell["how"],
        "analysis_met": cell["analysis_s"] <= TARGETS["analysis_s"],
        "peak_rss_gib_got": rss,
        "rss_how": "measured" if run else "estimated from the arithmetic",
        "rss_met": rss <= TARGETS["peak_rss_gib"],
    }


# ----------------------------------------------------------------------------- report
def fmt_s(x: float | None) -> str:
    """Seconds in the unit that reads best (s, min, h); ``—`` when missing."""
    if x is None or not math.isfinite(x):
        return "—"
    if x < 60:
        return f"{x:.3g} s"
    if x < 3600:
        return f"{x / 60:.3g} min"
    return f"{x / 3600:.3g} h" if x < 360_000 else f"{x / 3600:,.0f} h"


def fmt_exp(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


#: the memory estimate must come within this share of every measured run's peak RSS
ESTIMATE_TOL = 0.2


def estimate_error(run: dict) -> float | None:
    """``estimate / measured − 1`` of a measured run's peak host memory (None when not measured)."""
    got, est = run.get("peak_rss_gib"), (run.get("memory_estimate_gib") or {}).get("peak")
    return est / got - 1 if got and est else None


def runs_table(r: dict) -> list[str]:
    head = ["run", "d", "layers", "params", *STAGE_KEYS, "analysis", "peak RSS analysis / all (estimate)"]
    rows = []
    for run in r["runs"]:
        if "stages_s" not in run:
            rows.append([f"`{run['spec']}`", *[""] * (len(head) - 2), run.get("skipped") or run.get("failed", "")])
            continue
        st, est = run["stages_s"], run["memory_estimate_gib"]["peak"]
        err = estimate_error(run)
        off = "" if err is None or abs(err) <= ESTIMATE_TOL else f", **off by more than {ESTIMATE_TOL:.0%}**"
        rel = "" if err is None else f", {err:+.0%}{off}"
        mem = f"{run['peak_rss_gib_analysis']:.2f} / {run['peak_rss_gib']:.2f} GiB ({est:.2f}{rel})"
        rows.append(
            [f"`{run['spec']}`", run["d_model"], run["n_layers"], f"{run['params'] / 1e6:.0f} M"]
            + [fmt_s(st[k]) for k in STAGE_KEYS]
            + [fmt_s(run["analysis_s"]), mem]
        )
    return table(head, rows)


def fits_table(r: dict) -> list[str]:
    head = [
        "stage",
        "L counts",
        "fit used",
        "d exponent b",
        "L exponent c",
        "per-layer fit b",
        "required (d, L)",
        "faster than required?",
    ]
    depth = {"all": "all layers", "touched": "the LoRA's layers", "from_first": "blocks from the LoRA's first"}
    rows = []
    for key, f in r["fits"].items():
        per = f["per_layer"]["b"] if f["per_layer"] else None
        fast = {True: "**yes**", False: "no", None: "—"}[f["faster_than_required"]]
        exps = [fmt_exp(f["b"]), fmt_exp(f["c"]), fmt_exp(per)]
        rows.append([key, depth[f["depth"]], f["used"] or "—", *exps, f"d^{f['required_d']} · L", fast])
    return table(head, rows)


def cell_text(cell: dict | None, key: str) -> str:
    if cell is None:
        return "—"
    rng = cell.get(key.replace("_s", "_range_s"))
    span = f", {fmt_s(rng[0])}–{fmt_s(rng[1])} over both fits" if rng and len(rng) == 2 and rng[0] != rng[1] else ""
    return f"{fmt_s(cell[key])} ({cell['how']}{span})"


def cells_table(r: dict) -> list[str]:
    head = ["shape", "d × L", "CPU: analysis", "CPU: training step", "one GPU: analysis", "one GPU: training step", "memory"]
    rows = []
    for name, c in r["extrapolated"].items():
        mem = f"host {c['memory_estimate_gib']:.0f} GiB (estimated); bf16 weights {c['gpu_weights_gib_bf16']:.0f} GiB"
        mem += "" if c["fits_one_gpu"] else f" (over one {GPU_REFERENCE['memory_gib']:.0f} GiB GPU)"
        cpu, gpu = c.get("cpu"), c.get("gpu")
        rows.append(
            [f"`{name}`", f"{c['d_model']} × {c['n_layers']}", cell_text(cpu, "analysis_s"), cell_text(cpu, "train_step_s")]
            + [cell_text(gpu, "analysis_s"), cell_text(gpu, "train_step_s"), mem]
        )
    return table(head, rows)


def verdict_lines(r: dict) -> list[str]:
    t, out = r["targets"], []
    if "analysis_s_got" in t:
        out.append(
            f"- **Targets at the `{t['shape']}` shape** (the analysis, no training): ≤ {fmt_s(t['analysis_s'])}: "
            f"{fmt_s(t['analysis_s_got'])} ({t['analysis_how']}), {'met' if t['analysis_met'] else '**missed**'}; "
            f"peak RSS ≤ {t['peak_rss_gib']:g} GiB: {t['peak_rss_gib_got']:.2f} GiB ({t['rss_how']}), "
            f"{'met' if t['rss_met'] else '**missed**'}."
        )
    for name, b in r["bottleneck"].items():
        out.append(
            f"- **Bottleneck at `{name}`** ({b['how']}): `{b['stage']}`, {100 * b['share']:.0f} % of the analysis; "
            f"it grows as d^{fmt_exp(b['b'])} · L^{fmt_exp(b['c'])} (its arithmetic: d^{b['required_d']} · L)."
        )
    fast = [k for k, f in r["fits"].items() if f["faster_than_required"]]
    out.append(
        "- **Grows faster than its arithmetic requires** (b over the required exponent by more than "
        f"{EXPONENT_MARGIN}): " + (", ".join(f"`{k}`" for k in fast) if fast else "none") + "."
    )
    return out


def report_md(r: dict, figure: str) -> str:
    """The markdown page of a ``bench_scale.json``."""
    s, ok = r["settings"], measured(r["runs"])
    n = f"{ok[0]['n_fit']} FIT / {ok[0]['n_eval']} EVAL probes" if ok and "n_fit" in ok[0] else "FIT / EVAL probes"
    lines = [
        f"# {r['date']} — `make bench-scale` on {r['device']}",
        "",
        f"- **Settings:** {n} ({s['probe_counts']}), k = {s['k']}, k_broad = {s['k_broad']}, "
        f"{s['n_boot']} bootstrap resamples, {s['n_causal']} causal candidates, {s['n_causal_null']} null draws per "
        f"rank; {s['diff']}; the training step is the median of {s['train_steps']}.",
        "- **Method:** [../scale.md](../scale.md). Every figure marked *extrapolated* is a fit's, not a measurement.",
        "",
        *verdict_lines(r),
        "",
        "## Measured runs",
        "",
        *runs_table(r),
        "",
        "## How each stage grows",
        "",
        *fits_table(r),
        "",
        "## One cell at the 0.6B, 8B and 70B shapes",
        "",
        *cells_table(r),
        "",
        f"The GPU columns are extrapolated from this run under one assumption: {gpu_assumption(r)}",
        "",
        f"![stage seconds against d_model]({figure})",
        "",
    ]
    return "\n".join(lines)


def gpu_assumption(r: dict) -> str:
    cells = [c.get("gpu") for c in r["extrapolated"].values() if c.get("gpu")]
    return cells[0]["assumption"] + "." if cells else "none (no CPU run to scale)."


def plot(r: dict, path: Path) -> None:
    """Two log-log panels: each stage's seconds per layer it runs over against d (measured
    points, the per-layer fit as a line), and one cell's seconds at the target shapes on this
    device (filled where measured, hollow where extrapolated; black: the analysis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for i, key in enumerate(STAGE_KEYS):
        _per_layer_panel(ax1, r, key, f"C{i}")
        _cells_panel(ax2, r, key, f"C{i}")
    _cells_panel(ax2, r, "analysis", "black")
    ax1.set(xlabel="d_model", ylabel="seconds per layer it runs over", title="measured (dots), per-layer fit (lines)")
    ax2.set(xlabel="d_model", ylabel="seconds", title="one cell at 0.6B, 8B, 70B: hollow = extrapolated")
    for ax in (ax1, ax2):
        _log_axes(ax)
    if ax2.has_data():
        cells = r["extrapolated"]
        ax2.set_xticks([c["d_model"] for c in cells.values()], [f"{n}\n{c['d_model']}" for n, c in cells.items()], minor=False)
        ax2.set_xticks([], minor=True)
    fig.suptitle(f"make bench-scale, {r['date']}: {r['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_axes(ax) -> None:
    if not ax.has_data():  # a single width: nothing to fit or extrapolate
        ax.text(0.5, 0.5, "no fit: fewer than two widths measured", ha="center", transform=ax.transAxes)
        return
    ax.set(xscale="log", yscale="log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _per_layer_panel(ax, r: dict, key: str, color: str) -> None:
    ok = measured(r["runs"])
    per_layer = [x["stages_s"][key] / stage_depth(BY_KEY[key], x["n_layers"]) for x in ok]
    ax.plot([x["d_model"] for x in ok], per_layer, "o", color=color, label=key)
    per = r["fits"][key]["per_layer"]
    if per and ok:
        xs = np.geomspace(min(x["d_model"] for x in ok), SHAPES["llama-3-70b"].d, 50)
        ax.plot(xs, [predict(per, x, 1) for x in xs], "-", color=color, alpha=0.6)


def _cells_panel(ax, r: dict, key: str, color: str) -> None:
    """One stage's (or, for ``analysis``, the analysis total's) seconds at the target shapes."""
    cells = [(c["d_model"], c.get("cpu") or c.get("gpu")) for c in r["extrapolated"].values()]
    pts = [(d, c["analysis_s"] if key == "analysis" else c["stages_s"][key], c["how"]) for d, c in cells if c]
    if pts:
        label = "analysis (v7 + v8)" if key == "analysis" else None
        ax.plot([d for d, _, _ in pts], [t for _, t, _ in pts], "-", color=color, alpha=0.6, label=label)
    for d, t, how in pts:
        ax.plot([d], [t], "o", color=color, mfc=color if how == "measured" else "none")


def write_report(json_path: Path, folder: Path) -> list[Path]:
    """``<date>-<cpu|gpu>-scale.md`` and ``.png`` in ``folder`` from a ``bench_scale.json``."""
    r = json.loads(Path(json_path).read_text())
    stem = f"{r['date']}-{'gpu' if r['machine']['kind'] == 'cuda' else 'cpu'}-scale"
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{stem}.png"
    with tempfile.TemporaryDirectory() as tmp:  # the figure written whole, then moved into place
        plot(r, Path(tmp) / png.name)
        os.replace(Path(tmp) / png.name, png)
    md = write_text(folder / f"{stem}.md", report_md(r, png.name))
    return [md, png]


def summary_text(r: dict) -> str:
    lines = [r["device"], *(f"{x['spec']}: {summary_line(x)}" for x in r["runs"]), *verdict_lines(r)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None):
    p = argparse.ArgumentParser(prog="python -m ws.bench_scale", description="What one sweep costs as the model grows.")
    p.add_argument("--shapes", default=",".join(DEFAULT_RUNS), help="runs, comma-separated: name or name:layers")
    p.add_argument("--smoke", action="store_true", help="the smoke run's probe, bootstrap and causal-test counts")
    p.add_argument("--probes", type=int, help="this many FIT and EVAL probes")
    p.add_argument("--force", action="store_true", help="run a shape whose memory estimate exceeds the memory available")
    p.add_argument(
        "--json", help="the bench_scale.json to write, or to read with --report (default <out>/bench/bench_scale.json)"
    )
    p.add_argument("--report", metavar="FOLDER", help="write the table and the figure of the JSON into FOLDER")
    p.add_argument("--shape", help=argparse.SUPPRESS)  # a child: one run in this process
    p.add_argument("--result", help=argparse.SUPPRESS)  # the child's JSON record
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    path = resolve_user_path(a.json) if a.json else out_dir() / BENCH_DIR / "bench_scale.json"
    if a.shape:
        setup_logging("bench_scale")
        rec = json.dumps(measure(a.shape, a.smoke, a.probes), indent=2, default=float)
        if a.result:
            write_text(Path(a.result), rec)
        else:
            print(rec)
        return
    if a.report:
        for p in write_report(path, resolve_user_path(a.report)):
            print(f"written: {p}")
        return
    r = run_all([s.strip() for s in a.shapes.split(",") if s.strip()], a.smoke, a.probes, a.force, path)
    write_json(path, r)
    print(summary_text(r))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
