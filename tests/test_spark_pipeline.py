"""The Spark stages on the real HetRec 2K data, against the single-machine path on the same split:
the weights, the related artists against exact search, heard artists excluded, and precision@10
of Spark ALS within 5 % of implicit's ALS, both beside popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tasks.contracts import Metric, Split
from tasks.evaluate import report
from tasks.models.base import fit
from tasks.models.implicit_mf import ALSConfig
from tasks.spark.als import fit_frame
from tasks.spark.config import SparkConfig
from tasks.spark.encode import encode
from tasks.spark.evaluate import ranked_users, ranking_metrics
from tasks.spark.parse import parse
from tasks.spark.related import recall_on_sample, related_artists
from tasks.spark.split import per_user_holdout
from tasks.spark.topn import model_top_n, popularity_top_n
from tasks.spark.weight import weight
from tasks.weight import weight as local_weight

pytestmark = pytest.mark.slow
SPARK_MODEL = SparkConfig().model  # the shipped Spark model: 64 factors, 10 iterations, BM25


def _csr(frame, column: str, shape: tuple[int, int]) -> sp.csr_matrix:
    pairs = frame.toPandas()
    return sp.csr_matrix(
        (pairs[column].to_numpy(np.float32), (pairs["user"].to_numpy(), pairs["artist"].to_numpy())),
        shape=shape,
        dtype=np.float32,
    )


def _value(metrics: list[Metric], model: str, metric: str = "precision") -> float:
    return next(m.value for m in metrics if m.model == model and m.metric == metric and m.k == 10)


@pytest.fixture(scope="module")
def hetrec(spark, hetrec_dir):
    encoded = encode(parse(spark, hetrec_dir, "lastfm-2k").frame)
    split = per_user_holdout(encoded.plays, 0.2, 5, seed=0)
    shape = (encoded.n_users, encoded.n_artists)
    return encoded, split, _csr(split.train, "plays", shape), _csr(split.test, "plays", shape)


@pytest.fixture(scope="module")
def fitted(hetrec):
    """Spark ALS fitted on the holdout's train part (shared by the tests below)."""
    encoded, split, _, _ = hetrec
    return fit_frame(weight(split.train, encoded.n_artists, SPARK_MODEL.weight), SPARK_MODEL)[0]


def test_split_rule_and_weights_match_the_single_machine_path(hetrec):
    encoded, split, train, test = hetrec
    assert (encoded.n_users, encoded.n_artists, encoded.n_pairs) == (1892, 17632, 92834)
    assert train.nnz + test.nnz == encoded.n_pairs and train.multiply(test).nnz == 0
    counts = np.diff((train + test).indptr)
    expected = np.where(counts >= 5, np.clip(np.rint(0.2 * counts), 1, np.maximum(counts - 1, 1)), 0)
    assert np.array_equal(np.diff(test.indptr), expected)
    for scheme in (SPARK_MODEL.weight, SPARK_MODEL.weight.model_copy(update={"scheme": "log"})):
        got = _csr(weight(split.train, encoded.n_artists, scheme), "confidence", train.shape)
        want = local_weight(train, scheme)
        assert got.nnz == want.nnz
        np.testing.assert_allclose(got.toarray()[want.nonzero()], want.data, rtol=2e-5)


def test_spark_precision_within_5_percent_of_implicit_beside_popularity(hetrec, fitted):
    encoded, split, train, test = hetrec
    model = fitted
    users = ranked_users(split.test, None, seed=0)
    spark_metrics = ranking_metrics("spark_als", model_top_n(model, split.train, 10, users), split.test, users, [10])
    spark_metrics += ranking_metrics("popularity", popularity_top_n(split.train, users, 10), split.test, users, [10])
    implicit = ALSConfig(**SPARK_MODEL.model_dump(exclude={"name"}))
    local = report(fit(local_weight(train, implicit.weight), implicit), Split(train, test, split.rule, 0), (10,))
    spark_p10, implicit_p10 = _value(spark_metrics, "spark_als"), _value(local, "als")
    popularity_spark, popularity_local = _value(spark_metrics, "popularity"), _value(local, "popularity")
    print(
        f"\nHetRec 2K precision@10 (same split): spark {spark_p10:.4f}  implicit {implicit_p10:.4f}  "
        f"popularity spark {popularity_spark:.4f} / local {popularity_local:.4f}"
    )
    assert abs(spark_p10 - implicit_p10) <= 0.05 * implicit_p10
    assert spark_p10 > 1.5 * popularity_spark
    # the same baseline by two implementations (ties between equally popular artists may differ)
    assert popularity_spark == pytest.approx(popularity_local, rel=0.02)
    for metric in ("ndcg", "map"):
        assert _value(spark_metrics, "spark_als", metric) > _value(spark_metrics, "popularity", metric)


