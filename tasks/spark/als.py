"""Factorize on Spark: ``pyspark.ml.recommendation.ALS(implicitPrefs=True)`` on a confidences
DataFrame, the model configured by ``tasks.models.spark_als.SparkALSConfig`` (same fields as
implicit's ALS; see that module for how Spark's confidence and regularisation differ)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import DataFrame

    from tasks.models.implicit_mf import ALSParams


def fit_frame(ratings: DataFrame, config: ALSParams) -> tuple[ALSModel, float]:
    """Fit ALS on ``ratings`` (``user int, artist int, confidence float``; cache it first).

    Returns the model, its factor DataFrames cached and counted, and the wall seconds of that
    fit (Spark is lazy about the factors: counting them makes the figure the real cost)."""
    from pyspark.ml.recommendation import ALS

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
    model.userFactors.cache().count()
    model.itemFactors.cache().count()
    return model, time.perf_counter() - started
