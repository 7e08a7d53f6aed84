"""Logging: short lines to stdout, DEBUG lines to ``logs/<name>.verbose.log``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from loguru import logger

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


__all__ = ["logger", "setup_logging"]
