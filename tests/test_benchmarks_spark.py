"""``python -m benchmarks.spark --quick`` (what the docs' Spark figures come from) runs end to end.

Speed is not asserted (machines vary): the test checks that the command runs as users run it,
publishes what the flow publishes, times every Spark stage with the driver's and the JVM's peak
memory, runs the single-machine pipeline on the same file beside it, and reports the quality and
recall figures it promises.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.spark import SPARK_STAGES
from tests.test_benchmarks_pipeline import run_quick

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick() -> dict:
    return run_quick("benchmarks.spark", timeout=900)


def test_every_spark_stage_is_timed_beside_the_single_machine_run(quick):
    (point,) = quick["points"].values()
    spark = point["spark"]
    assert set(spark["stages"]) == set(SPARK_STAGES)
    for figures in spark["stages"].values():
        assert figures["seconds"] > 0 and figures["peak_rss_mb"] > 0 and figures["jvm_peak_rss_mb"] > 0
    assert spark["total"]["seconds"] == pytest.approx(sum(f["seconds"] for f in spark["stages"].values()), abs=0.01)
    single = point["single"]
    assert {"parse", "encode", "split", "recommend", "evaluate"} <= set(single["stages"])
    assert quick["database"] == ("postgresql" if os.environ.get("RECS_TEST_POSTGRES_URL") else "sqlite")


def test_the_spark_run_published_every_row_and_beats_popularity(quick):
    (point,) = quick["points"].values()
    spark, size = point["spark"], point["size"]
    shape = spark["shape"]
    assert 0 < shape["users"] <= size["users"] and 0 < shape["artists"] <= size["artists"]
    # artists + users + 10 related per artist + 10 recommendations per user (none run short here)
    assert spark["published_rows"] == shape["artists"] + shape["users"] + 10 * (shape["artists"] + shape["users"])
    assert spark["related_recall"] == 1.0  # the blocked cross join is exact
    precision = spark["precision_at_10"]
    assert precision["spark_als"] > precision["popularity"] > 0
