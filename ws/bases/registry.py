"""The candidate registry and the build context the candidate functions draw on.

A candidate is a small function registered with its metadata::

    @candidate(name="write", family="W:write", source="weights",
               definition="per layer, left SVD of write_cols")
    def write(ctx: BuildContext, layer: int) -> Tensor | None: ...

Per-layer candidates take ``(ctx, layer)``; global ones (``per_layer=False``) take ``ctx``
and their one basis is repeated for every layer. A function returns a ``[d, r]`` float64
basis with orthonormal columns (``r`` its true rank, possibly 0), or ``None`` where the
candidate is undefined. :func:`build_all` runs them in registry order, converts to float32
and validates every basis.

:class:`BuildContext` hands the candidates the build's options, the captures and deltas in
float64 and other candidates' bases; its ``weights`` (:class:`ws.bases.grams.ModelWeights`)
hands out the base model's weights in float64 and caches what several candidates share
(per-layer Gram matrices, the lm_head Gram and its eigenvectors, the global and downstream
read spaces), so each Gram and each eigendecomposition is computed once per build.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl
import torch
from torch import nn
from tqdm.auto import tqdm

from ws.bases.grams import ModelWeights
from ws.core import linalg
from ws.core.cache import cache_key, hash_code, hash_model, load_entry, save_entry
from ws.core.columns import META_COLUMNS
from ws.core.log import logger
from ws.core.paths import cache_dir

__all__ = [
    "Candidate",
    "REGISTRY",
    "candidate",
    "axis_kind_for",
    "BuildContext",
    "build_all",
    "meta_frame",
    "META_COLUMNS",
]

_READ_FAMILIES = {"W:read", "W:unembed"}
_WRITE_FAMILIES = {"W:write", "W:write-not-read", "W:OV", "W:MLP"}


def axis_kind_for(family: str, kind: str = "A-hypothesis") -> str:
    """ceiling → ceiling; W:read, W:unembed → read; W:write, W:write-not-read, W:OV, W:MLP →
    write; self-test rows → self-test; everything else → mixed."""
    if kind == "self-test":
        return "self-test"
    if family == "ceiling" or kind == "ceiling":
        return "ceiling"
    if family in _READ_FAMILIES:
        return "read"
    if family in _WRITE_FAMILIES:
        return "write"
    return "mixed"


@dataclass(frozen=True)
class Candidate:
    name: str
    family: str
    source: str
    definition: str
    fn: Callable
    per_layer: bool = True
    kind: str = "A-hypothesis"
    needs: tuple[str, ...] = ()
    note: str = ""  # why the true rank may fall short (the rank caveats quote it)
    max_rank: Callable[[int], int] = field(default=lambda k: k)
    describe: Callable | None = None  # ctx -> definition, for definitions that depend on build options
    construction: str = ""  # how the basis is built where that differs from, or adds to, the definition

    def definition_for(self, ctx: BuildContext | None) -> str:
        return self.describe(ctx) if (self.describe is not None and ctx is not None) else self.definition

    def construction_for(self, k: int = 8, k_broad: int = 64) -> str:
        """The construction note with this build's ``{k}`` and ``{k_broad}`` filled in."""
        return self.construction.replace("{k_broad}", str(k_broad)).replace("{k}", str(k))

    @property
    def axis_kind(self) -> str:
        return axis_kind_for(self.family, self.kind)


#: name -> Candidate, in registration (= table) order
REGISTRY: dict[str, Candidate] = {}

_KINDS = ("A-hypothesis", "ceiling", "self-test")


