"""The scale bench's shapes and what a run of one costs by its arithmetic: the model families' configurations
(:data:`SHAPES`), the random model and diff built from them, the stages measured per shape and how deep each
runs (:data:`STAGES`), and the host-memory estimate (:func:`memory_estimate`). See :mod:`ws.bench.scale`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from ws.captures.capture import TOKEN_WINDOW
from ws.diffs import adapters
from ws.model.anatomy import PROJECTIONS, block_path
from ws.model.load import check_architecture, n_layers, tiny_tokenizer
from ws.stats.lens import SVD_CACHE_BYTES, svd_bytes
from ws.v8.causal import DEFER_VARIANT_BYTES

GIB = 2**30

#: what a run holds beside its arrays (the interpreter, torch and its allocator's slack, the
#: tokenizer), GiB, set from the three shapes measured on 2026-12-06 (135M, 0.6B, 8B with 4 layers,
#: docs/measured/2026-12-06-cpu-scale-0.6b-whole.md): at 0.5 the estimate ran from 0.9 GiB under to
#: 0.5 GiB over their phases' peaks (−27 % to +3 %); at 1.0 every phase is within 7 %
RUNTIME_GIB = 1.0


SEED = 0


#: the random diff: a LoRA's rank, and each tensor's ‖ΔW‖_F / ‖W‖_F
DIFF_RANK = 8


DIFF_REL_NORM = 0.02


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
#: (:meth:`ws.bases.grams.ModelWeights.at_layer`), and about six sums over layers (lm_head's
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
    peak beside it), per phase, with ``peak`` (all phases), ``analysis_peak`` (the analysis',
    :data:`ANALYSIS_PHASES`) and ``beside_weights`` (the analysis' beside the host's weights).
    The large parts: the float32 weights (on the host unless ``on_gpu``) and
    the diff; the captures, kept for the whole run: the token-level block outputs of both
    personas ``2·L·n_fit·T·d`` (``T`` at most :data:`ws.captures.capture.TOKEN_WINDOW`), about
    a dozen last-token ``[L, n, d]`` tensors and the writers' moments ``L·(a + ff + 2d²)`` (float32;
    while they are summed, float64: the probe tokens' rows while they number at most ``d``, else
    the ``d × d`` sums); during a capture pass, one layer's activations at a time (the
    hooks read each module's input as it runs, :func:`ws.captures.recorders.record`),
    ``b·T·(a + 3·ff + 4d)`` and the eager attention weights ``b·heads·T²``; the candidate builder's float64 ``d × d`` Grams
    (:data:`GRAMS_HELD`); the lens's float64 SVDs of the touched weights (one at a time, and the
    whole set cached to the end of v7 when it fits :data:`ws.stats.lens.SVD_CACHE_BYTES`: a later
    seed's build finds it; v8 runs in a kernel of its own, and the bench clears it); the
    steered weight (:func:`ws.model.steer.weight_steer` makes one tensor at a time, while its
    module runs); the causal test's variant of the writers (v8: made once, or past
    :data:`ws.v8.causal.DEFER_VARIANT_BYTES` one writer at a time while its module runs; three
    float64 copies of the largest writer while one is made); the training step's bfloat16
    copies."""
    L = layers or s.layers
    touched = len(adapters.layer_range(L, adapters.TrainConfig().layer_frac))
    P, a = n_params(s, L), s.heads * s.hd
    weights = 0 if on_gpu else 4 * P
    diff = 4 * touched * layer_params(s)
    moments = L * (a + s.ff + 2 * s.d * s.d)  # the inputs' diagonals and the two [d, d] written moments
    T = min(tokens, TOKEN_WINDOW)
    kept = 4 * L * s.d * (2 * n_fit * T + 12 * n_fit + 2 * n_eval) + 4 * moments
    retained = 4 * CAPTURE_BATCH * tokens * (a + 3 * s.ff + 4 * s.d + s.heads * tokens)  # one layer's, transient
    tensors = ((a, s.d), (s.kv_heads * s.hd, s.d), (s.kv_heads * s.hd, s.d), (s.d, a), (s.ff, s.d), (s.ff, s.d), (s.d, s.ff))
    per_tensor = [svd_bytes(t) for t in tensors]
    svds = touched * sum(per_tensor)
    cached = svds if svds <= SVD_CACHE_BYTES else 0  # kept for the next seed only when all of them fit
    steered = 4 * max(o * i for o, i in tensors)  # one steered weight, while its module runs
    writers = 4 * touched * s.d * (a + s.ff)  # the causal test's variant of the writers, float32
    made = 3 * 8 * s.d * max(a, s.ff)  # three float64 [d, in] while one edited writer is made
    variant = writers + made if writers <= DEFER_VARIANT_BYTES else made  # past the bound: one writer at a time
    # while the moments are summed (float64, per layer and written moment): the probe tokens'
    # rows while they number at most d, else the d × d sum (ws.captures.recorders.SecondMoment);
    # then layer by layer into float32, the second moment's rows still there while the first's
    # float32 fills
    rows = 8 * L * (2 * s.d * min(n_fit * tokens, s.d) + a + s.ff)
    summing = max(rows, (4 * moments + rows) / 2, 4 * moments)
    base = weights + diff + kept
    phases = {
        "captures": base - 4 * moments + summing + retained + steered,
        "build": base + cached + max(8 * GRAMS_HELD * s.d * s.d, max(per_tensor)),  # and the lens's one SVD
        "v8": base + variant + steered,  # the lens's cache is not there (its own kernel; the bench clears it)
        "train_step": weights + diff + (0 if on_gpu else 2 * P),  # after v8 in the bench (the diff still held)
    }
    out = {k: v / GIB + RUNTIME_GIB for k, v in phases.items()}
    out["peak"] = max(out.values())
    out["analysis_peak"] = max(out[k] for k in ANALYSIS_PHASES)
    out["weights"] = 4 * P / GIB
    out["beside_weights"] = out["analysis_peak"] - (0 if on_gpu else out["weights"])
    return out


#: the phases of the analysis (v7 + v8, no training step): the host-memory target's
ANALYSIS_PHASES = ("captures", "build", "v8")


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
    parts = [block_path(p) for p in PROJECTIONS]
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
    meta = {"model": model.ws_name, "adapter": "lora", "source": f"random rank-{rank} diff (ws.bench.shapes)"}
    return w, meta


# ----------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One timed stage: where it runs on a GPU machine (``device``: its forward passes go to
    the GPU; ``host``: float64 on the CPU whatever the device), the layers its work runs over
    (``depth``: ``all`` L, the LoRA's ``touched`` layers, the blocks ``from_first`` touched
    one on, or ``none``: a fixed cost, :func:`stage_depth`), and the exponent of ``d`` its
    arithmetic requires at fixed prompts and probe counts (each is linear in its depth)."""

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
    Stage(
        "report",
        "v7 report",
        "host",
        "none",
        0,
        "tables and figures: a fixed cost (2.7–2.9 s at 135M, 0.6B and 8B:4 layers on the 2-core CPU, 2026-12-06)",
    ),
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
    touched one to the top (what the causal test and the training step run); 1 for a fixed cost."""
    touched = adapters.layer_range(L, adapters.TrainConfig().layer_frac)
    return {"all": L, "touched": len(touched), "from_first": L - touched[0], "none": 1}[stage.depth]
