"""EASE on hand-made matrices: the closed form, its zero diagonal, taste groups, the restriction
to the most-listened artists, determinism, bad input; and EASE inside the blend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from tasks.errors import RecsError
from tasks.models.blend import BlendConfig
from tasks.models.ease import EASE, EASEConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.registry import fit, model_config
from tasks.recommend import user_top_n


def _closed_form(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck's B = I - P / diag(P), P = (XᵀX + λI)⁻¹, densely."""
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p / np.diag(p)[None, :]


def _two_groups() -> sp.csr_matrix:
    """8 users x 6 artists: users 0-3 play only artists 0-2, users 4-7 only artists 3-5."""
    dense = np.zeros((8, 6), dtype=np.float32)
    dense[:4, :3] = [[3, 1, 0], [2, 0, 1], [0, 4, 2], [1, 1, 0]]
    dense[4:, 3:] = [[2, 1, 0], [0, 3, 1], [1, 0, 5], [2, 2, 0]]
    return sp.csr_matrix(dense)


def test_weights_equal_the_dense_closed_form_with_a_zero_diagonal():
    rng = np.random.default_rng(0)
    x = (rng.random((6, 5)) < 0.6) * rng.integers(1, 9, (6, 5))
    x[0] = [1, 2, 3, 4, 5]  # every artist has a listener
    model = fit(sp.csr_matrix(x.astype(np.float32)), EASEConfig(l2=2.0))
    assert isinstance(model, EASE) and model.name == "ease"
    assert model.weights.dtype == np.float32 and model.weights.shape == (5, 5)
    np.testing.assert_allclose(model.weights, _closed_form(x.astype(np.float64), 2.0), rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(model.weights) == 0)
    scores = model.score(np.arange(6), sp.csr_matrix(x.astype(np.float32)))
    assert scores.dtype == np.float32 and scores.shape == (6, 5)
    np.testing.assert_allclose(scores, x @ _closed_form(x.astype(np.float64), 2.0), rtol=1e-4, atol=1e-5)


def test_two_disjoint_taste_groups_are_recommended_within_their_group():
    train = _two_groups()
    model = fit(train, EASEConfig(l2=1.0))
    # no user links the groups, so no weight crosses them
    assert np.all(model.weights[:3, 3:] == 0) and np.all(model.weights[3:, :3] == 0)
    top = user_top_n(model, train, 1)
    group = np.arange(8) >= 4
    unheard = (train.toarray() == 0).sum(axis=1) > 0
    picked = top.ids[:, 0]
    assert np.all((picked[unheard] >= 3) == group[unheard])


def test_restriction_keeps_the_most_listened_and_never_recommends_the_others():
    rng = np.random.default_rng(1)
    # artist a has 12 - a listeners, so the six most listened are 0-5
    dense = np.zeros((12, 10), dtype=np.float32)
    for a in range(10):
        dense[rng.permutation(12)[: 12 - a], a] = rng.integers(1, 20, 12 - a)
    train = sp.csr_matrix(dense)
    model = fit(train, EASEConfig(l2=3.0, max_artists=6))
    np.testing.assert_array_equal(model.kept, np.arange(6))
    assert model.params["artists_fitted"] == 6
    # exactly EASE on the six kept columns
    np.testing.assert_allclose(model.weights, _closed_form(dense[:, :6].astype(np.float64), 3.0), rtol=1e-5, atol=1e-6)
    scores = model.score(np.arange(12), train)
    assert np.all(np.isneginf(scores[:, 6:])) and np.isfinite(scores[:, :6]).all()
    top = user_top_n(model, train, 10)
    assert not np.isin(top.ids, np.arange(6, 10)).any()
    # a user who heard everything kept has nothing left to recommend, not an artist outside
    assert np.all(top.ids[dense[:, :6].all(axis=1)] == -1)


def test_the_same_data_gives_the_same_model():
    train = _two_groups()
    a, b = fit(train, EASEConfig(l2=0.5)), fit(train, EASEConfig(l2=0.5))
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.score(np.arange(8), train), b.score(np.arange(8), train))


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValidationError, match="l2"):
        model_config({"name": "ease", "l2": 0})
    with pytest.raises(ValidationError, match="max_artists"):
        model_config({"name": "ease", "max_artists": 0})
    with pytest.raises(ValidationError, match="neighbours"):
        model_config({"name": "ease", "neighbours": 5})  # item-kNN's field, not EASE's
    bad = _two_groups()
    bad.data[0] = np.nan
    with pytest.raises(RecsError, match="NaN or infinite") as err:
        fit(bad, EASEConfig())
    assert "\n" not in str(err.value)
    with pytest.raises(RecsError, match="empty"):
        fit(sp.csr_matrix((4, 3), dtype=np.float32), EASEConfig())


def test_blend_with_restricted_ease_keeps_the_left_out_artists_out():
    rng = np.random.default_rng(2)
    dense = (rng.random((40, 12)) < 0.4) * rng.integers(1, 30, (40, 12)).astype(np.float32)
    dense[:, 11] = 0
    dense[0, 11] = 5  # the least-listened artist
    train = sp.csr_matrix(dense)
    cfg = model_config(
        {
            "name": "blend",
            "parts": [
                {"model": {"name": "als", "factors": 3, "iterations": 3}, "weight": 1},
                {"model": {"name": "ease", "max_artists": 11}, "weight": 1},
            ],
        }
    )
    assert isinstance(cfg, BlendConfig)
    assert isinstance(cfg.parts[0].model, ALSConfig) and isinstance(cfg.parts[1].model, EASEConfig)
    model = fit(train, cfg)
    ease = model.params["parts"][1]["model"]
    assert ease["name"] == "ease" and ease["artists_fitted"] == 11
    fitted = [part for _, part in model.parts]
    for weight in (0.0, 0.5, 1.0):
        model.parts = [(weight, fitted[0]), (1 - weight, fitted[1])]
        scores = model.score(np.arange(40), train)
        assert np.all(np.isneginf(scores[:, 11])) and not np.isnan(scores).any()
        assert np.isfinite(scores[:, :11]).all()
