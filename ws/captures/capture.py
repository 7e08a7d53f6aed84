"""The named activation captures of the sweep, from batched forward passes on the base model.

Every capture is a float32 tensor with the layer first: ``[L, n, d]`` for one vector per
prompt (taken at the prompt's last real token), ``[L, n, T, d]`` for token-level captures.
"Block output" of layer ``i`` = what decoder block ``i`` returns = the residual stream after
it (``output_hidden_states[i + 1]`` for every layer but the last, where the model's
``hidden_states`` tuple holds the output AFTER the final norm instead).

Inputs are already-rendered prompt strings (the caller applies the chat template); they are
tokenised with ``add_special_tokens=False`` so nothing is added twice, padded on the
tokenizer's side (left or right both work: the last real token is found from the attention
mask, and position ids are computed from the mask so a left-padded prompt sees the same
positions as an unpadded one).

Functions (all ``no_grad``; the passes and the recorder of each capture kind are in :mod:`ws.captures.recorders`):

- :func:`block_outputs`: ``[L, n, d]`` at the last real token.
- :func:`label`: block outputs at ``θ + w`` minus at ``θ − w`` (``hs_diff``), ``[L, n, d]``.
- :func:`up_proj_inputs`: inputs to ``mlp.up_proj`` at the last token, ``[L, n, d]``.
- :func:`up_proj_written`: ``up_proj`` outputs at the last token mapped back to the residual
  stream through ``W_down`` (``u @ W_downᵀ``), ``[L, n, d]``.
- :func:`token_level`: persona± prompts aligned on their shared token suffix; token-level
  block outputs ``[L, n, T, d]`` and the final token's head-averaged attention row over the
  suffix ``[L, n, T]`` for each persona (eager attention, switched on for the pass).
- :func:`input_second_moments`: over all real tokens, the per-channel ``E[x²]`` of the inputs
  to ``self_attn.o_proj`` and ``mlp.down_proj`` and their written moments ``W E[xxᵀ] Wᵀ``
  (``[L, d, d]``; never a ``d_mlp × d_mlp`` matrix).
- :func:`capture_all`: everything the candidate registry needs, with the fewest passes
  (one per prompt set and weight setting), as a :class:`Captures`.
- :func:`block_io`, :func:`block_labels` (v8): block inputs and outputs at the last token,
  and from them the cumulative and the block-local activation labels.

Suffix alignment (token level): the persona+ and persona− renderings of a probe differ only
in the system prompt, so their token ids share a suffix (the user turn and the generation
prompt, plus any tokens at the end of the system turn the two happen to share, such as its
end-of-turn marker). The suffix used is the LONGEST common suffix of the two token-id
sequences, of which at most the last :data:`TOKEN_WINDOW` (128) tokens are kept (every
shipped behaviour's suffix is shorter; a long-prompt dataset's is cut to its last 128
tokens). Different probes have different suffix lengths: the token axis is RIGHT-aligned
on the final token (index ``T − 1`` is always the last real token) and padded at the front;
``tok_mask [n, T]`` says which positions are real. Padded positions hold zeros. The attention
row is the final token's softmax row restricted to the suffix positions, NOT renormalised
(the mass it puts on the system prompt is simply absent).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from ws.captures import recorders as rec
from ws.core.cache import activation_cache_dir, cache_key, hash_code, hash_model, hash_tensors, load_entry, placement, save_entry
from ws.core.device import module_weight
from ws.core.linalg import blas_threads
from ws.core.log import Bar, logger
from ws.model.load import d_model, model_id
from ws.model.steer import weight_steer

__all__ = [
    "Captures",
    "CAPTURE_FIELDS",
    "block_outputs",
    "label",
    "up_proj_inputs",
    "up_proj_written",
    "token_level",
    "shared_suffix_lengths",
    "suffix_window",
    "TOKEN_WINDOW",
    "input_second_moments",
    "capture_all",
    "eager_attention",
    "captures_key",
    "block_io",
    "block_labels",
]

#: name -> what it holds (all float32 unless stated)
CAPTURE_FIELDS: dict[str, str] = {
    "clean": "[L, n_fit, d] block outputs, clean FIT probes, last token",
    "clean_embed": "[n_fit, d] input of block 0 (token embedding), clean FIT, last token",
    "pos": "[L, n_fit, d] block outputs, persona+ FIT, last token",
    "neg": "[L, n_fit, d] block outputs, persona− FIT, last token",
    "clean_up_in": "[L, n_fit, d] inputs to mlp.up_proj, clean FIT, last token",
    "pos_up_in": "[L, n_fit, d] inputs to mlp.up_proj, persona+ FIT, last token",
    "neg_up_in": "[L, n_fit, d] inputs to mlp.up_proj, persona− FIT, last token",
    "pos_up_written": "[L, n_fit, d] up_proj outputs @ W_downᵀ, persona+ FIT, last token",
    "neg_up_written": "[L, n_fit, d] up_proj outputs @ W_downᵀ, persona− FIT, last token",
    "pos_tok": "[L, n_fit, T, d] block outputs over the shared suffix, persona+ (right-aligned)",
    "neg_tok": "[L, n_fit, T, d] block outputs over the shared suffix, persona−",
    "tok_mask": "[n_fit, T] bool, real suffix positions",
    "pos_attn": "[L, n_fit, T] final token's head-averaged attention over the suffix, persona+",
    "neg_attn": "[L, n_fit, T] the same, persona−",
    "mom_oproj_diag": "[L, d_attn] E[x²] per channel of o_proj inputs, all real clean FIT tokens",
    "mom_downproj_diag": "[L, d_mlp] E[x²] per channel of down_proj inputs, same tokens",
    "mom_oproj_out": "[L, d, d] W_o E[xxᵀ] W_oᵀ, the written second moment of o_proj (bias left out), same tokens",
    "mom_downproj_out": "[L, d, d] W_down E[xxᵀ] W_downᵀ, the same for down_proj",
    "mom_n_tokens": "[1] number of tokens behind the second moments",
    "mom_writer_probe": "[L, 2, d] W_o·u and W_down·u (fixed seeded u): the writer weights the moments belong to",
    "label_eval": "[L, n_eval, d] block outputs at θ+w minus θ−w, EVAL probes (hs_diff_B)",
    "label_fit": "[L, n_fit, d] the same on the clean FIT probes (for the activation ceiling)",
}


#: the second-moment captures (:func:`input_second_moments`)
MOMENT_FIELDS = ("mom_oproj_diag", "mom_downproj_diag", "mom_oproj_out", "mom_downproj_out", "mom_n_tokens", "mom_writer_probe")


@dataclass
class Captures:
    """Named capture tensors (see :data:`CAPTURE_FIELDS`); any may be None.

    ``key`` identifies what produced them (model weights, prompts, diff, code).
    """

    clean: Float[Tensor, "L n_fit d"] | None = None  # block outputs, last real token
    clean_embed: Float[Tensor, "n_fit d"] | None = None
    pos: Float[Tensor, "L n_fit d"] | None = None
    neg: Float[Tensor, "L n_fit d"] | None = None
    clean_up_in: Float[Tensor, "L n_fit d"] | None = None
    pos_up_in: Float[Tensor, "L n_fit d"] | None = None
    neg_up_in: Float[Tensor, "L n_fit d"] | None = None
    pos_up_written: Float[Tensor, "L n_fit d"] | None = None
    neg_up_written: Float[Tensor, "L n_fit d"] | None = None
    pos_tok: Float[Tensor, "L n_fit T d"] | None = None
    neg_tok: Float[Tensor, "L n_fit T d"] | None = None
    tok_mask: Bool[Tensor, "n_fit T"] | None = None
    pos_attn: Float[Tensor, "L n_fit T"] | None = None
    neg_attn: Float[Tensor, "L n_fit T"] | None = None
    mom_oproj_diag: Float[Tensor, "L d_attn"] | None = None
    mom_downproj_diag: Float[Tensor, "L d_mlp"] | None = None
    mom_oproj_out: Float[Tensor, "L d d"] | None = None
    mom_downproj_out: Float[Tensor, "L d d"] | None = None
    mom_n_tokens: Float[Tensor, 1] | None = None
    mom_writer_probe: Float[Tensor, "L 2 d"] | None = None
    label_eval: Float[Tensor, "L n_eval d"] | None = None  # at +w minus at −w
    label_fit: Float[Tensor, "L n_fit d"] | None = None
    key: str = ""
    info: dict = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The non-None capture tensors by name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if f.name in CAPTURE_FIELDS and getattr(self, f.name) is not None
        }

    def has(self, *names: str) -> bool:
        return all(getattr(self, n, None) is not None for n in names)

    def missing(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if getattr(self, n, None) is None]

    def save(self, path: str | Path) -> Path:
        """Write all tensors to one checked cache entry (:func:`ws.core.cache.save_entry`), atomically."""
        return save_entry(path, self.tensors(), self.key, {"info": json.dumps(self.info, default=str)})

    @classmethod
    def load(cls, path: str | Path, key: str) -> Captures | None:
        """The captures stored at ``path`` if they are intact and are what ``key`` names, else None."""
        entry = load_entry(path, key)
        if entry is None:
            return None
        tensors, md = entry
        unknown = [k for k in tensors if k not in CAPTURE_FIELDS]
        if unknown:
            logger.warning(f"{Path(path).name}: unknown capture name(s) {unknown}; recomputing")
            return None
        return cls(**tensors, key=key, info=json.loads(md.get("info", "{}")))

    def __repr__(self) -> str:
        parts = [f"{k}={tuple(v.shape)}" for k, v in self.tensors().items()]
        return f"Captures(key={self.key!r}, " + ", ".join(parts) + ")"


# ----------------------------------------------------------------------------- helpers
@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the model with the eager attention implementation inside the block.

    Only eager attention returns the softmax weights; transformers reads the setting from
    the config at every forward pass, so switching it temporarily is enough.
    """
    old = getattr(model.config, "_attn_implementation", None)
    if old == "eager":
        yield
        return
    model.config._attn_implementation = "eager"
    try:
        yield
    finally:
        model.config._attn_implementation = old


