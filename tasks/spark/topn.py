"""User top-N on Spark, heard artists excluded: from the ALS model, and the popularity baseline.

The ALS lists are blocked by users, not by pairs: the artist factors (``n_artists x f`` float32,
77 MB at Last.fm 360K's 300K artists and 64 factors) travel once to every Python worker with the
task's function (PySpark broadcasts a large pickled function), and each Arrow batch of users
(their factors and the artists they heard, as Arrow lists) is scored against all of them by implicit's ``topk``
with the heard artists filtered, the same call as the single-machine ``user_top_n``. Work is
``users x artists x f`` multiply-adds in BLAS blocks of 100 users, the only shuffle the
grouping of heard artists by user. Spark's own ``recommendForAllUsers`` instead cross-joins
user and artist blocks and keeps a JVM top-k per user; asked for ``N + most heard`` to leave N
after the heard ones go, it took 1,452 s at 1/8 of the 360K shape (docs/scaling.md).

Popularity asks for ``N + h`` candidates per user, ``h`` the most artists any of those users
heard, and drops the heard ones with an anti-join: at least N remain for every user who has N
unheard artists at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.spark.session import first
from tasks.topn import unheard_inner_top_n

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import DataFrame

TOP_N = "user_id int, rank short, artist_id int, score float"


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


def _artist_factors(model: ALSModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, factors, position)``: the artists that have factors (int32), their factors
    (float32, artists x f, in ``ids`` order) and each artist id's row in ``factors`` (-1: none;
    artists only in held-out pairs have no factors)."""
    frame = cast(pd.DataFrame, model.itemFactors.toPandas())
    ids = frame["id"].to_numpy(np.int32)
    factors = np.stack(frame["features"].to_numpy()).astype(np.float32) if len(frame) else np.empty((0, model.rank))
    position = np.full(int(ids.max(initial=-1)) + 1, -1, dtype=np.int64)
    position[ids] = np.arange(len(ids))
    return ids, np.ascontiguousarray(factors, dtype=np.float32), position


def _lists(column) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow list column as ``(values, lengths)``; a null list has length 0."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    return pc.list_flatten(column).to_numpy(zero_copy_only=False), lengths


def _score_users(ids: np.ndarray, factors: np.ndarray, position: np.ndarray, n: int):
    def score(batches):
        import pyarrow as pa

        for batch in batches:
            if not batch.num_rows:
                continue
            users = batch.column("id").to_numpy()
            values, _ = _lists(batch.column("features"))
            queries = values.astype(np.float32).reshape(len(users), factors.shape[1])
            heard, lengths = _lists(batch.column("heard"))
            rows, heard = np.repeat(np.arange(len(users)), lengths), heard.astype(np.int64)
            cols = np.where(heard < len(position), position[np.minimum(heard, len(position) - 1)], -1)
            seen = sp.csr_matrix(
                (np.ones(int((cols >= 0).sum()), np.float32), (rows[cols >= 0], cols[cols >= 0])),
                shape=(len(users), len(ids)),
            )
            # one thread: Spark already runs a Python worker per core
            top = unheard_inner_top_n(factors, queries, seen, n, num_threads=1)
            keep = (top.ids >= 0).ravel()
            yield pa.RecordBatch.from_pydict(
                {
                    "user_id": np.repeat(users.astype(np.int32), n)[keep],
                    "rank": np.tile(np.arange(1, n + 1, dtype=np.int16), len(users))[keep],
                    "artist_id": ids[top.ids.ravel()[keep]],
                    "score": top.scores.ravel()[keep],
                }
            )

    return score


def model_top_n(model: ALSModel, heard: DataFrame, n: int, users: DataFrame | None = None) -> DataFrame:
    """Top ``n`` unheard artists per user (all users with factors, or those in ``users``: a
    ``user`` column) by the ALS score ``user_factors @ artist_factors``, as ``user_id, rank
    (1 = best), artist_id, score``. ``heard``: ``user, artist`` pairs to exclude."""
    from pyspark.sql import functions as F

    ids, factors, position = _artist_factors(model)
    queries = model.userFactors
    if users is not None:
        queries = queries.join(users.select(F.col("user").alias("id")), "id", "left_semi")
    lists = heard.groupBy(F.col("user").alias("id")).agg(F.collect_list("artist").alias("heard"))
    return queries.join(lists, "id", "left").mapInArrow(_score_users(ids, factors, position, n), schema=TOP_N)


def popularity_top_n(train: DataFrame, users: DataFrame, n: int) -> DataFrame:
    """The baseline: every user in ``users`` gets the artists with most ``train`` listeners
    (score = listeners) that they have not heard in ``train``."""
    from pyspark.sql import functions as F

    k = n + _most_heard(train, users)
    popular = train.groupBy("artist").agg(F.count("*").cast("float").alias("score"))
    top = popular.orderBy(F.desc("score"), "artist").limit(k)
    return _unheard_top(users.select("user").crossJoin(F.broadcast(top)), train, n)
