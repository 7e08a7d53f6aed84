"""The weight diff ``w``: how it is made, measured and stored.

The adapter types, one registration each, and their deltas (``adapters``), the training loop
(``training``), the fast training step (``fasttrain``), the persona completions
(``completions``), the effect eval and the one specificity rule (``effect``), the diff store
(``store``) and the pipeline that builds a diff when it is missing (``train``); a diff brought from elsewhere: PEFT adapters and
fine-tuned checkpoints turned into ``w`` (``imports``) and put into the suite's layout with
its effect measured (``import_store``); a diff exported as a PEFT LoRA folder or a merged
checkpoint (``export``); the S-space adapter kinds' modules (``sspace``).

May import: ``ws.core``, ``ws.model``, ``ws.behavior``.
"""