def shared_suffix_lengths(tok, prompts_pos: Sequence[str], prompts_neg: Sequence[str]) -> list[int]:
    """Length of the longest common token-id suffix of each (persona+, persona−) pair."""
    if len(prompts_pos) != len(prompts_neg):
        raise ValueError(f"{len(prompts_pos)} persona+ prompts but {len(prompts_neg)} persona− prompts")
    out = []
    for i, (a, b) in enumerate(zip(prompts_pos, prompts_neg, strict=True)):
        ia = tok(a, add_special_tokens=False)["input_ids"]
        ib = tok(b, add_special_tokens=False)["input_ids"]
        s = 0
        while s < min(len(ia), len(ib)) and ia[-1 - s] == ib[-1 - s]:
            s += 1
        if s == 0:
            raise ValueError(f"persona prompts #{i} share no final token: they must differ only in the system prompt")
        out.append(s)
    return out


#: the most tokens of each prompt's shared suffix the token-level captures keep (its last ones):
#: the shipped behaviours' suffixes are at most 69 tokens with the embedded model's tokenizer, so
#: they are kept whole; a long-prompt dataset's (persona bios of ~380 tokens) would otherwise
#: hold ``[L, n, 380, d]`` per persona, twice over in the builder's float64 copies
TOKEN_WINDOW = 128


