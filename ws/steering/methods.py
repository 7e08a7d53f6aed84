"""The steering methods compared head to head, each as "run the model at strength α".

- **weight** methods run the model at ``θ + α·d`` (:func:`ws.model.steer.weight_steer`): the
  diff ``w`` itself (``diff``), ``w`` restricted to the residual writers ``o_proj`` /
  ``down_proj`` (``diff_writers``, :func:`ws.v8.causal.writers_only`), and the writers' part
  inside v8's carrier (``diff_carrier``, :func:`ws.v8.causal.variant_diff`, part ``inside``);
- **activation** methods add ``α·v_l`` to the residual stream at the output of decoder block
  ``l``, every position (:func:`ws.model.steer.activation_steer`): the suite's contrastive
  mean-difference vector (``caa``, :func:`contrastive_vectors`, its block chosen on the FIT
  split by :func:`pick_layer`) and each file of ``WS_VECTORS`` at its own blocks
  (``vector:<name>``);
- **prompting** (``prompt``) has no strength: the positive persona's instruction is the
  system prompt at the positive sign and the negative persona's at the negative sign; an
  empty instruction is no system turn, the base model exactly.

Every method is read at ``+α`` and ``−α`` (prompting: its two instructions), as the diff's
effect eval reads ``θ ± α·w``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor, nn

from ws.captures.capture import block_outputs
from ws.core.log import progress
from ws.core.markdown import fmt_num, layers_text
from ws.model.fast_readout import FastReadout, first_block
from ws.model.load import n_layers
from ws.model.steer import activation_steer, weight_steer
from ws.model.vectors import SteeringVectors
from ws.v8.causal import variant_diff, writers_only

#: the α (in units of the contrastive vector: 1 adds the whole persona shift) at which each
#: block's contrastive vector is tried on the FIT split to choose the block (:func:`pick_layer`)
LAYER_PICK_ALPHA = 0.25

KINDS = ("weight", "activation", "prompt")


@dataclass(frozen=True, eq=False)
class Method:
    """One steering method: ``kind`` is ``weight`` (``diff``: ``θ + α·diff``), ``activation``
    (``vectors``: block -> ``[d]``, added at the block's output) or ``prompt`` (``systems``:
    the system prompts at the positive and the negative sign, None for no system turn)."""

    name: str
    kind: str
    detail: str
    layers: tuple[int, ...] = ()
    diff: Mapping[str, Tensor] | None = field(default=None, repr=False)
    vectors: Mapping[int, Tensor] | None = field(default=None, repr=False)
    systems: tuple[str | None, str | None] = (None, None)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"steering method {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "weight" and not self.diff:
            raise ValueError(f"steering method {self.name!r}: a weight method needs a non-empty diff")
        if self.kind == "activation" and not self.vectors:
            raise ValueError(f"steering method {self.name!r}: an activation method needs at least one vector")

    @property
    def has_strength(self) -> bool:
        """Whether the method has an α to bisect (prompting has none)."""
        return self.kind != "prompt"

    def steer(self, model: nn.Module, alpha: float) -> AbstractContextManager:
        """The model at strength ``alpha`` inside the block (prompting: unchanged; its
        instruction is in the rendered prompt, :meth:`system`)."""
        if self.kind == "weight":
            return weight_steer(model, self.diff, alpha)
        if self.kind == "activation":
            return activation_steer(model, self.vectors, alpha)
        return nullcontext(model)

    def system(self, sign: int) -> str | None:
        """The system prompt at the positive (``sign > 0``) or the negative sign (None: no system turn)."""
        return (self.systems[0] if sign > 0 else self.systems[1]) if self.kind == "prompt" else None

    def first(self) -> int:
        """The lowest decoder block the method changes (the fast read-out reuses the blocks below)."""
        if self.kind == "weight":
            return first_block(self.diff)
        if self.kind == "activation":
            return min(int(l) for l in self.vectors)
        return 0


# ----------------------------------------------------------------------------- weight methods
def writer_layers(w: Mapping[str, Tensor], model: nn.Module) -> list[int]:
    """The blocks where ``w`` has an ``o_proj`` or ``down_proj`` delta."""
    return sorted({int(k.split(".")[2]) for k in writers_only(w, range(n_layers(model)))})


def weight_methods(
    w: Mapping[str, Tensor], model: nn.Module, carrier: tuple[str, str, Mapping[int, Tensor | None]] | None = None
) -> list[Method]:
    """``diff`` (``w``), ``diff_writers`` (``w`` on ``o_proj`` / ``down_proj`` only) and, when
    ``carrier = (candidate, how it was chosen, {block: [d, k] basis or None})`` is given,
    ``diff_carrier`` (the writers' part inside the carrier's subspace, per block)."""
    touched = sorted({int(k.split(".")[2]) for k in w if k.startswith("model.layers.")})
    out = [Method("diff", "weight", f"θ + α·w: the whole diff ({len(w)} tensors)", tuple(touched), diff=dict(w))]
    layers = writer_layers(w, model)
    ww = writers_only(w, layers)
    out.append(
        Method("diff_writers", "weight", "θ + α·w on the residual writers only (o_proj, down_proj)", tuple(layers), diff=ww)
    )
    if carrier is not None:
        name, how, bases = carrier
        inside, _ = variant_diff(ww, {l: bases.get(l) for l in layers}, "inside")
        ranks = [0 if bases.get(l) is None else int(bases[l].shape[1]) for l in layers]
        out.append(
            Method(
                "diff_carrier",
                "weight",
                f"θ + α·P_B w on the writers, B = v8's carrier `{name}` ({how}; ranks {ranks} on blocks {layers_text(layers)})",
                tuple(layers),
                diff=inside,
            )
        )
    return out


# ----------------------------------------------------------------------------- activation methods
def contrastive_vectors(
    model: nn.Module, tok, pos_texts: Sequence[str], neg_texts: Sequence[str], batch_size: int = 16
) -> Tensor:
    """``[L, d]`` float32: per block, the mean last-token residual at the block's output under the
    positive persona minus under the negative one (rendered prompts, the same user turns)."""
    if len(pos_texts) != len(neg_texts) or not pos_texts:
        raise ValueError(
            f"contrastive vectors need the same non-empty prompts under both personas ({len(pos_texts)} vs {len(neg_texts)})"
        )
    pos = block_outputs(model, tok, list(pos_texts), batch_size)  # [L, n, d]
    neg = block_outputs(model, tok, list(neg_texts), batch_size)
    return (pos.double() - neg.double()).mean(dim=1).float()


@dataclass(frozen=True)
class LayerPick:
    """The block chosen for the contrastive vector and the FIT target spread of every block."""

    layer: int
    alpha: float
    spreads: tuple[float, ...]  # per block, direction-signed: mean over FIT prompts of lr(+α) − lr(−α)
    n_prompts: int


def pick_layer(
    model: nn.Module,
    tok,
    vectors: Tensor,
    fit_texts: Sequence[str],
    answers: Sequence[str],
    signs: Sequence[int] | None = None,
    direction: int = 1,
    alpha: float = LAYER_PICK_ALPHA,
    batch_size: int = 16,
) -> LayerPick:
    """The block whose contrastive vector, added at ``±alpha``, moves the FIT target prompts
    (``fit_texts``, rendered without a persona) most toward the behaviour: the largest
    ``direction ·`` mean per-prompt spread (ties: the lower block)."""
    ro = FastReadout(
        model, tok, {"fit": list(fit_texts)}, 0, batch_size, answers=answers, signs_by_set={"fit": list(signs)} if signs else None
    )
    spreads = []
    for l in progress(range(vectors.shape[0]), "steering: picking the contrastive vector's block"):
        lr = {}
        for sign in (1, -1):
            with activation_steer(model, {l: vectors[l]}, sign * alpha):
                lr[sign] = ro.run()["fit"][0]
        spreads.append(float(direction * np.mean(lr[1] - lr[-1])))
    best = max(range(len(spreads)), key=lambda l: (spreads[l], -l))
    return LayerPick(best, alpha, tuple(spreads), len(fit_texts))


def caa_method(vectors: Tensor, pick: LayerPick) -> Method:
    """The contrastive vector at the chosen block, as a method."""
    l = pick.layer
    v = vectors[l]
    return Method(
        "caa",
        "activation",
        f"α·v at block {l}'s output, v = mean persona⁺ − persona⁻ last-token residual over {pick.n_prompts} FIT prompts "
        f"(‖v‖ {fmt_num(float(v.norm()))}); block {l} of {vectors.shape[0]} chosen by the largest FIT target spread at "
        f"α = ±{fmt_num(pick.alpha)}",
        (l,),
        vectors={l: v},
    )


def vector_methods(files: Sequence[SteeringVectors]) -> list[Method]:
    """One method per ``WS_VECTORS`` file: at every block it names, its first direction (the
    file's row 0 where it holds several), all added together at ``α``."""
    out = []
    for sv in files:
        vecs = {l: sv.directions[l][0].float() for l in sv.layers}
        several = [l for l in sv.layers if sv.directions[l].shape[0] > 1]
        note = f"; blocks {several} hold several directions, the first used" if several else ""
        out.append(
            Method(
                f"vector:{sv.name}",
                "activation",
                f"α·v at the output of block(s) {layers_text(sv.layers)} from {sv.path} "
                f"({sv.convention} convention, shift {sv.shift}){note}",
                tuple(sv.layers),
                vectors=vecs,
            )
        )
    return out


# ----------------------------------------------------------------------------- prompting
def prompt_method(positive: str, negative: str) -> Method:
    """The persona instructions as the system prompt: ``positive`` at the positive sign,
    ``negative`` at the negative one; an empty instruction is no system turn (the base model)."""
    pos, neg = (positive or None), (negative or None)
    return Method(
        "prompt",
        "prompt",
        "the positive persona's instruction as the system prompt (+), the negative one's (−)",
        systems=(pos, neg),
    )


__all__ = [
    "LAYER_PICK_ALPHA",
    "Method",
    "LayerPick",
    "writer_layers",
    "weight_methods",
    "contrastive_vectors",
    "pick_layer",
    "caa_method",
    "vector_methods",
    "prompt_method",
]
