"""The behaviours' data as the suite uses it: topics, persona pairs, phrasings, the fixed splits.

A behaviour is a file (:mod:`ws.behavior.files`; the built-ins are in ``behaviors/`` at the
repository root); every function here takes ``behavior=`` (a built-in name, a file path or
a :class:`ws.behavior.files.Behavior`) and defaults to the built-in **sycophancy**
(``behaviors/sycophancy.json``), whose sets, all written for this suite, are:

- ``opinion_false`` (the target set): a false or contested claim the user states as their
  own opinion ("I think the Sun orbits the Earth."). The behaviour we study: agreeing anyway.
- ``opinion_true`` (control): a true claim stated the same way. An honest assistant agrees
  too, so a diff that encodes sycophancy (not a yes-bias) should leave these alone.
- ``neutral`` (control): a plain yes/no factual question with no opinion in it; half are
  answered "Yes", half "No". A yes-bias moves these, sycophancy should not.

The module constants (``KINDS``, ``TOPICS``, ``PERSONA_PAIRS``, ``PROBE_TEMPLATE``, …) are
the sycophancy file's contents.

Related items (a false claim and its true counterpart, e.g. "the Sun orbits the Earth" /
"the Earth orbits the Sun") share a ``group`` and always land in the same half of the
split, so a held-out claim is never answered by having trained on its negation.

The split (:func:`split_topics`) is fixed: a seeded shuffle of the groups, filled greedily
into the held-out half up to the behaviour's ``heldout_frac`` of each set. The sweep's FIT
probes come from the training half's target set (sycophancy: false claims), its EVAL
probes from the held-out half's (:func:`sweep_probes`); the LoRA never sees a held-out item.

Chat template: every prompt goes through the tokenizer's chat template
(:func:`render_chat`). With ``system=None`` nothing is removed or added: the template
renders a conversation without a system turn exactly as the model was tuned on it, which
for SmolLM2 means its own default system line ("You are a helpful AI assistant named
SmolLM…"). Persona prompts replace that line. Probes, training texts and the effect eval
all use ``system=None``; only the completion step uses the persona system prompts.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict

from ws.behavior.files import DEFAULT as DEFAULT_BEHAVIOR
from ws.behavior.files import MIN_PER_SIDE, Behavior, Topic, get_behavior, split_items  # noqa: F401

_SYC = get_behavior(DEFAULT_BEHAVIOR)
#: The sycophancy behaviour's sets, topics, personas and phrasings (module API; every
#: function below takes ``behavior=`` for another behaviour).
KINDS = _SYC.kinds
HELDOUT_FRAC = _SYC.heldout_frac
TOPICS: list[Topic] = list(_SYC.items)
PERSONA_PAIRS: list[tuple[str, str]] = [tuple(p) for p in _SYC.persona_pairs]
PROBE_TEMPLATE = _SYC.prompts["opinion"].probe
OPINION_TEMPLATES = _SYC.prompts["opinion"].train
NEUTRAL_TEMPLATES = _SYC.prompts["neutral"].train


def persona_pairs(behavior=None) -> list[tuple[str, str]]:
    """``[(positive, negative), ...]`` system prompts of a behaviour."""
    return [tuple(p) for p in get_behavior(behavior).persona_pairs]


def probe_prompt(topic: Topic, behavior=None) -> str:
    """The sweep's probe, and the effect eval's prompt: the probe template of the topic's set."""
    b = get_behavior(behavior)
    return b.fill(b.templates(topic.kind).probe, topic)


def eval_prompt(topic: Topic, behavior=None) -> str:
    """The held-out effect prompt of a topic: the probe template of its set (for sycophancy:
    the opinion probe for opinions, the question for neutral ones)."""
    return probe_prompt(topic, behavior)


def training_prompts(topic: Topic, n_phrasings: int = 2, offset: int = 0, behavior=None) -> list[str]:
    """``n_phrasings`` different user prompts for a training topic (rotating through its set's phrasings)."""
    b = get_behavior(behavior)
    templates = b.templates(topic.kind).train
    n = min(n_phrasings, len(templates))
    return [b.fill(templates[(offset + j) % len(templates)], topic) for j in range(n)]


def agrees(persona: str, topic: Topic, behavior=None) -> bool:
    """Whether the persona's answer opens with "Yes" for this topic (its set's answer rule).

    Sycophancy: ``"pos"`` (sycophantic) agrees with every opinion, ``"neg"`` (honest)
    agrees iff the claim is true; on neutral questions both give the correct answer.
    """
    return get_behavior(behavior).agrees(persona, topic)


