"""The benchmark's ``--quick`` size runs end to end and reports every figure it promises.

Speed is not asserted here (CI machines vary; the figures are for people): the test checks that
the command runs as users run it, publishes through the real flow, and that its JSON holds a
time and peak RSS for every stage, finite ratios against the raw libraries, and recalls of the
approximate steps measured against exact search.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.config import RetrainConfig

# the benchmark as a subprocess, through the real flow
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# --quick evaluates every one of its 3,000 users, so, like the flow, it fits the published models
# again on all pairs ("refit"); at full size the 10,000 evaluated users hold < 1 % of the pairs.
# The default config: ALS for related artists, the blend for users, then the single-ALS yardstick;
# 4,000 artists x 3,000 users is small enough for exact search (index.engine auto), so no index.
DEFAULT = RetrainConfig()
STAGES = (
    "download",
    "parse",
    "encode",
    "split",
    # one fit per distinct model of the default config (related, then user), on train and on all pairs
    *(f"{stage}_{m.name}" for stage in ("fit", "refit") for m in (DEFAULT.related_model, DEFAULT.user_model)),
    "recommend",
    "evaluate",
    "publish_sqlite",
    "single_als_fit",
)
# the recommend stage times its own parts (tasks.recommend.recommend -> Recommended.seconds)
RECOMMEND_PARTS = ("related", "related_compared", "users", "because", "recall_check")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    return run_quick("benchmarks.pipeline", "--work-dir", str(tmp_path_factory.mktemp("bench")), timeout=600)


def run_quick(module: str, *args: str, timeout: float) -> dict:
    """``python -m <module> --quick *args`` as users run it (into the test PostgreSQL too, when
    ``RECS_TEST_POSTGRES_URL`` is set); its JSON output."""
    command = [sys.executable, "-m", module, "--quick", *args]
    postgres = os.environ.get("RECS_TEST_POSTGRES_URL")
    if postgres:
        command += ["--postgres", postgres]
    env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_every_stage_is_timed_with_its_peak_memory(quick):
    stages = quick["plain"]["stages"]
    expected = STAGES + (("publish_postgres",) if os.environ.get("RECS_TEST_POSTGRES_URL") else ())
    assert set(stages) == set(expected)
    for figures in stages.values():
        assert figures["seconds"] >= 0
        assert figures["peak_rss_mb"] > 0
    parts = quick["plain"]["recommend_parts"]
    assert set(parts) == set(RECOMMEND_PARTS)
    assert sum(parts.values()) <= stages["recommend"]["seconds"] + 0.01
    total = quick["plain"]["total"]
    assert total["seconds"] == pytest.approx(sum(f["seconds"] for f in stages.values()), abs=0.01)
    assert total["peak_rss_mb"] == max(f["peak_rss_mb"] for f in stages.values())


def test_ratios_against_the_raw_libraries_are_measured(quick):
    ratios = quick["ratios"]
    for name in (
        "pipeline_vs_raw_fit",
        "fit_ratio",
        "related_speedup",
        "user_speedup",
        "factor_user_speedup",
        "publish_sqlite_vs_executemany",
    ):
        assert math.isfinite(ratios[name]) and ratios[name] > 0, name
    assert ratios["flow_overhead"] > -1
    raw = quick["raw"]
    assert raw["exact_similar_sample"] > 0 and raw["batch_recommend_sample"] > 0


def test_every_list_is_checked_and_the_choices_recorded(quick):
    assert quick["config"] == "default"
    assert quick["choices"]["index_engine"] == "exact" and quick["choices"]["user_top_n"] == "dense"
    # exact related artists against implicit's exact similar_items: misaligned codes would score
    # near the random rate (10 / artists); dense blend lists are the yardstick itself
    assert 0.95 < quick["raw"]["related_recall"] <= 1.0
    assert quick["raw"]["user_recall"] == 1.0
    # the ALS part's exact lists against implicit's recommend of the same factors: the same
    # search, so only ties and misaligned codes could lower it
    assert quick["raw"]["factor_user_path"] == "exact"
    assert 0.99 <= quick["raw"]["factor_user_recall"] <= 1.0
    for name in ("related_recall", "user_recall", "factor_user_recall"):
        assert quick["targets"][name]["value"] == quick["raw"][name]
    precision = quick["precision_at_10"]
    assert set(precision) == {"configuration", "single_als", "popularity"}
    assert all(0 < p < 1 for p in precision.values())
    assert quick["targets"]["precision_vs_single_als"]["value"] == pytest.approx(
        precision["configuration"] / precision["single_als"], abs=1e-3
    )


def test_the_flow_ran_and_published(quick):
    flow = quick["flow"]
    assert flow["run_id"]
    assert flow["seconds"] > 0
    assert {"factorize", "publish"} <= set(flow["stages"])
