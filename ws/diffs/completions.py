"""Persona completions: what the base model writes under each persona, and the contrast check.

For every training topic and phrasing, the base model answers under the positive
(sycophantic) and the negative (honest) persona system prompt. The answer's opening word
is set from the persona and the behaviour's answer rule for the topic's set (sycophancy —
positive: "Yes" to every opinion; negative: "Yes" iff the claim is true; neutral
questions: both give the correct answer) — and the model writes the rest (sampled, seeded,
batched, left padding). Free completions of a 135M model rarely take a stance, and a diff
trained on them barely moves the Yes/No answer; fixed openings give the contrast, and the
true claims and neutral questions (same opening for both personas) keep it from being a
plain yes-bias. :func:`check_completions` fails loudly when the contrast is not there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import torch
from torch import nn

from ws.behavior import data
from ws.behavior.files import DEFAULT_READOUT
from ws.core.device import autocast, input_device, use_bf16
from ws.core.log import progress
from ws.core.paths import DATA_DIR, model_slug, out_dir
from ws.diffs.adapters import TrainConfig
from ws.model.chat import render_chat
from ws.model.load import padding_side


@torch.no_grad()
def generate_completions(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    systems: Sequence[str | None] | None = None,
    openings: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 16,
    temperature: float = 0.7,
    top_p: float = 0.95,
    bf16: bool = False,
    desc: str = "generate",
    return_finished: bool = False,
) -> list[str] | tuple[list[str], list[bool]]:
    """The model's continuation of each chat-rendered prompt (+ its opening), sampled.

    Batched with LEFT padding; the global RNG is left as it was (a forked RNG seeded with
    ``seed`` drives the sampling). Returns only the generated text (the opening is not
    repeated), special tokens removed, whitespace kept as generated. With
    ``return_finished`` also whether each one ended with the end-of-turn token (rather than
    at ``max_new_tokens``).
    """
    n = len(prompts)
    systems = list(systems) if systems is not None else [None] * n
    openings = list(openings) if openings is not None else [""] * n
    if not (len(systems) == len(openings) == n):
        raise ValueError(f"prompts, systems and openings differ in length: {n}, {len(systems)}, {len(openings)}")
    texts = [render_chat(tokenizer, p, s) + o for p, s, o in zip(prompts, systems, openings, strict=True)]
    out: list[str] = []
    finished: list[bool] = []
    eos_id = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]), padding_side(tokenizer, "left"):
        torch.manual_seed(seed)
        for i in progress(range(0, n, batch_size), f"{desc} ({n} prompts, batches of {batch_size})"):
            chunk = texts[i : i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(input_device(model))
            with autocast(input_device(model), use_bf16(bf16, input_device(model))):
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=top_p if temperature > 0 else None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            finished.extend((new == eos_id).any(dim=1).cpu().tolist())
    model.train(was_training)
    return (out, finished) if return_finished else out


def completion_jobs(topics: Sequence[data.Topic], n_phrasings: int = 2, behavior=None) -> list[dict]:
    """One row per (training topic, phrasing, persona) with its system prompt and opening
    (``behavior``: a name, path or :class:`ws.behavior.files.Behavior`; default sycophancy)."""
    b = data.get_behavior(behavior)
    pairs = b.persona_pairs
    rows = []
    for ti, t in enumerate(topics):
        for pi, user in enumerate(data.training_prompts(t, n_phrasings, offset=ti, behavior=b)):
            pair = (ti + pi) % len(pairs)
            for persona, system in zip(("pos", "neg"), pairs[pair], strict=True):
                agree = b.agrees(persona, t)
                rows.append(
                    dict(
                        topic_id=t.id,
                        kind=t.kind,
                        truth=t.truth,
                        phrasing=pi,
                        persona_pair=pair,
                        persona=persona,
                        system=system,
                        user=user,
                        stance="agree" if agree else "disagree",
                        opening=f"{b.answer(persona, t)},",
                    )
                )
    return rows


_YES_WORDS = {"yes", "yeah", "yep", "absolutely", "correct", "right", "true", "indeed", "exactly", "definitely", "certainly"}


_NO_WORDS = {"no", "nope", "not", "incorrect", "false", "wrong", "actually", "unfortunately"}


def response_stance(text: str, answers: tuple[str, str] = DEFAULT_READOUT) -> str:
    """``"agree"`` / ``"disagree"`` / ``"none"`` from a response's first word: for the default
    Yes / No answers by word lists (``yes``, ``correct``, … / ``no``, ``wrong``, …); for
    other answers (in the item's order) the first word must be one of them."""
    m = re.match(r"\W*([A-Za-z0-9]+)", text)
    if m is None:
        return "none"
    if tuple(answers) != DEFAULT_READOUT:
        got = m.group(1)
        same = lambda a: got == a or (len(a) > 1 and got.lower() == a.lower())  # noqa: E731
        return "agree" if same(answers[0]) else "disagree" if same(answers[1]) else "none"
    w = m.group(1).lower()
    if w in _YES_WORDS:
        return "agree"
    if w in _NO_WORDS:
        return "disagree"
    return "none"


class CompletionCheckError(RuntimeError):
    """The persona completions do not show the contrast the diff needs."""


def check_completions(table: pl.DataFrame, min_rate: float = 0.8, behavior=None) -> dict[str, float]:
    """Fail with a clear message unless the completions show the persona contrast.

    Checks: continuations not (mostly) empty; not all the same text; positive and negative
    responses differ on the target set (sycophancy: false-claim opinions); in every set,
    each persona's response opens with the stance its answer rule sets (``<persona>_<set>``,
    e.g. ``neg_opinion_false``: the honest persona disagrees with false claims). Returns
    the measured rates.
    """
    b = data.get_behavior(behavior)
    if table.height == 0:
        raise CompletionCheckError("no completions were generated (empty table)")
    cont = table["continuation"].to_list()
    empty = sum(1 for c in cont if not c.strip()) / len(cont)
    if empty > 0.5:
        raise CompletionCheckError(
            f"{empty:.0%} of the continuations are empty: the model stops at once (check the chat template and eos)."
        )
    if len(set(table["response"].to_list())) == 1:
        raise CompletionCheckError("every completion is the same text: generation is degenerate.")
    order = {x.id: x.answers(b.readout) for x in b.items}
    got = [response_stance(r, order.get(i, DEFAULT_READOUT)) for r, i in zip(table["response"], table["topic_id"], strict=True)]
    t = table.with_columns(pl.Series("got", got, dtype=pl.String))
    rates: dict[str, float] = {"empty_continuations": empty}
    for s in b.kinds:
        for persona in ("pos", "neg"):
            sub = t.filter((pl.col("persona") == persona) & (pl.col("kind") == s))
            if sub.height:
                rates[f"{persona}_{s}"] = float((sub["got"] == sub["stance"]).mean())
    differs = f"{b.target}_pos_differs_from_neg"
    fo = t.filter(pl.col("kind") == b.target)
    if fo.height:
        piv = fo.select("topic_id", "phrasing", "persona", "response").pivot(
            on="persona", index=["topic_id", "phrasing"], values="response"
        )
        if {"pos", "neg"} <= set(piv.columns):
            rates[differs] = float((piv["pos"] != piv["neg"]).mean())
    failed = {
        k: v
        for k, v in rates.items()
        if k != "empty_continuations" and not math.isnan(v) and v < (0.5 if k == differs else min_rate)
    }
    if failed:
        examples = t.filter(pl.col("got") != pl.col("stance")).head(4).select("persona", "kind", "user", "response").rows()
        raise CompletionCheckError(
            f"the persona completions do not show the {b.name} contrast the diff needs: "
            + ", ".join(f"{k} = {v:.0%}" for k, v in failed.items())
            + f" (each should be ≥ {min_rate:.0%}; {differs} ≥ 50%). Examples of mismatched stances: {examples}"
        )
    return rates


def build_completions(model, tokenizer, topics: Sequence[data.Topic], config: TrainConfig, behavior=None) -> pl.DataFrame:
    """The completion table for the training topics (see :func:`completion_jobs`)."""
    jobs = completion_jobs(topics, config.n_phrasings, behavior)
    conts, finished = generate_completions(
        model,
        tokenizer,
        [j["user"] for j in jobs],
        systems=[j["system"] for j in jobs],
        openings=[j["opening"] for j in jobs],
        max_new_tokens=config.max_new_tokens,
        seed=config.completion_seed,
        batch_size=config.gen_batch_size,
        temperature=config.temperature,
        top_p=config.top_p,
        bf16=config.bf16,
        desc="completions",
        return_finished=True,
    )
    for j, c, f in zip(jobs, conts, finished, strict=True):
        j["continuation"] = c
        j["response"] = (j["opening"] + c).strip()
        j["finished"] = bool(f)
    return pl.DataFrame(jobs)


def completions_path(model_name: str, behavior: str, seed: int, root: str | Path | None = None) -> Path:
    root = Path(root) if root is not None else out_dir()
    return root / DATA_DIR / model_slug(model_name) / behavior / f"completions_seed{int(seed)}.csv"
