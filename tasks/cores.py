"""The cores this process may use, which the compiled kernels, the parse and the tuner split work over."""

from __future__ import annotations

import os


def cores() -> int:
    """Cores this process may use (at least 1): its affinity mask, which a container's CPU set
    narrows where ``os.cpu_count()`` would not."""
    return max(1, len(os.sched_getaffinity(0)))
