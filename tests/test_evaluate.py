"""Evaluation metrics: hand-made cases with known answers, baselines, RMSE, and agreement with
``implicit.evaluation`` on the real HetRec 2K matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.contracts import Factors, Metric, Split
from tasks.errors import RecsError
from tasks.evaluate import (
    Popularity,
    RandomScorer,
    coverage_and_novelty,
    evaluate,
    pair_scores,
    ranking_at_k,
    report,
    rmse_binary,
    unheard_pairs,
)
from tasks.recommend import top_n
from tasks.split import per_user_holdout


def _csr(rows: list[list[int]], n_artists: int) -> sp.csr_matrix:
    r = [u for u, cols in enumerate(rows) for _ in cols]
    c = [a for cols in rows for a in cols]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(rows), n_artists))


def test_ranking_metrics_on_a_hand_made_case():
    # user 0: 3 test artists, hits at ranks 1 and 3; user 1: 1 test artist (< K), hit at rank 2,
    # list padded; user 2: no test artists, so not counted at all.
    test = _csr([[1, 2, 3], [9], []], 10)
    ids = np.array([[1, 5, 2, 7], [0, 9, -1, -1], [4, 5, 6, 7]])
    got = ranking_at_k(ids, test, k=4)

    log2 = math.log2
    ndcg0 = (1 + 1 / log2(4)) / (1 + 1 / log2(3) + 1 / log2(4))
    ndcg1 = (1 / log2(3)) / 1
    assert got["precision"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert got["recall"] == pytest.approx((2 / 3 + 1 / 1) / 2)
    assert got["ndcg"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert got["map"] == pytest.approx(((1 / 1 + 2 / 3) / 3 + (1 / 2) / 1) / 2)
    assert got["implicit_precision"] == pytest.approx(3 / (3 + 1))  # pooled over min(K, |test|)


def test_cut_off_k_below_the_list_length_uses_only_the_first_k():
    test = _csr([[1, 2]], 10)
    ids = np.array([[5, 1, 2]])
    at1, at3 = ranking_at_k(ids, test, 1), ranking_at_k(ids, test, 3)
    assert at1 == {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0, "implicit_precision": 0.0}
    assert at3["precision"] == pytest.approx(2 / 3) and at3["recall"] == 1.0
    assert at3["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_perfect_and_empty_cases():
    test = _csr([[3, 4], [0]], 6)
    perfect = ranking_at_k(np.array([[4, 3, 0], [0, 1, 2]]), test, 3)
    assert perfect["recall"] == perfect["ndcg"] == perfect["map"] == perfect["implicit_precision"] == 1.0
    assert perfect["precision"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    no_test = ranking_at_k(np.array([[0, 1], [1, 2]]), _csr([[], []], 6), 2)
    assert set(no_test.values()) == {0.0}
    nothing_recommended = ranking_at_k(np.full((2, 3), -1), test, 3)
    assert set(nothing_recommended.values()) == {0.0}


def test_lists_shorter_than_k_or_mismatched_are_errors():
    with pytest.raises(RecsError, match="fewer than K"):
        ranking_at_k(np.array([[1, 2]]), _csr([[1]], 4), 3)
    with pytest.raises(RecsError, match="test users"):
        ranking_at_k(np.array([[1, 2]]), _csr([[1], [2]], 4), 2)


def test_coverage_and_novelty_by_hand():
    # listeners in train: artist 0: 3, artist 1: 1, artist 2: 0, artist 3: 2 -> 6 pairs, 3 in catalogue
    train = _csr([[0, 1, 3], [0, 3], [0]], 4)
    ids = np.array([[1, 2], [1, -1]])
    got = coverage_and_novelty(ids, train, k=2)
    assert got["coverage"] == pytest.approx(1 / 3)  # only artist 1 (artist 2 has no listeners)
    # recommended: 1, 2, 1 -> novelty of artist 1 is -log2(1/6); artist 2 counts 0, as in MS
    assert got["novelty"] == pytest.approx((2 * -math.log2(1 / 6) + 0) / 3)


def _tiny_split() -> Split:
    train = _csr([[0, 1], [0, 2], [0], [1, 2, 3]], 6)
    test = _csr([[4], [1, 5], [], [0]], 6)
    return Split(train=train, test=test, rule="hand", seed=0)


def test_popularity_baseline_recommends_most_listened_unheard():
    split = _tiny_split()
    pop = Popularity(split.train)
    # listeners: a0 3, a1 2, a2 2, a3 1, a4 0, a5 0
    metrics = {(m.metric, m.k): m.value for m in evaluate(pop, split, ks=[1])}
    # user 0 (heard 0,1) gets a2 (miss); user 1 (heard 0,2) gets a1 (hit); user 3 gets a0 (hit)
    assert metrics[("precision", 1)] == pytest.approx(2 / 3)
    assert ("rmse_binary", None) not in metrics  # baselines make no estimates


def test_random_baseline_repeats_for_a_seed():
    users = np.arange(3)
    a, b, c = RandomScorer(6, seed=1), RandomScorer(6, seed=1), RandomScorer(6, seed=2)
    first = a.score(users, None)
    assert first.shape == (3, 6) and first.dtype == np.float32
    assert np.array_equal(first, b.score(users, None))
    assert not np.array_equal(first, c.score(users, None))


def _heard(seed: int = 0) -> sp.csr_matrix:
    """200 users x 500 artists, a few users with long histories; user 0 heard all but 3."""
    rng = np.random.default_rng(seed)
    dense = rng.random((200, 500)) < rng.choice([0.01, 0.05, 0.4], size=(200, 1), p=[0.6, 0.3, 0.1])
    dense[0] = True
    dense[0, [7, 70, 170]] = False
    return sp.csr_matrix(dense.astype(np.float32))


def test_popularity_top_n_matches_ranking_every_artist():
    heard = _heard()
    pop = Popularity(sp.random(300, 500, density=0.05, format="csr", dtype=np.float32, random_state=3))
    users = np.arange(200)
    fast = pop.top_n(users, heard, 10)
    scores = pop.score(users, heard)
    scores[heard.nonzero()] = -np.inf
    slow = top_n(scores, 10)
    np.testing.assert_array_equal(fast.scores, slow.scores)  # ties may order differently; scores may not
    assert (fast.ids[0, :3] >= 0).all() and (fast.ids[0, 3:] == -1).all()


def test_random_top_n_draws_distinct_unheard_artists_repeatably():
    heard = _heard()
    users = np.arange(200)
    out = RandomScorer(500, seed=5).top_n(users, heard, 10)
    assert sorted(out.ids[0, :3]) == [7, 70, 170] and (out.ids[0, 3:] == -1).all()  # fallback path
    full = out.ids[1:]
    assert (full >= 0).all()
    assert all(len(set(row)) == 10 for row in full.tolist())
    assert not heard[np.repeat(np.arange(1, 200), 10), full.ravel()].any()
    assert (np.diff(out.scores[1:], axis=1) <= 0).all()  # scores follow the list order
    np.testing.assert_array_equal(out.ids, RandomScorer(500, seed=5).top_n(users, heard, 10).ids)
    # uniform: over many users every unheard artist turns up about equally often
    draws = RandomScorer(500, seed=6).top_n(np.zeros(20_000, int), sp.csr_matrix((20_000, 500), dtype=np.float32), 10)
    counts = np.bincount(draws.ids.ravel(), minlength=500)
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()


def test_unheard_pairs_are_new_and_as_many_as_test_per_user():
    split = per_user_holdout(_csr([list(range(u % 7, 40, 3)) for u in range(50)], 60), seed=2)
    neg = unheard_pairs(split, seed=4)
    assert np.array_equal(np.diff(neg.indptr), np.diff(split.test.indptr))
    assert neg.multiply(split.train).nnz == 0 and neg.multiply(split.test).nnz == 0


class _Constant:
    name = "constant"

    def __init__(self, n_artists: int, value: float):
        self.n_artists, self.value = n_artists, value

    def score(self, users, heard):
        return np.full((len(users), self.n_artists), self.value, dtype=np.float32)


def test_rmse_binary_is_against_ones_on_test_and_zeros_on_sampled_pairs():
    split = _tiny_split()
    assert rmse_binary(_Constant(6, 1.0), split) == pytest.approx(math.sqrt(0.5))
    assert rmse_binary(_Constant(6, 0.5), split) == pytest.approx(0.5)


def test_rmse_log_plays_is_against_the_given_target():
    split = _tiny_split()
    target = split.test.copy()
    target.data = np.log1p(np.arange(1, target.nnz + 1, dtype=np.float32))
    zero = Factors("explicit", {}, np.zeros((4, 2), np.float32), np.zeros((6, 2), np.float32), 0.0)
    got = {m.metric: m.value for m in evaluate(zero, split, ks=[1], rmse_target=target)}
    assert "rmse_binary" not in got
    assert got["rmse_log_plays"] == pytest.approx(np.sqrt(np.mean(target.data.astype(np.float64) ** 2)))


class _RowsOnly:
    """The same scores as a Factors, but only as whole rows (the path for non-factor scorers)."""

    name = "rows"

    def __init__(self, factors):
        self.factors = factors

    def score(self, users, heard):
        return self.factors.score(users, heard)


def test_pair_scores_reads_each_pair_in_csr_order():
    factors = Factors("f", {}, np.arange(8, dtype=np.float32).reshape(4, 2), np.eye(6, 2, dtype=np.float32) * 2, 0.0)
    split = _tiny_split()
    dense = factors.user_factors @ factors.artist_factors.T
    rows = np.repeat(np.arange(4), np.diff(split.test.indptr))
    expected = dense[rows, split.test.indices]
    assert np.allclose(pair_scores(factors, split.train, split.test), expected)
    assert np.allclose(pair_scores(_RowsOnly(factors), split.train, split.test, batch_size=1), expected)


def test_report_has_model_and_both_baselines_at_every_k():
    split = _tiny_split()
    zero = Factors("constant", {}, np.zeros((4, 2), np.float32), np.zeros((6, 2), np.float32), 0.0)
    metrics = report(zero, split, ks=[1, 2])
    assert all(isinstance(m, Metric) for m in metrics)
    names = {(m.model, m.metric, m.k) for m in metrics}
    for model in ("constant", "popularity", "random"):
        for k in (1, 2):
            for metric in ("precision", "recall", "ndcg", "map", "implicit_precision", "coverage", "novelty"):
                assert (model, metric, k) in names
    assert ("constant", "rmse_binary", None) in names
    assert not any(m.metric.startswith("rmse") for m in metrics if m.model != "constant")
    assert not any(m.metric.startswith("rmse") for m in evaluate(_Constant(6, 0.0), split))  # not a Factors
    with pytest.raises(RecsError, match="K >= 1"):
        evaluate(_Constant(6, 0.0), split, ks=[0])


@pytest.fixture(scope="module")
def hetrec_als(hetrec_encoded):
    """implicit ALS (defaults) on log1p plays of a per-user 20 % holdout of HetRec 2K."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    split = per_user_holdout(hetrec_encoded.plays, 0.2, 5, seed=0)
    weighted = split.train.copy()
    weighted.data = np.log1p(weighted.data)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(random_state=0)
        model.fit(weighted, show_progress=False)
    factors = Factors("als", {}, model.user_factors, model.item_factors, 0.0)
    return model, factors, split