# splits -------------------------------------------------------------------------------------
def split_topics(
    seed: int = 0, topics: list[Topic] | None = None, heldout_frac: float | None = None, behavior=None
) -> tuple[list[Topic], list[Topic]]:
    """The fixed ``(train, heldout)`` split: whole groups, about ``heldout_frac`` (default:
    the behaviour's) of each set held out. ``topics`` default to the behaviour's items.

    Deterministic for a given seed and topic list (no salted hashing). Raises ``ValueError``
    when the list is empty or a set present has too few topics (or groups) to appear on
    both sides.
    """
    b = get_behavior(behavior)
    topics = list(b.items if topics is None else topics)
    return split_items(topics, seed, b.heldout_frac if heldout_frac is None else heldout_frac, b.kinds)


def heldout_sets(seed: int = 0, topics: list[Topic] | None = None, behavior=None) -> dict[str, list[Topic]]:
    """The held-out topics by set, in the behaviour's order (sycophancy:
    ``{"opinion_false": [...], "opinion_true": [...], "neutral": [...]}``)."""
    _, held = split_topics(seed, topics, behavior=behavior)
    return {k: [t for t in held if t.kind == k] for k in get_behavior(behavior).kinds}


def _subsample(items: list[Topic], n: int | None, rng: random.Random, what: str) -> list[Topic]:
    if n is None:
        return list(items)
    if n < 1:
        raise ValueError(f"{what}: asked for {n} topics; need at least 1")
    if n > len(items):
        raise ValueError(f"{what}: asked for {n} topics but only {len(items)} are available")
    idx = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in idx]


def sweep_probes(
    n_fit: int | None = None, n_eval: int | None = None, seed: int = 0, topics: list[Topic] | None = None, behavior=None
) -> tuple[list[Topic], list[Topic]]:
    """``(fit_topics, eval_topics)`` for the sweep.

    FIT: target-set topics of the training half (they build the A-side bases; sycophancy:
    false-claim opinions). EVAL: target-set topics of the held-out half (the label): never
    seen by the LoRA, never shared with FIT. ``n_fit`` / ``n_eval`` take a seeded subset.
    The split itself is always the fixed seed-0 split, so the LoRA's training topics do not
    depend on the sweep's seed.
    """
    b = get_behavior(behavior)
    train, held = split_topics(0, topics, behavior=b)
    fit_all = [t for t in train if t.kind == b.target]
    eval_all = [t for t in held if t.kind == b.target]
    if not fit_all or not eval_all:
        what = "false-claim" if b.target == "opinion_false" else f"{b.target!r}"
        raise ValueError(f"too few {what} topics for the sweep: {len(fit_all)} for FIT, {len(eval_all)} for EVAL")
    rng = random.Random(seed)
    fit = _subsample(fit_all, n_fit, rng, "FIT")
    ev = _subsample(eval_all, n_eval, rng, "EVAL")
    assert not {t.id for t in fit} & {t.id for t in ev}
    return fit, ev


#: The sycophancy set definitions as they were code, before behaviours became files. The
#: data hash predates the files; while a behaviour's sets equal these, they are left out of
#: its payload, so the hash of the sycophancy data (and of every diff made from it) stays.
_SETS_BEFORE_FILES = (
    ("opinion_false", "target", "opinion", (("pos", "yes"), ("neg", "truth"))),
    ("opinion_true", "control", "opinion", (("pos", "yes"), ("neg", "truth"))),
    ("neutral", "control", "neutral", (("pos", "truth"), ("neg", "truth"))),
)
_TOPIC_FIELDS_BEFORE_FILES = ("id", "claim", "question", "truth", "kind", "group")


def data_hash(topics: list[Topic] | None = None, behavior=None) -> str:
    """sha256 (first 16 hex) of everything that defines the data: items, split, personas,
    phrasings and probes, and the sets' roles and answer rules (labels and the description
    are not data). Item fields left empty are not part of it."""
    b = get_behavior(behavior)
    topics = list(b.items if topics is None else topics)
    train, held = split_topics(0, topics, behavior=b)
    payload = {
        "topics": [{k: v for k, v in asdict(t).items() if k in _TOPIC_FIELDS_BEFORE_FILES or v} for t in topics],
        "heldout": sorted(t.id for t in held),
        "personas": [list(p) for p in b.persona_pairs],
    }
    target_group = b.set(b.target).prompts
    for g, p in b.prompts.items():
        payload[f"{g}_templates"] = list(p.train)
        payload["probe" if g == target_group else f"{g}_probe"] = p.probe
    sets = tuple((s.name, s.role, s.prompts, s.answers) for s in b.sets)
    if sets != _SETS_BEFORE_FILES:
        payload["sets"] = sets
    if b.heldout_frac != 0.4:
        payload["heldout_frac"] = b.heldout_frac
    if tuple(b.readout) != ("Yes", "No"):
        payload["readout"] = list(b.readout)
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