def test_related_artists_are_exact_and_top_n_excludes_heard(hetrec, fitted):
    encoded, _, _, _ = hetrec
    model = fitted
    factors = model.itemFactors
    # artists only in test pairs have no factors; the rest get 10 related artists each
    related = related_artists(factors, encoded.n_artists, 10, block_artists=5_000).cache()  # 4 x 4 blocks
    assert recall_on_sample(factors, related, 10, sample=100) == 1.0
    rows = related.toPandas()
    assert (rows["artist_id"] != rows["related_artist_id"]).all()
    assert rows.groupby("artist_id")["rank"].agg(list).map(lambda r: r == list(range(1, 11))).all()
    # cosine of the factors, checked for some artists from the collected factors
    vectors = factors.toPandas().set_index("id")["features"].map(np.asarray)
    sample = rows[rows["artist_id"].isin(rows["artist_id"].unique()[:20])]
    a, b = np.stack(vectors[sample["artist_id"]]), np.stack(vectors[sample["related_artist_id"]])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(sample["score"], cosine, rtol=1e-4, atol=1e-5)
    top = model_top_n(model, encoded.plays, 10).cache()
    assert top.count() == 10 * encoded.n_users
    heard = top.join(encoded.plays, (top.user_id == encoded.plays.user) & (top.artist_id == encoded.plays.artist))
    assert heard.count() == 0
    ranks = pd.Series(top.select("rank").toPandas()["rank"]).value_counts()
    assert set(ranks.index) == set(range(1, 11))


def test_model_top_n_is_the_exact_unheard_top_n(hetrec, fitted):
    """Every user's list against dense numpy scores of the collected factors, heard artists
    (train and test) masked: the same scores rank by rank (ties may swap equal artists), each
    score is that pair's ``user @ artist``, and no artist is heard."""
    encoded, _, _, _ = hetrec
    users = fitted.userFactors.toPandas().sort_values("id")
    artists = fitted.itemFactors.toPandas().sort_values("id")
    u, a = np.stack(users["features"]).astype(np.float32), np.stack(artists["features"]).astype(np.float32)
    heard = _csr(encoded.plays, "plays", (encoded.n_users, encoded.n_artists))
    row = np.full(encoded.n_users, -1)
    row[users["id"].to_numpy()] = np.arange(len(users))
    col = np.full(encoded.n_artists, -1)
    col[artists["id"].to_numpy()] = np.arange(len(artists))
    scores = u @ a.T
    mask = heard[users["id"].to_numpy()][:, artists["id"].to_numpy()].toarray() > 0
    scores[mask] = -np.inf
    want = -np.sort(-scores, axis=1)[:, :10]

    got = model_top_n(fitted, encoded.plays, 10).toPandas().sort_values(["user_id", "rank"])
    assert len(got) == 10 * len(users) and got.groupby("user_id")["rank"].agg(list).map(list(range(1, 11)).__eq__).all()
    r, c = row[got["user_id"].to_numpy()], col[got["artist_id"].to_numpy()]
    assert (c >= 0).all() and not mask[r, c].any()
    np.testing.assert_allclose(got["score"], (u[r] * a[c]).sum(1), rtol=1e-4, atol=1e-5)
    # both sorted by user id, so row i is the same user
    np.testing.assert_allclose(got["score"].to_numpy().reshape(-1, 10), want, rtol=1e-4, atol=1e-5)
