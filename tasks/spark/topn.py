"""User top-N on Spark, heard artists excluded: from the ALS model, and the popularity baseline.

Both ask for ``N + h`` candidates per user, ``h`` the most artists any of those users heard,
then drop the heard ones with an anti-join and rank what is left: at least N remain for every
user who has N unheard artists at all. ALS candidates come from ``recommendForUserSubset`` /
``recommendForAllUsers`` (Spark's blocked users x artists top-k, never a dense matrix).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.spark.session import first

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import DataFrame


def _most_heard(heard: DataFrame, users: DataFrame | None) -> int:
    from pyspark.sql import functions as F

    counted = heard if users is None else heard.join(users, "user", "left_semi")
    return int(first(counted.groupBy("user").count().agg(F.max("count")))[0] or 0)


def _unheard_top(candidates: DataFrame, heard: DataFrame, n: int) -> DataFrame:
    """``candidates`` (``user, artist, score``) minus ``heard`` pairs, the best ``n`` per user as
    ``user_id, rank (1 = best), artist_id, score``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("user").orderBy(F.desc("score"), "artist")
    return (
        candidates.join(heard.select("user", "artist"), ["user", "artist"], "left_anti")
        .withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= n)
        .select(
            F.col("user").alias("user_id"),
            F.col("rank").cast("short"),
            F.col("artist").alias("artist_id"),
            F.col("score").cast("float"),
        )
    )


def model_top_n(model: ALSModel, heard: DataFrame, n: int, users: DataFrame | None = None) -> DataFrame:
    """Top ``n`` unheard artists per user (all users, or ``users``: a ``user`` column) by the
    ALS score ``user_factors @ artist_factors``. ``heard``: ``user, artist`` pairs to exclude."""
    from pyspark.sql import functions as F

    k = n + _most_heard(heard, users)
    recs = model.recommendForAllUsers(k) if users is None else model.recommendForUserSubset(users, k)
    exploded = recs.select("user", F.explode("recommendations").alias("r")).select(
        "user", F.col("r.artist").alias("artist"), F.col("r.rating").alias("score")
    )
    return _unheard_top(exploded, heard, n)


def popularity_top_n(train: DataFrame, users: DataFrame, n: int) -> DataFrame:
    """The baseline: every user in ``users`` gets the artists with most ``train`` listeners
    (score = listeners) that they have not heard in ``train``."""
    from pyspark.sql import functions as F

    k = n + _most_heard(train, users)
    popular = train.groupBy("artist").agg(F.count("*").cast("float").alias("score"))
    top = popular.orderBy(F.desc("score"), "artist").limit(k)
    return _unheard_top(users.select("user").crossJoin(F.broadcast(top)), train, n)