def candidate(
    name: str,
    family: str,
    source: str,
    definition: str,
    *,
    per_layer: bool = True,
    kind: str = "A-hypothesis",
    needs: Sequence[str] = (),
    note: str = "",
    max_rank: Callable[[int], int] | None = None,
    describe: Callable | None = None,
    construction: str = "",
) -> Callable:
    """Register the decorated function as a candidate (see the module doc).

    definition: the contract's words (``v7_definitions.md`` prints them as they are);
    construction: how the function builds the basis where that differs from, or adds to,
    the definition (printed beside it; ``{k}`` and ``{k_broad}`` are filled in per build);
    note: why the true rank may fall short of ``max_rank(k)`` (quoted by the rank caveats).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")

    def deco(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"candidate {name!r} registered twice")
        REGISTRY[name] = Candidate(
            name=name,
            family=family,
            source=source,
            definition=definition,
            fn=fn,
            per_layer=per_layer,
            kind=kind,
            needs=tuple(needs),
            note=note,
            max_rank=max_rank or (lambda k: k),
            describe=describe,
            construction=construction,
        )
        return fn

    return deco


def append_candidates(
    bases: dict[str, list],
    meta: pl.DataFrame,
    extra: tuple[dict[str, list], pl.DataFrame],
    what: str,
) -> tuple[dict[str, list], pl.DataFrame]:
    """``(bases, meta)`` with a run's own candidates ``extra = (bases, meta)`` appended after the
    registry's (steering vectors, a planted basis, the persona gradient: :mod:`ws.bases.vectors`,
    :mod:`ws.bases.planted`, :mod:`ws.bases.gradient`); a name already there is refused, naming
    ``what`` the candidate is."""
    eb, em = extra
    clash = sorted(set(eb) & set(bases))
    if clash:
        raise ValueError(f"{what} candidate {clash[0]!r} has the name of a built-in candidate")
    return {**bases, **eb}, pl.concat([meta, em.select(meta.columns)], how="vertical")


def put_in_order(order: Sequence[str]) -> None:
    """Reorder :data:`REGISTRY` in place: the names of ``order`` first (each must be registered),
    then any other candidate in the order it was registered (:mod:`ws.bases.order`)."""
    missing = [n for n in order if n not in REGISTRY]
    if missing:
        raise ValueError(f"the table order names candidates that are not registered: {missing}")
    first = set(order)
    items = [(n, REGISTRY[n]) for n in order] + [(n, c) for n, c in REGISTRY.items() if n not in first]
    REGISTRY.clear()
    REGISTRY.update(items)


# ----------------------------------------------------------------------------- context
_UNBUILT = object()  # a per-layer basis not built yet


class BuildContext:
    """What the candidate functions draw on: the build's options, the captures and LoRA deltas
    (float64 on demand, cached), other candidates' bases, and the base model's weights and
    shared Grams as ``ctx.weights`` (:class:`ws.bases.grams.ModelWeights`).

    Attributes: ``model, layers, L, d, n_heads, n_kv, head_dim, d_mlp, k, k_broad, seed`` and
    the options of :func:`build_all`.
    """

    def __init__(
        self,
        model: nn.Module,
        captures=None,
        deltas: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
        label_fit: torch.Tensor | None = None,
        label_eval: torch.Tensor | None = None,
        *,
        k: int = 8,
        k_broad: int = 64,
        seed: int = 0,
        intersection: str = "angle",
        max_angle_deg: float = 30.0,
        eps_rel: float = 1e-3,
        n_clusters: int | None = None,
        rot_dim: int = 32,
    ):
        if k < 1 or k_broad < k:
            raise ValueError(f"need 1 ≤ k ≤ k_broad, got k={k}, k_broad={k_broad}")
        if intersection not in ("angle", "bisector"):
            raise ValueError(f"intersection must be 'angle' or 'bisector', got {intersection!r}")
        self.model = model
        cfg = model.config
        self.k = int(k)
        self.k_broad = int(min(k_broad, int(cfg.hidden_size)))
        self.weights = ModelWeights(model, k_broad=self.k_broad)
        self.layers, self.L, self.d = self.weights.layers, self.weights.L, self.weights.d
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or self.d // self.n_heads)
        self.d_mlp = int(self.layers[0].mlp.up_proj.weight.shape[0])
        self.captures = captures
        self.deltas = list(deltas) if deltas is not None else None
        self.label_fit = label_fit if label_fit is not None else getattr(captures, "label_fit", None)
        self.label_eval = label_eval if label_eval is not None else getattr(captures, "label_eval", None)
        self.seed = int(seed)
        self.intersection = intersection
        self.max_angle_deg = float(max_angle_deg)
        self.eps_rel = float(eps_rel)
        self.n_clusters = int(n_clusters) if n_clusters is not None else self.k + 1
        self.rot_dim = int(rot_dim)
        self._caps: dict[str, torch.Tensor] = {}
        self._bases: dict[str, list] = {}

    def clear(self) -> None:
        self.weights.clear()
        self._caps.clear()
        self._bases.clear()

    def available(self, need: str) -> bool:
        if need == "deltas":
            return self.deltas is not None
        if need == "label_fit":
            return self.label_fit is not None
        if need == "label_eval":
            return self.label_eval is not None
        return self.captures is not None and getattr(self.captures, need, None) is not None

    def cap(self, name: str) -> torch.Tensor:
        """A capture (or ``label_fit`` / ``label_eval``) as float64, cached."""
        if name not in self._caps:
            t = None
            if name == "label_fit":
                t = self.label_fit
            elif name == "label_eval":
                t = self.label_eval
            elif self.captures is not None:
                t = getattr(self.captures, name, None)
            if t is None:
                raise ValueError(f"capture {name!r} is missing: pass it (ws.captures.capture.capture_all builds all of them)")
            self._caps[name] = t.detach().to(torch.float64) if t.is_floating_point() else t.detach()
        return self._caps[name]

    def basis(self, name: str, layer: int) -> torch.Tensor | None:
        """A candidate's basis at ``layer`` (float64), built on first use (that layer only) and cached."""
        if name not in self._bases:
            cand = REGISTRY[name]
            missing = [n for n in cand.needs if not self.available(n)]
            if missing:
                raise ValueError(f"candidate {name!r} needs {missing}, which were not given")
            if not cand.per_layer:
                self._bases[name] = [cand.fn(self)] * self.L
                return self._bases[name][layer]
            self._bases[name] = [_UNBUILT] * self.L
        row = self._bases[name]
        if row[layer] is _UNBUILT:
            row[layer] = REGISTRY[name].fn(self, layer)
        return row[layer]

    def bases_of(self, name: str) -> list:
        """A candidate's bases at every layer (float64)."""
        return [self.basis(name, l) for l in range(self.L)]


