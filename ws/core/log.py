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


class Bar:
    """A bar advanced by hand (``update(n)``), shown both ways like :func:`progress`: a tqdm bar
    (a widget in Jupyter) and an INFO line at most every ``every_s`` seconds and one at the end.
    Use as a context manager; ``disable=True`` shows and logs nothing."""

    def __init__(self, total: int, desc: str, every_s: float = PROGRESS_EVERY_S, disable: bool = False):
        self.total, self.desc, self.every_s, self.disable = int(total), desc, every_s, disable
        self.bar = tqdm(total=self.total, desc=desc, leave=False, disable=disable)
        self.i = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.i += n
        now = time.perf_counter()
        if not self.disable and now - self.last >= self.every_s and self.i < self.total:
            self.last = now
            left = (now - self.t0) / self.i * (self.total - self.i)
            pct = 100 * self.i / max(self.total, 1)
            logger.info(f"{self.desc}: {self.i}/{self.total} ({pct:.0f} %), {now - self.t0:.0f} s, about {left:.0f} s left")

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if not self.disable and exc[0] is None:
            logger.info(f"{self.desc}: {self.i}/{self.total} done in {time.perf_counter() - self.t0:.0f} s")


def progress(items: Iterable[T], desc: str, total: int | None = None, every_s: float = PROGRESS_EVERY_S) -> Iterator[T]:
    """Iterate ``items`` with progress shown both ways: a bar (a widget in Jupyter) and, for
    headless runs whose bars land in the executed notebook, an INFO line at most every
    ``every_s`` seconds and one at the end — ``desc: i/n (p %), t s, about r s left`` — which
    reaches the terminal (``WS_LOG_TERMINAL=1``) and the verbose log (:class:`Bar`)."""
    n = total if total is not None else len(items)  # type: ignore[arg-type]  (a sized iterable, or give total)
    with Bar(n, desc, every_s) as bar:
        for item in items:
            yield item
            bar.update(1)


__all__ = ["Bar", "logger", "progress", "setup_logging"]
