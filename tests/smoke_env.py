"""The environment of a smoke run in a subprocess: tiny model, every folder under ``base``,
no hub (shared by the end-to-end tests of v7, v8 and the cross-adapter job)."""

from __future__ import annotations

import os
from pathlib import Path


def smoke_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WS_SMOKE="1",
        WS_OUT=str(base / "out"),
        WS_CACHE=str(base / "cache"),
        WS_LOGS=str(base / "logs"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env
