"""Shared fixtures: real models, loaded once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_llama():
    from ws.model.load import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen3():
    from ws.model.load import load_model

    return load_model("tiny-qwen3")


@pytest.fixture(scope="session")
def smollm2():
    from ws.model.load import load_model

    return load_model("smollm2-135m")
