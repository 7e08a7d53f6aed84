"""One typed configuration for every notebook and ``make`` target, read from ``WS_*`` variables.

:data:`VARIABLES` is the single definition: name, kind, default (and smoke-mode default),
what is allowed, and what it means. :func:`from_env` parses and validates every variable
before any model loads; a bad value raises :class:`ConfigError` naming the variable, the
value and what is allowed. The README's variable table is :func:`markdown_table` (a test
keeps the two equal).

Rules that hold for every variable:

- unset means the default; set but empty is refused (unset it to get the default);
- booleans accept ``1/0, true/false, yes/no, on/off`` (any case), nothing else;
- paths (``WS_OUT``, ``WS_CACHE``, ``WS_LOGS``, a model folder) resolve against the folder
  the user ran the command from (:func:`ws.core.paths.run_dir`), never the kernel's own folder.

    cfg = from_env()            # Config(model='smollm2-135m', seeds=(0, 1, 2), ...)
    cfg.v7_dir                  # <out>/sycophancy/lora/v7
    from_env({"WS_MODEL": "tiny-llama"}).v7_dir   # <out>/models/tiny-llama/sycophancy/lora/v7

Every output path of a run starts at :attr:`Config.model_root`
(:func:`ws.core.paths.model_root`: the output root for the embedded default model,
``<out>/models/<model_slug>`` for any other).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ws.behavior.files import MAX_ITEMS_PER_SET, BehaviorError, builtin_names, resolve
from ws.core.caveats import CAUSAL_HALF_WIDTH
from ws.core.device import DEVICE_CHOICES, device_problem
from ws.core.io import check_writable, hold_run_lock
from ws.core.linalg import LINALG_MODES
from ws.core.log import logger, setup_logging
from ws.core.paths import (
    CROSS_ADAPTER_DIR,
    UnsafeNameError,
    cache_dir,
    logs_dir,
    model_root,
    model_slug,
    out_dir,
    repo_root,
    resolve_user_path,
    run_dir,
    safe_component,
)
from ws.diffs.adapters import ADAPTER_TYPES, TrainConfig, adapter_table
from ws.diffs.budget import KL_BUDGET
from ws.diffs.store import check_misplaced_diffs, diff_path
from ws.model.vectors import SUFFIXES as VECTOR_SUFFIXES

#: The built-in behaviours: one file each in ``behaviors/`` (``WS_BEHAVIOR`` also takes a file path).
BEHAVIORS = builtin_names()
#: The adapter types a diff can be trained with: their registrations in :mod:`ws.diffs.adapters`,
#: in order; the cross-adapter comparison runs all of them unless ``WS_ADAPTERS`` names fewer.
ADAPTERS = tuple(ADAPTER_TYPES)
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
#: The largest seed (2**32 − 1): numpy's legacy seeding and every generator the suite seeds take it.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A ``WS_*`` variable has a value the suite cannot use (the message says which and why)."""


# ----------------------------------------------------------------------------- parsers
def _bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use one of {', '.join(TRUE)} or {', '.join(FALSE)}")


def _int(name: str, raw: str, lo: int = 1) -> int:
    try:
        v = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number: give an integer ≥ {lo}") from None
    if v < lo:
        raise ConfigError(f"{name}={raw!r} is too small: it must be ≥ {lo}")
    return v


def _number(name: str, raw: str, zero_ok: bool, example: str) -> float:
    """A finite number above 0 (``≥ 0`` when ``zero_ok``), else :class:`ConfigError` naming the bound."""
    bound = "≥ 0" if zero_ok else "> 0"
    try:
        v = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number: give a number {bound}, e.g. {name}={example}") from None
    if not ((v >= 0 if zero_ok else v > 0) and v < float("inf")):
        raise ConfigError(f"{name}={raw!r} is out of range: it must be a finite number {bound}")
    return v


def _nonnegative(name: str, raw: str) -> float:
    return _number(name, raw, True, "0.03")


def _positive(name: str, raw: str) -> float:
    return _number(name, raw, False, "0.05")


def _seeds(name: str, raw: str) -> tuple[int, ...]:
    parts = [p.strip() for p in raw.split(",")]
    if any(p == "" for p in parts):
        raise ConfigError(f"{name}={raw!r} has an empty entry: give comma-separated integers ≥ 0, e.g. {name}=0,1,2")
    seeds = _in_seed_range(name, raw, tuple(_int(name, p, lo=0) for p in parts))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{name}={raw!r} repeats a seed: give each seed once")
    return seeds


