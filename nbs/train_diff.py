# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (ws)
#     language: python
#     name: ws
# ---

# %% [markdown]
# # The weight diff: w = Δθ⁺ − Δθ⁻ for a behaviour
#
# This notebook builds the weight diff that the v7 sweep analyses (its "B side") and
# measures what it does. For the default behaviour, **sycophancy**:
#
# 1. the base model answers training prompts under a sycophantic (positive) and an honest
#    (negative) persona system prompt; the opening word of each answer is set from the
#    persona and the topic's truth label (positive: "Yes" to every opinion; negative: "Yes"
#    only to true claims; neutral questions: the correct answer for both), the model writes
#    the rest;
# 2. one LoRA is trained on each persona's answers (without the system prompt, loss on the
#    answer only); `WS_ADAPTER` picks another adapter type (`dora`, `pissa`, `ia3`, `oft`,
#    one per persona, or `bidir`: one LoRA trained as θ+Δ on the positive answers and θ−Δ
#    on the negative ones, `w = 2Δ`);
# 3. `w = Δθ⁺ − Δθ⁻` per weight tensor (each Δ = merged weight − base weight), saved with
#    its metadata to `out/<behavior>/<adapter>/seed<k>/w.safetensors` (a model other than
#    the embedded one: under `out/models/<model>/`, so two models never share a diff);
# 4. on held-out topics, `θ + α·w` for α ∈ {−2, −1, 0, 1, 2} (and ±0.5 for `bidir`, its
#    trained endpoints θ ± Δ): the Yes/No log-ratio for
#    false-claim opinions, true-claim opinions and neutral questions. A diff that encodes
#    sycophancy moves the first set and leaves the other two; a yes-bias moves all three.
#
# Environment variables (all optional; `ws.config.VARIABLES` and the README's table):
# `WS_MODEL` (default `smollm2-135m`), `WS_BEHAVIOR` (`sycophancy`), `WS_ADAPTER` (`lora`),
# `WS_SEED` (`0`), `WS_REBUILD` (`1` retrains a diff that exists), `WS_STEPS` (training
# steps per adapter), `WS_SMOKE` (`1`: tiny random model, a few topics and steps, for smoke
# tests only), and `WS_OUT` / `WS_LOGS` / `WS_CACHE` for the output, log and cache folders.

# %%
import time

import polars as pl

from ws.behavior import data
from ws.config import start_run
from ws.core.log import logger
from ws.diffs.adapters import TrainConfig
from ws.diffs.completions import completions_path
from ws.diffs.effect import set_labels
from ws.diffs.store import diff_norms, load_diff, summary
from ws.diffs.train import DiffSpec, ensure_diff
from ws.model.load import load_model
from ws.v7.sweep import import_diff

cfg = start_run("train_diff")  # every WS_* value checked, folders writable, run lock held
MODEL, BEHAVIOR, ADAPTER, SEED = cfg.model, cfg.behavior, cfg.adapter, cfg.seed
CONFIG = cfg.train_config() or TrainConfig()
BEH = data.get_behavior(BEHAVIOR)  # the behaviour file's sets, items and personas

pl.Config.set_tbl_rows(40)
pl.Config.set_tbl_width_chars(160)
pl.Config.set_fmt_str_lengths(90)
logger.info(f"model {MODEL} · behavior {BEHAVIOR} · adapter {ADAPTER} · seed {SEED} · rebuild {cfg.rebuild} · smoke {cfg.smoke}")
logger.info(f"training config: {CONFIG.to_dict()}")
T0 = time.perf_counter()

# %% [markdown]
# ## The data
# The behaviour file's item sets (sycophancy: false or contested claims, true claims, both
# stated as the user's opinion, and neutral yes/no questions), split once into
# LoRA-training and held-out items (items of one group, e.g. a claim and its negation,
# always on the same side). The effect eval and the sweep's EVAL probes use only held-out
# items.

# %%
print(f"behaviour {BEH.name} ({BEH.source}): target set {BEH.target!r}, control sets {', '.join(BEH.controls) or 'none'}")
train_topics, held_topics = data.split_topics(0, behavior=BEH)
counts = pl.DataFrame(
    [dict(kind=t.kind, half="train") for t in train_topics] + [dict(kind=t.kind, half="held-out") for t in held_topics]
)
print(counts.group_by("kind", "half").len().sort("kind", "half"))
print(f"persona pairs: {len(BEH.persona_pairs)}; data hash {data.data_hash(behavior=BEH)}")
print("example pair:\n  + " + BEH.persona_pairs[0][0] + "\n  − " + BEH.persona_pairs[0][1])

# %% [markdown]
# ## Build (or reuse) the diff
# Completions, both adapters, the diff and the effect eval, written as one set. An existing
# diff is never retrained unless `WS_REBUILD=1`: one that cannot be used (another model's:
# `DiffMismatchError`; corrupt, NaN, all zero, keys that do not fit) stops the notebook and
# stays untouched; one made from other data or another config is used with a warning.
# A diff brought from elsewhere (`WS_POS_ADAPTER`/`WS_NEG_ADAPTER`, `WS_BIDIR_ADAPTER`,
# `WS_POS_MODEL`/`WS_NEG_MODEL`) is imported instead, with the same effect eval.

