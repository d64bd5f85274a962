"""Split on Spark: ``tasks.split``'s per-user holdout rule over a pairs DataFrame.

Each of a user's ``n_u`` artists gets a random key (``xxhash64`` of seed, user and artist: the
same whatever the partitioning, unlike ``rand``); the ``round(fraction * n_u)`` (at least 1, at
most ``n_u - 1``) with the smallest keys are held out from users with ``n_u >= min_artists``.
With ``max_users``, as ``tasks.split.evaluation_holdout``: when holding out only a seeded sample
of that many eligible users is at most ``SHARED_FIT_MAX_HOLDOUT`` of the pairs, only they are
held out (and one fit serves metrics and publishing); otherwise every eligible user is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.errors import RecsError
from tasks.spark.session import first
from tasks.split import SHARED_FIT_MAX_HOLDOUT

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class SparkSplit:
    """``train`` and ``test``: disjoint ``user, artist, plays`` DataFrames (cached) whose union is
    the input; ``rule`` as ``tasks.split`` words it; ``test_pairs`` and ``pairs`` counted."""

    train: DataFrame
    test: DataFrame
    rule: str
    seed: int
    test_pairs: int
    pairs: int

    @property
    def train_pairs(self) -> int:
        return self.pairs - self.test_pairs

    @property
    def shares_fit(self) -> bool:
        """Whether a fit on ``train`` may be published as it is (``tasks.split.shares_fit``)."""
        return self.test_pairs <= SHARED_FIT_MAX_HOLDOUT * self.pairs


def per_user_holdout(
    plays: DataFrame, fraction: float = 0.2, min_artists: int = 5, seed: int = 0, max_users: int | None = None
) -> SparkSplit:
    """Split ``plays`` (``user int, artist int, plays float``) as the module docstring says."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if not 0 < fraction < 1:
        raise RecsError(f"holdout fraction must be between 0 and 1 (exclusive), got {fraction}")
    if min_artists < 2:
        raise RecsError(f"min_artists must be at least 2 so a held-out user keeps history, got {min_artists}")
    by_user = Window.partitionBy("user")
    counted = plays.withColumn("n_u", F.count("*").over(by_user))
    held = F.least(F.greatest(F.rint(F.col("n_u") * fraction), F.lit(1.0)), F.greatest(F.col("n_u") - 1, F.lit(1)))
    counted = counted.withColumn("n_test", F.when(F.col("n_u") >= min_artists, held.cast("long")).otherwise(0))
    rule = f"per-user {fraction:g} min={min_artists}"
    if max_users is not None:
        users = counted.where(F.col("n_test") > 0).groupBy("user").agg(F.first("n_test").alias("n_test"))
        if users.count() > max_users:
            sample = users.orderBy(F.xxhash64(F.lit(seed), "user"), "user").limit(max_users).cache()
            if (first(sample.agg(F.sum("n_test")))[0] or 0) <= SHARED_FIT_MAX_HOLDOUT * plays.count():
                chosen = sample.select("user", F.lit(True).alias("sampled"))
                counted = counted.join(F.broadcast(chosen), "user", "left").withColumn(
                    "n_test", F.when(F.col("sampled"), F.col("n_test")).otherwise(0)
                )
                rule += f" of {max_users:,} sampled users"
    ranked = counted.withColumn(
        "rank", F.row_number().over(by_user.orderBy(F.xxhash64(F.lit(seed), "user", "artist"), "artist")) - 1
    )
    marked = ranked.select("user", "artist", "plays", (F.col("rank") < F.col("n_test")).alias("test")).cache()
    train = marked.where(~F.col("test")).drop("test").cache()
    test = marked.where(F.col("test")).drop("test").cache()
    test_pairs, pairs = test.count(), marked.count()
    train.count()
    marked.unpersist()
    return SparkSplit(train=train, test=test, rule=rule, seed=seed, test_pairs=test_pairs, pairs=pairs)
