"""tasks.models.cosine_blend on a small hand-made matrix: the blended cosine is the share-weighted
mean of the parts' cosines (computed here from the parts), the user score the weighted sum of the
parts' scores, parts follow the blend's seed, and invalid configurations are refused."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from tasks.contracts import Factors
from tasks.models import roles
from tasks.models.cosine_blend import CosineBlend, CosineBlendConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.lsa import LSAConfig
from tasks.models.registry import fit, model_config
from tasks.recommend import related_exact
from tasks.weight import WeightConfig, weight


def _plays(seed: int = 0) -> sp.csr_matrix:
    """60 users x 40 artists of play counts in two tastes (users 0-29 on artists 0-19, the rest on
    20-39), with a little listening across."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((60, 40), dtype=np.float32)
    for half in (0, 1):
        block = rng.random((30, 20)) < 0.4
        dense[half * 30 : (half + 1) * 30, half * 20 : (half + 1) * 20] = block * rng.integers(1, 200, (30, 20))
    dense[rng.random((60, 40)) < 0.03] = 1
    return sp.csr_matrix(dense)


def _config(shares=(3.0, 1.0)) -> CosineBlendConfig:
    return CosineBlendConfig(
        parts=[
            ALSConfig(factors=4, iterations=5, weight=WeightConfig(scheme="bm25", k1=10.0, b=1.0)),
            LSAConfig(factors=3, weight=WeightConfig(scheme="log")),
        ],
        shares=list(shares),
        random_state=7,
    )


def _cosines(f: np.ndarray) -> np.ndarray:
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    return unit @ unit.T


def test_blended_cosine_is_the_share_weighted_mean_of_the_parts():
    plays = _plays()
    cfg = _config()
    model = fit(weight(plays, cfg.weight), cfg)
    assert isinstance(model, CosineBlend) and isinstance(model, Factors)
    als, lsa = model.parts
    # each part is what fitting it alone on its own weighting gives, with the blend's seed
    for part, part_cfg in zip(model.parts, cfg.parts):
        alone = fit(weight(plays, part_cfg.weight), part_cfg)
        assert part_cfg.random_state == 7
        np.testing.assert_array_equal(part.artist_factors, alone.artist_factors)
    expected = 0.75 * _cosines(als.artist_factors) + 0.25 * _cosines(lsa.artist_factors)
    blended = model.similarity_factors
    assert blended.shape == (40, 7) and blended.dtype == np.float32
    np.testing.assert_allclose(blended @ blended.T, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(blended, axis=1), 1, atol=1e-5)
    # related_exact over the blend ranks by that mixed cosine
    listed = related_exact(blended, 5, np.arange(40))
    reference = np.where(np.eye(40, dtype=bool), -np.inf, expected)
    np.testing.assert_allclose(listed.scores, -np.sort(-reference, axis=1)[:, :5], atol=1e-5)
    # and a user's score is the share-weighted sum of the parts' scores
    users = np.array([0, 31, 59])
    np.testing.assert_allclose(
        model.score(users, plays[users]),
        0.75 * als.score(users, plays[users]) + 0.25 * lsa.score(users, plays[users]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_a_seed_gives_the_same_blend_and_other_shares_another():
    plays = _plays()
    a, b = fit(plays, _config()), fit(plays, _config())
    np.testing.assert_array_equal(a.similarity_factors, b.similarity_factors)
    c = fit(plays, _config(shares=(1.0, 1.0)))
    assert not np.allclose(a.similarity_factors, c.similarity_factors)


def test_the_blend_publishes_its_parts_beside_it():
    model = fit(_plays(), _config())
    assert set(roles.compared(model, model)) == {"als", "lsa"}
    other = fit(_plays(), ALSConfig(factors=3, iterations=2))
    assert set(roles.compared(model, other)) == {"als", "lsa", "als-users"}
    assert roles.compared(other, other) == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weight": {"scheme": "bm25"}}, "weight.scheme to none"),
        ({"shares": [1.0]}, "one non-negative share per part"),
        ({"shares": [0.0, 0.0]}, "one non-negative share per part"),
        ({"parts": [{"name": "als"}, {"name": "als", "factors": 8}], "shares": [1, 1]}, "different models"),
        ({"parts": [{"name": "itemknn"}, {"name": "als"}], "shares": [1, 1]}, "itemknn"),
    ],
)
def test_invalid_configurations_are_refused(change, message):
    with pytest.raises(ValidationError, match=message):
        model_config({"name": "cosine_blend"} | change)
