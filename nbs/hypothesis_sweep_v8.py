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
# # v8: which subspace carries the behaviour?
#
# v7 measures where the weight diff's energy sits: how much of the activation label and of
# the writer deltas a candidate subspace holds, against a random subspace. That cannot say
# whether the subspace *carries* the behaviour. v8 asks it two ways:
#
# - **the causal projection test**: keep only what the residual writers (`o_proj`,
#   `down_proj`) write into a candidate subspace (`P_B Δ`, "inside"), or only the rest
#   (`(I − P_B) Δ`, "outside"), steer with that at α = ±1, and measure how much of the
#   writers' effect on the behaviour's held-out target set (sycophancy: false-claim
#   opinions) survives (retention), against random subspaces of the same rank;
# - **the block-local label**: what each block itself writes at `+w` minus `−w`, beside v7's
#   cumulative label, every candidate scored against both, and a per-layer scope table.
#
# v7's steps run first (the same functions; captures and bases come from the cache when v7
# ran before), so v8's v7 columns are v7's numbers. The math lives in `ws.v8.causal`,
# `ws.v8.blocklocal`, `ws.model.fast_readout` (tested there); this notebook only calls it. Parameters: the
# `WS_*` variables of the README, in particular `WS_N_CAUSAL` [10] (candidates tested),
# `WS_N_CAUSAL_NULL` [20] (random subspaces per rank) and `WS_CAUSAL_ITEMS` [48] (held-out
# items per set the causal test steers).

# %%
import time

import polars as pl
from IPython.display import Image, display

from ws.analysis import analyse
from ws.config import start_run
from ws.core.log import logger
from ws.model.load import load_model
from ws.v7 import sweep, verdicts
from ws.v8 import sweep as v8
from ws.v8 import verdicts as v8_verdicts

pl.Config.set_tbl_rows(60)
pl.Config.set_tbl_cols(14)
pl.Config.set_fmt_str_lengths(40)
pl.Config.set_tbl_width_chars(240)
pl.Config.set_float_precision(3)
T0 = time.perf_counter()
cfg = start_run("hypothesis_sweep_v8")

# %% [markdown]
# ## The base model, the diffs and the probes
# As in v7: every existing diff is checked before anything else, missing ones are trained,
# nothing is retrained without `WS_REBUILD=1`.

# %%
model, tok = load_model(cfg.model, **cfg.model_kwargs())
diffs = sweep.get_diffs(cfg, model, tok)
probes = sweep.probe_prompts(cfg, tok)
logger.info(f"{len(probes.fit_clean)} FIT probes, {len(probes.eval)} EVAL probes, seeds {list(diffs)}")

# %% [markdown]
# ## v7's results per seed, the block-local label and the causal test, in one call
# Candidates built and scored exactly as v7 does (the causal test needs the bases
# themselves, which no v7 table holds; recomputing them from the cache also keeps v8 right
# when v7 ran on another diff or not at all), then the two v8 tests below, then the v8
# files written as one set (staged, then moved into place; a failure leaves the previous
# run's files intact). It is the call a researcher makes from their own notebook,
# `analyse(model, tok, w, stages=("v7", "v8"), ...)` (docs/bring-your-own.md).

# %%
analysis = analyse(model, tok, diffs, config=cfg, stages=("v8",))
results, stab, bl, cr, written = analysis.results, analysis.stability, analysis.block_local, analysis.causal, analysis.files
res = results[0]

# %% [markdown]
# ## The candidates of the causal test
# The top write/mixed A-hypotheses by the joint score averaged over the seeds, the
# steering vectors of `WS_VECTORS` (always), both ceilings and the self-test rows.

# %%
names, ranking = v8.causal_candidates(res.summary, stab.per_candidate, cfg.n_causal)
print(
    pl.DataFrame(
        {
            "subspace": names,
            "causal_rank": [ranking[n][0] for n in names],
            "seed_mean_joint_score": [ranking[n][1] for n in names],
        }
    )
)

# %% [markdown]
# ## The block-local label
# `(post⁺ − pre⁺) − (post⁻ − pre⁻)` per block on the EVAL probes: what the block itself
# writes. Every candidate is scored against it as v7 scores the cumulative label.

# %%
show = [
    "subspace",
    "kind",
    "mean_conc_act_block",
    "mean_conc_act_block_ci_lo",
    "mean_conc_act_block_ci_hi",
    "mean_z_act_block",
    "joint_score_block",
]
print(
    bl.summary.join(res.summary.select("subspace", "kind"), on="subspace")
    .select(show)
    .sort("mean_conc_act_block", descending=True, nulls_last=True)
    .head(15)
)
print(
    bl.scope.filter(pl.col("touched")).select(
        "layer", "overlap_dW_act", "overlap_dW_act_block", "overlap_act_act_block", "overlap_random"
    )
)

# %% [markdown]
# ## The causal projection test
# Writers-only, then per candidate inside, outside and norm-matched inside, each at
# α = ±1 on the held-out target and control sets; random subspaces of the same rank on the
# target set as the null.

# %%
print(
    cr.table.select(
        "subspace",
        "energy_frac_inside",
        "retention_inside",
        "retention_inside_ci_lo",
        "retention_inside_ci_hi",
        "retention_outside",
        "retention_outside_ci_hi",
        "retention_normmatched",
        "null_p95",
        "z_inside",
        "p_inside",
        "p_inside_method",
        "q_inside",
        "carries",
        "above_chance",
    )
)
print(
    f"writers-only carry {100 * cr.writers_share[0]:.1f}% [{100 * cr.writers_share[1]:.1f}, "
    f"{100 * cr.writers_share[2]:.1f}] of the full diff's effect; causal test {sum(cr.timings.values()):.1f} s"
)

# %% [markdown]
# ## Sanity checks

# %%
for ok, line in verdicts.sanity_lines(res, stab) + v8_verdicts.sanity_lines(res, bl, cr, cfg.k):
    print(("OK   " if ok else "FAIL ") + line)

# %% [markdown]
# ## The v8 files
# Tables, figures, definitions, plan/merge notes and the conclusion, written by the call above.

# %%
for p in written:
    print(p.relative_to(cfg.out_root))
logger.info(f"v8 done in {time.perf_counter() - T0:.1f} s; read {cfg.v8_dir / 'v8_conclusion.md'}")

# %%
display(Image(filename=str(cfg.v8_dir / "v8_causal_retention.png")))
display(Image(filename=str(cfg.v8_dir / "v8_block_local.png")))

# %%
print((cfg.v8_dir / "v8_conclusion.md").read_text())
