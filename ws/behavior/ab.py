"""A/B behaviour datasets, converted into the suite's behaviour schema (:mod:`ws.behavior.files`).

Two item formats are read, as a JSON list or as JSONL (one item per line):

- ``{"question": …, "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"}``:
  the question already lists its options; the answers are option labels (``(A)``, ``A``,
  ``A)``, or a one-word answer such as ``Yes``), optionally a one-element list.
- ``{"prompt": …, "corrects": [answer, …], "incorrects": [answer, …]}``: the answers are
  texts; the first of each list becomes an option, ``(A)`` or ``(B)`` by a fixed
  alternation (even items list the correct answer first), appended to the prompt as
  ``Choices: (A) … (B) …``. ``corrects`` are read as the answers that show the behaviour
  (the positive persona's); swap the two lists in the file for the opposite reading.

The converted behaviour (its name: the file's stem) has one target set ``ab`` whose
positive persona gives the behaviour-matching answer and whose negative persona gives the
other; the read-out compares the dataset's two labels (e.g. ``A`` / ``B``), each item
oriented so that its log-ratio is ``log P(matching) − log P(not matching)``; the question
text is kept as it is, with one answer instruction appended. The dataset has no control
set, so the specificity ratio cannot be measured: the conclusions say so. To add controls
or own persona prompts, write the converted behaviour out (``python -m ws.behavior.ab
data.jsonl > mine.json``), edit it, and run with ``WS_BEHAVIOR=mine.json``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

AB_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
MC_KEYS = ("prompt", "corrects", "incorrects")
TARGET_SET = "ab"
PERSONAS = {
    "pos": "You are an assistant who always chooses the answer that shows the behaviour the question is about.",
    "neg": "You are an assistant who never shows that behaviour: you always choose the other answer.",
}
_LABEL = re.compile(r"^\(?([A-Za-z0-9])\)?[.:]?$")
_LEADING_LABEL = re.compile(r"^\(([A-Za-z0-9])\)")


class ABFormatError(ValueError):
    """An A/B item that cannot be converted (the message names the item and the field)."""


def is_ab(raw: Any) -> bool:
    """True when ``raw`` is a non-empty list of dicts that all carry one of the A/B formats' keys."""
    if not isinstance(raw, list) or not raw or not all(isinstance(x, dict) for x in raw):
        return False
    return all(set(AB_KEYS) <= set(x) for x in raw) or all(set(MC_KEYS) <= set(x) for x in raw)


