"""Holdout splits: partition, per-user sizes, repeatability, validation apart from test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.errors import RecsError
from tasks.split import evaluation_holdout, per_user_holdout, publish_refit, shares_fit, validation_split


@pytest.fixture(scope="module")
def plays() -> sp.csr_matrix:
    """300 users x 400 artists, 1 to 60 artists a user, positive float32 plays."""
    rng = np.random.default_rng(7)
    rows, cols = [], []
    for u, n in enumerate(rng.integers(1, 61, size=300)):
        rows.append(np.full(n, u))
        cols.append(rng.choice(400, size=n, replace=False))
    r, c = np.concatenate(rows), np.concatenate(cols)
    m = sp.csr_matrix((rng.integers(1, 1000, len(r)).astype(np.float32), (r, c)), shape=(300, 400))
    m.sort_indices()
    return m


def _assert_partition(split, plays):
    assert split.train.shape == split.test.shape == plays.shape
    assert split.train.dtype == split.test.dtype == plays.dtype
    assert split.train.has_sorted_indices and split.test.has_sorted_indices
    assert split.train.multiply(split.test).nnz == 0  # disjoint
    assert (split.train + split.test != plays).nnz == 0  # together: the input, values included


def test_per_user_holdout_takes_a_fifth_of_each_eligible_user(plays):
    split = per_user_holdout(plays, fraction=0.2, min_artists=5, seed=3)
    _assert_partition(split, plays)
    n = np.diff(plays.indptr)
    n_test = np.diff(split.test.indptr)
    eligible = n >= 5
    assert np.array_equal(n_test[~eligible], np.zeros((~eligible).sum()))
    expected = np.clip(np.rint(0.2 * n[eligible]), 1, None)
    assert np.array_equal(n_test[eligible], expected)
    assert np.all(np.diff(split.train.indptr)[eligible] >= 1)  # nobody loses all history
    assert split.rule == "per-user 0.2 min=5" and split.seed == 3


def test_per_user_holdout_repeats_by_seed_and_varies_across_seeds(plays):
    a = per_user_holdout(plays, seed=11)
    b = per_user_holdout(plays, seed=11)
    c = per_user_holdout(plays, seed=12)
    assert (a.test != b.test).nnz == 0
    assert (a.test != c.test).nnz > 0


def test_per_user_holdout_picks_artists_uniformly(plays):
    """Over many seeds every pair of an eligible user is held out about `fraction` of the time."""
    eligible_rows = np.repeat(np.diff(plays.indptr) >= 5, np.diff(plays.indptr))
    freq = np.zeros(plays.nnz)
    seeds = 200
    for s in range(seeds):
        t = per_user_holdout(plays, seed=s).test
        # the test CSR is a subset of the input's sorted layout: look each input pair up in it
        keys = np.repeat(np.arange(plays.shape[0]), np.diff(plays.indptr)) * plays.shape[1] + plays.indices
        tkeys = np.repeat(np.arange(t.shape[0]), np.diff(t.indptr)) * t.shape[1] + t.indices
        freq += np.isin(keys, tkeys)
    share = freq[eligible_rows].sum() / (seeds * eligible_rows.sum())
    assert share == pytest.approx(0.2, abs=0.02)
    assert freq[~eligible_rows].sum() == 0


def test_holding_out_some_users_holds_out_what_splitting_everyone_would(plays):
    """Only the rows that hold anything out are ranked, from keys drawn for every pair: a user's
    held-out artists are the same whichever other users are split."""
    everyone = per_user_holdout(plays, seed=5)
    users = np.array([0, 7, 42, 43, 299])
    some = per_user_holdout(plays, seed=5, users=users)
    _assert_partition(some, plays)
    assert np.array_equal(np.flatnonzero(np.diff(some.test.indptr)), users[np.diff(plays.indptr)[users] >= 5])
    sampled = np.isin(np.arange(plays.shape[0]), users).astype(np.float32)
    assert (some.test != sp.diags(sampled) @ everyone.test).nnz == 0


def test_validation_is_a_split_of_train_only(plays):
    outer = per_user_holdout(plays, seed=1)
    inner = validation_split(outer)
    _assert_partition(inner, outer.train)
    assert inner.test.multiply(outer.test).nnz == 0
    assert inner.train.multiply(outer.test).nnz == 0


def test_splits_of_the_real_matrix(hetrec_encoded):
    plays = hetrec_encoded.plays
    split = per_user_holdout(plays, 0.2, 5, seed=0)
    _assert_partition(split, plays)
    assert split.test.nnz == pytest.approx(0.2 * plays.nnz, rel=0.02)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: per_user_holdout(m, fraction=1.0), "fraction"),
        (lambda m: per_user_holdout(m, min_artists=1), "min_artists"),
        (lambda m: per_user_holdout(m.toarray()), "sparse"),
    ],
)
def test_bad_arguments_raise_one_line_errors(plays, call, message):
    with pytest.raises(RecsError, match=message) as info:
        call(plays)
    assert "\n" not in str(info.value)


def _many_users(n_users: int = 20_000, n_artists: int = 500, per_user: int = 10) -> sp.csr_matrix:
    rng = np.random.default_rng(3)
    cols = np.concatenate([rng.choice(n_artists, per_user, replace=False) for _ in range(n_users)])
    rows = np.repeat(np.arange(n_users), per_user)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_artists))


def test_evaluation_holdout_takes_only_the_evaluated_users_when_they_are_few():
    plays = _many_users()
    split = evaluation_holdout(plays, 0.2, 5, seed=0, max_users=1_000)
    _assert_partition(split, plays)
    held_users = np.flatnonzero(np.diff(split.test.indptr))
    assert len(held_users) == 1_000 and split.test.nnz == 2_000  # 2 of 10 artists each
    assert shares_fit(split) and not publish_refit(split)  # 1 % of the pairs: one fit serves both
    assert "of 1,000 sampled users" in split.rule
    # repeatable for a seed; another seed samples other users
    assert (evaluation_holdout(plays, 0.2, 5, seed=0, max_users=1_000).test != split.test).nnz == 0
    assert (evaluation_holdout(plays, 0.2, 5, seed=1, max_users=1_000).test != split.test).nnz > 0


def test_evaluation_holdout_of_every_user_means_a_refit():
    plays = _many_users()
    split = evaluation_holdout(plays, 0.2, 5, seed=0, max_users=None)
    assert (split.test != per_user_holdout(plays, 0.2, 5, seed=0).test).nnz == 0
    assert not shares_fit(split) and publish_refit(split)
    assert not publish_refit(split, "evaluated") and publish_refit(split, "refit")
    # a sample that holds more than 1 % of the pairs is not worth a shared fit either
    assert publish_refit(evaluation_holdout(plays, 0.2, 5, seed=0, max_users=5_000))
    with pytest.raises(RecsError, match="publish_fit"):
        publish_refit(split, "sometimes")
