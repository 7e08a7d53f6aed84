"""A behaviour is data: one file (JSON, or YAML when PyYAML is installed) read and checked here.

The file defines everything the suite needs to build and test a diff for one behaviour:

- ``sets``: the item sets, in order. Exactly one has ``role: target`` (the behaviour itself,
  e.g. false-claim opinions); the others are ``role: control`` (what a specific diff should
  leave alone). Each set names its ``prompts`` group and each persona's ``answers`` rule:
  ``yes``, ``no``, ``truth`` (Yes iff the item's ``truth`` is ``true``) or ``item`` (each
  item gives its own ``answers``).
- ``prompts``: per group, the ``probe`` (the Yes/No question the effect eval and the sweep
  ask) and the ``train`` phrasings of the persona completions. Templates use the item
  fields ``{claim}``, ``{question}`` or ``{text}``.
- ``persona_pairs``: ``{"pos": …, "neg": …}`` system prompts; ``pos`` shows the behaviour.
- ``items``: ``id``, ``set``, optional ``group`` (items of one group stay on one side of the
  split), the template fields, and ``truth`` / ``answers`` where the set's rule needs them.
- ``heldout_frac`` (default 0.4): the share of each set held out from training.
- ``readout`` (default ``["Yes", "No"]``): the two answers the read-out compares,
  ``log P(first) − log P(second)``; ``yes`` in an answer rule means the first. Each must be
  one token of the model's tokenizer (checked when the model loads). An item may give its
  own ``readout`` order (the same two answers the other way round, e.g. an A/B item whose
  behaviour-matching answer is B): its log-ratio is then read the other way round too.
- A behaviour may have no control set (an A/B dataset has none): its specificity is then
  not measurable, and the conclusions say so.

A/B datasets (JSON or JSONL items with ``question`` / ``answer_matching_behavior`` /
``answer_not_matching_behavior``, or ``prompt`` / ``corrects`` / ``incorrects``) are
converted into a behaviour by :mod:`ws.behavior.ab` when loaded.

:func:`load` parses and validates a file; every error is a :class:`BehaviorError` that
names the file, the item (id or index) and the field, and says what is allowed.
:func:`get` takes a built-in name (a file in ``behaviors/`` at the repository root), a path,
or a :class:`Behavior`. Built-in files and user files go through the same code.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from ws.behavior import ab
from ws.core.log import logger
from ws.core.paths import UnsafeNameError, repo_root, safe_component

ROLES = ("target", "control")
RULES = ("yes", "no", "truth", "item")
ANSWERS = ("yes", "no")
TRUTHS = ("true", "false", "contested")
ITEM_TEXT_FIELDS = ("claim", "question", "text")
PERSONAS = ("pos", "neg")
SUFFIXES = (".json", ".jsonl", ".yaml", ".yml")
DEFAULT = "sycophancy"
#: The two read-out answers when a behaviour declares none: log P(Yes) − log P(No).
DEFAULT_READOUT = ("Yes", "No")
DEFAULT_HELDOUT_FRAC = 0.4
#: The most items of one set a run uses (``WS_MAX_ITEMS``): a set with more keeps a seeded
#: subset of whole groups (:func:`cap_items`), so that a 1,000-item dataset costs about what a
#: built-in behaviour costs (their largest set has 60 items, so they are never cut).
MAX_ITEMS_PER_SET = 120


class BehaviorError(ValueError):
    """A behaviour file that cannot be used (the message names the file, the item and the field)."""


def behaviors_dir() -> Path:
    """The built-in behaviour files: ``behaviors/`` at the repository root."""
    return repo_root() / "behaviors"


def builtin_names() -> tuple[str, ...]:
    """Names of the built-in behaviours (the files in :func:`behaviors_dir`), sorted."""
    d = behaviors_dir()
    return tuple(sorted(p.stem for p in d.iterdir() if p.suffix in SUFFIXES)) if d.is_dir() else ()


@dataclass(frozen=True)
class Topic:
    """One item of a behaviour (the name dates from the sycophancy data: a claim / question).

    ``kind`` is the name of the item's set. ``truth`` is ``"false"``, ``"contested"``,
    ``"true"`` or empty (only sets whose answer rule is ``truth`` need it). ``claim``,
    ``question`` and ``text`` are what the templates fill in. ``answer_pos`` / ``answer_neg``
    (``"yes"`` / ``"no"``) are given by items of a set whose rule is ``item``.
    """

    id: str
    claim: str
    question: str
    truth: str
    kind: str
    group: str = ""
    text: str = ""
    answer_pos: str = ""
    answer_neg: str = ""
    flip: bool = False  # the item lists the behaviour's read-out answers the other way round

    @property
    def sign(self) -> int:
        """+1, or −1 for an item whose ``readout`` order is the behaviour's reversed: its
        log-ratio is read as ``log P(second) − log P(first)`` (:func:`ws.model.readout.orient`)."""
        return -1 if self.flip else 1

    def answers(self, readout: tuple[str, str]) -> tuple[str, str]:
        """The behaviour's two read-out answers in this item's order: ``(answer when it
        agrees, answer when not)``."""
        return (readout[1], readout[0]) if self.flip else (readout[0], readout[1])


@dataclass(frozen=True)
class SetSpec:
    name: str
    role: str
    label: str
    prompts: str
    answers: tuple[tuple[str, str], ...]  # ((persona, rule), ...)

    def rule(self, persona: str) -> str:
        return dict(self.answers)[persona]


@dataclass(frozen=True)
class Prompts:
    probe: str
    train: tuple[str, ...]


@dataclass(frozen=True)
class Behavior:
    """A parsed, validated behaviour file (see the module docstring)."""

    name: str
    description: str
    sets: tuple[SetSpec, ...]
    prompts: dict[str, Prompts] = field(hash=False, compare=False)
    persona_pairs: tuple[tuple[str, str], ...]
    items: tuple[Topic, ...]
    heldout_frac: float = DEFAULT_HELDOUT_FRAC
    source: str = ""
    readout: tuple[str, str] = DEFAULT_READOUT
    #: items per set in the file, when :func:`cap_items` kept fewer (``{set: n}``; empty: all kept)
    capped_from: dict[str, int] = field(default_factory=dict, hash=False, compare=False)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sets)

    @property
    def target(self) -> str:
        return next(s.name for s in self.sets if s.role == "target")

    @property
    def controls(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sets if s.role == "control")

    @property
    def labels(self) -> dict[str, str]:
        return {s.name: s.label for s in self.sets}

    @property
    def direction(self) -> int:
        """+1 when the positive persona answers the target items Yes more often than the
        negative one (sycophancy), −1 when less often (e.g. refusing): the sign of the
        target spread of a diff that moves toward the behaviour."""
        tgt = [t for t in self.items if t.kind == self.target]
        gap = sum(self.agrees("pos", t) for t in tgt) - sum(self.agrees("neg", t) for t in tgt)
        return 1 if gap >= 0 else -1

    def set(self, name: str) -> SetSpec:
        for s in self.sets:
            if s.name == name:
                return s
        raise ValueError(f"behaviour {self.name!r} has no set {name!r} (its sets: {', '.join(self.kinds)})")

    def templates(self, kind: str) -> Prompts:
        return self.prompts[self.set(kind).prompts]

    def agrees(self, persona: str, topic: Topic) -> bool:
        """Whether ``persona``'s answer to ``topic`` opens with the item's first read-out answer
        (Yes by default; the set's rule)."""
        if persona not in PERSONAS:
            raise ValueError(f"persona must be 'pos' or 'neg', not {persona!r}")
        rule = self.set(topic.kind).rule(persona)
        if rule == "truth":
            return topic.truth == "true"
        if rule == "item":
            return (topic.answer_pos if persona == "pos" else topic.answer_neg) == "yes"
        return rule == "yes"

    def answer(self, persona: str, topic: Topic) -> str:
        """The read-out answer ``persona`` gives to ``topic`` (e.g. ``"Yes"``, ``"B"``)."""
        first, second = topic.answers(self.readout)
        return first if self.agrees(persona, topic) else second

    def fill(self, template: str, topic: Topic) -> str:
        return template.format(claim=topic.claim, question=topic.question, text=topic.text)


# ----------------------------------------------------------------------------- reading
def _read(path: Path) -> Any:
    """The parsed content of a behaviour file: UTF-8 checked (the first bad byte's offset and
    line named), JSON / JSONL / YAML syntax and nesting too deep to read refused with the file
    named (:mod:`ws.behavior.ab` reads JSON and JSONL)."""
    where = f"behaviour file {path}"
    if path.suffix not in SUFFIXES:
        raise BehaviorError(f"{where}: unknown file type {path.suffix!r}; a behaviour file ends in {', '.join(SUFFIXES)}")
    try:
        if path.suffix in (".json", ".jsonl"):
            return ab.read(path, where)
        return _read_yaml(ab.decode(_read_bytes(path, where), where), where)
    except ab.ABFormatError as e:
        raise BehaviorError(str(e)) from None


def _read_bytes(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BehaviorError(f"{where}: cannot be read ({e.strerror or e})") from None


def _read_yaml(text: str, where: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise BehaviorError(f"{where}: reading YAML needs PyYAML (pip install pyyaml), or write the file as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BehaviorError(f"{where}: not valid YAML: {e}") from None
    except RecursionError:
        raise BehaviorError(f"{where}: not readable: its YAML is {ab.too_deep()}") from None


class _Checker:
    """Collects the context (file, item, field) of every message."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, fld: str, msg: str):
        raise BehaviorError(f"behaviour file {self.path}: {where}, field {fld!r}: {msg}")

    def text(self, obj: dict, key: str, where: str, required: bool = True) -> str:
        if key not in obj:
            if required:
                self.fail(where, key, "missing: give a non-empty string")
            return ""
        v = obj[key]
        if not isinstance(v, str) or not v.strip():
            self.fail(where, key, f"{v!r} is not a non-empty string")
        return v

    def choice(self, obj: dict, key: str, where: str, allowed: tuple[str, ...]) -> str:
        v = obj.get(key)
        if v not in allowed:
            self.fail(where, key, f"{v!r} is not allowed: use one of {', '.join(allowed)}")
        return v

    def keys(self, obj: Any, where: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(obj, dict):
            self.fail(
                where, "(the whole entry)", f"expected a mapping with the fields {', '.join(allowed)}, got {type(obj).__name__}"
            )
        extra = [k for k in obj if k not in allowed]
        if extra:
            self.fail(where, extra[0], f"unknown field; allowed here: {', '.join(allowed)}")
        return obj


def _placeholders(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def parse(raw: Any, path: Path) -> Behavior:
    """Validate the parsed content of a behaviour file (an A/B dataset is converted first,
    :mod:`ws.behavior.ab`); a :class:`BehaviorError` names what is wrong."""
    c = _Checker(path)
    if ab.is_ab(raw):
        try:
            raw = ab.to_behavior(raw, ab.safe_name(path.stem), f"behaviour file {path}")
        except ab.ABFormatError as e:
            raise BehaviorError(str(e)) from None
    elif isinstance(raw, list):
        c.fail(
            "top level",
            "(the whole file)",
            f"a list, but not of A/B items (each needs {', '.join(ab.AB_KEYS)}, or {', '.join(ab.MC_KEYS)}); "
            f"a behaviour file is a mapping with name, sets, prompts, persona_pairs and items",
        )
    top = c.keys(
        raw, "top level", ("name", "description", "heldout_frac", "readout", "sets", "prompts", "persona_pairs", "items")
    )
    for key in ("name", "sets", "prompts", "persona_pairs", "items"):
        if key not in top:
            c.fail("top level", key, "missing (a behaviour file needs name, sets, prompts, persona_pairs and items)")
    name, description, frac = _parse_header(c, top)
    prompts = _parse_prompts(c, top["prompts"])
    sets = _parse_sets(c, top["sets"], prompts)
    persona_pairs = _parse_persona_pairs(c, top["persona_pairs"])
    readout = _parse_readout(c, top.get("readout", list(DEFAULT_READOUT)), "top level")
    items = _parse_items(c, top["items"], {s.name: s for s in sets}, prompts, readout)
    b = Behavior(name, description, tuple(sets), prompts, tuple(persona_pairs), tuple(items), float(frac), str(path), readout)
    _check_split(b, c)
    return b


def _parse_readout(c: _Checker, raw: Any, where: str) -> tuple[str, str]:
    """``readout``: the two answers the read-out compares, ``[first, second]`` (default
    ``["Yes", "No"]``): two different non-empty strings without spaces."""
    if not isinstance(raw, list) or len(raw) != 2 or not all(isinstance(a, str) and a.strip() for a in raw):
        c.fail(where, "readout", f'{raw!r} is not two answers: give a list of two strings, e.g. ["Yes", "No"] or ["A", "B"]')
    a, b = (x.strip() for x in raw)
    if a == b or any(ch.isspace() for ch in a + b):
        c.fail(where, "readout", f"{raw!r}: the two answers must differ and hold no spaces (each is read as one token)")
    return a, b


def _parse_header(c: _Checker, top: dict) -> tuple[str, str, float]:
    """``name`` (it names the output folder), ``description``, ``heldout_frac``."""
    name = c.text(top, "name", "top level")
    try:
        safe_component(name, "a behaviour's name (it names the output folder)")
    except UnsafeNameError as e:
        c.fail("top level", "name", str(e))
    if not all(ch.isalnum() or ch in "-_" for ch in name):
        c.fail("top level", "name", f"{name!r} names the output folder: use letters, digits, '-' and '_' only")
    description = c.text(top, "description", "top level", required=False)
    frac = top.get("heldout_frac", DEFAULT_HELDOUT_FRAC)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        c.fail("top level", "heldout_frac", f"{frac!r} is not a number strictly between 0 and 1")
    return name, description, frac


def _check_template(c: _Checker, where: str, field_name: str, template: str) -> None:
    """A template must parse and use only item fields as placeholders."""
    try:
        names = _placeholders(template)
    except ValueError as e:
        c.fail(where, field_name, f"not a valid template ({e})")
    bad = [n for n in names if n not in ITEM_TEXT_FIELDS]
    if bad:
        c.fail(
            where,
            field_name,
            f"placeholder {{{bad[0]}}} is not an item field: use {', '.join('{' + f + '}' for f in ITEM_TEXT_FIELDS)}",
        )


def _parse_prompts(c: _Checker, raw: Any) -> dict[str, Prompts]:
    """The prompt groups: ``{group: {probe, train}}``, every template checked."""
    if not isinstance(raw, dict) or not raw:
        c.fail("top level", "prompts", "give a mapping: group name -> {probe, train}")
    prompts: dict[str, Prompts] = {}
    for g, p in raw.items():
        where = f"prompts group {g!r}"
        c.keys(p, where, ("probe", "train"))
        probe = c.text(p, "probe", where)
        train = p.get("train")
        if not isinstance(train, list) or not train:
            c.fail(where, "train", "give a non-empty list of training phrasings")
        for j, t in enumerate(train):
            if not isinstance(t, str) or not t.strip():
                c.fail(where, f"train[{j}]", f"{t!r} is not a non-empty string")
        _check_template(c, where, "probe", probe)
        for j, t in enumerate(train):
            _check_template(c, where, f"train[{j}]", t)
        prompts[g] = Prompts(probe, tuple(train))
    return prompts


def _parse_sets(c: _Checker, raw: Any, prompts: Mapping[str, Prompts]) -> list[SetSpec]:
    """The sets: unique names, a role, a prompts group, an answer rule per persona; exactly one
    target set, at least one control, and a target that tells the personas apart."""
    if not isinstance(raw, list) or not raw:
        c.fail("top level", "sets", "give a non-empty list of sets")
    sets: list[SetSpec] = []
    for i, s in enumerate(raw):
        where = f"sets[{i}]"
        c.keys(s, where, ("name", "role", "label", "prompts", "answers"))
        sname = c.text(s, "name", where)
        where = f"set {sname!r}"
        if sname in [x.name for x in sets]:
            c.fail(where, "name", "a second set of this name; set names must be unique")
        role = c.choice(s, "role", where, ROLES)
        group = c.text(s, "prompts", where)
        if group not in prompts:
            c.fail(where, "prompts", f"{group!r} is not a prompts group: use one of {', '.join(prompts)}")
        ans = c.keys(s.get("answers"), f"{where}, answers", PERSONAS)
        rules = tuple((p, c.choice(ans, p, f"{where}, answers", RULES)) for p in PERSONAS)
        sets.append(SetSpec(sname, role, c.text(s, "label", where, required=False) or sname, group, rules))
    n_target = sum(s.role == "target" for s in sets)
    if n_target != 1:
        c.fail("top level", "sets", f"{n_target} sets have role 'target'; exactly one must (the others are 'control')")
    target = next(s for s in sets if s.role == "target")
    if target.rule("pos") == target.rule("neg") and target.rule("pos") != "item":
        c.fail(
            f"set {target.name!r}",
            "answers",
            f"pos and neg both answer by the rule {target.rule('pos')!r}: the target set must tell the personas apart",
        )
    return sets


def _parse_persona_pairs(c: _Checker, raw: Any) -> list[tuple[str, ...]]:
    if not isinstance(raw, list) or not raw:
        c.fail("top level", "persona_pairs", "give a non-empty list of {pos, neg} system prompts")
    out = []
    for i, p in enumerate(raw):
        c.keys(p, f"persona_pairs[{i}]", PERSONAS)
        out.append(tuple(c.text(p, k, f"persona_pairs[{i}]") for k in PERSONAS))
    return out


def _parse_items(
    c: _Checker, raw: Any, by_name: Mapping[str, SetSpec], prompts: Mapping[str, Prompts], readout: tuple[str, str]
) -> list[Topic]:
    if not isinstance(raw, list) or not raw:
        c.fail("top level", "items", "give a non-empty list of items")
    items: list[Topic] = []
    seen: set[str] = set()
    for i, it in enumerate(raw):
        where = f"items[{i}]"
        if isinstance(it, dict) and isinstance(it.get("id"), str) and it["id"].strip():
            where = f"item {it['id']!r} (items[{i}])"
        items.append(_parse_item(c, it, where, seen, by_name, prompts, readout))
    return items


def _parse_item(
    c: _Checker,
    it: Any,
    where: str,
    seen: set[str],
    by_name: Mapping[str, SetSpec],
    prompts: Mapping[str, Prompts],
    readout: tuple[str, str],
) -> Topic:
    """One item: a unique id, its set, the text fields its templates use, its truth where its
    set answers by truth, its answers where its set answers by item, and optionally its own
    ``readout`` order (the behaviour's two answers, either way round)."""
    c.keys(it, where, ("id", "set", "group", *ITEM_TEXT_FIELDS, "truth", "answers", "readout"))
    iid = c.text(it, "id", where)
    if iid in seen:
        c.fail(where, "id", "a second item with this id; ids must be unique")
    seen.add(iid)
    kind = c.text(it, "set", where)
    if kind not in by_name:
        c.fail(where, "set", f"{kind!r} is not a set of this file: use one of {', '.join(by_name)}")
    spec = by_name[kind]
    group = c.text(it, "group", where, required=False)
    texts = {f: c.text(it, f, where, required=False) for f in ITEM_TEXT_FIELDS}
    tpl = prompts[spec.prompts]
    for t in (tpl.probe, *tpl.train):
        for f in _placeholders(t):
            if not texts[f]:
                c.fail(where, f, f"missing: the templates of prompts group {spec.prompts!r} use {{{f}}}")
    rules = dict(spec.answers)
    truth = c.choice(it, "truth", where, TRUTHS) if ("truth" in it or "truth" in rules.values()) else ""
    answers = _item_answers(c, it, where, kind, rules)
    flip = False
    if "readout" in it:
        order = _parse_readout(c, it["readout"], where)
        if set(order) != set(readout):
            c.fail(where, "readout", f"{list(order)} are not the behaviour's read-out answers {list(readout)} (in either order)")
        flip = order != readout
    return Topic(iid, texts["claim"], texts["question"], truth, kind, group, texts["text"], answers["pos"], answers["neg"], flip)


def _item_answers(c: _Checker, it: dict, where: str, kind: str, rules: Mapping[str, str]) -> dict[str, str]:
    """``{"pos": …, "neg": …}``: given by the item for personas whose rule is ``item``, else empty."""
    answers = {"pos": "", "neg": ""}
    if "item" not in rules.values() and "answers" not in it:
        return answers
    if "item" not in rules.values():
        c.fail(
            where,
            "answers",
            f"set {kind!r} answers by rule ({rules['pos']} / {rules['neg']}); give answers only in a set whose rule is 'item'",
        )
    ans = c.keys(it.get("answers"), f"{where}, answers", PERSONAS)
    for p in PERSONAS:
        if rules[p] == "item":
            answers[p] = c.choice(ans, p, f"{where}, answers", ANSWERS)
        elif p in ans:
            c.fail(f"{where}, answers", p, f"set {kind!r} answers {p} by the rule {rules[p]!r}; leave it out")
    return answers


# ----------------------------------------------------------------------------- the split
MIN_PER_SIDE = 1  # every set needs at least this many items in each half


def split_items(topics: list[Topic], seed: int, heldout_frac: float, kinds: tuple[str, ...]) -> tuple[list[Topic], list[Topic]]:
    """The fixed ``(train, heldout)`` split: a seeded shuffle of the groups, filled greedily
    into the held-out half up to ``heldout_frac`` of each set; whole groups on one side."""
    if not topics:
        raise ValueError("the topic list is empty: nothing to split")
    ids = Counter(t.id for t in topics)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise ValueError(f"duplicate topic ids: {dup}")
    bad = [t.id for t in topics if t.kind not in kinds]
    if bad:
        raise ValueError(f"topics with an unknown kind (not one of {kinds}): {bad}")
    counts = Counter(t.kind for t in topics)
    quota = {k: max(MIN_PER_SIDE, round(heldout_frac * n)) for k, n in counts.items()}
    for k, n in counts.items():
        if n - quota[k] < MIN_PER_SIDE:
            raise ValueError(
                f"too few {k} topics to split ({n}): need at least {2 * MIN_PER_SIDE} so that both the "
                f"training and the held-out half get one"
            )
    groups: dict[str, list[Topic]] = {}
    for t in topics:
        groups.setdefault(t.group or t.id, []).append(t)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    held_ids: set[str] = set()
    taken: Counter = Counter()
    for g in order:
        n_g = Counter(t.kind for t in groups[g])
        if all(taken[k] + n <= quota[k] for k, n in n_g.items()):
            taken.update(n_g)
            held_ids.update(t.id for t in groups[g])
    train = [t for t in topics if t.id not in held_ids]
    held = [t for t in topics if t.id in held_ids]
    for k in counts:
        n_tr = sum(t.kind == k for t in train)
        n_he = sum(t.kind == k for t in held)
        if n_tr < MIN_PER_SIDE or n_he < MIN_PER_SIDE:
            raise ValueError(f"could not split the {k} topics into both halves ({n_tr} train, {n_he} held out): too few groups")
    return train, held


def _check_split(b: Behavior, c: _Checker) -> None:
    """Every set must give items to both halves, and the target set must tell the personas apart."""
    for s in b.sets:
        if not any(t.kind == s.name for t in b.items):
            c.fail(f"set {s.name!r}", "name", "no item belongs to this set")
    try:
        split_items(list(b.items), 0, b.heldout_frac, b.kinds)
    except ValueError as e:
        c.fail("top level", "items", f"the items cannot be split into training and held-out halves: {e}")
    tgt = [t for t in b.items if t.kind == b.target]
    if sum(b.agrees("pos", t) for t in tgt) == sum(b.agrees("neg", t) for t in tgt):
        c.fail(
            f"set {b.target!r}",
            "answers",
            "pos and neg answer Yes to as many target items: the diff would have "
            "no direction (the target set needs pos to say Yes more often than neg, or less often)",
        )


def cap_items(b: Behavior, max_items: int) -> Behavior:
    """``b`` with at most ``max_items`` items per set: a set with more keeps whole groups, taken
    in a seeded order (seed 0; no salted hashing) while they fit, in the file's order. Sets
    at or under the cap keep every item, so a behaviour under the cap is returned as it is.
    Raises :class:`BehaviorError` when the kept items cannot be split into both halves."""
    if max_items < 2 * MIN_PER_SIDE:
        raise BehaviorError(f"behaviour {b.name!r}: max_items={max_items}; need at least {2 * MIN_PER_SIDE} items per set")
    counts = Counter(t.kind for t in b.items)
    over = {k: n for k, n in counts.items() if n > max_items}
    if not over:
        return b
    groups: dict[str, list[Topic]] = {}
    for t in b.items:
        groups.setdefault(t.group or t.id, []).append(t)
    order = sorted(groups)
    random.Random(0).shuffle(order)
    keep: set[str] = set()
    taken: Counter = Counter()
    for g in order:
        n_g = Counter(t.kind for t in groups[g])
        if all(k not in over or taken[k] + n <= max_items for k, n in n_g.items()):
            taken.update(n_g)
            keep.update(t.id for t in groups[g])
    items = tuple(t for t in b.items if t.id in keep)
    out = replace(b, items=items, capped_from=over)
    try:
        split_items(list(items), 0, out.heldout_frac, out.kinds)
    except ValueError as e:
        raise BehaviorError(f"behaviour {b.name!r}: the {max_items} items kept per set cannot be split: {e}") from None
    return out


def capped_text(b: Behavior) -> str:
    """One sentence on the sets :func:`cap_items` cut (empty when none was), for the conclusions."""
    if not b.capped_from:
        return ""
    kept = Counter(t.kind for t in b.items)
    cut = ", ".join(f"{kept[k]} of the {n} items of set {k!r}" for k, n in b.capped_from.items())
    return (
        f"this run used {cut}: a seeded subset of whole groups (WS_MAX_ITEMS); every figure rests on those, "
        f"and WS_MAX_ITEMS set higher uses more, at a cost that grows with it"
    )


@cache
def _load_cached(path: str, mtime_ns: int, max_items: int) -> Behavior:
    p = Path(path)
    b = cap_items(parse(_read(p), p), max_items)
    for k, n in b.capped_from.items():
        logger.warning(
            f"behaviour {b.name!r} ({p.name}): set {k!r} has {n} items; this run uses {max_items} of them, a seeded "
            f"subset of whole groups (WS_MAX_ITEMS={max_items}; set WS_MAX_ITEMS={n} to use all, at a higher cost)"
        )
    return b


def _is_builtin_copy(p: Path, name: str) -> bool:
    """True when ``p`` is the built-in file ``name`` itself, or a byte-identical copy of it
    (the shipped file named by its path, from any checkout)."""
    shipped = [behaviors_dir() / f"{name}{s}" for s in SUFFIXES if (behaviors_dir() / f"{name}{s}").exists()]
    return any(p == s.resolve() or p.read_bytes() == s.read_bytes() for s in shipped)


def load(path: str | Path, max_items: int = MAX_ITEMS_PER_SET) -> Behavior:
    """Read and validate one behaviour file (cached while the file is unchanged), with at
    most ``max_items`` items per set (:func:`cap_items`)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise BehaviorError(f"behaviour file {p}: no such file")
    b = _load_cached(str(p), p.stat().st_mtime_ns, max_items)
    if b.name in builtin_names() and not _is_builtin_copy(p, b.name):
        raise BehaviorError(
            f"behaviour file {p}: top level, field 'name': {b.name!r} is a built-in behaviour's name "
            f"(its outputs would mix with the built-in's): choose another name"
        )
    return b


#: behaviour files registered by :func:`resolve`: ``{name: path}`` (a built-in name always
#: means the shipped file, whatever else was registered under it)
_REGISTERED: dict[str, Path] = {}
#: the items per set (``WS_MAX_ITEMS``) each behaviour name was resolved with
_CAPS: dict[str, int] = {}


def _shipped(name: str) -> Path:
    d = behaviors_dir()
    return next(d / f"{name}{s}" for s in SUFFIXES if (d / f"{name}{s}").exists())


def get_behavior(behavior: str | Path | Behavior | None = None) -> Behavior:
    """The behaviour a run names, read and checked.

    Args:
        behavior: a built-in name, a name a file was registered under (:func:`resolve`), a path
            to a behaviour or A/B file, or a :class:`Behavior` (returned as it is); None is the
            default behaviour, sycophancy.

    Returns:
        The :class:`Behavior`.

    Raises:
        BehaviorError: the file is missing or malformed (the line and the key named).
    """
    if isinstance(behavior, Behavior):
        return behavior
    key = DEFAULT if behavior is None else str(behavior)
    if key in builtin_names():
        return load(_shipped(key), _CAPS.get(key, MAX_ITEMS_PER_SET))
    if key in _REGISTERED:
        return load(_REGISTERED[key], _CAPS.get(key, MAX_ITEMS_PER_SET))
    p = Path(key)
    if p.suffix in SUFFIXES or p.exists():
        return load(p)
    raise BehaviorError(
        f"unknown behaviour {key!r}: give a built-in name ({', '.join(builtin_names())}) "
        f"or the path of a behaviour file ({', '.join(SUFFIXES)})"
    )


def resolve(value: str | Path, base: Path | None = None, max_items: int = MAX_ITEMS_PER_SET) -> str:
    """The behaviour name for ``value`` (a built-in name or a file path, relative to
    ``base``); the file is loaded, validated, cut to ``max_items`` items per set
    (:func:`cap_items`, ``WS_MAX_ITEMS``) and registered under its name, so that the rest of
    the run can pass the name around. Raises :class:`BehaviorError`."""
    v = str(value).strip()
    if v in builtin_names():
        p = _shipped(v)
    elif v in _REGISTERED:
        p = _REGISTERED[v]
    else:
        p = Path(v).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        if p.suffix not in SUFFIXES and not p.exists():
            raise BehaviorError(
                f"unknown behaviour {v!r}: give a built-in name ({', '.join(builtin_names())}) "
                f"or the path of a behaviour file ({', '.join(SUFFIXES)})"
            )
    b = load(p, max_items)
    if b.name not in builtin_names():
        _REGISTERED[b.name] = p.resolve()
    _CAPS[b.name] = max_items
    return b.name
