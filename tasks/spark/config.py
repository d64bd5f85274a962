"""Settings of the Spark retrain (``engine: spark``): where it runs, how it is sized, its model.

``master`` is any Spark master URL: ``local[*]`` (default: every core of this machine),
``local[2]``, ``spark://host:7077`` (standalone), ``yarn``, ``k8s://...``; or, with ``connect``
set, a Spark Connect server (``sc://host:15002``) that runs the job on its cluster.
docs/scaling.md says what to ship and which settings matter on a cluster.
"""

from __future__ import annotations

from pydantic import Field

from tasks.contracts import StageConfig
from tasks.models.spark_als import SparkALSConfig


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
    model: SparkALSConfig = Field(
        SparkALSConfig(factors=64, iterations=10, regularization=0.05),
        description="the ALS model both related artists and user recommendations come from",
    )
    extra: dict[str, str] = Field(default_factory=dict, description="any other spark.* settings")
