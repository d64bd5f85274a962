"""The Spark session of the Spark retrain (``engine: spark``): where it runs and how it is sized.

``SparkConfig.master`` is any Spark master URL: ``local[*]`` (default: every core of this
machine), ``local[2]``, ``spark://host:7077`` (standalone), ``yarn``, ``k8s://...``; or, with
``connect`` set, a Spark Connect server (``sc://host:15002``) that runs the job on its cluster.
docs/scaling.md says what to ship and which settings matter on a cluster.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from pydantic import Field

from tasks.contracts import StageConfig
from tasks.errors import RecsError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class SparkConfig(StageConfig):
    """Where the Spark retrain runs, and the few settings that size it."""

    master: str = Field("local[*]", description="Spark master URL (local[*], spark://host:7077, yarn, k8s://...)")
    connect: str | None = Field(None, description="Spark Connect URL (sc://host:15002); overrides master")
    driver_memory: str = Field("2g", description="spark.driver.memory (local mode: the whole job's heap)")
    executor_memory: str | None = Field(None, description="spark.executor.memory on a cluster (None: Spark's)")
    shuffle_partitions: int = Field(8, ge=1, description="spark.sql.shuffle.partitions: ~2-4 per core")
    block_artists: int = Field(
        20_000, ge=100, description="related artists: artists per block of the blocked cross join"
    )
    publish_partitions: int = Field(4, ge=1, description="parallel COPY streams into PostgreSQL")
    extra: dict[str, str] = Field(default_factory=dict, description="any other spark.* settings")


def spark_session(cfg: SparkConfig) -> SparkSession:
    """The session for ``cfg``: created, or the running one with ``cfg``'s SQL settings applied.

    The UI and console progress are off (a batch job watched through Prefect's log), Arrow is on
    for the few driver-side conversions. Raises ``RecsError`` when the JVM cannot start.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RecsError("pyspark is not installed; install it with `pip install pyspark` for engine: spark") from exc
    # Python workers (pandas UDFs) run this interpreter, so they see the same packages; on a
    # cluster set PYSPARK_PYTHON to the shipped environment's python instead (docs/scaling.md).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("lastfm-recs-retrain")
    builder = builder.remote(cfg.connect) if cfg.connect else builder.master(cfg.master)
    settings = {
        "spark.driver.memory": cfg.driver_memory,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.default.parallelism": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **({"spark.executor.memory": cfg.executor_memory} if cfg.executor_memory else {}),
        **cfg.extra,
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # py4j/JVM start-up failures come as many types
        raise RecsError(
            f"could not start Spark at {cfg.connect or cfg.master} ({type(exc).__name__}); check that Java 17+ "
            "is on PATH (or JAVA_HOME is set) and that spark.master / spark.connect is reachable"
        ) from exc
    spark.conf.set("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
    if not cfg.connect:
        spark.sparkContext.setLogLevel("ERROR")
    return spark
