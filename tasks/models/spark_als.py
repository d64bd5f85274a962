"""Spark MLlib ALS (``implicitPrefs=True``): the factorize back-end for data past one machine.

Same seam as the in-process models: ``fit(weighted, ModelConfig) -> Factors``, so related
artists, user top-N and evaluation run unchanged on its factors. ``user_top_n`` is the Spark-side
per-user top-N (``recommendForAllUsers``, already-heard artists removed by an anti-join), for when
the user matrix itself lives on a cluster.

Spark's ALS differs from implicit's in two ways worth knowing when comparing scores:
confidence is ``1 + alpha * r`` (implicit: ``alpha * r``), and ``regParam`` is scaled by each
user's/artist's number of ratings (ALS-WR), so the same ``regularization`` regularises more.

The session is local-mode by default (``local[2]``, small shuffle, little memory); set
``RECS_SPARK_MASTER`` (e.g. ``spark://host:7077``) to run against a cluster instead.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from flows.config import ModelConfig
from tasks.contracts import Factors, TopN
from tasks.errors import RecsError

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import DataFrame, SparkSession


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
        raise RecsError(f"could not start Spark ({type(exc).__name__}); check that Java 17+ is on PATH or set JAVA_HOME") from exc
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


def fit_model(spark: SparkSession, weighted: sp.csr_matrix, config: ModelConfig) -> tuple[ALSModel, float]:
    """Fit Spark ALS on ``weighted`` (CSR, users x artists, float32 confidences).

    Returns the model and the wall seconds of ``ALS.fit`` alone (the DataFrame is cached and
    materialised first so its transfer is not counted as fitting).
    """
    from pyspark.ml.recommendation import ALS

    if weighted.nnz == 0:
        raise RecsError("spark_als got an empty matrix; check the data and its filters (min_listeners/min_artists)")
    ratings = interactions_frame(spark, weighted).cache()
    ratings.count()
    als = ALS(
        rank=config.factors,
        maxIter=config.iterations,
        regParam=config.regularization,
        alpha=config.alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="artist",
        ratingCol="confidence",
        seed=config.random_state,
        coldStartStrategy="drop",
    )
    started = time.perf_counter()
    model = als.fit(ratings)
    # Spark is lazy about the factor DataFrames; counting them makes fit_seconds the real cost.
    model.userFactors.count()
    model.itemFactors.count()
    seconds = time.perf_counter() - started
    ratings.unpersist()
    return model, seconds


def _dense_factors(factors: DataFrame, n: int, rank: int) -> np.ndarray:
    """Spark's ``id, features`` factor DataFrame as float32, n x rank; ids with no rows
    (users/artists without interactions) stay zero, matching implicit's untouched rows."""
    frame = factors.toPandas()
    out = np.zeros((n, rank), dtype=np.float32)
    if len(frame):
        out[frame["id"].to_numpy()] = np.stack(frame["features"].to_numpy()).astype(np.float32)
    return out


def to_factors(model: ALSModel, shape: tuple[int, int], config: ModelConfig, fit_seconds: float) -> Factors:
    """Copy a fitted model's factors to the driver as ``Factors`` (users x rank, artists x rank)."""
    return Factors(
        name="spark_als",
        params={
            "factors": config.factors,
            "regularization": config.regularization,
            "alpha": config.alpha,
            "iterations": config.iterations,
            "random_state": config.random_state,
            "implicit_prefs": True,
        },
        user_factors=_dense_factors(model.userFactors, shape[0], model.rank),
        artist_factors=_dense_factors(model.itemFactors, shape[1], model.rank),
        fit_seconds=fit_seconds,
    )


def fit(weighted: sp.csr_matrix, config: ModelConfig) -> Factors:
    """Spark ALS on ``weighted`` (CSR, users x artists, float32 confidences) -> ``Factors``."""
    model, seconds = fit_model(spark_session(), weighted, config)
    return to_factors(model, weighted.shape, config, seconds)


def user_top_n(spark: SparkSession, model: ALSModel, heard: sp.csr_matrix, n: int) -> TopN:
    """Top-``n`` unheard artists for every user, computed in Spark.

    ``recommendForAllUsers`` cannot skip heard artists, so it is asked for ``n`` plus the longest
    history and the heard pairs are removed with an anti-join, all on the executors; only the
    final ``users x n`` rows reach the driver. ``heard``: CSR, users x artists (the training
    matrix). Returns ``TopN`` over all user codes (rows of users without factors stay -1/NaN).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    longest = int(np.diff(heard.indptr).max()) if heard.shape[0] else 0
    recs = model.recommendForAllUsers(n + longest).select(
        "user", F.posexplode("recommendations").alias("pos", "rec")
    )
    recs = recs.select("user", F.col("rec.artist").alias("artist"), F.col("rec.rating").alias("score"), "pos")
    seen = interactions_frame(spark, heard).select("user", "artist")
    rank = F.row_number().over(Window.partitionBy("user").orderBy("pos"))
    kept = recs.join(seen, ["user", "artist"], "left_anti").withColumn("rank", rank).where(F.col("rank") <= n)
    frame = kept.select("user", "artist", "score", "rank").toPandas()

    ids = np.full((heard.shape[0], n), -1, dtype=np.int32)
    scores = np.full((heard.shape[0], n), np.nan, dtype=np.float32)
    rows = frame["user"].to_numpy()
    cols = frame["rank"].to_numpy() - 1
    ids[rows, cols] = frame["artist"].to_numpy()
    scores[rows, cols] = frame["score"].to_numpy()
    return TopN(ids=ids, scores=scores)
