"""The answer read-out: which tokens are the answers, and log P(first) − log P(second).

The read-out is the last real token's next-token distribution under the chat template
(:func:`ws.model.chat.render_chat`, no system turn): the log-sum of the first answer's
single-token variants minus the second's, and the probability mass of both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ws.core.device import input_device
from ws.model.chat import render_chat
from ws.model.load import padding_side
from ws.model.trace import gather_last_token

DEFAULT_ANSWERS = ("Yes", "No")


class ReadoutError(ValueError):
    """A behaviour's read-out answer is not a single token of the model's tokenizer."""


def answer_forms(answer: str) -> tuple[str, ...]:
    """The written forms of one answer whose single-token ids are read: the answer and
    `` answer``; a word also lower-cased (``yes``, `` yes``); one character also after an
    opening parenthesis (``(A``, `` (A``), as multiple-choice answers are written."""
    forms = [answer, f" {answer}"]
    if len(answer) > 1 and answer.lower() != answer:
        forms += [answer.lower(), f" {answer.lower()}"]
    if len(answer) == 1:
        forms += [f"({answer}", f" ({answer}"]
    return tuple(forms)


def answer_token_ids(tokenizer, answers: Sequence[str] = DEFAULT_ANSWERS) -> tuple[list[int], list[int]]:
    """Single-token ids of the two answers' forms (:func:`answer_forms`; for the default
    ``Yes`` / ``No``: "Yes", " Yes", "yes", " yes" and the same for No).

    A form is used only when it is one token for both answers, so neither side gets more
    variants than the other. :class:`ReadoutError` (with every form's tokenisation) when no
    form is one token for both, or the two answers share a token.
    """
    first, second = (str(a) for a in answers)
    ids_a, ids_b = [], []
    for fa, fb in zip(answer_forms(first), answer_forms(second), strict=False):
        a = tokenizer.encode(fa, add_special_tokens=False)
        b = tokenizer.encode(fb, add_special_tokens=False)
        if len(a) == 1 and len(b) == 1:
            ids_a.append(a[0])
            ids_b.append(b[0])
    if not ids_a or set(ids_a) & set(ids_b):
        shown = "; ".join(
            f"{f!r} → {tokenizer.convert_ids_to_tokens(tokenizer.encode(f, add_special_tokens=False))}"
            for f in (*answer_forms(first), *answer_forms(second))
        )
        why = "share a token" if ids_a else "have no form that is a single token for both"
        raise ReadoutError(
            f"the read-out answers {first!r} / {second!r} {why} in this model's tokenizer ({shown}). "
            f"Declare answers that are one token each (e.g. Yes/No, A/B, True/False) in the behaviour's "
            f"'readout' field."
        )
    return sorted(set(ids_a)), sorted(set(ids_b))


def check_answers(tokenizer, answers: Sequence[str] = DEFAULT_ANSWERS) -> None:
    """Refuse answers the read-out cannot use (:func:`answer_token_ids`), before any work."""
    answer_token_ids(tokenizer, answers)


def orient(
    results: Mapping[str, tuple[np.ndarray, np.ndarray]], signs_by_set: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``set -> (logratio · sign, mass)``: a prompt whose sign is −1 reads ``log P(second) −
    log P(first)`` (an item that lists the behaviour's answer second, e.g. an A/B item whose
    matching answer is B). No signs: unchanged."""
    if not signs_by_set:
        return dict(results)
    out = {}
    for s, (lr, mass) in results.items():
        sg = np.asarray(signs_by_set.get(s, np.ones(len(lr))), dtype=np.float64)
        if sg.shape != np.shape(lr):
            raise ValueError(f"set {s!r}: {len(sg)} read-out signs for {len(lr)} prompts")
        out[s] = (np.asarray(lr) * sg, mass)
    return out


@torch.no_grad()
def next_token_logprobs(
    model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 16, system: str | None = None
) -> torch.Tensor:
    """``[n, V]`` float32 (CPU): the next-token log-probabilities at the answer position of each
    prompt (a user message rendered through the chat template, no system turn unless
    ``system`` is given; the answer position is the last real token, right padding, gathered
    by the mask)."""
    out = []
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    with padding_side(tokenizer, "right"):
        for i in range(0, len(prompts), batch_size):
            texts = [render_chat(tokenizer, p, system) for p in prompts[i : i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(input_device(model))
            hidden = decoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, T, d)
            h = gather_last_token(hidden, enc["attention_mask"])  # (B, d)
            out.append(torch.log_softmax(head(h).float(), dim=-1).cpu())  # (B, V)
    return torch.cat(out)


def answer_logratios(
    model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 16, answers: Sequence[str] = DEFAULT_ANSWERS
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: ``log P(first answer's forms) − log P(second's)`` at the answer position
    (:func:`next_token_logprobs`), and the two answers' probability mass (default answers: Yes / No)."""
    yes, no = answer_token_ids(tokenizer, answers)
    logp = next_token_logprobs(model, tokenizer, prompts, batch_size)  # (n, V)
    ly = torch.logsumexp(logp[:, yes], dim=-1)
    ln = torch.logsumexp(logp[:, no], dim=-1)
    return (ly - ln).numpy(), (ly.exp() + ln.exp()).numpy()