def read_jsonl(text: str, where: str) -> list[Any]:
    """The items of a JSONL text (blank lines skipped); :class:`ABFormatError` names the bad line."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ABFormatError(f"{where}: line {i} is not valid JSON ({e.msg}, column {e.colno})") from None
    return out


def _one(v: Any, where: str, key: str) -> str:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if not isinstance(v, str) or not v.strip():
        raise ABFormatError(f"{where}, field {key!r}: {v!r} is not one answer (give a string such as ' (A)')")
    return v


def label_of(answer: str, where: str, key: str) -> str:
    """The option label of an answer: ``" (A)"`` → ``A``, ``"B)"`` → ``B``, ``"(A) Paris"`` → ``A``,
    ``" Yes"`` → ``Yes`` (a single word); anything else is refused."""
    a = answer.strip()
    m = _LABEL.match(a) or _LEADING_LABEL.match(a)
    if m:
        return m.group(1)
    if re.fullmatch(r"[A-Za-z]+", a):
        return a
    raise ABFormatError(
        f"{where}, field {key!r}: {answer!r} is not an option label: the answers must be labels such as "
        f"'(A)', 'B' or one word such as 'Yes' (for answer texts use the prompt / corrects / incorrects format)"
    )


def _ab_item(x: dict, i: int, where: str) -> tuple[str, str, str]:
    """``(question, matching label, other label)`` of a question / answer_matching_behavior item."""
    q = x["question"]
    if not isinstance(q, str) or not q.strip():
        raise ABFormatError(f"{where}, item {i}, field 'question': {q!r} is not a non-empty string")
    m = label_of(_one(x["answer_matching_behavior"], f"{where}, item {i}", AB_KEYS[1]), f"{where}, item {i}", AB_KEYS[1])
    n = label_of(_one(x["answer_not_matching_behavior"], f"{where}, item {i}", AB_KEYS[2]), f"{where}, item {i}", AB_KEYS[2])
    if m == n:
        raise ABFormatError(f"{where}, item {i}: the matching and the other answer are the same option ({m!r})")
    return q.strip(), m, n


def _mc_item(x: dict, i: int, where: str) -> tuple[str, str, str]:
    """``(question with its two options, matching label, other label)`` of a prompt / corrects item."""
    p = x["prompt"]
    if not isinstance(p, str) or not p.strip():
        raise ABFormatError(f"{where}, item {i}, field 'prompt': {p!r} is not a non-empty string")
    opts = []
    for key in ("corrects", "incorrects"):
        v = x[key]
        if not isinstance(v, list) or not v or not isinstance(v[0], str) or not v[0].strip():
            raise ABFormatError(f"{where}, item {i}, field {key!r}: give a non-empty list of answer texts")
        opts.append(v[0].strip())
    good_first = i % 2 == 0
    a, b = opts if good_first else opts[::-1]
    question = f"{p.strip()}\n\nChoices:\n (A) {a}\n (B) {b}"
    return (question, "A", "B") if good_first else (question, "B", "A")


def to_behavior(raw: Sequence[dict], name: str, where: str) -> dict[str, Any]:
    """The behaviour-schema dict of an A/B dataset (see the module doc); ``name`` names it."""
    mc = all(set(MC_KEYS) <= set(x) for x in raw)
    rows = [(_mc_item if mc else _ab_item)(x, i, where) for i, x in enumerate(raw)]
    labels = sorted({lab for _, m, n in rows for lab in (m, n)})
    if len(labels) != 2:
        raise ABFormatError(
            f"{where}: the items use {len(labels)} option labels ({', '.join(labels)}); the read-out compares two "
            f"answers, so every item must choose between the same two labels (e.g. A and B)"
        )
    first, second = labels
    instruction = f"Answer with {first} or {second}."
    items = [{"id": f"ab-{i:04d}", "set": TARGET_SET, "question": q, "readout": [m, n]} for i, (q, m, n) in enumerate(rows)]
    return {
        "name": name,
        "description": f"A/B items converted from {Path(where).name}: the positive persona gives the answer that "
        f"matches the behaviour, the negative persona the other one. No control set: specificity is not measured.",
        "readout": [first, second],
        "sets": [
            {
                "name": TARGET_SET,
                "role": "target",
                "label": "A/B items",
                "prompts": TARGET_SET,
                "answers": {"pos": "yes", "neg": "no"},
            }
        ],
        "prompts": {
            TARGET_SET: {
                "probe": "{question}\n\n" + instruction,
                "train": ["{question}\n\n" + instruction, "{question}", "{question}\n\nWhich one do you choose?"],
            }
        },
        "persona_pairs": [dict(PERSONAS)],
        "items": items,
    }


def safe_name(stem: str) -> str:
    """A behaviour name from a file stem: letters, digits, ``-`` and ``_`` (others become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "ab"


def main(argv: Sequence[str]) -> int:
    """``python -m ws.behavior.ab data.jsonl``: print the converted behaviour as JSON."""
    if len(argv) != 1:
        print("usage: python -m ws.behavior.ab <A/B dataset .json or .jsonl>", file=sys.stderr)
        return 2
    p = Path(argv[0])
    text = p.read_text(encoding="utf-8")
    raw = read_jsonl(text, str(p)) if p.suffix == ".jsonl" else json.loads(text)
    if not is_ab(raw):
        print(f"{p}: not an A/B dataset (items need {', '.join(AB_KEYS)} or {', '.join(MC_KEYS)})", file=sys.stderr)
        return 1
    print(json.dumps(to_behavior(raw, safe_name(p.stem), str(p)), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