def suffix_window(tok, prompts_pos: Sequence[str], prompts_neg: Sequence[str]) -> list[int]:
    """The token positions the token-level captures keep per prompt: the shared suffix
    (:func:`shared_suffix_lengths`), at most its last :data:`TOKEN_WINDOW` tokens."""
    return [min(s, TOKEN_WINDOW) for s in shared_suffix_lengths(tok, prompts_pos, prompts_neg)]


def _n_batches(n: int, bs: int) -> int:
    return math.ceil(n / bs) if n else 0


@torch.no_grad()
def _forward_capture(
    model: nn.Module,
    tok,
    prompts: Sequence[str],
    batch_size: int = 16,
    *,
    resid: bool = True,
    embed: bool = False,
    up_in: bool = False,
    up_written: bool = False,
    moments: bool = False,
    suffix_lens: Sequence[int] | None = None,
    pbar: Bar | None = None,
) -> dict[str, torch.Tensor]:
    """One batched pass over ``prompts`` filling every requested capture (see module doc):
    ``resid``, ``embed``, ``up_in``, ``up_written``, with ``suffix_lens`` ``tok``, ``attn`` and
    ``mask``, with ``moments`` the ``mom_*`` tensors."""
    prompts = rec.prompt_list(prompts)
    if suffix_lens is not None and len(suffix_lens) != len(prompts):
        raise ValueError(f"{len(suffix_lens)} suffix lengths for {len(prompts)} prompts")
    flags = dict(resid=resid, embed=embed, up_in=up_in, up_written=up_written, moments=moments)
    out = rec.record(model, tok, prompts, batch_size, _recorders(model, suffix_lens=suffix_lens, **flags), pbar)
    if moments:
        out["mom_writer_probe"] = writer_probe(model)
    return out


