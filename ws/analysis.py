"""One call for a researcher's own notebook: :func:`analyse` a diff on a model already loaded.

No ``WS_*`` variables: the model, its tokenizer and the diff are the caller's objects, the
options are keyword arguments (the :class:`ws.config.Config` fields). It runs what the v7
notebook runs (and v8's block-local and causal tests with ``stages=("v7", "v8")``), returns
the tables (polars) and the conclusion text, and writes the usual file set only when
``out`` is given. The project's notebooks call the same function (with their run's
configuration), so there is one path::

    from ws.analysis import analyse
    a = analyse(model, tok, w, behavior="sycophancy", vectors=["refusal.gguf"], out="out/mine")
    print(a.conclusion)                       # v7_conclusion.md (v8's with stages=("v7", "v8"))
    a.tables["v7_summary_pct.tsv"].head()     # every table by its file name
    a.files                                   # what was written (empty without out)

``diff``: a ``dict[str, Tensor]`` keyed by the model's parameter names, the path of a saved
diff (``w.safetensors``), or ``{seed: (w, meta)}`` as :func:`ws.v7.sweep.get_diffs` returns
it. A diff whose metadata does not record its effect gets the held-out effect eval first
(:func:`ws.diffs.effect.measure`), so the conclusion can say what it does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn

from ws.behavior.files import MAX_ITEMS_PER_SET, resolve
from ws.config import Config, ConfigError
from ws.core.log import logger
from ws.core.paths import resolve_user_path, run_dir
from ws.diffs.effect import measure
from ws.diffs.store import check_against_model, check_finite, check_nonzero, load_diff
from ws.model.load import model_id
from ws.model.readout import check_answers
from ws.v7 import sweep
from ws.v8 import sweep as v8
from ws.v8.results import BlockLocal

STAGES = ("v7", "v8")
Diffs = dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]]


@dataclass
class Analysis:
    """What :func:`analyse` found: the run's configuration, every seed's results, the
    tables and markdown texts of each stage's file set (by file name), and the files written."""

    config: Config
    probes: sweep.Probes
    results: list[sweep.SeedResult]
    stability: sweep.SeedStability
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    block_local: BlockLocal | None = None
    causal: Any = None  # ws.v8.causal.CausalResult with stage v8

    @property
    def conclusion(self) -> str:
        """The last stage's conclusion (``v8_conclusion.md`` with v8, else ``v7_conclusion.md``)."""
        return self.texts.get("v8_conclusion.md") or self.texts["v7_conclusion.md"]


def analysis_config(
    model: nn.Module,
    behavior: str | Path = "sycophancy",
    vectors: Sequence[str | Path] = (),
    out: str | Path | None = None,
    label: str = "analysed",
    **options: Any,
) -> Config:
    """The :class:`Config` of an :func:`analyse` call: the model's name, the behaviour (a
    built-in name or a file, checked now), the vector files, ``out`` as the output root
    (nothing cached or written without it) and any other :class:`Config` field by name."""
    known = {f.name for f in fields(Config)}
    bad = sorted(set(options) - known)
    if bad:
        raise ConfigError(
            f"analyse() got unknown option(s) {', '.join(bad)}; the options are Config's fields: {', '.join(sorted(known))}"
        )
    vecs = tuple(resolve_user_path(str(v)) for v in vectors)
    missing = [str(v) for v in vecs if not v.is_file()]
    if missing:
        raise ConfigError(f"analyse(): no such steering-vector file {missing[0]!r}")
    name = resolve(str(behavior), run_dir(), max_items=options.get("max_items", MAX_ITEMS_PER_SET))
    kw: dict[str, Any] = dict(model=model_id(model), behavior=name, adapter=label, vectors=vecs)
    if out is None:
        kw["cache"] = False
    else:
        root = resolve_user_path(str(out))
        kw.update(out_root=root, cache_root=root / "cache", logs_root=root / "logs")
    return Config(**{**kw, **options})


def as_diffs(diff: Any, model: nn.Module) -> Diffs:
    """``{seed: (w, meta)}`` from a diff dict, a saved diff's path, or that mapping itself; every
    diff checked against the model (finite, not all zero, every key and shape fits)."""
    if isinstance(diff, (str, Path)):
        return {0: load_diff(diff, model)}
    if isinstance(diff, Mapping) and diff and all(isinstance(k, int) for k in diff):
        out = {int(s): (dict(w), dict(m)) for s, (w, m) in diff.items()}
    elif isinstance(diff, Mapping) and diff and all(isinstance(v, torch.Tensor) for v in diff.values()):
        out = {0: ({k: v.detach().to("cpu", torch.float32) for k, v in diff.items()}, {"model": model_id(model)})}
    else:
        raise TypeError("diff must be a dict of tensors keyed by parameter name, a w.safetensors path, or {seed: (w, meta)}")
    for _, (w, meta) in out.items():
        check_finite(w)
        check_nonzero(w)
        check_against_model(w, model, meta)
    return out