def _in_seed_range(name: str, raw: str, seeds: tuple[int, ...]) -> tuple[int, ...]:
    """``seeds`` when each is at most :data:`MAX_SEED`, else :class:`ConfigError`."""
    big = [s for s in seeds if s > MAX_SEED]
    if big:
        raise ConfigError(
            f"{name}={raw!r} has a seed out of range ({big[0]}): a seed is an integer from 0 to {MAX_SEED} "
            f"(below 2**32, what numpy and torch take)"
        )
    return seeds


def _seed(name: str, raw: str) -> int:
    """One seed, 0 to :data:`MAX_SEED`."""
    return _in_seed_range(name, raw, (_int(name, raw, lo=0),))[0]


def _unsafe(name: str, raw: str, e: UnsafeNameError) -> ConfigError:
    """The :class:`ConfigError` of a value whose folder name :func:`ws.core.paths.safe_component` refused."""
    return ConfigError(f"{name}={raw!r} cannot name a folder: {e}")


def _adapters(name: str, raw: str) -> tuple[str, ...]:
    parts = [p.strip() for p in raw.split(",")]
    if any(p == "" for p in parts):
        raise ConfigError(f"{name}={raw!r} has an empty entry: give comma-separated adapter types, e.g. {name}=lora,bidir")
    known = tuple(ADAPTER_TYPES)  # read now: a type registered after import counts too
    bad = [p for p in parts if p not in known]
    if bad:
        raise ConfigError(
            f"{name}={raw!r} names an adapter type the suite does not have ({', '.join(bad)}): choose from {', '.join(known)}"
        )
    if len(set(parts)) != len(parts):
        raise ConfigError(f"{name}={raw!r} repeats an adapter type: give each once")
    return tuple(_adapter(name, p) for p in parts)


