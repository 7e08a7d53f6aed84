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
# # Steering head to head at a matched budget
#
# The weight diff `w` is one way to steer the model toward a behaviour. Here it meets the
# others on equal terms: every method is steered at the strength where the mean next-token
# KL from the base model on the behaviour's neutral prompts reaches the same budget
# (`WS_KL_BUDGET` [0.05 nats]; the bisection of `ws.diffs.budget`), and what it does to the
# behaviour there is measured on the held-out items.
#
# - **the diff**: `θ + α·w`; `w` on the residual writers only (`o_proj`, `down_proj`); and,
#   when a v8 run exists, the writers' part inside v8's carrier (the best candidate whose
#   `carries` verdict holds, else the dW ceiling);
# - **activation steering**: `α·v` added to the residual stream at the output of block `l`,
#   every position: the suite's contrastive vector (mean last-token residual under the
#   positive persona minus the negative one on the FIT prompts; its block chosen on the FIT
#   split by the largest target spread at a small fixed α), and every file of `WS_VECTORS`
#   at its own blocks;
# - **prompting**: the positive persona's instruction as the system prompt (the negative
#   one's for the negative sign); it has no strength, so its KL is whatever it is.
#
# Per method: the spreads on the target and control sets with bootstrap CIs, the
# specificity, the share of target prompts moved the wrong way, the KL reached, and a
# capability guard (the control items' answer accuracy). The files go to
# `out/<behavior>/<adapter>/steering/` (a model other than the embedded one: under
# `out/models/<model>/`). `WS_SMOKE=1` runs it on a tiny random model.

# %%
import time

import polars as pl

from ws.config import start_run
from ws.core import show
from ws.core.log import logger
from ws.model.load import load_model
from ws.steering import compare, report

pl.Config.set_tbl_rows(40)
pl.Config.set_tbl_cols(16)
pl.Config.set_fmt_str_lengths(60)
pl.Config.set_tbl_width_chars(220)
pl.Config.set_float_precision(4)
T0 = time.perf_counter()
cfg = start_run("steering_head_to_head")
logger.info(
    f"budget {cfg.kl_budget} nats · behaviour {cfg.behavior} · adapter {cfg.adapter} · seed {cfg.seeds[0]} · model {cfg.model}"
)

# %% [markdown]
# ## Every method at the budget, in one call
# The diff of the first seed of `WS_SEEDS` (trained first when missing, as `make sweep`
# does), v8's carrier rebuilt through v7's steps (from the cache when v7 / v8 ran), the
# contrastive vector and its block, then per method the budget's α, the read-outs at ±α,
# a sweep of α for the figure and a few sampled completions. The same call works from any
# notebook: `compare.head_to_head(cfg, model, tok, w=my_diff)`.

# %%
model, tok = load_model(cfg.model, **cfg.model_kwargs())
h2h = compare.head_to_head(cfg, model, tok)
written = report.write_steering(cfg, h2h)
logger.info(
    f"steering head to head done in {time.perf_counter() - T0:.0f} s; read {report.steering_dir(cfg) / report.CONCLUSION}"
)

# %% [markdown]
# ## Per method: α, KL, spreads, specificity, wrong way, capability guard

# %%
target = h2h.target
show.table(
    h2h.table.select(
        "method",
        "alpha",
        "kl",
        "budget_reached",
        *[f"spread_{s}" for s in h2h.held.sets],
        f"spread_{target}_ci_lo",
        f"spread_{target}_ci_hi",
        "specificity",
        "wrong_way_frac",
        "control_accuracy_base",
        "control_accuracy_pos",
        "control_accuracy_neg",
    )
)

# %% [markdown]
# ## Spread against KL over a swept α
# Each line is one method at 0.25, 0.5, 1, 1.5 and 2 times its budget α (the ring: at the
# budget); prompting is one star; the dashed line is the budget.

# %%
show.image(report.steering_dir(cfg) / report.FIGURE)

# %% [markdown]
# ## The conclusion, as written to `steering_conclusion.md`

# %%
show.markdown((report.steering_dir(cfg) / report.CONCLUSION).read_text())

# %% [markdown]
# ## Sampled completions (`steering_completions.md`)

# %%
show.markdown((report.steering_dir(cfg) / report.COMPLETIONS).read_text())

# %% [markdown]
# ## Where the files went

# %%
print(f"{report.steering_dir(cfg)}:")
for p in written:
    print("  " + p.name)
