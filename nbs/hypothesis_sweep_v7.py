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
# # v7 hypothesis sweep: where in the residual stream does the weight diff act?
#
# A LoRA trained on persona-positive completions minus one trained on persona-negative
# completions gives a weight diff `w = Δθ⁺ − Δθ⁻`; the model runs at `θ + α·w`. This
# notebook scores dozens of candidate subspaces of the residual stream, each built from
# the base model alone (its weights or its activations), by how much of the diff's
# effect they hold:
#
# - **activation label**: block outputs of held-out EVAL probes at `+1·w` minus at `−1·w`;
# - **weight label**: the LoRA delta of the residual writers `o_proj` and `down_proj`;
#
# each against the exact null of a random subspace of the same rank. The contract is
# `docs/v7-contract.md`; the math lives in `ws` (tested there), this notebook only calls it.
#
# Parameters come from `WS_*` environment variables (`ws.config.VARIABLES`, the README's
# table): `WS_MODEL` [smollm2-135m], `WS_SEEDS` [0,1,2], `WS_OUT` [out/], `WS_SMOKE` [0: 1 runs
# everything on a tiny random model in about a minute], and more. `start_run` checks every
# value, the output folders and the run lock before the model loads: a bad value stops here.

# %%
import time

import polars as pl

from ws.analysis import analyse
from ws.config import start_run
from ws.core.log import logger
from ws.model.load import load_model
from ws.v7 import sweep, verdicts

pl.Config.set_tbl_rows(60)
pl.Config.set_tbl_cols(12)
pl.Config.set_fmt_str_lengths(40)
pl.Config.set_tbl_width_chars(220)
pl.Config.set_float_precision(3)
T0 = time.perf_counter()
cfg = start_run("hypothesis_sweep_v7")

# %% [markdown]
# ## Load the base model and the diff
# Every existing diff is checked first; one that cannot be used (corrupt, NaN, all zero,
# another model's, keys that do not fit) stops the run and stays untouched. Then the
# missing diffs are trained (`nbs/train_diff.py` does the same on its own). An existing
# diff is never retrained unless `WS_REBUILD=1`.

# %%
from ws.core import show

model, tok = load_model(cfg.model, **cfg.model_kwargs())
diffs = sweep.get_diffs(cfg, model, tok)
for seed, (w, meta) in diffs.items():
    logger.info(f"seed {seed}: {len(w)} tensors, layers {meta.get('layers')}, specificity ratio {meta.get('specificity_ratio')}")

# %% [markdown]
# ## What the diff does, per seed
# The Yes/No log-ratio on held-out prompts at `θ + α·w` for false-claim opinions (the
# behaviour), true-claim opinions and neutral questions. A sycophancy diff moves the
# first and spares the other two; a yes-bias moves all three. (Another behaviour
# (`WS_BEHAVIOR`): its target set and its control sets.)

# %%
for seed, png in show.effect_plots(cfg).items():
    show.image(png, title=f"seed {seed}: specificity ratio {diffs[seed][1].get('specificity_ratio')}")

# %% [markdown]
# ## Probes
# FIT probes (training topics) build the A-side bases; EVAL probes (held-out false-claim
# topics, never seen by the LoRA; another behaviour: its target set) build the activation label. Every prompt goes through the
# chat template; the persona± FIT probes carry the first persona pair as system prompt.

# %%
probes = sweep.probe_prompts(cfg, tok)
logger.info(f"{len(probes.fit_clean)} FIT probes, {len(probes.eval)} EVAL probes")
print(probes.eval[0])

# %% [markdown]
# ## Capture, build the candidates, score — once per seed; write the v7 files
# Captures are cached on disk, keyed by the model weights, the prompts, the diff and the
# capture code; a second run with nothing changed does no forward pass. The v7 files
# (tables, the joint scatter, definitions, plan/merge notes, the conclusion) are each
# written to a temporary name and renamed: a failure leaves the previous run's files
# intact. The sections below show them; the last one lists where they went.
#
# This is the one call a researcher makes from their own notebook too, with their model,
# tokenizer and diff (`analyse(model, tok, w, behavior=..., vectors=..., out=...)`, see
# docs/bring-your-own.md); here it gets this run's configuration.

