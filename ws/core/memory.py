"""This process's memory: the peak resident set size, read where a stage ends.

    peak_rss_gib()   # GiB, the kernel's high-water mark of this process (VmHWM)

The peak only grows, so a stage's figure is the peak *so far* when it ends: read it there,
not after later stages (``ws.v7.sweep.run_seed`` records one per stage, the bench keeps them).
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_gib() -> float:
    """Peak resident set size of this process, GiB: the kernel's high-water mark of this
    process's own memory (``VmHWM``). ``getrusage``'s ``ru_maxrss`` is kept across ``exec``
    on Linux, so a child started by a bigger process would report its parent's peak; it is
    the fallback where ``/proc`` is missing (it reports KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / (1024**2)  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024**2)
