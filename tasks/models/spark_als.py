"""Spark MLlib ALS (``implicitPrefs=True``): the factorize back-end for data past one machine.

Same seam as the in-process models: ``SparkALSConfig.fit_scorer(weighted) -> Factors``, so
related artists, user top-N and evaluation run unchanged on its factors.

Spark's ALS differs from implicit's in two ways worth knowing when comparing scores:
confidence is ``1 + alpha * r`` (implicit: ``alpha * r``), and ``regParam`` is scaled by each
user's/artist's number of ratings (ALS-WR), so the same ``regularization`` regularises more.

The session is local-mode by default (``local[2]``, small shuffle, little memory); set
``RECS_SPARK_MASTER`` (e.g. ``spark://host:7077``) to run against a cluster instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.contracts import Factors
from tasks.errors import RecsError
from tasks.models.implicit_mf import ALSParams

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import DataFrame, SparkSession


class SparkALSConfig(ALSParams):
    """Spark MLlib's ALS (``implicitPrefs=True``), local mode or the cluster ``RECS_SPARK_MASTER``."""

    name: Literal["spark_als"] = "spark_als"

    def fit_scorer(self, train: sp.csr_matrix) -> Factors:
        return fit(train, self)


def spark_session() -> SparkSession:
    """The shared Spark session: local[2] unless ``RECS_SPARK_MASTER`` says otherwise.

    Arrow is on so pandas <-> Spark conversions move columns, not pickled rows; the UI is off
    and shuffle partitions are few because local mode has two cores, not two hundred.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RecsError("pyspark is not installed; install it with `pip install pyspark` to use spark_als") from exc
    try:
        spark = (
            SparkSession.builder.master(os.environ.get("RECS_SPARK_MASTER", "local[2]"))
            .appName("lastfm-recs-als")
            .config("spark.driver.memory", os.environ.get("RECS_SPARK_DRIVER_MEMORY", "1g"))
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.default.parallelism", "4")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate()
        )
    except Exception as exc:  # py4j/JVM start-up failures come as many types
        raise RecsError(
            f"could not start Spark ({type(exc).__name__}); check that Java 17+ is on PATH or set JAVA_HOME"
        ) from exc
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def interactions_frame(spark: SparkSession, weighted: sp.csr_matrix) -> DataFrame:
    """The non-zeros of ``weighted`` (CSR, users x artists, float32 confidences) as a Spark
    DataFrame ``user int, artist int, confidence float``, built through Arrow in one transfer."""
    coo = weighted.tocoo()
    frame = pd.DataFrame(
        {
            "user": coo.row.astype(np.int32),
            "artist": coo.col.astype(np.int32),
            "confidence": coo.data.astype(np.float32),
        }
    )
    return spark.createDataFrame(frame)


def fit_model(spark: SparkSession, weighted: sp.csr_matrix, config: SparkALSConfig) -> tuple[ALSModel, float]:
    """Fit Spark ALS on ``weighted`` (CSR, users x artists, float32 confidences).

    Returns the model and the wall seconds of ``ALS.fit`` alone (the DataFrame is cached and
    materialised first so its transfer is not counted as fitting).
    """
    from tasks.spark.als import fit_frame

    if weighted.nnz == 0:
        raise RecsError("spark_als got an empty matrix; check the data and its filters (min_listeners/min_artists)")
    ratings = interactions_frame(spark, weighted).cache()
    ratings.count()
    model, seconds = fit_frame(ratings, config)
    ratings.unpersist()
    return model, seconds


def _dense_factors(factors: DataFrame, n: int, rank: int) -> np.ndarray:
    """Spark's ``id, features`` factor DataFrame as float32, n x rank; ids with no rows
    (users/artists without interactions) stay zero, matching implicit's untouched rows."""
    frame: pd.DataFrame = factors.toPandas()
    out = np.zeros((n, rank), dtype=np.float32)
    if len(frame):
        out[frame["id"].to_numpy()] = np.stack(frame["features"].to_numpy()).astype(np.float32)
    return out


def to_factors(model: ALSModel, shape: tuple[int, int], config: SparkALSConfig, fit_seconds: float) -> Factors:
    """Copy a fitted model's factors to the driver as ``Factors`` (users x rank, artists x rank)."""
    return Factors(
        name=config.name,
        params=config.params(implicit_prefs=True),
        user_factors=_dense_factors(model.userFactors, shape[0], model.rank),
        artist_factors=_dense_factors(model.itemFactors, shape[1], model.rank),
        fit_seconds=fit_seconds,
    )


def fit(weighted: sp.csr_matrix, config: SparkALSConfig) -> Factors:
    """Spark ALS on ``weighted`` (CSR, users x artists, float32 confidences) -> ``Factors``."""
    model, seconds = fit_model(spark_session(), weighted, config)
    return to_factors(model, weighted.shape, config, seconds)
