"""Every prompt of the suite goes through the tokenizer's chat template.

With ``system=None`` nothing is removed or added: the template renders a conversation
without a system turn exactly as the model was tuned on it (for SmolLM2 that means its
own default system line). Persona prompts replace that line.
"""

from __future__ import annotations


def render_chat(tokenizer, user: str, system: str | None = None) -> str:
    """``user`` (and an optional ``system`` turn) through the tokenizer's chat template, with
    the generation prompt. ``system=None`` adds no system turn and keeps the template's own
    default (SmolLM2 inserts its default system line): see the module docstring."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "the tokenizer has no chat template; every prompt of the suite is rendered through one. "
            "Use an instruction-tuned model (or set tokenizer.chat_template)."
        )
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
