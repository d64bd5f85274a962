"""Item-kNN and the blend of any models: scoring rules, per-user standardisation, dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from tasks.contracts import Factors, Scorer
from tasks.models.blend import Blend, BlendConfig, BlendPart, standardise
from tasks.models.ease import EASEConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNN, ItemKNNConfig
from tasks.models.registry import fit
from tasks.models.rp3beta import RP3betaConfig


def test_standardise_uses_only_unheard_artists():
    scores = np.array([[100.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]], dtype=np.float32)
    heard = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    out = standardise(scores.copy(), heard)
    unheard = np.array([1.0, 2.0, 3.0])
    assert np.allclose(out[0, 1:], (unheard - unheard.mean()) / unheard.std(), atol=1e-6)
    assert np.allclose(out[1], 0.0)  # a constant row carries no preference


def test_standardise_leaves_minus_inf_out_of_the_statistics_and_keeps_it():
    scores = np.array([[-np.inf, 1.0, 2.0, 3.0, -np.inf], [4.0, -np.inf, 6.0, 0.0, 2.0]], dtype=np.float32)
    heard = sp.csr_matrix(np.array([[0, 0, 0, 1, 1], [0, 1, 0, 0, 1]], dtype=np.float32))
    out = standardise(scores.copy(), heard)
    assert np.isneginf(out[0, [0, 4]]).all() and np.isneginf(out[1, 1])
    first, second = np.array([1.0, 2.0]), np.array([4.0, 6.0, 0.0])
    assert np.allclose(out[0, 1:3], (first - first.mean()) / first.std(), atol=1e-6)
    assert np.allclose(out[1, [0, 2, 3]], (second - second.mean()) / second.std(), atol=1e-6)
    assert not np.isnan(out).any()


def test_blend_parts_validate_as_their_own_models_and_follow_the_blend():
    cfg = BlendConfig.model_validate(
        {
            "random_state": 7,
            "parts": [
                {"model": {"name": "als", "factors": 8}, "weight": 3},
                {"model": {"name": "ease", "l2": 10}, "weight": 1},
                {"model": {"name": "rp3beta", "beta": 0.1}, "weight": 0},
            ],
        }
    )
    assert [type(p.model) for p in cfg.parts] == [ALSConfig, EASEConfig, RP3betaConfig]
    assert [p.weight for p in cfg.parts] == [0.75, 0.25, 0.0]  # normalised to sum 1
    # a part's seed and weighting follow the blend, whichever model it is
    assert all(p.model.random_state == 7 and p.model.weight == cfg.weight for p in cfg.parts)
    # normalising again changes nothing: a dumped config reads back equal
    assert BlendConfig.model_validate(cfg.model_dump()) == cfg
    assert [type(p.model) for p in BlendConfig().parts] == [ALSConfig, ItemKNNConfig]
    with pytest.raises(ValidationError, match="neighbours"):
        BlendConfig.model_validate({"parts": [{"model": {"name": "ease", "neighbours": 50}, "weight": 1}]})
    with pytest.raises(ValidationError):  # a blend is no part of a blend
        BlendConfig.model_validate({"parts": [{"model": {"name": "blend"}, "weight": 1}]})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        BlendConfig.model_validate({"parts": [{"model": {"name": "als"}, "weight": -1}]})
    with pytest.raises(ValidationError, match="sum to 0"):
        BlendConfig.model_validate({"parts": [{"model": {"name": "als"}, "weight": 0}]})
    with pytest.raises(ValidationError, match="at least 1"):
        BlendConfig.model_validate({"parts": []})


def test_itemknn_scores_are_summed_similarity_to_heard_artists_whatever_the_values():
    sim = sp.csr_matrix(np.array([[1, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 1]], dtype=np.float32))
    knn = ItemKNN("itemknn", {}, sim, 0.0)
    raw = sp.csr_matrix(np.array([[300, 0, 7]], dtype=np.float32))
    logged = raw.copy()
    logged.data = np.log1p(logged.data)
    expected = np.array([[1.0, 0.7, 1.0]])
    assert np.allclose(knn.score(np.array([0]), raw), expected)
    assert np.allclose(knn.score(np.array([0]), logged), expected)
    assert raw.data[0] == 300  # the caller's matrix is not modified


def test_blend_is_the_weighted_sum_of_its_standardised_parts():
    rng = np.random.default_rng(0)
    factor = Factors("als", {}, rng.random((3, 2), dtype=np.float32), rng.random((5, 2), dtype=np.float32), 0.0)
    knn = ItemKNN("itemknn", {}, sp.csr_matrix(rng.random((5, 5), dtype=np.float32)), 0.0)
    other = Factors("lsa", {}, rng.random((3, 4), dtype=np.float32), rng.random((5, 4), dtype=np.float32), 0.0)
    heard = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=np.float32))
    users = np.arange(3)
    z = [standardise(m.score(users, heard), heard) for m in (factor, knn, other)]
    only_factor = Blend({}, [(1.0, factor), (0.0, knn)], 0.0).score(users, heard)
    only_knn = Blend({}, [(0.0, factor), (1.0, knn)], 0.0).score(users, heard)
    three = Blend({}, [(0.5, factor), (0.3, knn), (0.2, other)], 0.0).score(users, heard)
    assert np.allclose(only_factor, z[0], atol=1e-5)
    assert np.allclose(only_knn, z[1], atol=1e-5)
    assert np.allclose(three, 0.5 * z[0] + 0.3 * z[1] + 0.2 * z[2], atol=1e-5)


@pytest.fixture(scope="module")
def small_train(hetrec_encoded):
    train = hetrec_encoded.plays[:400].tocsr()
    train.data = np.log1p(train.data)
    return train


@pytest.mark.parametrize("similarity", ["bm25", "cosine", "tfidf"])
def test_fit_dispatches_itemknn_with_k_neighbours(small_train, similarity):
    model = fit(small_train, ItemKNNConfig(neighbours=20, similarity=similarity))
    assert isinstance(model, Scorer) and model.name == "itemknn"
    assert model.similarity.shape == (small_train.shape[1],) * 2
    assert np.diff(model.similarity.indptr).max() <= 20
    assert model.params["similarity"] == similarity
    scores = model.score(np.arange(5), small_train[:5])
    assert scores.shape == (5, small_train.shape[1]) and scores.dtype == np.float32


def test_fit_dispatches_blend_with_every_part(small_train):
    cfg = BlendConfig(
        parts=[
            BlendPart(model=ALSConfig(factors=8, iterations=3), weight=0.7),
            BlendPart(model=ItemKNNConfig(neighbours=20), weight=0.2),
            BlendPart(model=RP3betaConfig(neighbours=20), weight=0.1),
        ]
    )
    model = fit(small_train, cfg)
    assert isinstance(model, Blend) and isinstance(model, Scorer)
    assert [w for w, _ in model.parts] == pytest.approx([0.7, 0.2, 0.1])
    assert [p.name for _, p in model.parts] == ["als", "itemknn", "rp3beta"]
    assert model.parts[0][1].user_factors.shape[1] == 8
    assert model.params["parts"][1] == {"model": model.parts[1][1].params, "weight": model.parts[1][0]}
    scores = model.score(np.arange(3), small_train[:3])
    assert scores.shape == (3, small_train.shape[1]) and np.isfinite(scores).all()
