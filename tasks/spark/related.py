"""Related artists on Spark: exact cosine top-N over artist factors by a blocked cross join.

Artists are cut into ``B = ceil(n_artists / block_artists)`` blocks by ``artist % B``. Each of
the ``B x B`` block pairs is one task (a ``cogroup`` of the left block with the right block):
it normalises both blocks, takes ``L @ R.T`` (block_artists^2 floats at most), and keeps each
left artist's best N in that right block, itself excluded. A window over each artist's
``B x N`` candidates keeps the best N. Memory per task is two blocks and their score block;
the shuffle carries every artist's factors B times on each side plus ``n_artists x B x N``
candidates. ``recall_on_sample`` measures the result against exact search on a sample, as the
single-machine path measures its index.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

CANDIDATES = "artist int, related_artist_id int, score float"
TIE_EPSILON = 1e-5  # cosine differences below this are float32 rounding, not order


def _unit(features: pd.Series) -> np.ndarray:
    """Rows of ``features`` (arrays of float) as float32 unit vectors; zero rows stay zero."""
    matrix = np.stack(features.to_numpy()).astype(np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def _block_top(n: int):
    def top(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
        if left.empty or right.empty:
            return pd.DataFrame({"artist": [], "related_artist_id": [], "score": []})
        scores = _unit(left["features"]) @ _unit(right["features"]).T
        left_ids, right_ids = left["id"].to_numpy(), right["id"].to_numpy()
        scores[left_ids[:, None] == right_ids[None, :]] = -np.inf  # an artist is not its own relative
        k = min(n, len(right_ids))
        best = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < len(right_ids)
            else np.tile(np.arange(len(right_ids)), (len(left_ids), 1))
        )
        picked = np.take_along_axis(scores, best, axis=1)
        keep = np.isfinite(picked)
        return pd.DataFrame(
            {
                "artist": np.repeat(left_ids, k)[keep.ravel()].astype(np.int32),
                "related_artist_id": right_ids[best][keep].astype(np.int32),
                "score": picked[keep].astype(np.float32),
            }
        )

    return top


def related_artists(factors: DataFrame, n_artists: int, n: int, block_artists: int) -> DataFrame:
    """``factors``: ALS ``itemFactors`` (``id int, features array<float>``) -> ``artist_id,
    rank (1 = closest), related_artist_id, score`` (cosine), N rows per artist with factors."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    blocks = max(1, math.ceil(n_artists / block_artists))
    block = F.col("id") % blocks
    left = factors.withColumn("pair", F.explode(F.array(*[block * blocks + r for r in range(blocks)])))
    right = factors.withColumn("pair", F.explode(F.array(*[F.lit(b * blocks) + block for b in range(blocks)])))
    candidates = left.groupBy("pair").cogroup(right.groupBy("pair")).applyInPandas(_block_top(n), schema=CANDIDATES)
    order = Window.partitionBy("artist").orderBy(F.desc("score"), "related_artist_id")
    return (
        candidates.withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= n)
        .select(F.col("artist").alias("artist_id"), F.col("rank").cast("short"), "related_artist_id", "score")
    )


def recall_on_sample(factors: DataFrame, related: DataFrame, n: int, sample: int = 200, seed: int = 0) -> float:
    """Recall@n of ``related`` against exact cosine search for ``sample`` seeded artists (an
    artist within ``TIE_EPSILON`` of the exact n-th best counts as found).

    The sample's vectors go to every task with the factors (broadcast); each task returns the
    sample's best n in its partition, and the driver merges those ``sample x n x partitions``
    candidates, so nothing of size n_artists is collected."""
    from pyspark.sql import functions as F

    chosen = cast(pd.DataFrame, factors.orderBy(F.xxhash64(F.lit(seed), "id")).limit(sample).toPandas())
    if chosen.empty:
        return 1.0
    queries, query_ids = _unit(chosen["features"]), chosen["id"].to_numpy()

    def partition_top(frames):
        for frame in frames:
            if frame.empty:
                continue
            scores = queries @ _unit(frame["features"]).T
            ids = frame["id"].to_numpy()
            scores[query_ids[:, None] == ids[None, :]] = -np.inf
            k = min(n, len(ids))
            best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            yield pd.DataFrame(
                {
                    "artist": np.repeat(query_ids, k).astype(np.int32),
                    "related_artist_id": ids[best].ravel().astype(np.int32),
                    "score": np.take_along_axis(scores, best, axis=1).ravel().astype(np.float32),
                }
            )

    exact = cast(pd.DataFrame, factors.mapInPandas(partition_top, schema=CANDIDATES).toPandas())
    exact = exact[np.isfinite(exact["score"])].sort_values(["artist", "score"], ascending=[True, False])
    truth = exact.groupby("artist").head(n)
    # ties: an artist counts as found when its cosine reaches the exact n-th best (ann-benchmarks'
    # epsilon rule), so equally close artists (e.g. of one shared listener) are interchangeable
    kth = truth.groupby("artist")["score"].min().rename("kth")
    found = cast(pd.DataFrame, related.where(F.col("artist_id").isin([int(i) for i in query_ids])).toPandas())
    found = found.merge(kth, left_on="artist_id", right_index=True)
    hits = found.loc[found["score"] >= found["kth"] - TIE_EPSILON].groupby("artist_id").size()
    wanted = truth.groupby("artist").size()
    return (
        float(np.minimum(hits.reindex(wanted.index, fill_value=0), wanted).sum() / wanted.sum()) if len(truth) else 1.0
    )