def _with_effect(cfg: Config, model: nn.Module, tok, diffs: Diffs) -> Diffs:
    """Diffs whose metadata records no effect get it measured (the conclusion's first line)."""
    out = {}
    for seed, (w, meta) in diffs.items():
        if "effect_spread" not in meta:
            logger.info(f"seed {seed}: measuring the diff's held-out effect (its metadata records none)")
            _, _, measured = measure(model, tok, w, cfg.behavior, batch_size=cfg.batch_size, n_boot=cfg.n_boot)
            meta = {**meta, **measured}
        out[seed] = (w, meta)
    return out


def analyse(
    model: nn.Module,
    tokenizer,
    diff: Any,
    *,
    behavior: str | Path = "sycophancy",
    vectors: Sequence[str | Path] = (),
    out: str | Path | None = None,
    stages: Sequence[str] = ("v7",),
    config: Config | None = None,
    **options: Any,
) -> Analysis:
    """Analyse ``diff`` on ``model``: v7 (where it acts), and v8 (which subspace carries it).

    Args:
        model: the base model the diff was made for (any loaded causal LM of the Llama / Qwen3
            layout).
        tokenizer: its tokenizer (the behaviour's two answers must be one token each).
        diff: the weight diff ``w``: a ``{parameter name: tensor}`` mapping, a safetensors file,
            a diff folder, or a list of them (one per seed).
        behavior: a built-in behaviour's name or a behaviour / A-B file.
        vectors: steering-vector files scored as extra candidates.
        out: the output root; None writes nothing and caches nothing.
        stages: ``("v7",)`` or ``("v7", "v8")``.
        config: a run's whole :class:`~ws.config.Config` (the notebooks pass theirs); it replaces
            ``behavior``, ``vectors``, ``out`` and ``options``, and the file sets are written.
        **options: any other :class:`~ws.config.Config` field by name (e.g. ``k=16``).

    Returns:
        An :class:`Analysis`: the per-seed results, the tables, and the files written (see the
        module doc).

    Raises:
        ValueError: unknown stages; ConfigError: a bad option, behaviour or vector file (before
            any work).
    """
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"stages must name some of {STAGES}, got {tuple(stages)}")
    write = config is not None or out is not None
    cfg = config if config is not None else analysis_config(model, behavior, vectors, out, **options)
    check_answers(tokenizer, sweep.data.get_behavior(cfg.behavior).readout)
    sweep.user_vectors(cfg, model)  # a vector file that does not fit stops here, before any work
    diffs = _with_effect(cfg, model, tokenizer, as_diffs(diff, model))
    cfg = replace(cfg, seeds=tuple(diffs))
    probes = sweep.probe_prompts(cfg, tokenizer)
    results = sweep.run_seeds(cfg, model, tokenizer, probes, diffs)
    stab = sweep.seed_stability(results)
    a = Analysis(cfg, probes, results, stab)
    if "v7" in stages:
        o = sweep.v7_outputs(cfg, probes, results, stab)
        a.tables.update(o.tables)
        a.texts.update(o.texts)
        if write:
            a.files += sweep.write_v7(cfg, probes, results, stab, o)
    if "v8" in stages:
        _v8(a, model, tokenizer, diffs, write)
    return a


def _v8(a: Analysis, model: nn.Module, tok, diffs: Diffs, write: bool) -> None:
    """v8's block-local and causal tests on the first seed's diff, into ``a``."""
    cfg, res = a.config, a.results[0]
    w = diffs[res.seed][0]
    names, ranking = v8.causal_candidates(res.summary, a.stability.per_candidate, cfg.n_causal)
    a.block_local = v8.block_local(cfg, model, tok, a.probes, res, w)
    a.causal = v8.causal(cfg, model, tok, res, w, names, ranking)
    o = v8.v8_outputs(cfg, a.probes, a.results, a.stability, a.block_local, a.causal)
    a.tables.update(o.tables)
    a.texts.update(o.texts)
    if write:
        a.files += v8.write_v8(cfg, a.probes, a.results, a.stability, a.block_local, a.causal, o)
