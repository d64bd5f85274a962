"""tasks.models.registry on small matrices: shapes, dtypes, determinism, and that each model learns."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from tasks.contracts import Factors, Scorer
from tasks.errors import RecsError
from tasks.models.explicit import ExplicitConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.lsa import LSAConfig
from tasks.models.registry import MODELS, ModelConfig, fit, model_config
from tasks.models.store import load, save

FACTOR_MODELS = ["als", "lsa", "bpr", "lmf", "explicit"]


def _two_tastes(seed: int = 0) -> sp.csr_matrix:
    """60 users x 40 artists: users 0-29 play only artists 0-19, users 30-59 only artists 20-39."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((60, 40), dtype=np.float32)
    for half in (0, 1):
        block = rng.random((30, 20)) < 0.4
        dense[half * 30 : (half + 1) * 30, half * 20 : (half + 1) * 20] = block * rng.integers(1, 200, (30, 20))
    return sp.csr_matrix(dense)


def _cosines(f: np.ndarray) -> np.ndarray:
    n = f / np.linalg.norm(f, axis=1, keepdims=True)
    return n @ n.T


@pytest.mark.parametrize("name", FACTOR_MODELS)
def test_shapes_dtypes_and_seed(name):
    train = _two_tastes()
    cfg = model_config({"name": name, "factors": 6} | ({"iterations": 10} if name != "lsa" else {}))
    a, b = fit(train, cfg), fit(train, cfg)
    assert isinstance(a, Factors) and isinstance(a, Scorer) and a.name == name
    assert a.user_factors.dtype == np.float32 and a.artist_factors.dtype == np.float32
    assert a.user_factors.shape[0] == 60 and a.artist_factors.shape[0] == 40
    assert a.user_factors.shape[1] == a.artist_factors.shape[1] >= 6
    assert a.fit_seconds > 0 and a.params["random_state"] == 42
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.artist_factors, b.artist_factors)
    scores = a.score(np.array([0, 59]), train[[0, 59]])
    assert scores.shape == (2, 40) and scores.dtype == np.float32


@pytest.mark.parametrize("name", ["als", "bpr", "lmf", "explicit"])
def test_seed_changes_the_start(name):
    train = _two_tastes()
    a = fit(train, model_config({"name": name, "factors": 6, "iterations": 2, "random_state": 1}))
    b = fit(train, model_config({"name": name, "factors": 6, "iterations": 2, "random_state": 2}))
    assert not np.array_equal(a.artist_factors, b.artist_factors)


@pytest.mark.parametrize("name,iterations", [("als", 15), ("lsa", 1), ("bpr", 200)])
def test_implicit_models_separate_two_tastes(name, iterations):
    cfg = model_config(
        {"name": name, "factors": 4}
        | ({} if name == "lsa" else {"iterations": iterations})
        | ({"learning_rate": 0.05} if name == "bpr" else {})
    )
    cos = _cosines(fit(_two_tastes(), cfg).artist_factors)
    first_half = np.arange(40) < 20
    same = np.equal.outer(first_half, first_half)
    cross = ~same
    np.fill_diagonal(same, False)
    assert cos[same].mean() > cos[cross].mean() + 0.5


def test_lsa_is_the_best_rank_k_approximation():
    train = _two_tastes()
    model = fit(train, LSAConfig(factors=5))
    u, s, vt = np.linalg.svd(train.toarray())
    best = (u[:, :5] * s[:5]) @ vt[:5]
    np.testing.assert_allclose(model.user_factors @ model.artist_factors.T, best, atol=1e-2)
    # artist factors are scaled by the singular values, strongest first
    np.testing.assert_allclose(np.linalg.norm(model.artist_factors, axis=0), s[:5], rtol=1e-4)


def test_explicit_predicts_held_out_ratings_better_than_the_mean():
    rng = np.random.default_rng(3)
    users, artists = 300, 200
    truth = (
        rng.normal(size=(users, 3)) @ rng.normal(size=(3, artists))
        + rng.normal(size=(users, 1))
        + rng.normal(size=(1, artists))
        + 5
    )
    seen = rng.random((users, artists)) < 0.3
    train = sp.csr_matrix(np.where(seen, truth, 0).astype(np.float32))
    model = fit(train, ExplicitConfig(factors=3, regularization=0.05, iterations=10))
    held = ~seen
    pred = model.user_factors @ model.artist_factors.T
    rmse = np.sqrt(np.mean((pred[held] - truth[held]) ** 2))
    mean_rmse = np.sqrt(np.mean((truth[seen].mean() - truth[held]) ** 2))
    assert rmse < 0.3 * mean_rmse


def test_save_load_round_trip(tmp_path):
    model = fit(_two_tastes(), ALSConfig(factors=4, iterations=3))
    save(model, tmp_path / "run")
    back = load(tmp_path / "run")
    assert back.name == model.name and back.params == model.params and back.fit_seconds == model.fit_seconds
    np.testing.assert_array_equal(back.user_factors, model.user_factors)
    np.testing.assert_array_equal(back.artist_factors, model.artist_factors)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["factors.npz", "params.json"]


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(RecsError, match="CSR"):
        fit(_two_tastes().toarray(), ALSConfig())
    with pytest.raises(RecsError, match="empty"):
        fit(sp.csr_matrix((5, 5), dtype=np.float32), ALSConfig())
    with pytest.raises(RecsError, match="factors"):
        fit(_two_tastes(), LSAConfig(factors=40))
    with pytest.raises(RecsError, match="cannot load"):
        load(tmp_path / "nothing-here")


def test_every_model_is_one_config_class_with_only_its_own_fields():
    union = get_args(get_args(ModelConfig)[0])
    assert set(MODELS) == {cls.model_fields["name"].default for cls in union}
    assert set(MODELS) == {
        *("als", "lsa", "bpr", "lmf", "explicit", "itemknn", "ease", "rp3beta", "blend", "cosine_blend", "spark_als")
    }
    for name, cls in MODELS.items():
        assert type(model_config({"name": name})) is cls
    # the Prefect form of an ALS model shows ALS's fields, not item-kNN's or SGD's
    assert not {"neighbours", "k1", "learning_rate", "blend_weight"} & set(ALSConfig.model_fields)
    with pytest.raises(ValidationError, match="neighbours"):
        model_config({"name": "als", "neighbours": 5})
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        model_config({"name": "svd++"})