# ----------------------------------------------------------------------------- build
def _validate(B, name: str, layer: int, d: int, max_rank: int) -> torch.Tensor | None:
    if B is None:
        return None
    if not isinstance(B, torch.Tensor) or B.ndim != 2 or B.shape[0] != d:
        shape = tuple(B.shape) if isinstance(B, torch.Tensor) else type(B).__name__
        raise ValueError(f"candidate {name!r} at layer {layer}: basis must be [d_model={d}, k], got {shape}")
    if B.shape[1] > max_rank:
        raise ValueError(f"candidate {name!r} at layer {layer}: rank {B.shape[1]} exceeds its maximum {max_rank}")
    if not bool(torch.isfinite(B).all()):
        raise ValueError(f"candidate {name!r} at layer {layer}: basis has non-finite entries")
    linalg.check_orthonormal(B, name, layer, tol=1e-3)
    B32 = B.to(torch.float32).contiguous()
    linalg.check_orthonormal(B32, name, layer, tol=1e-3)
    return B32


def meta_frame(
    names: Sequence[str] | None = None, ranks: Mapping[str, list] | None = None, k: int = 8, ctx: BuildContext | None = None
) -> pl.DataFrame:
    """The metadata table in registry order: the contract columns, then ``note``,
    ``construction`` (with the build's k and k_broad) and rank facts."""
    names = list(REGISTRY) if names is None else list(names)
    rows = []
    for n in names:
        c = REGISTRY[n]
        rs = [r for r in (ranks or {}).get(n, []) if r is not None]
        rows.append(
            {
                "subspace": c.name,
                "family": c.family,
                "axis_kind": c.axis_kind,
                "source": c.source,
                "kind": c.kind,
                "definition": c.definition_for(ctx),
                "note": c.note,
                "construction": c.construction_for(k, ctx.k_broad if ctx is not None else 64),
                "expected_rank": int(c.max_rank(k)),
                "rank_min": int(min(rs)) if rs else None,
                "rank_max": int(max(rs)) if rs else None,
            }
        )
    schema = {
        "subspace": pl.Utf8,
        "family": pl.Utf8,
        "axis_kind": pl.Utf8,
        "source": pl.Utf8,
        "kind": pl.Utf8,
        "definition": pl.Utf8,
        "note": pl.Utf8,
        "construction": pl.Utf8,
        "expected_rank": pl.Int64,
        "rank_min": pl.Int64,
        "rank_max": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def build_all(
    model: nn.Module,
    captures=None,
    deltas: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    label_fit: torch.Tensor | None = None,
    k: int = 8,
    k_broad: int = 64,
    seed: int = 0,
    *,
    label_eval: torch.Tensor | None = None,
    names: Sequence[str] | None = None,
    skip_missing: bool = False,
    intersection: str = "angle",
    max_angle_deg: float = 30.0,
    eps_rel: float = 1e-3,
    n_clusters: int | None = None,
    threads: int | None = 1,
    cache: bool = False,
    progress: bool = True,
) -> tuple[dict[str, list[torch.Tensor | None]], pl.DataFrame]:
    """Build and validate every registered candidate (or ``names``) for ``model``.

    captures: a :class:`ws.captures.capture.Captures` (``label_fit`` / ``label_eval`` default to its
        fields of that name). deltas: per layer ``{"oproj", "downproj"}`` LoRA deltas or None.
    k / k_broad: basis rank (8) and the rank of the broad read spaces projected away (64).
    intersection: ``"angle"`` (true principal-angle intersection below ``max_angle_deg``) or
        ``"bisector"`` (the older normalised sums of the k closest principal pairs) for
        ``qk_x_chars_clusters``. eps_rel: damping of the adapter-family second moments.
    n_clusters: k-means clusters of ``chars_clusters`` (default ``k + 1``).
    skip_missing: leave out candidates whose inputs were not given (default: raise).
    cache: keep the weight-only candidates (source ``weights``: they depend on the model's
        weights, k and k_broad only, not on data or the LoRA) under ``<cache>/bases/``, keyed by
        a hash of the weights, k, k_broad and the builder code; later builds (other seeds,
        adapters, runs) load them instead of recomputing (~60 % of the build time).
    threads: BLAS/LAPACK threads during the build (default 1: hundreds of small symmetric
        eigensolves are fastest, and robust to shared cores, on one thread; None: unchanged).

    Returns ``(bases, meta)``: ``bases[name]`` = one float32 ``[d, r]`` orthonormal basis
    (or None) per layer; ``meta`` = one row per candidate in registry order with the columns
    ``subspace, family, axis_kind, source, kind, definition`` (+ ``note, construction,
    expected_rank, rank_min, rank_max``). Every candidate whose true rank falls short of its expected rank
    is logged with the layers and ranks.
    """
    with linalg.blas_threads(threads):
        return _build_all(
            model,
            captures,
            deltas,
            label_fit,
            k=k,
            k_broad=k_broad,
            seed=seed,
            label_eval=label_eval,
            names=names,
            skip_missing=skip_missing,
            intersection=intersection,
            max_angle_deg=max_angle_deg,
            eps_rel=eps_rel,
            n_clusters=n_clusters,
            progress=progress,
            cache=cache,
        )


_WEIGHT_CODE = ("ws/core/linalg.py", "ws/bases/grams.py", "ws/bases/registry.py", "ws/bases/weights.py")


def _weights_cache_path(model: nn.Module, ctx: BuildContext):

    key = cache_key(
        {
            "what": "weight bases",
            "weights": hash_model(model),
            "k": ctx.k,
            "k_broad": ctx.k_broad,
            "linalg": [str(x) for x in linalg.compute_mode()],  # where and in what precision they were factorised
            "code": hash_code(_WEIGHT_CODE),
        }
    )
    return cache_dir() / "bases" / f"weights-{key}.safetensors"


def _load_weight_bases(path, ctx: BuildContext) -> list[str]:

    entry = load_entry(path, path.stem)  # the key is in the name; a damaged or swapped file is rebuilt
    if entry is None:
        return []
    tensors = entry[0]
    loaded = []
    for n, c in REGISTRY.items():
        if c.source != "weights":
            continue
        if c.per_layer:
            keys = [f"{n}::{l}" for l in range(ctx.L)]
            if all(kk in tensors for kk in keys):
                ctx._bases[n] = [tensors[kk].to(torch.float64) for kk in keys]
                loaded.append(n)
        elif f"{n}::0" in tensors:
            ctx._bases[n] = [tensors[f"{n}::0"].to(torch.float64)] * ctx.L
            loaded.append(n)
    return loaded


def _save_weight_bases(path, bases: Mapping[str, list]) -> None:

    tensors = {}
    for n, per_layer in bases.items():
        c = REGISTRY[n]
        if c.source != "weights":
            continue
        for l, B in enumerate(per_layer if c.per_layer else per_layer[:1]):
            if B is not None:
                tensors[f"{n}::{l}"] = B.contiguous()
    if tensors:
        save_entry(path, tensors, path.stem)


def _build_layer_by_layer(ctx: BuildContext, todo: Sequence[str], progress: bool) -> dict[str, float]:
    """Build ``todo``: the one-basis candidates first, then every per-layer candidate at one
    layer, last layer first, before the next layer, each layer's ``d × d`` Grams freed when the
    build moves on (:meth:`ws.bases.grams.ModelWeights.at_layer`). Returns seconds per candidate."""
    timings = dict.fromkeys(todo, 0.0)
    per = [n for n in todo if REGISTRY[n].per_layer]
    steps = [(n, 0) for n in todo if not REGISTRY[n].per_layer] + [(n, l) for l in reversed(range(ctx.L)) for n in per]
    for n, l in tqdm(steps, desc="build candidates", disable=not progress, leave=False):
        if REGISTRY[n].per_layer and ctx.weights.layer != l:
            ctx.weights.at_layer(l)
        t0 = time.perf_counter()
        ctx.basis(n, l)
        timings[n] += time.perf_counter() - t0
    ctx.weights.at_layer(None)
    return timings


def _build_all(
    model,
    captures,
    deltas,
    label_fit,
    *,
    k,
    k_broad,
    seed,
    label_eval,
    names,
    skip_missing,
    intersection,
    max_angle_deg,
    eps_rel,
    n_clusters,
    progress,
    cache=False,
):
    t_all = time.perf_counter()
    ctx = BuildContext(
        model,
        captures,
        deltas,
        label_fit,
        label_eval,
        k=k,
        k_broad=k_broad,
        seed=seed,
        intersection=intersection,
        max_angle_deg=max_angle_deg,
        eps_rel=eps_rel,
        n_clusters=n_clusters,
    )
    if deltas is not None and len(deltas) != ctx.L:
        raise ValueError(f"deltas has {len(deltas)} entries, the model {ctx.L} layers")
    selected = list(REGISTRY) if names is None else list(names)
    unknown = [n for n in selected if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown candidate(s) {unknown}; registered: {list(REGISTRY)}")
    todo = []
    for n in selected:
        missing = [x for x in REGISTRY[n].needs if not ctx.available(x)]
        if missing:
            if skip_missing:
                logger.warning(f"candidate {n!r} skipped: missing {missing}")
                continue
            raise ValueError(f"candidate {n!r} needs {missing}, which were not given (or pass skip_missing=True)")
        todo.append(n)

    cache_path, from_cache = None, []
    if cache:
        cache_path = _weights_cache_path(model, ctx)
        if cache_path.exists():
            from_cache = _load_weight_bases(cache_path, ctx)
            logger.info(f"weight-only bases: {len(from_cache)} candidates loaded from {cache_path.name}")

    bases: dict[str, list[torch.Tensor | None]] = {}
    ranks: dict[str, list] = {}
    timings = _build_layer_by_layer(ctx, todo, progress)
    for n in todo:
        t0 = time.perf_counter()
        cand = REGISTRY[n]
        raw = ctx.bases_of(n)
        mr = int(cand.max_rank(ctx.k))
        if cand.per_layer:
            out = [_validate(B, n, l, ctx.d, mr) for l, B in enumerate(raw)]
        else:
            B32 = _validate(raw[0], n, 0, ctx.d, mr)
            out = [B32] * ctx.L
        bases[n] = out
        ranks[n] = [None if B is None else int(B.shape[1]) for B in out]
        timings[n] += time.perf_counter() - t0
        short = [(l, r) for l, r in enumerate(ranks[n]) if r is not None and r < mr]
        if short:
            if not cand.per_layer:
                logger.info(f"{n}: true rank {short[0][1]} < {mr} (one basis for all layers)")
            else:
                rs = sorted({r for _, r in short})
                logger.info(
                    f"{n}: true rank below {mr} at {len(short)}/{ctx.L} layers "
                    f"(ranks {rs}; layers {[l for l, _ in short][:12]}{' …' if len(short) > 12 else ''})"
                )
    if cache_path is not None and any(REGISTRY[n].source == "weights" and n not in from_cache for n in bases):
        _save_weight_bases(cache_path, ctx._bases)  # float64, so a cached build equals a fresh one exactly
        logger.info(f"weight-only bases cached in {cache_path.name}")
    meta = meta_frame(todo, ranks, ctx.k, ctx)
    total = time.perf_counter() - t_all
    slow = sorted(timings.items(), key=lambda kv: -kv[1])[:5]
    logger.info(
        f"built {len(todo)} candidates × {ctx.L} layers in {total:.1f} s (slowest: {', '.join(f'{n} {t:.2f}s' for n, t in slow)})"
    )
    logger.debug("candidate build times: " + ", ".join(f"{n}={t:.3f}s" for n, t in timings.items()))
    ctx.clear()
    return bases, meta
