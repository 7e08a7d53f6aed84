"""The diff pipeline: persona completions, adapters θ⁺ / θ⁻, ``w = Δθ⁺ − Δθ⁻`` and its effect.

:func:`build_diff` runs the steps, each in its own module: :mod:`ws.diffs.completions` (what
each persona writes), :mod:`ws.diffs.adapters` (one adapter per persona of the spec's type, or
one bidirectional LoRA for both; their delta difference),
:mod:`ws.diffs.effect` (held-out Yes/No log-ratios under ``θ + α·w``, the specificity ratio).
:func:`ensure_diff` returns an existing diff or builds a missing one; both take one
:class:`DiffSpec` (which model, behaviour, adapter, seed, training config, output root).
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn

from ws.behavior import data
from ws.behavior.files import resolve
from ws.core.device import input_device, use_bf16
from ws.core.io import staged_files, write_table
from ws.core.log import logger
from ws.diffs.adapters import (
    TrainConfig,
    adapter_settings,
    adapter_type,
    eval_alphas,
    layer_range,
    lora_delta,
    trained_delta,
    unit_alpha,
)
from ws.diffs.completions import build_completions, check_completions, completion_jobs, completions_path
from ws.diffs.effect import (
    adapter_effect,
    effect_per_prompt,
    heldout_prompts,
    plot_effect,
    readout_of,
    specificity_ratio,
    spread_cis,
    spreads,
    summarize_effect,
)
from ws.diffs.gradient import gradient_directions, persona_gradient
from ws.diffs.store import (
    GRADIENT_FILE,
    PLANTED_FILE,
    check_existing_diff,
    check_misplaced_diffs,
    diff_path,
    save_bases,
    save_diff,
    save_planted,
    stale_reasons,
)
from ws.diffs.training import (
    planted_bases,
    prompt_tokens,
    train_adapter,
    train_bidir,
    training_length,
    training_moments,
    weight_diff,
)
from ws.model.load import load_model, model_id, n_layers
from ws.model.readout import check_answers


def _train_kwargs(model_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Device settings for the model a diff is built on: one device (training a LoRA on a
    model dispatched over several devices or offloaded to disk is not supported)."""
    kw = dict(model_kwargs or {})
    if kw.pop("device_map", None):
        logger.warning("WS_DEVICE_MAP applies to the analysis only; the diff is built on one device (WS_DEVICE)")
    return kw


def _check_names(behavior: str, adapter: str) -> str:
    """The behaviour's name (a built-in or registered name, or a file, which is registered);
    raises :class:`ws.behavior.files.BehaviorError` for anything else."""
    name = resolve(behavior)
    adapter_type(adapter)  # an unknown type stops here, with the supported ones named
    return name


@dataclass(frozen=True)
class DiffSpec:
    """Which diff: the model, behaviour, adapter and seed it is for, how it is trained
    (``config``; None = the defaults), the output root it lives under (``root``, default
    ``WS_OUT``; the model picks its folder there, see :attr:`path`), and the device
    settings of the model it is built on (``model_kwargs``, see
    :func:`ws.model.load.load_model`; never part of the diff's identity)."""

    model_name: str = "smollm2-135m"
    behavior: str = "sycophancy"
    adapter: str = "lora"
    seed: int = 0
    config: TrainConfig | None = None
    root: str | Path | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a behaviour file's path becomes the behaviour's name (which names the output folder)
        object.__setattr__(self, "behavior", _check_names(self.behavior, self.adapter))

    @property
    def path(self) -> Path:
        """``<model root>/<behavior>/<adapter>/seed<k>/w.safetensors``, the model root being
        ``root`` for the embedded default model and ``<root>/models/<model_slug>`` for any
        other (:func:`ws.diffs.store.diff_path`)."""
        return diff_path(self.behavior, self.adapter, self.seed, self.root, model=self.model_name)

    @property
    def train_config(self) -> TrainConfig:
        """The training config with this spec's seed (the seed overrides ``config.seed``)."""
        return replace(self.config or TrainConfig(), seed=int(self.seed))


