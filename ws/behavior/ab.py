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

Hostile files are refused with the suite's one-line message, never a traceback: bytes that
are not UTF-8 (their offset and line named), JSON nested too deep to read, an item that is
not a mapping or lacks a key (its line in a JSONL file), more than two option labels (one
offending item named). A question that appears more than once is kept once (the first
occurrence) with a warning that says how many items were removed, so that no question is
both trained on and held out; a repeat whose answers differ is refused.
"""

from __future__ import annotations

import json
import re
import reprlib
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ws.core.log import logger

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


class Lines(list):
    """The items of a JSONL file, with ``lines``: the line each item was read from (1-based)."""

    lines: list[int]


def item_format(raw: Any) -> str | None:
    """``"ab"`` (question / answer_matching_behavior) or ``"mc"`` (prompt / corrects) when ``raw``
    is a non-empty list in which some mapping carries all of one format's keys, else None.
    Items that do not fit are reported one by one by :func:`to_behavior`, with their line."""
    if not isinstance(raw, list) or not raw:
        return None
    for fmt, keys in (("ab", AB_KEYS), ("mc", MC_KEYS)):
        if any(isinstance(x, dict) and set(keys) <= set(x) for x in raw):
            return fmt
    return None


def is_ab(raw: Any) -> bool:
    """True when ``raw`` is a list of A/B items (:func:`item_format`)."""
    return item_format(raw) is not None


def decode(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text; :class:`ABFormatError` names the first bad byte's offset and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.start + 4]
        raise ABFormatError(
            f"{where}: not UTF-8 text: byte {e.start} (line {line}) starts {bad!r} ({e.reason}); save the file as UTF-8"
        ) from None


def too_deep() -> str:
    """The message's words for a file nested deeper than Python reads."""
    return (
        f"nested more than {sys.getrecursionlimit()} levels deep, too deep to read (a behaviour needs a few "
        f"levels: the file is damaged or not a behaviour file)"
    )


def load_json(text: str, where: str) -> Any:
    """One JSON document; :class:`ABFormatError` for a syntax error (its line and column) and
    for nesting too deep to read (Python's recursion limit), never a bare ``RecursionError``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ABFormatError(f"{where}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ABFormatError(f"{where}: not readable: its JSON is {too_deep()}") from None


def read_jsonl(text: str, where: str) -> Lines:
    """The items of a JSONL text (blank lines skipped), with the line of each; :class:`ABFormatError`
    names the bad line."""
    out = Lines()
    out.lines = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ABFormatError(f"{where}: line {i} is not valid JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise ABFormatError(f"{where}: not readable: line {i} is {too_deep()}") from None
        out.lines.append(i)
    return out


def read(path: Path, where: str) -> Any:
    """The parsed content of a ``.json`` or ``.jsonl`` file (UTF-8 checked, see :func:`decode`)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ABFormatError(f"{where}: cannot be read ({e.strerror or e})") from None
    text = decode(data, where)
    return read_jsonl(text, where) if path.suffix == ".jsonl" else load_json(text, where)


def _name(raw: Sequence[Any], i: int) -> str:
    """How a message names item ``i``: its line in a JSONL file, and its index."""
    lines = getattr(raw, "lines", None)
    return f"line {lines[i]}, item {i}" if lines else f"item {i}"


def _at(where: str, raw: Sequence[Any], i: int) -> str:
    return f"{where}, {_name(raw, i)}"


_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 80, 80, 3
_JSON_KIND = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false", type(None): "null"}


def _show(v: Any) -> str:
    """A short ``repr`` of a value for a message (long or deeply nested values are cut)."""
    return _SHOW.repr(v)


def _shape(x: Any, at: str, keys: tuple[str, ...]) -> dict:
    """An item must be a mapping with its format's keys (other keys are ignored)."""
    if not isinstance(x, dict):
        kind = _JSON_KIND.get(type(x), type(x).__name__)
        raise ABFormatError(f"{at}: {kind}, not an A/B item (a mapping with {', '.join(keys)})")
    missing = [k for k in keys if k not in x]
    if missing:
        raise ABFormatError(f"{at}, field {missing[0]!r}: missing (every item of this file needs {', '.join(keys)})")
    return x


def _one(v: Any, where: str, key: str) -> str:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if not isinstance(v, str) or not v.strip():
        raise ABFormatError(f"{where}, field {key!r}: {_show(v)} is not one answer (give a string such as ' (A)')")
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
        f"{where}, field {key!r}: {_show(answer)} is not an option label: the answers must be labels such as "
        f"'(A)', 'B' or one word such as 'Yes' (for answer texts use the prompt / corrects / incorrects format)"
    )


def _ab_item(x: dict, at: str) -> tuple[str, str, str]:
    """``(question, matching label, other label)`` of a question / answer_matching_behavior item."""
    q = x["question"]
    if not isinstance(q, str) or not q.strip():
        raise ABFormatError(f"{at}, field 'question': {_show(q)} is not a non-empty string")
    m = label_of(_one(x["answer_matching_behavior"], at, AB_KEYS[1]), at, AB_KEYS[1])
    n = label_of(_one(x["answer_not_matching_behavior"], at, AB_KEYS[2]), at, AB_KEYS[2])
    if m == n:
        raise ABFormatError(f"{at}: the matching and the other answer are the same option ({m!r})")
    return q.strip(), m, n


