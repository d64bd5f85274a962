"""Wall time and peak resident memory of a block of code, per stage.

Peak RSS is the kernel's high-water mark (``VmHWM``), reset before each stage by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0), so each stage reports its own peak rather than the
process's peak so far. Where the reset is refused the figure is the running peak, and
``Stages.rss_per_stage`` says so.
"""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

_HWM = re.compile(r"VmHWM:\s+(\d+) kB")


def peak_rss_mb() -> float:
    """This process's resident high-water mark in MiB (since start or the last reset)."""
    return int(_HWM.search(Path("/proc/self/status").read_text()).group(1)) / 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Stages:
    """Collects ``{stage: {"seconds": s, "peak_rss_mb": m}}`` in call order."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, float]] = {}
        self.rss_per_stage = True

    @contextmanager
    def __call__(self, stage: str):
        self.rss_per_stage &= _reset_peak()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.figures[stage] = {
                "seconds": round(time.perf_counter() - started, 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
            # a full-size run takes many minutes: show progress on stderr (stdout is the JSON)
            print(f"{stage}: {self.figures[stage]}", file=sys.stderr, flush=True)

    def total(self) -> dict[str, float]:
        """Sum of stage seconds and the largest stage peak."""
        return {
            "seconds": round(sum(f["seconds"] for f in self.figures.values()), 3),
            "peak_rss_mb": max((f["peak_rss_mb"] for f in self.figures.values()), default=0.0),
        }
