"""The Spark session of the Spark retrain (``engine: spark``), from ``SparkConfig``."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from tasks.errors import RecsError
from tasks.spark.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession


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
    # Spark's ALS solves one small system per user and artist through native BLAS/LAPACK when the
    # machine has one (libopenblas); a task per core is the parallelism, so each call gets one
    # thread (Spark's ML guide). Local mode's JVM inherits this process's environment.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    builder = SparkSession.builder.appName("lastfm-recs-retrain")
    builder = builder.remote(cfg.connect) if cfg.connect else builder.master(cfg.master)
    settings = {
        "spark.driver.memory": cfg.driver_memory,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.default.parallelism": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
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


def first(frame: DataFrame) -> Row:
    """The first row of ``frame`` (an aggregate's one row); RecsError if there is none."""
    row = frame.first()
    if row is None:
        raise RecsError("a Spark aggregate returned no row; check the input data")
    return row
