"""Encode on Spark: tidy pairs -> integer codes, the filters, and the per-artist tables.

Codes come from ``StringIndexer`` (``alphabetAsc``: the same input always gives the same
codes, whatever the partitioning). The ``min_listeners`` / ``min_artists`` filters are applied
together until neither drops anything more, like ``tasks.data.encode``; each round is one
aggregation and one join, and rounds are few (the counts only fall).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.errors import RecsError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class SparkEncoded:
    """Users and artists as codes 0..n-1, pairs as a DataFrame (all cached).

    ``plays``: ``user int, artist int, plays float`` (one row per pair, plays > 0).
    ``users``: ``user int, user_key string``. ``artists``: ``artist int, artist_key string, name
    string`` (the display name of the artist's first row in the file), ``listeners int``,
    ``plays double`` (total plays), ``search_key string`` (``tasks.names``).
    """

    plays: DataFrame
    users: DataFrame
    artists: DataFrame
    n_users: int
    n_artists: int
    n_pairs: int


def encode(frame: DataFrame, min_listeners: int = 1, min_artists: int = 1) -> SparkEncoded:
    """``frame``: ``row, user, artist, artist_name, plays`` (``tasks.spark.parse``). Raises
    ``RecsError`` when the filters leave nothing."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.sql import functions as F

    pairs = _filtered(frame, min_listeners, min_artists).cache()
    if pairs.isEmpty():
        raise RecsError(
            f"no listening pairs left after filtering (min_listeners={min_listeners}, "
            f"min_artists={min_artists}); lower the filters"
        )
    indexer = StringIndexer(
        inputCols=["user", "artist"], outputCols=["user_code", "artist_code"], stringOrderType="alphabetAsc"
    ).fit(pairs)
    coded = indexer.transform(pairs).select(
        F.col("user_code").cast("int").alias("user"),
        F.col("artist_code").cast("int").alias("artist"),
        F.col("user").alias("user_key"),
        F.col("artist").alias("artist_key"),
        "artist_name",
        "row",
        "plays",
    )
    plays = coded.select("user", "artist", "plays").cache()
    users = coded.select("user", "user_key").distinct().cache()
    artists = coded.groupBy("artist").agg(
        F.first("artist_key").alias("artist_key"),
        F.min_by("artist_name", "row").alias("name"),
        F.count("*").cast("int").alias("listeners"),
        F.sum(F.col("plays").cast("double")).alias("plays"),
    )
    artists = _with_search_keys(artists).cache()
    n_users, n_artists = (len(labels) for labels in indexer.labelsArray)
    n_pairs = plays.count()
    pairs.unpersist()
    return SparkEncoded(plays, users, artists, n_users, n_artists, n_pairs)


def _filtered(frame: DataFrame, min_listeners: int, min_artists: int) -> DataFrame:
    """Pairs surviving both filters, iterated to a fixed point (no work without filters)."""
    from pyspark.sql import functions as F

    if min_listeners <= 1 and min_artists <= 1:
        return frame
    kept, size = frame, frame.count()
    while True:
        listeners = kept.groupBy("artist").count().where(F.col("count") >= min_listeners).select("artist")
        heavy = kept.groupBy("user").count().where(F.col("count") >= min_artists).select("user")
        still = kept.join(listeners, "artist", "left_semi").join(heavy, "user", "left_semi").localCheckpoint()
        now = still.count()
        if now == size:
            return still
        kept, size = still, now


def _with_search_keys(artists: DataFrame) -> DataFrame:
    """``artists`` with ``search_key``: ``tasks.names.search_keys`` of ``name``, batch by batch on
    the executors, so a Spark run stores the same lookup keys as a local one."""
    from pyspark.sql.types import StringType, StructField, StructType

    # a new StructType: ``schema.add`` would change the one ``artists`` caches
    schema = StructType([*artists.schema.fields, StructField("search_key", StringType())])
    return artists.mapInPandas(_add_search_keys, schema=schema)


def _add_search_keys(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    from tasks.names import search_keys

    for frame in batches:
        yield frame.assign(search_key=search_keys(frame["name"].to_numpy(dtype=object)))
