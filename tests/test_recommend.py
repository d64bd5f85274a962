"""tasks.recommend on small matrices, checked against brute force written out with NumPy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.contracts import Factors, TopN
from tasks.errors import RecsError
from tasks.index import IndexConfig, build_index, normalise
from tasks.recommend import (
    related_approx,
    related_exact,
    top_n,
    user_top_n,
    user_top_n_approx,
)
from tasks.topn import recall_at_n

RNG = np.random.default_rng(0)
ARTISTS = RNG.normal(size=(400, 12)).astype(np.float32)
USERS = RNG.normal(size=(150, 12)).astype(np.float32)
HEARD = sp.random(150, 400, density=0.05, format="csr", dtype=np.float32, random_state=1)
MODEL = Factors(name="test", params={}, user_factors=USERS, artist_factors=ARTISTS, fit_seconds=0.0)


def test_top_n_orders_masks_and_pads():
    scores = np.array([[0.1, 0.9, -np.inf, 0.5], [-np.inf, -np.inf, 0.2, -np.inf]], dtype=np.float32)
    out = top_n(scores, 3)
    assert out.ids.tolist() == [[1, 3, 0], [2, -1, -1]]
    np.testing.assert_allclose(out.scores[0], [0.9, 0.5, 0.1])
    assert np.isnan(out.scores[1, 1:]).all()
    wide = top_n(scores, 6)  # more than there are columns
    assert wide.ids.shape == (2, 6) and wide.ids[0].tolist() == [1, 3, 0, -1, -1, -1]


def test_related_exact_is_cosine_without_self():
    unit = normalise(ARTISTS)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    expected = np.argsort(-cosine, axis=1)[:, :10]
    out = related_exact(ARTISTS, 10)
    assert out.ids.dtype == np.int32 and out.scores.dtype == np.float32 and out.ids.shape == (400, 10)
    np.testing.assert_array_equal(out.ids, expected)
    np.testing.assert_allclose(out.scores, np.take_along_axis(cosine, expected, axis=1), rtol=1e-5)
    rows = np.array([399, 5, 17])
    small_batches = related_exact(ARTISTS, 10, rows=rows, batch_size=2)
    np.testing.assert_array_equal(small_batches.ids, expected[rows])


# each engine searched exhaustively: every tree node (Annoy) or every list (faiss)
EXHAUSTIVE = {
    "annoy": IndexConfig(engine="annoy", n_trees=20, search_k=10**6),
    "faiss": IndexConfig(engine="faiss", n_lists=8, n_probe=8, n_probe_users=8),
}


@pytest.mark.parametrize("engine", EXHAUSTIVE)
def test_related_approx_matches_exact_when_search_is_exhaustive(tmp_path, engine):
    info = build_index(ARTISTS, EXHAUSTIVE[engine], tmp_path / "a.idx")
    approx = related_approx(info, ARTISTS, 10, batch_size=64)
    exact = related_exact(ARTISTS, 10)
    assert (approx.ids != np.arange(400)[:, None]).all()  # self excluded
    unit = normalise(ARTISTS)  # scores are the exact cosines of the ids found
    np.testing.assert_allclose(approx.scores, np.einsum("if,ikf->ik", unit, unit[approx.ids]), rtol=1e-5)
    # faiss stores float16 rows, so near-ties (within ~1e-3) can swap; Annoy searched exhaustively is exact
    np.testing.assert_allclose(approx.scores, exact.scores, atol=1e-3 if engine == "faiss" else 1e-5)
    assert recall_at_n(approx, exact, np.arange(400)) == 1.0
    if engine == "annoy":
        np.testing.assert_array_equal(approx.ids, exact.ids)


@pytest.mark.parametrize("engine", EXHAUSTIVE)
def test_related_approx_pads_small_catalogues(tmp_path, engine):
    info = build_index(ARTISTS[:4], EXHAUSTIVE[engine], tmp_path / "tiny.idx")
    out = related_approx(info, ARTISTS[:4], 5)
    assert out.ids.shape == (4, 5)
    assert (out.ids[:, 3:] == -1).all() and np.isnan(out.scores[:, 3:]).all()
    assert all(sorted(row[:3]) == sorted(set(range(4)) - {i}) for i, row in enumerate(out.ids.tolist()))


def test_recall_at_n_counts_hits_and_ties():
    exact = TopN(
        ids=np.array([[1, 2, 3], [4, 5, -1]], np.int32),
        scores=np.array([[0.9, 0.8, 0.7], [0.6, 0.5, np.nan]], np.float32),
    )
    rows = np.array([0, 2])
    approx = TopN(ids=np.full((3, 3), -1, np.int32), scores=np.full((3, 3), np.nan, np.float32))
    assert recall_at_n(approx, exact, rows) == 0.0
    approx.ids[0], approx.scores[0] = [1, 9, 3], [0.9, 0.7, 0.7]  # 9 ties with the exact 3rd: a hit
    approx.ids[2], approx.scores[2] = [4, 7, 8], [0.6, 0.1, 0.05]
    assert recall_at_n(approx, exact, rows) == pytest.approx(4 / 5)
    with pytest.raises(RecsError, match="rows"):
        recall_at_n(approx, exact, np.array([0]))


def _brute_user_top_n(scores: np.ndarray, heard: sp.csr_matrix, n: int) -> np.ndarray:
    scores = scores.copy()
    scores[heard.toarray() != 0] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :n]


def test_user_top_n_excludes_heard_and_matches_brute_force():
    out = user_top_n(MODEL, HEARD, 10, batch_size=32)
    np.testing.assert_array_equal(out.ids, _brute_user_top_n(USERS @ ARTISTS.T, HEARD, 10))
    assert not HEARD[np.repeat(np.arange(150), 10), out.ids.ravel()].any()
    users = np.array([149, 0, 70])
    np.testing.assert_array_equal(user_top_n(MODEL, HEARD, 10, users=users).ids, out.ids[users])


@dataclass
class _CoListened:
    """A history-based Scorer (not factors): scores are co-listening counts with heard artists."""

    name = "co-listened"
    co: np.ndarray

    def score(self, users, heard):
        return np.asarray(heard @ self.co, dtype=np.float32)


def test_user_top_n_works_for_any_scorer():
    binary = (HEARD != 0).astype(np.float32)
    scorer = _CoListened(co=(binary.T @ binary).toarray())
    out = user_top_n(scorer, binary, 5, batch_size=16)
    expected = _brute_user_top_n(np.asarray(binary @ scorer.co), HEARD, 5)
    # ties are broken differently by argpartition and a stable sort; compare the scores instead
    got = np.take_along_axis(np.asarray(binary @ scorer.co), out.ids.astype(np.int64), axis=1)
    want = np.take_along_axis(np.asarray(binary @ scorer.co), expected, axis=1)
    np.testing.assert_allclose(got, want)
    assert not HEARD[np.repeat(np.arange(150), 5), out.ids.ravel()].any()


def test_user_top_n_pads_users_who_heard_nearly_everything():
    heard = sp.csr_matrix(np.r_[[np.ones(400)], np.zeros((149, 400))].astype(np.float32))
    heard[0, 7] = 0
    heard.eliminate_zeros()
    out = user_top_n(MODEL, heard, 3)
    assert out.ids[0].tolist() == [7, -1, -1] and np.isnan(out.scores[0, 1:]).all()


@pytest.mark.parametrize("engine", EXHAUSTIVE)
def test_user_top_n_approx_against_exact(tmp_path, engine):
    info = build_index(ARTISTS, EXHAUSTIVE[engine], tmp_path / "ip.idx", inner_product=True)
    exact = user_top_n(MODEL, HEARD, 10)
    approx = user_top_n_approx(info, USERS, ARTISTS, HEARD, 10, batch_size=40)
    np.testing.assert_array_equal(approx.ids, exact.ids)
    np.testing.assert_allclose(approx.scores, exact.scores, rtol=1e-5)
    users = np.array([149, 0, 70])  # rows follow the users asked for, whatever the batching
    np.testing.assert_array_equal(user_top_n_approx(info, USERS, ARTISTS, HEARD, 10, users=users).ids, exact.ids[users])


@pytest.mark.parametrize("engine", ["annoy", "faiss"])
def test_user_top_n_approx_default_search_never_recommends_heard(tmp_path, engine):
    info = build_index(
        ARTISTS,
        IndexConfig(engine=engine, n_trees=20, n_lists=16, n_probe_users=4),
        tmp_path / "ip.idx",
        inner_product=True,
    )
    exact = user_top_n(MODEL, HEARD, 10)
    approx = user_top_n_approx(info, USERS, ARTISTS, HEARD, 10)
    assert not HEARD[np.repeat(np.arange(150), 10), np.maximum(approx.ids.ravel(), 0)].any()
    assert 0.5 < recall_at_n(approx, exact, np.arange(150)) <= 1.0
