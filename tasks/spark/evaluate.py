"""Evaluate on Spark: ``pyspark.ml.evaluation.RankingEvaluator`` on the held-out pairs.

Spark's ``precisionAtK``, ``ndcgAtK`` and ``meanAveragePrecisionAtK`` are the definitions of
``tasks.evaluate`` (hits in the top K / K; binary-relevance nDCG with ``1 / log2(1 + rank)``;
average precision over ``min(K, |test|)``), so the figures compare with the single-machine
path's ``precision`` / ``ndcg`` / ``map``. Users ranked: the test users, or a seeded sample of
``max_users`` of them (``tasks.evaluate``'s rule), the same for the model and the baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from tasks.contracts import Metric

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

SparkMetric = Literal["precisionAtK", "ndcgAtK", "meanAveragePrecisionAtK"]
SPARK_METRICS: dict[str, SparkMetric] = {
    "precision": "precisionAtK",
    "ndcg": "ndcgAtK",
    "map": "meanAveragePrecisionAtK",
}


def ranked_users(test: DataFrame, max_users: int | None, seed: int) -> DataFrame:
    """``user``: the users with held-out pairs, at most ``max_users`` of them (seeded)."""
    from pyspark.sql import functions as F

    users = test.select("user").distinct()
    if max_users is not None:
        users = users.orderBy(F.xxhash64(F.lit(seed + 1), "user"), "user").limit(max_users)
    return users.cache()


def ranking_metrics(model: str, top: DataFrame, test: DataFrame, users: DataFrame, ks: list[int]) -> list[Metric]:
    """``top``: ``user_id, rank, artist_id`` lists (at least max(ks) long where possible);
    ``test``: held-out ``user, artist``; ``users``: who is ranked. One ``Metric`` per metric
    and K, labelled ``model``."""
    from pyspark.ml.evaluation import RankingEvaluator
    from pyspark.sql import functions as F

    predicted = top.groupBy(F.col("user_id").alias("user")).agg(
        F.transform(F.array_sort(F.collect_list(F.struct("rank", "artist_id"))), lambda s: s["artist_id"])
        .cast("array<double>")
        .alias("prediction")
    )
    labels = (
        test.join(users, "user", "left_semi")
        .groupBy("user")
        .agg(F.collect_list(F.col("artist").cast("double")).alias("label"))
    )
    frame = labels.join(predicted, "user", "left").select(
        "label", F.coalesce("prediction", F.array().cast("array<double>")).alias("prediction")
    )
    frame = frame.cache()
    metrics = []
    for k in ks:
        for name, spark_name in SPARK_METRICS.items():
            evaluator = RankingEvaluator(metricName=spark_name, k=k, predictionCol="prediction", labelCol="label")
            metrics.append(Metric(model, name, k, float(evaluator.evaluate(frame))))
    frame.unpersist()
    return metrics
