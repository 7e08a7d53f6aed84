"""The answer read-out: which tokens are the answers, and log P(first) − log P(second).

The read-out is the last real token's next-token distribution under the chat template
(:func:`ws.model.chat.render_chat`, no system turn): the log-sum of the first answer's
single-token variants minus the second's, and the probability mass of both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ws.core.device import input_device
from ws.model.chat import render_chat
from ws.model.load import padding_side
from ws.model.trace import gather_last_token


def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Single-token ids of the Yes / No variants ("Yes", " Yes", "yes", " yes"; same for No).

    Only variants that are one token are used, and the same casing/space forms for both
    words, so neither side gets more variants than the other.
    """
    forms = ("{}", " {}", "{l}", " {l}")
    yes, no = [], []
    for f in forms:
        y = tokenizer.encode(f.format("Yes", l="yes"), add_special_tokens=False)
        n = tokenizer.encode(f.format("No", l="no"), add_special_tokens=False)
        if len(y) == 1 and len(n) == 1:
            yes.append(y[0])
            no.append(n[0])
    if not yes:
        raise ValueError("the tokenizer has no single-token form of both 'Yes' and 'No'")
    return sorted(set(yes)), sorted(set(no))


@torch.no_grad()
def answer_logratios(model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: ``log P(Yes variants) − log P(No variants)`` at the answer position, and ``P(Yes)+P(No)``.

    Prompts are user messages rendered through the chat template (no system turn); the
    answer position is the last real token (right padding, gathered by the mask).
    """
    yes, no = answer_token_ids(tokenizer)
    lr, mass = [], []
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    with padding_side(tokenizer, "right"):
        for i in range(0, len(prompts), batch_size):
            texts = [render_chat(tokenizer, p) for p in prompts[i : i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(input_device(model))
            hidden = decoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, T, d)
            h = gather_last_token(hidden, enc["attention_mask"])  # (B, d)
            logp = torch.log_softmax(head(h).float(), dim=-1)  # (B, V)
            ly = torch.logsumexp(logp[:, yes], dim=-1)
            ln = torch.logsumexp(logp[:, no], dim=-1)
            lr.append((ly - ln).cpu().numpy())
            mass.append((ly.exp() + ln.exp()).cpu().numpy())
    return np.concatenate(lr), np.concatenate(mass)