def _mc_parts(x: dict, at: str) -> tuple[str, str, str]:
    """``(prompt, first correct answer, first incorrect answer)`` of a prompt / corrects item."""
    p = x["prompt"]
    if not isinstance(p, str) or not p.strip():
        raise ABFormatError(f"{at}, field 'prompt': {_show(p)} is not a non-empty string")
    opts = []
    for key in ("corrects", "incorrects"):
        v = x[key]
        if not isinstance(v, list) or not v or not isinstance(v[0], str) or not v[0].strip():
            raise ABFormatError(f"{at}, field {key!r}: give a non-empty list of answer texts")
        opts.append(v[0].strip())
    return p.strip(), opts[0], opts[1]


def _mc_item(parts: tuple[str, str, str], i: int) -> tuple[str, str, str]:
    """``(question with its two options, matching label, other label)``: item ``i`` (of the
    distinct items) lists the correct answer first when ``i`` is even."""
    p, good, bad = parts
    good_first = i % 2 == 0
    a, b = (good, bad) if good_first else (bad, good)
    question = f"{p}\n\nChoices:\n (A) {a}\n (B) {b}"
    return (question, "A", "B") if good_first else (question, "B", "A")


def distinct(parts: Sequence[tuple[str, str, str]], raw: Sequence[Any], where: str) -> list[int]:
    """The indices of the items to keep: the first item of each question (whitespace
    normalised), so that no question is both trained on and held out. Repeats are removed
    with one warning that says how many; a repeat with other answers is refused."""
    first: dict[str, int] = {}
    for i, (q, *answers) in enumerate(parts):
        j = first.setdefault(" ".join(q.split()), i)
        if j != i and tuple(answers) != parts[j][1:]:
            raise ABFormatError(
                f"{_at(where, raw, i)}: repeats the question of {_name(raw, j)} with other answers "
                f"(matching / other: {' / '.join(answers)} here, {' / '.join(parts[j][1:])} there); keep one of them"
            )
    keep = sorted(first.values())
    if len(keep) < len(parts):
        counts = Counter(" ".join(q.split()) for q, _, _ in parts)
        top, n_top = counts.most_common(1)[0]
        logger.warning(
            f"{where}: {len(parts) - len(keep)} repeated item(s) removed, {len(keep)} distinct questions kept of "
            f"{len(parts)} items (the first of each, so no question is both trained on and held out); "
            f"the most repeated one ({_name(raw, first[top])}) appears {n_top} times"
        )
    return keep


def _two_labels(rows: Sequence[tuple[str, str, str]], raw: Sequence[Any], kept: Sequence[int], where: str) -> tuple[str, str]:
    """The two option labels every item chooses between; otherwise one offending item is named."""
    counts = Counter(lab for _, m, n in rows for lab in (m, n))
    if len(counts) == 2:
        first, second = sorted(counts)
        return first, second
    main = sorted(sorted(counts, key=lambda lab: (-counts[lab], lab))[:2])
    j = next(j for j, (_, m, n) in enumerate(rows) if {m, n} - set(main))
    raise ABFormatError(
        f"{where}: the items use {len(counts)} option labels ({', '.join(sorted(counts))}); the read-out compares two "
        f"answers, so every item must choose between the same two labels (e.g. A and B): {_name(raw, kept[j])} "
        f"chooses between {rows[j][1]} and {rows[j][2]}, most items between {main[0]} and {main[1]}"
    )


def to_behavior(raw: Sequence[Any], name: str, where: str) -> dict[str, Any]:
    """The behaviour-schema dict of an A/B dataset (see the module doc); ``name`` names it.
    Repeated questions are kept once (:func:`distinct`); every refusal names the item (its
    line in a JSONL file)."""
    fmt = item_format(raw)
    if fmt is None:
        raise ABFormatError(f"{where}: not A/B items (each needs {', '.join(AB_KEYS)}, or {', '.join(MC_KEYS)})")
    keys, read_item = (AB_KEYS, _ab_item) if fmt == "ab" else (MC_KEYS, _mc_parts)
    parts = [read_item(_shape(x, _at(where, raw, i), keys), _at(where, raw, i)) for i, x in enumerate(raw)]
    kept = distinct(parts, raw, where)
    rows = [parts[i] if fmt == "ab" else _mc_item(parts[i], j) for j, i in enumerate(kept)]
    first, second = _two_labels(rows, raw, kept, where)
    instruction = f"Answer with {first} or {second}."
    items = [
        {"id": f"ab-{i:04d}", "set": TARGET_SET, "question": q, "readout": [m, n]}
        for i, (q, m, n) in zip(kept, rows, strict=True)
    ]
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
    """``python -m ws.behavior.ab data.jsonl``: print the converted behaviour as JSON. A file
    that cannot be converted prints the suite's one-line message (the same as when the suite
    loads it) and exits with 2."""
    if len(argv) != 1:
        print("usage: python -m ws.behavior.ab <A/B dataset .json or .jsonl>", file=sys.stderr)
        return 2
    p = Path(argv[0])
    where = f"behaviour file {p}"
    try:
        doc = to_behavior(read(p, where), safe_name(p.stem), where)
    except ABFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