def probe_vector(n: int, which: int) -> Float[Tensor, " n"]:
    """The fixed float64 Gaussian vector ``u`` of :func:`writer_probe` (``which``: 0 o_proj, 1 down_proj)."""
    return torch.randn(n, generator=torch.Generator().manual_seed(which), dtype=torch.float64)


def writer_probe(model: nn.Module) -> Float[Tensor, "L 2 d"]:
    """``W_o·u_a`` and ``W_down·u_ff`` per layer (``u`` fixed seeded Gaussian vectors), float32:
    a fingerprint of the writer weights the written moments were captured with, checked by the
    builders that read them (a moment of other weights would silently give another basis)."""
    rows = []
    for l in range(len(rec.per_layer(model))):
        pair = []
        for seed, part in enumerate((".self_attn.o_proj", ".mlp.down_proj")):
            W = module_weight(model.get_submodule(rec.per_layer(model, part)[l])).to("cpu", torch.float64)
            pair.append(W @ probe_vector(W.shape[1], seed))
        rows.append(torch.stack(pair))
    return torch.stack(rows).float()


def _recorders(
    model: nn.Module, *, resid: bool, embed: bool, up_in: bool, up_written: bool, moments: bool, suffix_lens: Sequence[int] | None
) -> list[rec.Recorder]:
    """The recorders :func:`_forward_capture`'s flags select."""
    recorders: list[rec.Recorder] = []
    if resid:
        recorders.append(rec.LastToken("resid", rec.per_layer(model)))
    if embed:
        recorders.append(rec.Embedding())
    if up_in:
        recorders.append(rec.LastToken("up_in", rec.per_layer(model, ".mlp.up_proj"), reads="input"))
    if up_written:
        recorders.append(rec.UpWritten(model))
    if suffix_lens is not None:
        recorders += [rec.SuffixOutputs(model, suffix_lens), rec.AttentionRows(model, suffix_lens)]
    if moments:
        from_inputs = written_from_inputs(model)
        for key, part in (("mom_oproj", ".self_attn.o_proj"), ("mom_downproj", ".mlp.down_proj")):
            names = rec.per_layer(model, part)
            recorders.append(rec.SecondMoment(f"{key}_diag", names, "input", "diag"))
            if from_inputs:
                weights = [module_weight(model.get_submodule(n)) for n in names]
                recorders.append(rec.SecondMoment(f"{key}_out", names, "input", "written", weights))
            else:
                recorders.append(rec.SecondMoment(f"{key}_out", names, "output"))
    return recorders