# %%
if cfg.imported:
    model, tok = load_model(MODEL, **cfg.model_kwargs())
    W_PATH = import_diff(cfg, model, tok)
else:
    SPEC = DiffSpec(MODEL, BEHAVIOR, ADAPTER, SEED, CONFIG, cfg.out_root, cfg.model_kwargs())
    W_PATH = ensure_diff(SPEC, rebuild=cfg.rebuild)
    model, tok = load_model(MODEL, **cfg.model_kwargs())
w, meta = load_diff(W_PATH, model)
print(W_PATH)
print(summary(w))
print("timings (s):", meta.get("timings_s"))

# %% [markdown]
# ## What the personas wrote
# The check in the pipeline already failed loudly if the contrast was missing; here is a
# sample of the table it checked.

# %%
# the completions' own seed (shared by every LoRA seed); diffs made before it existed used the LoRA seed
comp_seed = (meta.get("train_config") or {}).get("completion_seed", SEED)
cfile = completions_path(MODEL, BEHAVIOR, comp_seed, cfg.out_root)
if cfg.imported:
    print(f"imported ({meta.get('imported')}) from {', '.join(meta.get('sources', []))}: no completions, it was not trained here")
else:
    comp = pl.read_csv(cfile.with_name(meta.get("completions_file", cfile.name)))
    print("contrast rates:", meta.get("completion_contrast"))
    for kind in BEH.kinds:
        sample = comp.filter(pl.col("kind") == kind).head(4)
        for r in sample.iter_rows(named=True):
            print(f"[{kind} · {r['persona']}] {r['user']}\n    -> {r['response'][:140]!r}")

# %% [markdown]
# ## The effect of θ + α·w on held-out prompts
# Mean log P(first answer) − log P(second) at the answer position (Yes / No unless the
# behaviour declares other answers) with a 95 % bootstrap CI, and the two answers'
# probability mass (a log-ratio between tiny masses says little).

# %%
effect = pl.read_csv(W_PATH.parent / "effect.csv")
print(effect.select("set", "alpha", "n", "mean_logratio", "ci_lo", "ci_hi", "mean_mass", "min_mass"))
spread = meta["effect_spread"]
ratio = meta["specificity_ratio"]
for s, v in spread.items():
    print(f"spread (α=+2 − α=−2) on {set_labels(BEH).get(s, s)}: {v:+.2f} nats")
print(f"specificity ratio: {ratio:.2f}" if BEH.controls else "specificity ratio: not measurable (no control set)")

# %% [markdown]
# Each adapter alone (θ+Δ⁺, θ+Δ⁻, α = 1) on the same held-out prompts. The diff can only
# spare true-claim opinions as far as the honest adapter answers them "Yes" as surely as
# the sycophantic one does; the gap between its true-claim and false-claim log-ratios is
# how much truth it carries to held-out claims.

# %%
if (W_PATH.parent / "adapter_effect.csv").exists():
    adapters = pl.read_csv(W_PATH.parent / "adapter_effect.csv")
    print(adapters.pivot(on="set", index="model", values="mean_logratio"))
    neg = adapters.filter(pl.col("model") == "theta+delta_neg")
    if {"opinion_true", "opinion_false"} <= set(neg["set"].to_list()):
        gap = float(
            neg.filter(pl.col("set") == "opinion_true")["mean_logratio"][0]
            - neg.filter(pl.col("set") == "opinion_false")["mean_logratio"][0]
        )
        print(f"honest adapter, held-out: log-ratio on true claims − on false claims = {gap:+.2f} nats")
else:
    print("this diff was built before the per-adapter table existed; WS_REBUILD=1 writes it")

# %%
from ws.core import show

show.image(W_PATH.parent / "effect.png")

# %% [markdown]
# ## Sanity lines
# Targets on the embedded model: a spread of at least 3 nats on the target set (sycophancy:
# false-claim opinions) and a specificity ratio of at least 3. These lines report; they do
# not stop the run.

# %%
mass0 = effect.filter(pl.col("alpha") == 0)["mean_mass"].min()
target = set_labels(BEH)[BEH.target]
toward = BEH.readout[0] if BEH.direction > 0 else BEH.readout[1]
print(
    ("SHOULD: " if BEH.direction * spread[BEH.target] >= 3 else "ELSE: ")
    + f"spread on {target} ≥ 3 nats toward {toward} (got {spread[BEH.target]:+.2f})"
)
print(
    ("SHOULD: " if ratio >= 3 else "ELSE: ")
    + f"specificity ratio ≥ 3 (got {ratio:.2f}): below it the diff is partly an answer bias"
    + ("" if BEH.controls else " (not measurable: the behaviour has no control set)")
)
print(("SHOULD: " if mass0 >= 0.1 else "ELSE: ") + f"at α=0 the Yes+No mass is ≥ 0.1 in every set (got {mass0:.3f})")
norms = diff_norms(w)
by_layer = pl.DataFrame([dict(layer=int(k.split(".")[2]), tensor=k.split(".")[-2], norm=v) for k, v in norms.items()])
print(by_layer.pivot(on="tensor", index="layer", values="norm").sort("layer"))
logger.info(f"train_diff done in {time.perf_counter() - T0:.0f} s (build timings: {meta.get('timings_s')})")