def test_agrees_with_implicit_evaluation_where_definitions_coincide(hetrec_als):
    from implicit.evaluation import ranking_metrics_at_k

    model, factors, split = hetrec_als
    ours = {m.metric: m.value for m in evaluate(factors, split, ks=[10]) if m.k == 10}
    theirs = ranking_metrics_at_k(model, split.train, split.test, K=10, show_progress=False)
    assert ours["implicit_precision"] == pytest.approx(theirs["precision"], abs=1e-4)
    assert ours["ndcg"] == pytest.approx(theirs["ndcg"], abs=1e-4)
    assert ours["map"] == pytest.approx(theirs["map"], abs=1e-4)
    # per-user precision@K can only be lower: it divides by K where implicit divides by min(K, |test|)
    assert ours["precision"] < ours["implicit_precision"]


def test_real_model_beats_both_baselines_on_hetrec(hetrec_als):
    _, factors, split = hetrec_als
    metrics = {(m.model, m.metric): m.value for m in report(factors, split, ks=[10]) if m.k in (10, None)}
    assert metrics[("als", "precision")] > 2 * metrics[("popularity", "precision")]
    assert metrics[("popularity", "precision")] > 5 * metrics[("random", "precision")]
    assert metrics[("popularity", "coverage")] < metrics[("als", "coverage")] < metrics[("random", "coverage")]
    assert metrics[("als", "novelty")] > metrics[("popularity", "novelty")]
    assert 0 < metrics[("als", "rmse_binary")] < 1


def test_sampled_users_estimate_the_full_evaluation_within_its_standard_error(hetrec_als):
    _, factors, split = hetrec_als
    full = {m.metric: m.value for m in evaluate(factors, split, ks=[10]) if m.k == 10}
    users_with_test = int((np.diff(split.test.indptr) > 0).sum())
    n = 600
    assert users_with_test > 2 * n  # the sample is a real subset
    estimates = [
        {m.metric: m.value for m in evaluate(factors, split, ks=[10], seed=seed, max_users=n) if m.k == 10}
        for seed in (1, 2)
    ]
    assert estimates[0] != estimates[1]  # different seeds, different users
    for sampled in estimates:
        for metric in ("precision", "ndcg", "recall"):
            assert abs(sampled[metric] - full[metric]) < 3 * 0.5 / np.sqrt(n)
    # a sample as large as the population is the full evaluation
    assert {
        m.metric: m.value for m in evaluate(factors, split, ks=[10], max_users=users_with_test) if m.k == 10
    } == full