def _choice(options: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        v = raw.strip()
        if v not in options:
            raise ConfigError(f"{name}={raw!r} is not supported: choose one of {', '.join(options)}")
        return v

    return parse


def _adapter(name: str, raw: str) -> str:
    """One registered adapter type (:data:`ws.diffs.adapters.ADAPTER_TYPES`, read now), whose
    name can be its output folder's."""
    v = _choice(tuple(ADAPTER_TYPES))(name, raw)
    try:
        return safe_component(v, "an adapter type's name (it names the output folder)")
    except UnsafeNameError as e:
        raise _unsafe(name, raw, e) from None


def _behavior(name: str, raw: str) -> str:
    """A built-in behaviour's name, or the path of a behaviour file (relative to the run
    folder), read and validated now; the value is the behaviour's name (its output folder)."""
    try:
        return resolve(raw, run_dir())
    except BehaviorError as e:
        raise ConfigError(
            f"{name}={raw!r} is not a built-in behaviour ({', '.join(BEHAVIORS)}) or a usable behaviour file: {e}"
        ) from None


def _behavior_capped(raw: str, max_items: int) -> str:
    """:func:`_behavior` with ``WS_MAX_ITEMS`` items per set (the behaviour registered with that cap)."""
    try:
        return resolve(raw, run_dir(), max_items=max_items)
    except BehaviorError as e:
        raise ConfigError(f"WS_BEHAVIOR={raw!r} with WS_MAX_ITEMS={max_items}: {e}") from None


def _path(name: str, raw: str) -> Path:
    return resolve_user_path(raw.strip())


def _signed_int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number (it may be negative, e.g. {name}=-1)") from None


def _folder_with(required: str, what: str) -> Callable[[str, str], Path]:
    """A folder (relative to the run folder) that exists and holds ``required``."""

    def parse(name: str, raw: str) -> Path:
        p = resolve_user_path(raw.strip())
        if not p.is_dir():
            raise ConfigError(f"{name}={raw!r}: no such folder ({p}); give the folder of {what}")
        if not (p / required).is_file():
            held = ", ".join(sorted(x.name for x in p.iterdir())[:8]) or "nothing"
            raise ConfigError(f"{name}={raw!r}: {p} has no {required}, so it is not {what} (it holds: {held})")
        return p

    return parse


def _subspace_file(name: str, raw: str) -> Path:
    """A subspace file (v8's ``v8_carrier_basis.safetensors``) that exists."""
    p = resolve_user_path(raw.strip())
    if not p.is_file():
        raise ConfigError(f"{name}={raw!r}: no such file ({p}); give a v8 run's v8_carrier_basis.safetensors")
    return p


def _vector_files(name: str, raw: str) -> tuple[Path, ...]:
    """Comma-separated steering-vector files that exist and have a readable suffix."""
    parts = [x.strip() for x in raw.split(",")]
    if any(x == "" for x in parts):
        raise ConfigError(f"{name}={raw!r} has an empty entry: give comma-separated files, e.g. {name}=refusal.gguf,caa.pt")
    out = []
    for x in parts:
        p = resolve_user_path(x)
        if not p.is_file():
            raise ConfigError(f"{name}: no such file {x!r} ({p})")
        if p.suffix not in VECTOR_SUFFIXES:
            raise ConfigError(f"{name}: {x!r} is not a steering-vector file: use {', '.join(VECTOR_SUFFIXES)}")
        out.append(p)
    if len({p.stem for p in out}) != len(out):
        raise ConfigError(f"{name}={raw!r}: two files share a name (each names its candidate vector:<name>): rename one")
    return tuple(out)


def _device(name: str, raw: str) -> str:

    why = device_problem(raw)
    if why:
        raise ConfigError(f"{name}={raw!r} cannot be used: {why} (allowed: {DEVICE_CHOICES})")
    return raw.strip().lower()


def _model(name: str, raw: str) -> str:
    """A model name stays a name; a folder that exists (relative to the run folder) becomes absolute."""
    v = raw.strip()
    p = resolve_user_path(v)
    v = str(p) if p.exists() else v
    try:
        model_slug(v)
    except UnsafeNameError as e:
        raise _unsafe(name, raw, e) from None
    return v


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Config:
    """Parameters of a run (sweep or diff build). Build it with :func:`from_env`."""

    model: str = "smollm2-135m"
    behavior: str = "sycophancy"
    max_items: int = MAX_ITEMS_PER_SET  # WS_MAX_ITEMS: items per set a run uses (ws.behavior.files.cap_items)
    adapter: str = "lora"
    adapters: tuple[str, ...] = ADAPTERS
    seeds: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    rebuild: bool = False
    steps: int | None = None
    max_len: int | None = None  # WS_MAX_LEN: the training length (None: fitted to the data, see TrainConfig)
    out_root: Path = field(default_factory=out_dir)
    cache_root: Path = field(default_factory=cache_dir)
    logs_root: Path = field(default_factory=logs_dir)
    k: int = 8  # PCS
    k_broad: int = 64  # K_BROAD
    n_fit: int | None = None  # None: every training false-claim topic
    n_eval: int | None = None  # None: every held-out false-claim topic
    batch_size: int = 16
    n_boot: int = 2000
    n_causal: int = 10  # v8: candidates in the causal test
    n_causal_null: int = 20  # v8: random subspaces per rank in its null
    causal_null_max: int | None = None  # v8: the most null draws per rank (None: 5 × n_causal_null)
    causal_items: int = 48  # v8: held-out items per set in the causal test (a seeded subset)
    causal_half_width: float = CAUSAL_HALF_WIDTH  # v8: precision target sizing the causal test's rows
    kl_budget: float = KL_BUDGET  # cross-adapter: the matched KL budget (nats)
    cache: bool = True
    device: str = "auto"
    dtype: str = "auto"
    linalg: str = "cpu"  # WS_LINALG: where the candidate build's and the lens's factorisations run
    device_map: str = "none"
    smoke: bool = False
    boot_seed: int = 0
    basis_seed: int = 0  # k-means, random self-test
    persona_pair: int = 0  # which persona pair builds the persona± FIT captures
    train_overrides: dict = field(default_factory=dict)
    pos_adapter: Path | None = None
    neg_adapter: Path | None = None
    bidir_adapter: Path | None = None
    pos_model: Path | None = None
    neg_model: Path | None = None
    subspace: Path | None = None  # WS_SUBSPACE: make monitor's subspace file
    vectors: tuple[Path, ...] = ()
    vector_convention: str = "auto"
    vector_shift: int = 0

    @property
    def imported(self) -> str | None:
        """What the diff is imported from instead of trained: ``"peft"`` (a pair of adapters),
        ``"peft-bidir"`` (one bidirectional adapter), ``"checkpoints"`` (a pair), or None."""
        if self.pos_adapter is not None:
            return "peft"
        if self.bidir_adapter is not None:
            return "peft-bidir"
        if self.pos_model is not None:
            return "checkpoints"
        return None

    @property
    def import_sources(self) -> tuple[Path, ...]:
        """The folders the diff is imported from (empty when it is trained)."""
        srcs = (self.pos_adapter, self.neg_adapter, self.bidir_adapter, self.pos_model, self.neg_model)
        return tuple(p for p in srcs if p is not None)

    @property
    def model_root(self) -> Path:
        """This model's folder under ``WS_OUT``: the output root for the embedded default
        model, ``<out>/models/<model_slug>`` for any other (:func:`ws.core.paths.model_root`)."""
        return model_root(self.model, self.out_root)

    @property
    def v7_dir(self) -> Path:
        """``<model root>/<behavior>/<adapter>/v7``: the v7 file set."""
        return self.model_root / self.behavior / self.adapter / "v7"

    @property
    def v8_dir(self) -> Path:
        """``<model root>/<behavior>/<adapter>/v8``: the v8 file set."""
        return self.model_root / self.behavior / self.adapter / "v8"

    @property
    def cross_dir(self) -> Path:
        """``<model root>/<behavior>/cross_adapter``: the cross-adapter comparison's files."""
        return self.model_root / self.behavior / CROSS_ADAPTER_DIR

    def diff_path(self, seed: int, adapter: str | None = None) -> Path:
        """This model's diff of the behaviour, ``adapter`` (default: this run's) and ``seed``
        (:func:`ws.diffs.store.diff_path`)."""
        return diff_path(self.behavior, adapter or self.adapter, seed, self.out_root, model=self.model)

    def train_config(self):
        """The :class:`ws.diffs.adapters.TrainConfig` of this run: smoke sizes, ``WS_STEPS`` and ``WS_MAX_LEN`` applied;
        None when nothing overrides the defaults."""
        over = dict(self.train_overrides)
        if self.steps is not None:
            over["steps"] = self.steps
        if self.max_len is not None:
            over["max_len"] = self.max_len
        return replace(TrainConfig(), **over) if over else None

    def model_kwargs(self) -> dict[str, str | None]:
        """Keyword arguments of :func:`ws.model.load.load_model` for this run's device settings."""
        return {"device": self.device, "dtype": self.dtype, "device_map": None if self.device_map == "none" else self.device_map}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        return from_env(env)


@dataclass(frozen=True)
class Var:
    """One ``WS_*`` variable: the :class:`Config` field it sets, how it parses, its defaults."""

    name: str
    attr: str
    parse: Callable[[str, str], Any]
    default: str | None  # as the README shows it; None: the Config field's default (:func:`_shown`)
    meaning: str
    smoke_default: str | None = None  # the default under WS_SMOKE=1, when different
    allowed: str = ""


VARIABLES: tuple[Var, ...] = (
    Var(
        "WS_MODEL",
        "model",
        _model,
        None,
        "`smollm2-135m` (embedded), `tiny-llama`, `tiny-qwen3`, a local model folder, or a Hugging Face id "
        "whose weights are on disk (e.g. `Qwen/Qwen3-0.6B`)",
        smoke_default="tiny-llama",
        allowed="a name or folder",
    ),
    Var(
        "WS_BEHAVIOR",
        "behavior",
        _behavior,
        None,
        'the behaviour: a built-in name or the path of a behaviour file (see "Your own behaviour"); its name '
        "names the output folder",
        allowed=", ".join(BEHAVIORS) + ", or a file",
    ),
    Var(
        "WS_MAX_ITEMS",
        "max_items",
        lambda n, r: _int(n, r, lo=2),
        None,
        "the most items of one set a run uses: a larger set (a 1,000-item A/B file) keeps a seeded subset of whole "
        "groups, with a warning, so that it costs about what a built-in behaviour costs (their sets have at most "
        '60 items, so they are never cut; docs/behaviors.md, "Large datasets")',
        allowed="integer ≥ 2",
    ),
    Var(
        "WS_ADAPTER",
        "adapter",
        _adapter,
        None,
        'the adapter type the diff is trained with (names the output folder); see "Adapter types"',
        allowed=", ".join(ADAPTERS),
    ),
    Var(
        "WS_ADAPTERS",
        "adapters",
        _adapters,
        None,
        "the adapter types `make cross-adapter` compares (each trained for every seed of `WS_SEEDS`)",
        allowed="adapter types, comma-separated",
    ),
    Var(
        "WS_SEEDS",
        "seeds",
        _seeds,
        None,
        "training seeds of the sweep; each gets its own diff and scores",
        smoke_default="0",
        allowed="integers 0 … 2³²−1, comma-separated",
    ),
    Var("WS_SEED", "seed", _seed, None, "the one seed `nbs/train_diff.py` builds", allowed="integer 0 … 2³²−1"),
    Var("WS_REBUILD", "rebuild", _bool, None, "`1`: retrain a diff that exists (replaces it on purpose)", allowed="boolean"),
    Var(
        "WS_STEPS",
        "steps",
        _int,
        None,
        "training steps of each adapter (unset: the built-in default, 160)",
        allowed="integer ≥ 1",
    ),
    Var(
        "WS_MAX_LEN",
        "max_len",
        _int,
        None,
        "the training length (prompt + completion tokens; 160 when unset), raised to fit the longest training prompt "
        "plus the completion budget up to 1024, or up to this value when it is larger: set it to train on longer "
        'prompts (docs/behaviors.md, "Long prompts")',
        allowed="integer ≥ 1",
    ),
    Var(
        "WS_OUT",
        "out_root",
        _path,
        "out/",
        "output root (relative paths: from the folder you ran the command in); a model other than the embedded one "
        'writes under `<WS_OUT>/models/<model>/` (see "Where each model\'s files go")',
        allowed="a folder",
    ),
    Var("WS_CACHE", "cache_root", _path, "cache/", "converted models and activation caches", allowed="a folder"),
    Var("WS_LOGS", "logs_root", _path, "logs/", "verbose logs and executed notebooks", allowed="a folder"),
    Var("WS_PCS", "k", _int, None, "basis rank k", allowed="integer ≥ 1"),
    Var(
        "WS_K_BROAD",
        "k_broad",
        _int,
        None,
        "rank of the broad read spaces projected away",
        smoke_default="16",
        allowed="integer ≥ 1",
    ),
    Var(
        "WS_N_FIT",
        "n_fit",
        _int,
        None,
        "number of FIT probes, a seeded subset (unset: all)",
        smoke_default="12",
        allowed="integer ≥ 1",
    ),
    Var(
        "WS_N_EVAL",
        "n_eval",
        _int,
        None,
        "number of EVAL probes, a seeded subset (unset: all)",
        smoke_default="8",
        allowed="integer ≥ 1",
    ),
    Var("WS_BATCH", "batch_size", _int, None, "prompts per forward pass in the captures", allowed="integer ≥ 1"),
    Var("WS_N_BOOT", "n_boot", _int, None, "bootstrap resamples", smoke_default="300", allowed="integer ≥ 1"),
    Var(
        "WS_N_CAUSAL",
        "n_causal",
        _int,
        None,
        "v8 causal test: how many write/mixed candidates (best seed-mean joint "
        "score first) besides the ceilings and self-test rows",
        smoke_default="3",
        allowed="integer ≥ 1",
    ),
    Var(
        "WS_N_CAUSAL_NULL",
        "n_causal_null",
        lambda n, r: _int(n, r, lo=2),
        None,
        "v8 causal test: random subspaces per rank (the null of retention; 20 or more for the claims)",
        smoke_default="5",
        allowed="integer ≥ 2",
    ),
    Var(
        "WS_CAUSAL_NULL_MAX",
        "causal_null_max",
        lambda n, r: _int(n, r, lo=2),
        None,
        "v8 causal test: the most random subspaces per rank its null grows to while more draws could still "
        "change a BH decision (unset: 5 × `WS_N_CAUSAL_NULL`; equal to it: a fixed null); bounds the null's cost",
        allowed="integer ≥ `WS_N_CAUSAL_NULL`",
    ),
    Var(
        "WS_CAUSAL_ITEMS",
        "causal_items",
        lambda n, r: _int(n, r, lo=2),
        None,
        "v8 causal test: held-out items per prompt set it steers (a seeded subset where a set has more; the "
        "built-in behaviours have at most 24, so they use all); bounds its cost for a large behaviour file",
        allowed="integer ≥ 2",
    ),
    Var(
        "WS_CAUSAL_HALF_WIDTH",
        "causal_half_width",
        _nonnegative,
        None,
        "v8 causal test: the precision target that sizes its prompt rows, the widest retention CI half-width in "
        "shares of the writers' effect, read on a seeded pilot of 16 items per set (0: every item, no pilot)",
        allowed="number ≥ 0",
    ),
    Var(
        "WS_KL_BUDGET",
        "kl_budget",
        _positive,
        None,
        "`make cross-adapter`: the matched budget, the mean next-token KL (nats) from the base model on the neutral "
        "prompts at which every diff is also compared",
        smoke_default="0.002",
        allowed="number > 0",
    ),
    Var("WS_CACHE_ACTIVATIONS", "cache", _bool, None, "`0`: no activation / basis cache for this run", allowed="boolean"),
    Var(
        "WS_DEVICE",
        "device",
        _device,
        None,
        "where the model runs (completions, training, effect eval, captures): `auto` = CUDA if present, "
        "else Apple MPS, else the CPU",
        allowed="auto, cpu, cuda, cuda:N, mps",
    ),
    Var(
        "WS_DTYPE",
        "dtype",
        _choice(("auto", "float32", "bfloat16", "float16")),
        None,
        "the model's weights: `auto` = bfloat16 on CUDA, float32 elsewhere (the subspace math is float64 on the CPU "
        "whatever this is, unless `WS_LINALG` says otherwise)",
        allowed="auto, float32, bfloat16, float16",
    ),
    Var(
        "WS_LINALG",
        "linalg",
        _choice(LINALG_MODES),
        None,
        "where the candidate build's and the S-space lens's Grams, eigensolvers and SVDs run: `cpu` = float64 on the "
        "host (the reference), `device` = float64 on the model's device (a GPU with fast float64), `device-float32` = "
        "float32 there (any GPU; tolerance in docs/gpu.md)",
        allowed="cpu, device, device-float32",
    ),
    Var(
        "WS_DEVICE_MAP",
        "device_map",
        _choice(("none", "auto")),
        None,
        "`auto`: spread a model too big for one device over the GPUs / CPU (accelerate); analysis only, see the GPU section",
        allowed="none, auto",
    ),
    Var(
        "WS_POS_ADAPTER",
        "pos_adapter",
        _folder_with("adapter_config.json", "a PEFT adapter (save_pretrained)"),
        None,
        "a PEFT adapter folder trained toward the behaviour; with `WS_NEG_ADAPTER`, `w = Δ⁺ − Δ⁻` is imported instead of "
        "trained (see docs/bring-your-own.md)",
        allowed="a folder",
    ),
    Var(
        "WS_NEG_ADAPTER",
        "neg_adapter",
        _folder_with("adapter_config.json", "a PEFT adapter (save_pretrained)"),
        None,
        "the PEFT adapter folder trained away from the behaviour (with `WS_POS_ADAPTER`)",
        allowed="a folder",
    ),
    Var(
        "WS_BIDIR_ADAPTER",
        "bidir_adapter",
        _folder_with("adapter_config.json", "a PEFT adapter (save_pretrained)"),
        None,
        "one PEFT adapter trained at α = ±½ (as `bidir`): `w = 2Δ` is imported",
        allowed="a folder",
    ),
    Var(
        "WS_POS_MODEL",
        "pos_model",
        _folder_with("config.json", "a model checkpoint (save_pretrained)"),
        None,
        "a fine-tuned checkpoint folder of `WS_MODEL`'s architecture toward the behaviour; with `WS_NEG_MODEL`, "
        "`w = θ⁺ − θ⁻` on the decoder blocks' linear weights is imported",
        allowed="a folder",
    ),
    Var(
        "WS_NEG_MODEL",
        "neg_model",
        _folder_with("config.json", "a model checkpoint (save_pretrained)"),
        None,
        "the fine-tuned checkpoint away from the behaviour (with `WS_POS_MODEL`)",
        allowed="a folder",
    ),
    Var(
        "WS_SUBSPACE",
        "subspace",
        _subspace_file,
        None,
        "`make monitor`: the subspace file to screen a diff against (a v8 run's `v8_carrier_basis.safetensors`); the "
        "diff: the import variables above (`WS_POS_ADAPTER` or `WS_POS_MODEL` alone: that fine-tune minus the base), "
        "else this run's trained diff (docs/using-results.md)",
        allowed="a file",
    ),
    Var(
        "WS_VECTORS",
        "vectors",
        _vector_files,
        None,
        "steering-vector files (`.safetensors`, `.pt`, `.npy`, GGUF control vectors), comma-separated: each is scored "
        "as the candidate `vector:<file name>` and always in v8's causal test",
        allowed="files, comma-separated",
    ),
    Var(
        "WS_VECTOR_CONVENTION",
        "vector_convention",
        _choice(("auto", "block", "hidden")),
        None,
        "what a vector file's layer index means: `block` = the output of decoder block i, `hidden` = hidden_states[i] "
        "(block i−1); `auto`: each format's default (docs/bring-your-own.md)",
        allowed="auto, block, hidden",
    ),
    Var(
        "WS_VECTOR_SHIFT",
        "vector_shift",
        _signed_int,
        None,
        "added to every vector file's block index after the convention (e.g. `-1` for a file measured one block earlier)",
        allowed="integer",
    ),
    Var(
        "WS_SMOKE",
        "smoke",
        _bool,
        None,
        "`1`: the whole notebook on a tiny random model, one seed, a few training steps (about a minute)",
        allowed="boolean",
    ),
)


def _shown(attr: str) -> str:
    """The :class:`Config` field's default as a ``WS_*`` value: booleans ``1``/``0``, tuples
    comma-joined, None as unset."""
    v = next(f.default for f in fields(Config) if f.name == attr)
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return "" if v is None else str(v)


#: every default lives in :class:`Config` (the folders' in ``ws.core.paths``); the table shows it
VARIABLES = tuple(v if v.default is not None else replace(v, default=_shown(v.attr)) for v in VARIABLES)
BY_NAME = {v.name: v for v in VARIABLES}
#: Variables the suite reads elsewhere (not run parameters), so not reported as unknown.
OTHER_KNOWN = ("WS_RUN_DIR", "WS_LOG_TERMINAL", "WS_TEST_DEVICE", "WS_GRID", "WS_RAY_ADDRESS")


# ----------------------------------------------------------------------------- the config
#: A tiny training run for smoke mode (tiny random model): seconds, not minutes.
SMOKE_TRAIN = dict(
    steps=3,
    batch_size=4,
    n_phrasings=1,
    max_new_tokens=8,
    n_train_per_kind=4,
    n_eval_per_kind=3,
    n_boot=100,
    gen_batch_size=8,
    warmup_steps=1,
)


def from_env(env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate every ``WS_*`` variable of ``env`` (default ``os.environ``).

    Raises :class:`ConfigError` for the first bad value, naming the variable, the value and
    what is allowed. Smoke mode (``WS_SMOKE``) is read first: it changes some defaults.
    """
    env = os.environ if env is None else env
    check_known_variables(env)
    for name in env:
        if name.startswith("WS_") and env[name].strip() == "" and name in BY_NAME:
            raise ConfigError(
                f"{name} is set but empty: unset it to use the default "
                f"({BY_NAME[name].default or 'unset'}), or give a value ({BY_NAME[name].allowed})"
            )
    smoke = _bool("WS_SMOKE", env["WS_SMOKE"]) if "WS_SMOKE" in env else False
    kw: dict[str, Any] = {}
    for var in VARIABLES:
        raw = env.get(var.name)
        if raw is None:
            raw = var.smoke_default if smoke and var.smoke_default is not None else var.default
            if raw == "" or var.attr in ("out_root", "cache_root", "logs_root"):
                continue  # the field's own default (None, or the folder from ws.core.paths)
        kw[var.attr] = var.parse(var.name, raw)
    cfg = Config(**kw)
    if cfg.causal_null_max is not None and cfg.causal_null_max < cfg.n_causal_null:
        raise ConfigError(
            f"WS_CAUSAL_NULL_MAX={cfg.causal_null_max} is below WS_N_CAUSAL_NULL={cfg.n_causal_null}: the null "
            f"starts with WS_N_CAUSAL_NULL draws per rank; give WS_CAUSAL_NULL_MAX ≥ {cfg.n_causal_null} (equal: a fixed null)"
        )
    if cfg.max_items != MAX_ITEMS_PER_SET:
        cfg = replace(cfg, behavior=_behavior_capped(env.get("WS_BEHAVIOR", cfg.behavior), cfg.max_items))
    if smoke:
        cfg = replace(cfg, train_overrides=dict(SMOKE_TRAIN))
    return _with_import(cfg, env)


def import_label(kind: str, sources: tuple[Path, ...]) -> str:
    """The output folder name of an imported diff: its kind and 8 hex digits of its source
    folders' paths, so that two imports never share a folder (``peft-1a2b3c4d``)."""
    digest = hashlib.sha256("\n".join(str(p) for p in sources).encode()).hexdigest()[:8]
    return safe_component(f"{kind}-{digest}", "an imported diff's label (it names the output folder)")


def _with_import(cfg: Config, env: Mapping[str, str]) -> Config:
    """Check the import variables together; an imported diff is one diff (seed 0) in its own
    folder (:func:`import_label`), never trained."""
    pairs = (("WS_POS_ADAPTER", "WS_NEG_ADAPTER"), ("WS_POS_MODEL", "WS_NEG_MODEL"))
    for a, b in pairs:
        if (a in env) != (b in env):
            have, lack = (a, b) if a in env else (b, a)
            raise ConfigError(
                f"{have} is set but {lack} is not: a pair gives w = Δ⁺ − Δ⁻; set both (or WS_BIDIR_ADAPTER for one)"
            )
    kinds = [n for n in ("WS_POS_ADAPTER", "WS_BIDIR_ADAPTER", "WS_POS_MODEL") if n in env]
    if len(kinds) > 1:
        raise ConfigError(
            f"{' and '.join(kinds)} are both set: import one diff per run "
            f"(a pair of adapters, one bidirectional adapter, or a pair of checkpoints)"
        )
    if cfg.imported is None:
        return cfg
    for n in ("WS_ADAPTER", "WS_SEEDS", "WS_STEPS", "WS_MAX_LEN"):
        if n in env:
            raise ConfigError(f"{n} is set, but the diff is imported ({kinds[0]}), not trained: unset {n}")
    return replace(cfg, adapter=import_label(cfg.imported, cfg.import_sources), seeds=(0,))


def check_known_variables(env: Mapping[str, str]) -> None:
    """Stop on a ``WS_*`` variable the suite does not define (a typo such as ``WS_BEHAVIOUR``
    or ``WS_SEED`` for ``WS_SEEDS`` would otherwise run a whole job on the defaults), naming
    the closest known one."""
    unknown = unknown_variables(env)
    if not unknown:
        return
    known = [*BY_NAME, *OTHER_KNOWN]
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ConfigError(
        f"{', '.join(hints)}: not a variable this suite reads; unset it, or use one of the variables "
        f"in the README's table ({', '.join(BY_NAME)})"
    )


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """``WS_*`` names in ``env`` that the suite does not read (typos such as ``WS_SEEDS`` vs ``WS_SEED``)."""
    env = os.environ if env is None else env
    return sorted(n for n in env if n.startswith("WS_") and n not in BY_NAME and n not in OTHER_KNOWN)


def markdown_table() -> str:
    """The README's variable table, generated from :data:`VARIABLES`."""
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for v in VARIABLES:
        default = f"`{v.default}`" if v.default else "unset"
        if v.smoke_default is not None:
            default += f" (smoke: `{v.smoke_default}`)"
        rows.append(f"| `{v.name}` | {default} | {v.allowed} | {v.meaning} |")
    return "\n".join(rows)


def start_run(name: str, env: Mapping[str, str] | None = None, cell: Path | None = None) -> Config:
    """What every notebook does first, before any model loads: parse and validate the
    configuration, check that the output, cache and log folders can be written, set up
    logging (``<logs>/<name>.verbose.log``), stop when a diff made for this (non-default)
    model sits at the default model's path (:func:`ws.diffs.store.check_misplaced_diffs`), and
    take the output folder's run lock so that a second run into the same ``WS_OUT`` stops
    at once instead of dropping results. ``cell`` (a grid's cell, :mod:`ws.grid`): the output
    folder is shared with the grid's other cells and ``cell``, the folder this run writes,
    is held alone."""
    cfg = from_env(env)
    check_writable(cfg.out_root, "WS_OUT")
    check_writable(cfg.cache_root, "WS_CACHE")
    check_writable(cfg.logs_root, "WS_LOGS")
    setup_logging(name, cfg.logs_root)
    check_misplaced_diffs(cfg.model, cfg.behavior, cfg.out_root)
    hold_run_lock(cfg.out_root, name, shared=cell is not None)
    if cell is not None:
        hold_run_lock(cell, name)
    logger.info(f"config: {cfg}")
    return cfg


#: The README's generated blocks: (begin marker, end marker, the text between them).
README_BEGIN = "<!-- variable table: generated by `python -m ws.config` from ws.config.VARIABLES -->"
README_END = "<!-- end of variable table -->"
ADAPTER_BEGIN = "<!-- adapter table: generated by python -m ws.config from ws.diffs.adapters -->"
ADAPTER_END = "<!-- end of adapter table -->"


def readme_blocks() -> list[tuple[str, str, str]]:
    """Every generated block of the README: the variable table and the adapter table."""
    return [(README_BEGIN, README_END, markdown_table()), (ADAPTER_BEGIN, ADAPTER_END, adapter_table())]


def update_readme(path: str | Path) -> bool:
    """Rewrite the generated tables between the README's markers; True when one changed."""
    path = Path(path)
    text = new = path.read_text(encoding="utf-8")
    for begin, end, body in readme_blocks():
        a, b = new.index(begin) + len(begin), new.index(end)
        new = new[:a] + "\n" + body + "\n" + new[b:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    print("README.md generated tables " + ("updated" if update_readme(repo_root() / "README.md") else "already current"))
