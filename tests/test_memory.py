"""ws.core.memory: the process's own peak memory."""

import subprocess
import sys

import numpy as np

from ws.core.memory import peak_rss_gib


def test_a_child_process_reports_its_own_peak_memory_not_its_parents():
    """``ru_maxrss`` survives ``exec`` on Linux: a child started by a bigger process read its
    parent's peak (the import costs of ``make bench`` did). ``peak_rss_gib`` is the process's own."""
    big = np.ones(2 * 1024**3 // 8)  # 2 GiB, touched: the parent's peak is above it
    assert peak_rss_gib() > 2.0
    code = "from ws.core.memory import peak_rss_gib; import ws.bench.common; print(peak_rss_gib())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child < 1.5, child  # the child's own: ws.bench and torch, well under the parent's 2 GiB
    del big
