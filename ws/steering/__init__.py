"""Steering head to head: the weight diff against activation steering and prompting at one
matched KL budget (``make compare-steering``, ``nbs/steering_head_to_head.py``).

The steering methods as "run the model at strength α" (``methods``: the diff, its writers,
v8's carrier; the suite's contrastive activation vector and the ``WS_VECTORS`` files; the
persona instruction as a system prompt), each measured at the α where its mean next-token
KL on the neutral prompts reaches the budget (``compare``), and the table, figure,
conclusion and completions written as one file set (``report``).

May import: every stage below it (``ws.core`` … ``ws.v8``, ``ws.cross_adapter``); it reads
v8's outputs (the carrier), so it sits above v8.
"""
