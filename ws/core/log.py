"""Logging: short lines to stdout, DEBUG lines to ``logs/<name>.verbose.log``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from loguru import logger
from tqdm.auto import tqdm

from ws.core.paths import logs_dir

_SHORT = "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> {message}"
_LONG = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}:{function}:{line} | {message}"


def setup_logging(name: str, log_dir: str | Path | None = None, level: str = "INFO") -> Path:
    """Send INFO+ to stdout in short lines and DEBUG+ to ``<log_dir>/<name>.verbose.log``.

    Replaces any earlier handlers, so calling it again (a re-run notebook cell) does not
    duplicate lines. Returns the verbose log's path.
    """
    log_dir = Path(log_dir) if log_dir is not None else logs_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{name}.verbose.log"
    logger.remove()
    logger.add(sys.stdout, level=level, format=_SHORT, colorize=False)
    logger.add(path, level="DEBUG", format=_LONG, mode="a", encoding="utf-8")
    # Headless notebook runs (`make sweep`) capture stdout into the executed notebook; with
    # WS_LOG_TERMINAL=1 the short lines also go to the kernel's own stderr, i.e. the
    # terminal that started the run, so a long run shows its progress as it goes.
    if os.environ.get("WS_LOG_TERMINAL") == "1" and sys.__stderr__ is not None and sys.stderr is not sys.__stderr__:
        logger.add(sys.__stderr__, level=level, format=_SHORT, colorize=False)
    logger.debug(f"logging set up for {name!r}; verbose log at {path}")
    return path


T = TypeVar("T")

#: seconds between two progress lines of a long stage (its bar updates continuously)
PROGRESS_EVERY_S = 20.0


def progress(items: Iterable[T], desc: str, total: int | None = None, every_s: float = PROGRESS_EVERY_S) -> Iterator[T]:
    """Iterate ``items`` with progress shown both ways: a bar (a widget in Jupyter) and, for
    headless runs whose bars land in the executed notebook, an INFO line at most every
    ``every_s`` seconds and one at the end — ``desc: i/n (p %), t s, about r s left`` — which
    reaches the terminal (``WS_LOG_TERMINAL=1``) and the verbose log."""
    n = total if total is not None else len(items)  # type: ignore[arg-type]  (a sized iterable, or give total)
    t0 = last = time.perf_counter()
    i = 0
    for i, item in enumerate(tqdm(items, desc=desc, total=n, leave=False), start=1):
        yield item
        now = time.perf_counter()
        if now - last >= every_s and i < n:
            last = now
            left = (now - t0) / i * (n - i)
            logger.info(f"{desc}: {i}/{n} ({100 * i / max(n, 1):.0f} %), {now - t0:.0f} s, about {left:.0f} s left")
    logger.info(f"{desc}: {i}/{n} done in {time.perf_counter() - t0:.0f} s")


__all__ = ["logger", "progress", "setup_logging"]
