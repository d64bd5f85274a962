"""``python -m benchmarks.explain --quick`` runs as users run it and reports every figure it promises
(speed is not asserted: the figures are for people, and CI machines vary)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_reports_because_and_fold_in_figures():
    command = [sys.executable, "-m", "benchmarks.explain", "--quick", "--sample", "20"]
    env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    for name in ("because_seconds", "implicit_explain_all_seconds", "speedup_vs_implicit_explain", "fold_in_seconds"):
        assert math.isfinite(figures[name]) and figures[name] > 0, name
    assert figures["because_named"] == 1.0  # a factor model always names a heard artist
    # 4,000 artists x 64 float32 factors + 4,000 float64 plays
    assert figures["fold_in_mb"] == round((4000 * 64 * 4 + 4000 * 8) / 2**20, 1)
    assert figures["fold_in_listed"] == figures["size"]["n"]