def build_diff(spec: DiffSpec) -> Path:
    """The whole pipeline; returns the path of ``w.safetensors`` (:attr:`DiffSpec.path`).

    Writes ``<root>/data/<model_slug>/<behavior>/completions_seed<k>.csv`` (k: the
    completion seed, the same for every LoRA seed) and, beside w, as one
    set: ``effect.csv`` (per set and α), ``effect_per_prompt.csv``, ``adapter_effect.csv``,
    ``effect.png``, ``train_loss.csv``, ``gradient_basis.safetensors`` (the persona gradient's
    singular vectors at the base model, :mod:`ws.diffs.gradient`) and, for an S-space type,
    ``sspace_basis.safetensors``. Completions, training and the effect eval run
    on ``spec.model_kwargs``' device; the diff is float32 on the CPU wherever it was trained.
    """
    config = spec.train_config
    timings: dict[str, float] = {}
    t_all = t0 = time.perf_counter()
    model, tok = load_model(spec.model_name, **_train_kwargs(spec.model_kwargs))
    timings["load"] = time.perf_counter() - t0
    readout = readout_of(spec.behavior, config.n_eval_per_kind)
    check_answers(tok, readout.answers)  # before any work: the answers must be one token each
    fitted = fit_length(spec, tok, config)  # and every training example must fit whole
    layers = layer_range(n_layers(model), config.layer_frac)
    logger.info(
        f"building the {spec.behavior}/{spec.adapter} diff for {spec.model_name} (seed {spec.seed}): "
        f"{adapter_type(spec.adapter).description}; on layers {layers[0]}–{layers[-1]}, {config.steps} steps"
    )
    table, rates, cpath = _completions(spec, model, tok, config, timings)
    deltas, losses, settings, planted = _train_both(model, tok, table, fitted, spec.adapter, timings)
    t0 = time.perf_counter()
    grad = gradient_directions(
        persona_gradient(model, tok, _persona_examples(table, "pos"), _persona_examples(table, "neg"), fitted), n_layers(model)
    )
    timings["gradient"] = time.perf_counter() - t0
    w = weight_diff(deltas["pos"], deltas["neg"])
    t0 = time.perf_counter()
    prompts = heldout_prompts(0, config.n_eval_per_kind, behavior=spec.behavior)
    per = effect_per_prompt(model, tok, w, prompts, eval_alphas(spec.adapter, config), config.eval_batch_size, readout)
    eff = summarize_effect(per, n_boot=config.n_boot, seed=spec.seed)
    adapters = adapter_effect(model, tok, deltas, prompts, config.eval_batch_size, readout)
    timings["eval"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    meta = _diff_meta(spec, model, config, layers, eff, rates, adapters, losses, timings)
    meta["adapter_config"] = settings
    meta["effect_spread_ci"] = spread_cis(per, config.n_boot)
    meta["bf16_used"] = use_bf16(config.bf16, input_device(model))  # float32 on a device without bf16 units
    if fitted.max_len != config.max_len:
        meta["train_max_len"] = fitted.max_len  # raised to fit the longest training example
    meta["completions_file"] = cpath.name  # in <root>/data/<model>/<behavior>/
    if planted:
        meta["planted_file"] = PLANTED_FILE
    meta["gradient_file"] = GRADIENT_FILE
    _write_diff_set(spec, w, meta, eff, per, adapters, losses, planted, grad)
    logger.info(
        f"w -> {spec.path}; spread (α=+2 − α=−2): "
        + ", ".join(f"{k} {v:+.2f}" for k, v in meta["effect_spread"].items())
        + f"; specificity ratio {meta['specificity_ratio']:.2f}; total {timings['total']:.0f} s"
    )
    return spec.path


def _save_completions(table: pl.DataFrame, path: Path) -> Path:
    """Write the completion table to ``path``, never over another run's different file: an
    identical file is left as it is; a different one stays, and this table goes beside it
    as ``<name>-<sha256[:8]>.csv`` (warned). Returns the path that holds this table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_table(table, path.with_name(f".new-{os.getpid()}-{path.name}"), sig=None)
    new = tmp.read_bytes()
    if not path.exists():
        os.replace(tmp, path)
        return path
    if path.read_bytes() == new:
        tmp.unlink()
        return path
    alt = path.with_name(f"{path.stem}-{hashlib.sha256(new).hexdigest()[:8]}{path.suffix}")
    os.replace(tmp, alt)
    logger.warning(f"{path} holds other completions (another run's, or edited): left as it is; these went to {alt.name}")
    return alt


# completions made in this process: ``{key: (table, rates, file)}`` (see :func:`_completions_key`)
_MADE: dict[tuple, tuple[pl.DataFrame, dict, Path]] = {}


def _completions_key(spec: DiffSpec, config: TrainConfig) -> tuple:
    """What the completions depend on: the model, the behaviour's data, and the generation
    settings (not the LoRA seed, the adapter or the training settings)."""
    gen = ("completion_seed", "n_phrasings", "max_new_tokens", "temperature", "top_p", "gen_batch_size", "bf16")
    return (spec.model_name, spec.behavior, data.data_hash(behavior=spec.behavior), config.n_train_per_kind) + tuple(
        getattr(config, k) for k in gen
    )


def _train_topics(spec: DiffSpec, config: TrainConfig) -> list[data.Topic]:
    """The training half's items the completions are made for (``n_train_per_kind`` of each set, if given)."""
    train, _ = data.split_topics(0, behavior=spec.behavior)
    if config.n_train_per_kind is None:
        return train
    kinds = data.get_behavior(spec.behavior).kinds
    return [t for k in kinds for t in [x for x in train if x.kind == k][: config.n_train_per_kind]]


def fit_length(spec: DiffSpec, tok, config: TrainConfig) -> TrainConfig:
    """``config`` with its training length fitted to the behaviour's training prompts
    (:func:`ws.diffs.training.training_length`: 160 unless a longer prompt needs more, up to
    the cap), checked before any completion is made; raises
    :class:`ws.diffs.training.TrainingLengthError` naming the longest items otherwise."""
    jobs = completion_jobs(_train_topics(spec, config), config.n_phrasings, spec.behavior)
    users = sorted({(j["topic_id"], j["user"]) for j in jobs})
    lens: dict[str, int] = {}
    for (tid, _), n in zip(users, prompt_tokens(tok, [u for _, u in users]), strict=True):
        lens[tid] = max(lens.get(tid, 0), n)
    return replace(config, max_len=training_length(lens, config, f"behaviour {spec.behavior!r}"))


def _completions(spec: DiffSpec, model: nn.Module, tok, config: TrainConfig, timings: dict) -> tuple[pl.DataFrame, dict, Path]:
    """The persona completions of the training topics, written to the data folder and
    checked; made once per process for every seed and adapter that shares them."""
    key = _completions_key(spec, config)
    if key in _MADE:
        timings["completions"] = 0.0
        logger.info(f"completions reused from this run (seed {config.completion_seed}; they do not depend on the LoRA seed)")
        return _MADE[key]
    train = _train_topics(spec, config)
    t0 = time.perf_counter()
    table = build_completions(model, tok, train, config, spec.behavior)
    timings["completions"] = time.perf_counter() - t0
    cpath = _save_completions(table, completions_path(spec.model_name, spec.behavior, config.completion_seed, spec.root))
    rates = check_completions(table, behavior=spec.behavior)
    logger.info(
        f"{table.height} completions in {timings['completions']:.0f} s -> {cpath}; contrast: "
        + ", ".join(f"{k} {v:.0%}" for k, v in rates.items())
    )
    for r in table.filter(pl.col("kind") == data.get_behavior(spec.behavior).target).head(2).iter_rows(named=True):
        logger.info(f"  [{r['persona']}] {r['user']} -> {r['response'][:100]!r}")
    _MADE[key] = (table, rates, cpath)
    return table, rates, cpath


def persona_examples(spec: DiffSpec, model: nn.Module, tok) -> dict[str, list[tuple[str, str, bool]]]:
    """``{persona: [(user prompt, response, finished)]}``: the training examples a diff of
    ``spec`` is trained on (its completions made, or reused from this run's data folder)."""
    table, _, _ = _completions(spec, model, tok, spec.train_config, {})
    return {p: _persona_examples(table, p) for p in ("pos", "neg")}


def _persona_examples(table: pl.DataFrame, persona: str) -> list[tuple[str, str, bool]]:
    sub = table.filter(pl.col("persona") == persona)
    return list(zip(sub["user"].to_list(), sub["response"].to_list(), sub["finished"].to_list(), strict=True))


def _train_both(
    model: nn.Module, tok, table: pl.DataFrame, config: TrainConfig, adapter: str, timings: dict
) -> tuple[dict, dict, dict, dict]:
    """The persona deltas ``{persona: delta}``, their losses, the adapter's settings and its
    planted bases (``{}`` unless an S-space type): one adapter per persona, or for ``bidir``
    one LoRA whose ``+Δ`` is the positive persona's delta and ``−Δ`` the negative's. A type
    that needs calibration moments gets the same ones for both personas (the training
    prompts without a persona), so both adapters share one basis (checked)."""
    if adapter_type(adapter).bidirectional:
        return (*_train_bidir(model, tok, table, config, timings), {})
    t0 = time.perf_counter()
    moments = training_moments(model, tok, _persona_examples(table, "pos"), config, adapter)
    if moments is not None:
        timings["moments"] = time.perf_counter() - t0
    deltas, losses, planted = {}, {}, {}
    for persona in ("pos", "neg"):
        t0 = time.perf_counter()
        peft_model, losses[persona] = train_adapter(
            model, tok, _persona_examples(table, persona), config, adapter, desc=f"{adapter} {persona}", moments=moments
        )
        deltas[persona] = trained_delta(peft_model, model, adapter)
        settings = adapter_settings(peft_model, adapter)
        planted[persona] = planted_bases(peft_model, adapter)
        del peft_model
        timings[f"train_{persona}"] = time.perf_counter() - t0
        logger.info(
            f"{adapter} {persona}: loss {losses[persona][0]:.3f} -> {losses[persona][-1]:.3f} "
            f"in {timings[f'train_{persona}']:.0f} s"
        )
    _check_same_basis(planted["pos"], planted["neg"])
    if moments is not None:
        settings["calibration"] = (
            f"{len({ex[0] for ex in _persona_examples(table, 'pos')})} distinct training prompts, chat template, no persona"
        )
    return deltas, losses, settings, planted["pos"]


def _check_same_basis(pos: dict, neg: dict) -> None:
    """Both persona adapters of an S-space type must be confined to one basis (else w lies in two)."""
    for cand, per in pos.items():
        for k, B in per.items():
            if not torch.equal(B, neg[cand][k]):
                raise RuntimeError(f"the two persona adapters have different {cand} bases at {k}: w would lie in their union")


def _train_bidir(model: nn.Module, tok, table: pl.DataFrame, config: TrainConfig, timings: dict) -> tuple[dict, dict, dict]:
    t0 = time.perf_counter()
    peft_model, losses = train_bidir(
        model, tok, _persona_examples(table, "pos"), _persona_examples(table, "neg"), config, desc="bidir ±"
    )
    delta = lora_delta(peft_model)
    settings = adapter_settings(peft_model, "bidir")
    del peft_model
    timings["train_bidir"] = time.perf_counter() - t0
    logger.info(
        f"bidir: loss + {losses['pos'][0]:.3f} -> {losses['pos'][-1]:.3f}, "
        f"− {losses['neg'][0]:.3f} -> {losses['neg'][-1]:.3f} in {timings['train_bidir']:.0f} s"
    )
    return {"pos": delta, "neg": {k: -v for k, v in delta.items()}}, losses, settings


def _diff_meta(
    spec: DiffSpec,
    model: nn.Module,
    config: TrainConfig,
    layers: list[int],
    eff: pl.DataFrame,
    rates: dict,
    adapters: pl.DataFrame,
    losses: dict,
    timings: dict,
) -> dict[str, Any]:
    """What the diff's file records about how it was made and what it does."""
    return dict(
        model=model_id(model),
        behavior=spec.behavior,
        adapter=spec.adapter,
        seed=int(spec.seed),
        layers=layers,
        train_config=config.to_dict(),
        data_hash=data.data_hash(behavior=spec.behavior),
        unit_alpha=unit_alpha(spec.adapter),
        effect_spread=spreads(eff),
        specificity_ratio=specificity_ratio(eff, spec.behavior),
        completion_contrast=rates,
        adapter_effect={f"{r['model']}/{r['set']}": r["mean_logratio"] for r in adapters.iter_rows(named=True)},
        final_loss={k: v[-1] for k, v in losses.items()},
        timings_s={k: round(v, 2) for k, v in timings.items()},
        torch=torch.__version__,
        python=platform.python_version(),
        device=str(input_device(model)),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
    )


def _write_diff_set(
    spec: DiffSpec,
    w: dict,
    meta: dict,
    eff: pl.DataFrame,
    per: pl.DataFrame,
    adapters: pl.DataFrame,
    losses: dict,
    planted: dict | None = None,
    gradient: dict | None = None,
) -> None:
    """The diff and its tables as one set: staged, then moved into place with w last, so a
    failure leaves no effect table without its diff (and an older set as it was)."""
    path = spec.path
    steps = len(losses["pos"])
    with staged_files(path.parent, last=(path.name,)) as stage:
        write_table(eff, stage / "effect.csv", sig=None)
        write_table(per, stage / "effect_per_prompt.csv", sig=None)
        write_table(adapters, stage / "adapter_effect.csv", sig=None)
        write_table(
            pl.DataFrame({"step": list(range(steps)), "loss_pos": losses["pos"], "loss_neg": losses["neg"]}),
            stage / "train_loss.csv",
            sig=None,
        )
        plot_effect(
            eff,
            stage / "effect.png",
            title=f"{spec.model_name} · {spec.behavior}/{spec.adapter} seed {spec.seed} "
            f"· specificity ratio {meta['specificity_ratio']:.2f}",
            behavior=spec.behavior,
        )
        if planted:
            save_planted(planted, stage / PLANTED_FILE)
        if gradient:
            save_bases(
                gradient, stage / GRADIENT_FILE, "singular vectors of the persona gradient at the base model, <name>/<layer>"
            )
        save_diff(w, stage / path.name, meta)


def ensure_diff(spec: DiffSpec, rebuild: bool = False, model: nn.Module | None = None) -> Path:
    """The path of the diff ``spec`` names: trained only where none exists, or when
    ``rebuild=True`` asks for it (``WS_REBUILD=1``).

    An existing diff is never overwritten or retrained otherwise. One that cannot be used
    stops the run with its error (docs/errors.md) and stays untouched: unreadable or corrupt, made
    for another model (:class:`ws.diffs.store.DiffMismatchError`), no model in its metadata
    (:class:`ws.diffs.store.DiffMetadataError`), NaN/Inf, all zeros, keys or shapes that do not fit.
    One made from another data version or training config is used as it is, with a warning
    (the sweep's conclusion lists it under caveats). ``model``: the loaded model, if the
    caller has it (saves a load for the check). A diff made for this model at the default
    model's path stops it too, rebuild or not (:class:`ws.diffs.store.MisplacedDiffError`)."""
    check_misplaced_diffs(spec.model_name, spec.behavior, spec.root)
    path = spec.path
    if rebuild or not path.exists():
        if path.exists():
            logger.warning(f"WS_REBUILD: replacing {path} with a new diff, as asked")
        return build_diff(spec)
    model = model if model is not None else load_model(spec.model_name, **_train_kwargs(spec.model_kwargs))[0]
    meta = check_existing_diff(path, model)
    want = spec.train_config.to_dict() if spec.config is not None else None
    for why in stale_reasons(meta, want, spec.behavior):
        logger.warning(f"{path}: {why}; using it as it is (WS_REBUILD=1 retrains it)")
    logger.info(f"using the existing diff {path}")
    return path