def written_from_inputs(model: nn.Module) -> bool:
    """Whether the written moments ``W E[xxᵀ] Wᵀ`` must be formed from the projections' inputs:
    when the model's outputs are rounded (bfloat16 / float16: the output moments then leave
    ``W C Wᵀ`` by up to 5 % on the embedded model's massive-activation layers, measured) or
    an ``o_proj`` / ``down_proj`` has a bias; otherwise they are the outputs' own moments."""
    if next(model.parameters()).dtype not in (torch.float32, torch.float64):
        return True
    parts = (".self_attn.o_proj", ".mlp.down_proj")
    return any(model.get_submodule(n).bias is not None for part in parts for n in rec.per_layer(model, part))


# ----------------------------------------------------------------------------- public captures
def block_outputs(model: nn.Module, tok, prompts: Sequence[str], batch_size: int = 16) -> Float[Tensor, "L n d"]:
    """Block outputs at each prompt's last real token: ``[L, n, d]`` float32."""
    return _forward_capture(model, tok, prompts, batch_size, resid=True)["resid"]


def label(
    model: nn.Module, tok, prompts: Sequence[str], w: Mapping[str, torch.Tensor], batch_size: int = 16, pbar: Bar | None = None
) -> Float[Tensor, "L n d"]:
    """``block_outputs`` at ``θ + w`` minus at ``θ − w``: ``[L, n, d]`` (the activation label)."""
    with weight_steer(model, w, +1.0):
        hp = _forward_capture(model, tok, prompts, batch_size, resid=True, pbar=pbar)["resid"]
    with weight_steer(model, w, -1.0):
        hm = _forward_capture(model, tok, prompts, batch_size, resid=True, pbar=pbar)["resid"]
    return (hp.double() - hm.double()).float()


def up_proj_inputs(model: nn.Module, tok, prompts: Sequence[str], batch_size: int = 16) -> Float[Tensor, "L n d"]:
    """Inputs to ``mlp.up_proj`` at the last real token: ``[L, n, d]``."""
    return _forward_capture(model, tok, prompts, batch_size, resid=False, up_in=True)["up_in"]


def up_proj_written(model: nn.Module, tok, prompts: Sequence[str], batch_size: int = 16) -> Float[Tensor, "L n d"]:
    """``up_proj`` outputs ``u`` at the last real token, mapped through ``W_down``: ``u @ W_downᵀ``, ``[L, n, d]``."""
    return _forward_capture(model, tok, prompts, batch_size, resid=False, up_written=True)["up_written"]


