"""Weight on Spark: raw plays -> confidences in Spark SQL, as ``tasks.weight`` defines them.

- ``bm25`` (``k1``, ``b``): implicit's ``bm25_weight`` on the artists x users matrix:
  ``plays * (k1 + 1) / (k1 * norm[artist] + plays) * idf[user]`` with
  ``norm = (1 - b) + b * artist_total / mean(artist_total over all n_artists)`` and
  ``idf = log(n_artists) - log1p(artists the user heard)``;
- ``log``: ``alpha * log1p(plays / eps)``; ``none``: plays as they are.

``tfidf`` is not offered on Spark. Zero confidences are dropped (as ``tasks.weight`` does); a
negative one is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.errors import RecsError
from tasks.spark.session import first
from tasks.weight import WeightConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def weight(plays: DataFrame, n_artists: int, cfg: WeightConfig) -> DataFrame:
    """``plays`` (``user, artist, plays``) -> ``user, artist, confidence float`` (cached).

    ``n_artists``: the encoding's artist count (the matrix's width, artists without plays in
    ``plays`` included, as implicit's ``N`` and mean are over every row)."""
    from pyspark.sql import functions as F

    p = F.col("plays").cast("double")
    if cfg.scheme == "bm25":
        artist_totals = plays.groupBy("artist").agg(F.sum(p).alias("total"))
        mean_total = (first(plays.agg(F.sum(p)))[0] or 0.0) / n_artists
        per_user = plays.groupBy("user").agg(F.count("*").alias("heard"))
        idf = F.log(F.lit(float(n_artists))) - F.log1p(F.col("heard"))
        norm = (1.0 - cfg.b) + cfg.b * F.col("total") / F.lit(mean_total)
        weighted = (
            plays.join(artist_totals, "artist")
            .join(per_user, "user")
            .select("user", "artist", (p * (cfg.k1 + 1.0) / (cfg.k1 * norm + p) * idf).alias("confidence"))
        )
    elif cfg.scheme == "log":
        if cfg.eps <= 0:
            raise RecsError(f"weight scheme 'log' needs eps > 0, got {cfg.eps}; set weight.eps to a positive number")
        weighted = plays.select("user", "artist", (cfg.alpha * F.log1p(p / cfg.eps)).alias("confidence"))
    elif cfg.scheme == "none":
        weighted = plays.select("user", "artist", p.alias("confidence"))
    else:
        raise RecsError(f"weight scheme {cfg.scheme!r} is not available on Spark; use bm25, log or none")
    out = weighted.withColumn("confidence", F.col("confidence").cast("float")).where(F.col("confidence") != 0).cache()
    if out.where(F.col("confidence") < 0).limit(1).count():
        raise RecsError(
            f"weight scheme {cfg.scheme!r} gave negative confidences (a user heard every artist, or "
            "alpha < 0); drop such users with data.min_artists/min_listeners or use scheme 'log'"
        )
    return out
