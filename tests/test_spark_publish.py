"""storage.spark_publish on a real PostgreSQL: Spark tasks COPY a run's rows into detached
partitions in parallel, one transaction switches the views; a SIGKILL of the Spark job in the
middle of the load leaves readers on the previous run, and the next publish cleans up after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from storage.engine import make_engine, scratch_schema
from storage.schema import CurrentRun, Run, current_related_artists
from storage.spark_publish import SparkRunOutputs, publish_spark
from tasks.contracts import Metric

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[1]
N = 10


def synthetic_outputs(spark, n_artists: int, n_users: int, tag: str) -> SparkRunOutputs:
    """A run of ``n_artists`` artists named ``"<tag> <code>"`` and ``n_users`` users, N related
    artists and N recommendations each, all generated on the executors (nothing on the driver)."""
    from pyspark.sql import functions as F

    artists = spark.range(n_artists).select(
        F.col("id").cast("int").alias("artist_id"),
        F.concat(F.lit("a"), "id").alias("artist_key"),
        F.concat(F.lit(f"{tag} "), "id").alias("name"),
        F.lit(1).alias("listeners"),
        F.lit(1.0).alias("plays"),
    )
    users = spark.range(n_users).select(
        F.col("id").cast("int").alias("user_id"), F.concat(F.lit("u"), "id").alias("user_key")
    )

    def lists(n_owners: int, owner: str, target: str):
        return spark.range(n_owners * N).select(
            (F.col("id") / N).cast("int").alias(owner),
            (F.col("id") % N + 1).cast("short").alias("rank"),
            (((F.col("id") / N).cast("long") + F.col("id") % N + 1) % n_artists).cast("int").alias(target),
            (1.0 / (F.col("id") % N + 1)).cast("float").alias("score"),
        )

    related = lists(n_artists, "artist_id", "related_artist_id")
    recommendations = lists(n_users, "user_id", "artist_id")
    return SparkRunOutputs(
        artists=artists,
        users=users,
        related=related.withColumn("model", F.lit("spark_als")),
        recommendations=recommendations,
        n_artists=n_artists,
        n_users=n_users,
        n_related=n_artists * N,
        n_recommendations=n_users * N,
        metrics=[Metric("spark_als", "precision", 10, 0.1)],
        config={"engine": "spark", "tag": tag},
        dataset="synthetic",
        source="generated",
        data_sha256="0" * 64,
        related_model="spark_als",
        user_model="spark_als",
        code_version="test",
    )


@pytest.fixture
def pg_url():
    url = os.environ.get("RECS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RECS_TEST_POSTGRES_URL is not set")
    with scratch_schema(url, "recs_spark") as scratch:
        yield scratch


def _served(engine) -> tuple[int | None, set[str], int]:
    """The current run, the tags of the artist names the view serves, and its row count."""
    with engine.connect() as conn:
        current = conn.execute(sa.select(CurrentRun.run_id)).scalar()
        names = conn.execute(sa.select(current_related_artists.c.artist_name)).scalars().all()
    return current, {name.split()[0] for name in names}, len(names)


CHILD = """
import sys
from storage.engine import make_engine
from storage.spark_publish import publish_spark
from tasks.spark.config import SparkConfig
from tasks.spark.session import spark_session
from tests.test_spark_publish import synthetic_outputs

spark = spark_session(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="1g"))
publish_spark(make_engine(sys.argv[1]), synthetic_outputs(spark, 300_000, 100_000, "second"), partitions=8)
"""


def _detached_tables(engine, run_id: int) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE :p"),
                {"p": f"%_run_{run_id}"},
            ).scalars()
        )


def test_sigkill_mid_publish_leaves_the_views_on_the_previous_run(spark, pg_url):
    engine = make_engine(pg_url)
    first = publish_spark(engine, synthetic_outputs(spark, 500, 200, "first"), partitions=3)
    assert _served(engine) == (first, {"first"}, 500 * N)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, pg_url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and child.poll() is None:
            with engine.connect() as conn:
                loading = conn.execute(sa.select(Run.run_id).where(Run.status == "loading")).scalar()
                if loading is not None and f"artists_run_{loading}" in _detached_tables(engine, loading):
                    rows = conn.execute(sa.text(f"SELECT count(*) FROM artists_run_{loading}")).scalar_one()
                    if rows > 0:  # some Spark tasks have committed their rows, the switch has not run
                        os.killpg(child.pid, signal.SIGKILL)  # the driver and its JVM: the whole job
                        killed = loading
            time.sleep(0.05)
    finally:
        if child.poll() is None and killed is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert killed is not None, f"the publish ended before it could be killed: {child.stderr.read()[-2000:]!r}"

    # readers still see run 1, completely; the killed run is loading with detached partitions
    assert _served(engine) == (first, {"first"}, 500 * N)
    with engine.connect() as conn:
        assert conn.execute(sa.select(Run.status).where(Run.run_id == killed)).scalar_one() == "loading"
    assert _detached_tables(engine, killed)

    third = publish_spark(engine, synthetic_outputs(spark, 400, 100, "third"), partitions=2)
    assert _served(engine) == (third, {"third"}, 400 * N)
    with engine.connect() as conn:
        assert conn.execute(sa.select(Run.status).where(Run.run_id == killed)).scalar_one() == "failed"
    assert _detached_tables(engine, killed) == []
    engine.dispose()
