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
# # Cross-adapter comparison: does the answer depend on how the diff was trained?
#
# The v7 sweep asks which residual-stream subspace a weight diff `w = Δθ⁺ − Δθ⁻` acts in.
# Here the same question is asked of diffs trained with different adapter types —
# `lora`, `dora`, `pissa`, `ia3`, `oft`, and `bidir` (one LoRA trained as θ+Δ on the
# sycophantic completions and θ−Δ on the honest ones, `w = 2Δ`) — on the same data, the
# same layers and the same training config. A candidate that ranks high for every adapter
# describes the behaviour; one that ranks high for one adapter only describes that adapter.
#
# For every adapter of `WS_ADAPTERS` [all six] and every seed of `WS_SEEDS` [0,1,2] the
# missing diffs are trained, the v7 sweep runs (each adapter's v7 files go to
# `out/<behavior>/<adapter>/v7/`), and the comparison is written to
# `out/<behavior>/cross_adapter/`; a model other than the embedded one has all of these
# under `out/models/<model>/`. `WS_SMOKE=1` runs it on a tiny random model.

# %%
import time

import polars as pl

from ws.config import start_run
from ws.core import show
from ws.core.log import logger
from ws.cross_adapter import compare as cross_adapter
from ws.model.load import load_model
from ws.v7 import sweep

pl.Config.set_tbl_rows(40)
pl.Config.set_tbl_cols(16)
pl.Config.set_fmt_str_lengths(40)
pl.Config.set_tbl_width_chars(220)
pl.Config.set_float_precision(3)
T0 = time.perf_counter()
cfg = start_run("cross_adapter")
logger.info(f"adapters {', '.join(cfg.adapters)} · seeds {', '.join(map(str, cfg.seeds))} · model {cfg.model}")

# %% [markdown]
# ## Load the base model; check every existing diff before any training
# A diff that cannot be used (corrupt, another model's, NaN, all zero, keys that do not
# fit) stops the run here, before any adapter is trained, and stays untouched.

# %%
model, tok = load_model(cfg.model, **cfg.model_kwargs())
cross_adapter.check_all_diffs(cfg, model)
probes = sweep.probe_prompts(cfg, tok)
logger.info(f"{len(probes.fit_clean)} FIT probes, {len(probes.eval)} EVAL probes")

# %% [markdown]
# ## One sweep per adapter
# The missing diffs are trained (the pipeline of `nbs/train_diff.py`), then every seed is
# captured, scored and summarised as in the v7 notebook; captures are cached per diff.

# %%
runs = []
for adapter in cfg.adapters:
    t0 = time.perf_counter()
    runs.append(cross_adapter.run_adapter(cfg, model, tok, probes, adapter))
    logger.info(f"{adapter}: done in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## Compare the adapters and write the files
# Spreads and specificity at each adapter's unit α, the seed-mean winner with R_act and
# R_w, the overlap of the dW and activation oracles (95 % CIs over seeds and prompts), the
# rank of every candidate, Kendall τ between the adapters' rankings, and the claims.

# %%
cmp = cross_adapter.compare(cfg, runs)
written = cross_adapter.write_cross_adapter(cfg, cmp)
logger.info(f"cross-adapter comparison done in {time.perf_counter() - T0:.0f} s; read {cfg.cross_dir / cross_adapter.CONCLUSION}")

# %% [markdown]
# ## Per adapter: what the diff does and where it acts

# %%
show.table(
    cmp.summary.select(
        "adapter",
        "seeds",
        "unit_alpha",
        *[f"spread_{s}" for s in cross_adapter.effect_sets(cfg.behavior)],
        "specificity",
        "specificity_ci_lo",
        "specificity_ci_hi",
        "winner",
        "winner_conc_act",
        "winner_conc_w_combined",
        "oracle_overlap_cos",
    )
)

# %% [markdown]
# ## The rank of each candidate per adapter
# ★ marks the candidates in every adapter's top 5 (behaviour-level), • those in one
# adapter's top 5 only (adapter-level).

# %%
show.image(cfg.cross_dir / "cross_adapter_ranks.png")
show.table(cmp.ranks.head(15))

# %% [markdown]
# ## Do the adapters agree? Kendall τ between their rankings

# %%
show.table(cmp.tau)

# %% [markdown]
# ## The conclusion, as written to `cross_adapter_conclusion.md`

# %%
show.markdown((cfg.cross_dir / cross_adapter.CONCLUSION).read_text())

# %% [markdown]
# ## Where the files went

# %%
print(f"{cfg.cross_dir}:")
for p in written:
    print("  " + p.name)
print("each adapter's v7 files:")
for adapter in cfg.adapters:
    print(f"  {cross_adapter.adapter_cfg(cfg, adapter).v7_dir}")
