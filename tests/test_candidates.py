"""The two-stage blend (tasks.candidates) against the dense blend it replaces, on HetRec 2K."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from flows.config import RetrainConfig
from tasks.candidates import blend_top_n, standardised, two_stage_parts
from tasks.contracts import Factors
from tasks.index import IndexConfig, build_index
from tasks.models.blend import BlendConfig, BlendPart, standardise
from tasks.models.ease import EASEConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.registry import fit
from tasks.models.rp3beta import RP3betaConfig
from tasks.recommend import certified_top_n, user_top_n
from tasks.topn import recall_at_n
from tasks.weight import weight


@pytest.fixture(scope="module")
def shipped_blend(hetrec_encoded):
    """The shipped user model fitted on every HetRec pair (its own weighting, as the flow fits
    it), and the play matrix."""
    plays = hetrec_encoded.plays
    model = RetrainConfig().user_model
    return fit(weight(plays, model.weight), model), plays


def _dense(blend, plays, users):
    """The dense blend's lists: every artist scored, heard ones masked (tasks.recommend's dense path)."""
    scores = blend.score(users, plays[users])
    seen = plays[users]
    scores[np.repeat(np.arange(len(users)), np.diff(seen.indptr)), seen.indices] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    return order, np.take_along_axis(scores, order, axis=1)


def test_statistics_without_dense_scores_match_standardise(shipped_blend):
    """Per part, the two-stage path's z-scores (its mean and deviation over unheard artists, its
    scores at asked artists) equal those of the dense row that standardise uses, at each user's
    best artists and at random ones, heard or not."""
    blend, plays = shipped_blend
    users = np.arange(0, plays.shape[0], 7)
    seen = plays[users]
    rng = np.random.default_rng(0)
    for part in two_stage_parts(blend):
        # the dense path computes in float32; RP3beta z-scores reach ~40, where that keeps ~1e-4 of them
        dense = standardise(np.asarray(part.scorer.score(users, seen), dtype=np.float64), seen)
        best = np.argsort(-dense, axis=1)[:, :25]
        codes = np.hstack([best, rng.integers(0, plays.shape[1], size=(len(users), 25))])
        z = standardised(part, users, seen)(codes)
        assert np.allclose(z, np.take_along_axis(dense, codes, axis=1), atol=1e-4)


def test_two_stage_lists_are_the_dense_blends(shipped_blend):
    blend, plays = shipped_blend
    users = np.arange(plays.shape[0])
    ranked = blend_top_n(two_stage_parts(blend), plays, 10, users)
    share = ranked.certified.mean()
    print(f"certified {share:.4f} of {len(users)} users")
    assert share > 0.9
    ids, scores = _dense(blend, plays, users)
    good = ranked.certified
    # the dense blend computes in float32; with RP3beta in the mix its scores differ from these
    # (whose statistics match float64 ones to 1e-7) by up to ~3e-4 of their value
    assert np.allclose(ranked.top.scores[good], scores[good], atol=1e-4)
    # identical lists up to the order of equal scores
    same = (ranked.top.ids[good] == ids[good]) | np.isclose(ranked.top.scores[good], scores[good], atol=1e-5)
    assert same.all()
    # user_top_n ranks every blend this way, scoring the uncertified users densely
    full = user_top_n(blend, plays, 10)
    assert np.allclose(full.scores, scores, atol=1e-4)
    # each part's share of a listed artist is its term of the score (NaN on padding); the users
    # ranked densely have none
    listed = ranked.top.ids >= 0
    assert np.allclose(ranked.shares.sum(axis=0)[listed], ranked.top.scores[listed], atol=1e-5)
    assert np.isnan(ranked.shares[:, ~listed]).all()
    certified = certified_top_n(blend, two_stage_parts(blend), plays, 10, users)
    np.testing.assert_array_equal(certified.top.ids, full.ids)
    assert np.isnan(certified.shares[:, ~good]).all()
    np.testing.assert_array_equal(certified.shares[:, good], ranked.shares[:, good])


def test_two_stage_through_an_index_keeps_recall(shipped_blend, tmp_path):
    blend, plays = shipped_blend
    parts = two_stage_parts(blend)
    factor = next(p.scorer for p in parts if isinstance(p.scorer, Factors))
    index = build_index(factor.artist_factors, IndexConfig(engine="faiss"), tmp_path / "u.faiss", inner_product=True)
    users = np.arange(plays.shape[0])
    ranked = blend_top_n(parts, plays, 10, users, search=(factor, index.searcher()))
    exact = user_top_n(blend, plays, 10)
    assert recall_at_n(ranked.top, exact, users) >= 0.98


def test_rp3beta_blends_go_two_stage_and_ease_blends_densely(shipped_blend):
    _, plays = shipped_blend
    small = sp.csr_matrix(plays[:400])
    rp3 = fit(
        small,
        BlendConfig(parts=[BlendPart(model=ALSConfig(), weight=0.5), BlendPart(model=RP3betaConfig(), weight=0.5)]),
    )
    assert two_stage_parts(rp3) is not None
    users = np.arange(small.shape[0])
    ranked = blend_top_n(two_stage_parts(rp3), small, 10, users)
    _, scores = _dense(rp3, small, users)
    # RP3beta's standardised scores reach ~30, where the dense path's float32 arithmetic keeps ~1e-4 of them
    assert np.allclose(ranked.top.scores[ranked.certified], scores[ranked.certified], rtol=1e-3)
    ease = BlendConfig(
        parts=[BlendPart(model=ALSConfig(), weight=0.5), BlendPart(model=EASEConfig(max_artists=500), weight=0.5)]
    )
    assert two_stage_parts(fit(small, ease)) is None