# %%
analysis = analyse(model, tok, diffs, config=cfg)
results, stab, written = analysis.results, analysis.stability, analysis.files
res = results[0]
logger.info(f"sweep done in {time.perf_counter() - T0:.1f} s; read {cfg.v7_dir / 'v7_conclusion.md'}")

# %% [markdown]
# ## Bottom line: write and mixed candidates, ranked by the joint score
# `R_act` = `mean_conc_act` (activation energy over what a random subspace of the same rank
# holds), `R_w` = `mean_conc_w_combined`, joint = their geometric mean; means over the layers
# the LoRA touched, for the first seed.

# %%
show_cols = [
    "subspace",
    "family",
    "mean_conc_act",
    "mean_conc_act_ci_lo",
    "mean_conc_act_ci_hi",
    "mean_conc_w_combined",
    "joint_score",
    "pct_act_ceiling",
    "pct_w_oracle_combined",
]
sp = res.summary_pct
show.table(sp.filter(pl.col("axis_kind").is_in(["write", "mixed", "ceiling", "self-test"])).select(show_cols))

# %% [markdown]
# ## The joint scatter: R_act against R_w
# Log-log, 1 = a random subspace; write and mixed candidates on the left, read-side ones on
# the right, the two ceilings as stars (with several seeds, whiskers span the seeds).

# %%
show.image(cfg.v7_dir / "v7_joint_act_weight_scatter.png")

# %% [markdown]
# ## Which claims survive
# Each headline claim with its evidence from this run and its verdict (the same table as in
# `v7_conclusion.md`).

# %%
show.table(verdicts.claims_table(cfg, probes, results, stab))

# %% [markdown]
# ## Specificity: after removing the layer's top clean-residual PCs

# %%
show.table(res.specific_summary)

# %% [markdown]
# ## Seeds: does the ranking survive another LoRA seed?

# %%
show.table(stab.tau)
show.table(stab.per_candidate.sort("seed_mean_joint_score", descending=True, nulls_last=True).head(10))

# %% [markdown]
# ## Read-side rows (reported apart, never in the joint ranking)

# %%
show.table(sp.filter(pl.col("axis_kind") == "read").select(show_cols))

# %% [markdown]
# ## The diff in the base weights' own singular directions
# Per touched tensor, the share of ‖dW‖² on W's own singular pairs (the diagonal of
# U₀ᵀ·dW·V₀), in the top-16 block and on the top-16 output / input directions, beside a
# random diff's share; the figure: the cumulative share on W's top-i left singular
# directions per tensor type (a random diff runs along the dashed diagonal).

# %%
show.table(res.lens.group_by("tensor", maintain_order=True).mean().drop("layer"))
show.image(cfg.v7_dir / "v7_sspace_lens.png")

# %% [markdown]
# ## Sanity checks

# %%
checks = verdicts.sanity_lines(res, stab)
for ok, line in checks:
    print(("OK   " if ok else "FAIL ") + line)

# %% [markdown]
# ## The conclusion, as written to `v7_conclusion.md`

# %%
show.markdown((cfg.v7_dir / "v7_conclusion.md").read_text())

# %% [markdown]
# ## Where the files went
# Under `WS_OUT` (default: `out/` at the repository root, wherever the kernel runs); a
# model other than the embedded one writes under `WS_OUT/models/<model>/`.

# %%
print(f"{cfg.v7_dir}:")
for p in written:
    print("  " + str(p.relative_to(cfg.v7_dir)))
print("beside each seed's diff (w.safetensors, effect.csv, effect.png, ...):")
for p in show.effect_plots(cfg).values():
    print("  " + str(p.parent))