def token_level(
    model: nn.Module, tok, prompts_pos: Sequence[str], prompts_neg: Sequence[str], batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """Token-level block outputs and final-token attention rows over the shared suffix.

    Returns ``pos_tok, neg_tok [L, n, T, d]``, ``pos_attn, neg_attn [L, n, T]``,
    ``tok_mask [n, T]`` (bool) and ``suffix_len [n]``; ``T`` = the longest suffix (at most
    :data:`TOKEN_WINDOW`: :func:`suffix_window`), the token axis right-aligned on the final
    token (see the module doc).
    """
    sl = suffix_window(tok, prompts_pos, prompts_neg)
    with eager_attention(model):
        p = _forward_capture(model, tok, prompts_pos, batch_size, resid=False, suffix_lens=sl)
        q = _forward_capture(model, tok, prompts_neg, batch_size, resid=False, suffix_lens=sl)
    return {
        "pos_tok": p["tok"],
        "neg_tok": q["tok"],
        "pos_attn": p["attn"],
        "neg_attn": q["attn"],
        "tok_mask": p["mask"],
        "suffix_len": torch.as_tensor(sl),
    }


def input_second_moments(model: nn.Module, tok, prompts: Sequence[str], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """The second moments the adapter-family candidates need, over all real tokens, summed in
    float64 batch by batch and returned as float32: per input channel of ``self_attn.o_proj``
    and ``mlp.down_proj``, ``E[x²]`` (``mom_oproj_diag [L, d_attn]``, ``mom_downproj_diag
    [L, d_mlp]``), and the written moments ``W E[xxᵀ] Wᵀ`` (``mom_oproj_out``,
    ``mom_downproj_out``, ``[L, d, d]``; :func:`written_from_inputs` says how they are read);
    ``mom_n_tokens`` = the token count. No ``d_mlp × d_mlp`` matrix is ever formed.
    """
    r = _forward_capture(model, tok, prompts, batch_size, resid=False, moments=True)
    return {k: r[k] for k in MOMENT_FIELDS}


# ----------------------------------------------------------------------------- everything
def captures_key(model: nn.Module, fit_clean, fit_pos, fit_neg, eval_prompts, w) -> str:
    """Key of a :func:`capture_all` result: model weights, prompts, diff and capture code."""
    return cache_key(
        {
            "what": "capture_all",
            "model": model_id(model),
            "weights": hash_model(model),
            "placement": placement(model),
            "fit_clean": list(fit_clean),
            "fit_pos": list(fit_pos),
            "fit_neg": list(fit_neg),
            "eval": list(eval_prompts),
            "w": hash_tensors(w),
            "code": hash_code(),
        }
    )


def capture_all(
    model: nn.Module,
    tok,
    fit_clean: Sequence[str],
    fit_pos: Sequence[str],
    fit_neg: Sequence[str],
    eval_prompts: Sequence[str],
    w: Mapping[str, torch.Tensor],
    batch_size: int = 16,
    *,
    progress: bool = True,
    cache: bool = False,
    threads: int | None = None,
) -> Captures:
    """Every capture the candidate registry and the ceilings need (see :data:`CAPTURE_FIELDS`).

    Passes (each over its prompt set once): clean FIT (block outputs, embedding, up_proj
    inputs, o_proj/down_proj input moments); persona+ FIT and persona− FIT (block outputs,
    up_proj inputs and written outputs, token-level outputs and attention rows); EVAL at
    ``α = ±1`` (label); clean FIT at ``α = ±1`` (FIT label, for the ceiling).
    ``cache=True`` stores the result under ``<cache>/activations/`` keyed by
    :func:`captures_key` and reuses it. ``threads``: BLAS threads for the passes (None: leave
    torch's setting; 1 is far faster when other processes share the cores).
    """
    fit_clean, fit_pos, fit_neg, eval_prompts = map(list, (fit_clean, fit_pos, fit_neg, eval_prompts))
    if not (len(fit_pos) == len(fit_neg)):
        raise ValueError(f"persona+ FIT has {len(fit_pos)} prompts, persona− FIT {len(fit_neg)}")
    key = captures_key(model, fit_clean, fit_pos, fit_neg, eval_prompts, w)

    def build() -> dict[str, torch.Tensor]:
        sl = suffix_window(tok, fit_pos, fit_neg)
        nb = lambda p: _n_batches(len(p), batch_size)  # noqa: E731
        total = 3 * nb(fit_clean) + 2 * nb(fit_pos) + 2 * nb(eval_prompts)
        out: dict[str, torch.Tensor] = {}
        with Bar(total, "capture batches", disable=not progress) as pbar:
            r = _forward_capture(model, tok, fit_clean, batch_size, resid=True, embed=True, up_in=True, moments=True, pbar=pbar)
            out.update(
                clean=r["resid"],
                clean_embed=r["embed"],
                clean_up_in=r["up_in"],
                **{k: r[k] for k in MOMENT_FIELDS},
            )
            with eager_attention(model):
                for side, prompts in (("pos", fit_pos), ("neg", fit_neg)):
                    r = _forward_capture(
                        model, tok, prompts, batch_size, resid=True, up_in=True, up_written=True, suffix_lens=sl, pbar=pbar
                    )
                    out[side] = r["resid"]
                    out[f"{side}_up_in"] = r["up_in"]
                    out[f"{side}_up_written"] = r["up_written"]
                    out[f"{side}_tok"] = r["tok"]
                    out[f"{side}_attn"] = r["attn"]
                    out["tok_mask"] = r["mask"]
            out["label_eval"] = label(model, tok, eval_prompts, w, batch_size, pbar=pbar)
            out["label_fit"] = label(model, tok, fit_clean, w, batch_size, pbar=pbar)
        return out

    if cache:
        path = activation_cache_dir() / f"captures-{key}.safetensors"
        cap = Captures.load(path, key)
        if cap is not None:
            logger.info(f"captures: cache hit {path.name}")
            return cap
    with blas_threads(threads):
        tensors = build()
    cap = Captures(
        **tensors,
        key=key,
        info={"model": model_id(model), "n_fit": len(fit_clean), "n_eval": len(eval_prompts), "d_model": d_model(model)},
    )
    if cache:
        cap.save(path)
        logger.info(f"captures cached in {path.name}")
    logger.debug(f"captures: {cap!r}")
    return cap


# ----------------------------------------------------------------------------- v8: block-local label
def block_io(model: nn.Module, tok, prompts: Sequence[str], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Each block's input (pre) and output (post) at each prompt's last real token, both
    ``[L, n, d]`` float32, from the same passes (and numbers) as :func:`block_outputs`."""
    blocks = rec.per_layer(model)
    io = rec.record(model, tok, prompts, batch_size, [rec.LastToken("pre", blocks, reads="input"), rec.LastToken("post", blocks)])
    return io["pre"], io["post"]


def block_labels(
    model: nn.Module, tok, prompts: Sequence[str], w: Mapping[str, torch.Tensor], batch_size: int = 16, *, cache: bool = False
) -> dict[str, torch.Tensor]:
    """The two activation labels of v8, ``[L, n, d]`` float32 each:

    - ``label``: block outputs at ``θ + w`` minus at ``θ − w`` (cumulative: everything the
      diff changed up to and including block l; the same numbers as :func:`label`);
    - ``label_block``: ``(post⁺ − pre⁺) − (post⁻ − pre⁻)``: what block l itself writes into
      the residual stream, at ``+w`` minus at ``−w`` (block-local).

    ``cache=True`` keeps them under ``<cache>/activations/`` keyed by the model weights, the
    prompts, the diff and the capture code (a damaged entry is recomputed).
    """
    if not cache:  # the key hashes every weight (seconds at 8B): only for the cache
        return _block_labels(model, tok, prompts, w, batch_size)
    key = cache_key(
        {
            "what": "block_labels",
            "model": model_id(model),
            "weights": hash_model(model),
            "placement": placement(model),
            "prompts": list(prompts),
            "w": hash_tensors(w),
            "batch": int(batch_size),
            "code": hash_code(),
        }
    )
    path = activation_cache_dir() / f"block-labels-{key}.safetensors"
    if (hit := load_entry(path, key)) is not None:
        logger.info(f"block labels: cache hit {path.name}")
        return hit[0]
    out = _block_labels(model, tok, prompts, w, batch_size)
    save_entry(path, out, key)
    return out


def _block_labels(
    model: nn.Module, tok, prompts: Sequence[str], w: Mapping[str, torch.Tensor], batch_size: int
) -> dict[str, torch.Tensor]:
    with weight_steer(model, w, +1.0):
        pre_p, post_p = block_io(model, tok, prompts, batch_size)
    with weight_steer(model, w, -1.0):
        pre_m, post_m = block_io(model, tok, prompts, batch_size)
    return {
        "label": (post_p.double() - post_m.double()).float(),
        "label_block": ((post_p.double() - pre_p.double()) - (post_m.double() - pre_m.double())).float(),
    }
