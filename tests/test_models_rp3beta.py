"""RP3beta on hand-made matrices: W against a dense NumPy reference, top-k, blocks, taste groups,
determinism, bad input; and RP3beta inside the blend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from tasks.errors import RecsError
from tasks.models import rp3beta
from tasks.models.blend import Blend
from tasks.models.registry import fit, model_config
from tasks.models.rp3beta import RP3beta, RP3betaConfig
from tasks.recommend import user_top_n


def _reference(x: np.ndarray, alpha: float, beta: float, k: int) -> np.ndarray:
    """Dense W: Σ_u P(u|i)^α P(j|u)^α / pop(j)^β, diagonal 0, the k largest positive per row."""
    to_artist = (x / np.maximum(x.sum(axis=1, keepdims=True), 1e-300)) ** alpha * (x > 0)
    to_user = (x / np.maximum(x.sum(axis=0, keepdims=True), 1e-300)).T ** alpha * (x.T > 0)
    pop = (x > 0).sum(axis=0).astype(np.float64)
    w = (to_user @ to_artist) / np.where(pop > 0, pop, 1.0)[None, :] ** beta
    np.fill_diagonal(w, 0.0)
    out = np.zeros_like(w)
    for i, row in enumerate(w):  # the reference may loop; the model must not
        best = np.argsort(-row, kind="stable")[:k]
        best = best[row[best] > 0]
        out[i, best] = row[best]
    return out


def _random_plays(seed: int, users: int = 9, artists: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.random((users, artists)) < 0.5) * rng.integers(1, 50, (users, artists)).astype(np.float64)
    x[0, :] = rng.integers(1, 50, artists)  # every artist has a listener
    return x


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 0.5), (0.5, 0.25), (0.8, 1.0)])
@pytest.mark.parametrize("k", [2, 7])
def test_weights_equal_a_dense_reference(alpha, beta, k):
    x = _random_plays(seed=int(10 * alpha + 100 * beta) + k)
    model = fit(sp.csr_matrix(x.astype(np.float32)), RP3betaConfig(alpha=alpha, beta=beta, neighbours=k))
    assert isinstance(model, RP3beta) and model.name == "rp3beta" and model.params["neighbours"] == k
    w = model.weights
    assert sp.isspmatrix_csr(w) and w.dtype == np.float32 and w.shape == (7, 7) and w.has_sorted_indices
    assert np.diff(w.indptr).max() <= k and np.all(w.diagonal() == 0)
    reference = _reference(x, alpha, beta, k)
    np.testing.assert_allclose(w.toarray(), reference, rtol=1e-5, atol=1e-7)
    users = np.arange(9)
    heard = sp.csr_matrix(x.astype(np.float32))
    scores = model.score(users, heard)
    assert scores.dtype == np.float32 and scores.shape == (9, 7)
    np.testing.assert_allclose(scores, x @ reference, rtol=1e-4)


@pytest.mark.parametrize("threads", [1, 3, 7])
def test_any_split_of_the_rows_gives_the_same_weights(threads):
    x = _random_plays(seed=3, users=30, artists=25)
    train = sp.csr_matrix(x.astype(np.float32))
    whole = rp3beta.rp3beta_weights(train, 1.0, 0.5, 5, threads=1)
    split = rp3beta.rp3beta_weights(train, 1.0, 0.5, 5, threads=threads)
    assert (whole != split).nnz == 0
    np.testing.assert_allclose(split.toarray(), _reference(x, 1.0, 0.5, 5), rtol=1e-5, atol=1e-7)


def test_ties_go_to_the_lower_artist_and_the_model_repeats():
    # artists 1, 2, 3 are interchangeable for artist 0: only the lowest two are kept
    x = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=np.float32)
    a = fit(sp.csr_matrix(x), RP3betaConfig(neighbours=2, beta=0.0))
    b = fit(sp.csr_matrix(x), RP3betaConfig(neighbours=2, beta=0.0))
    assert a.weights.indices[a.weights.indptr[0] : a.weights.indptr[1]].tolist() == [1, 2]
    assert (a.weights != b.weights).nnz == 0


def test_two_disjoint_taste_groups_are_recommended_within_their_group():
    rng = np.random.default_rng(4)
    dense = np.zeros((20, 10), dtype=np.float32)
    dense[:10, :5] = (rng.random((10, 5)) < 0.5) * rng.integers(1, 9, (10, 5))
    dense[10:, 5:] = (rng.random((10, 5)) < 0.5) * rng.integers(1, 9, (10, 5))
    dense[[0, 10], :] = 0
    dense[0, 0], dense[10, 5] = 3, 3  # each group's user 0 heard one artist of it
    train = sp.csr_matrix(dense)
    model = fit(train, RP3betaConfig(neighbours=10))
    w = model.weights.toarray()
    assert np.all(w[:5, 5:] == 0) and np.all(w[5:, :5] == 0)
    top = user_top_n(model, train, 3)
    first = top.ids[[0, 10]]
    assert np.all((first[0] >= 0) & (first[0] < 5)) and np.all(first[1] >= 5)


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValidationError, match="neighbours"):
        model_config({"name": "rp3beta", "neighbours": 0})
    with pytest.raises(ValidationError, match="alpha"):
        model_config({"name": "rp3beta", "alpha": -1})
    with pytest.raises(ValidationError, match="beta"):
        model_config({"name": "rp3beta", "beta": -0.5})
    negative = sp.csr_matrix(np.array([[1, -2], [3, 1]], dtype=np.float32))
    with pytest.raises(RecsError, match="negative, NaN or infinite") as err:
        fit(negative, RP3betaConfig())
    assert "\n" not in str(err.value)
    with pytest.raises(RecsError, match="empty"):
        fit(sp.csr_matrix((3, 3), dtype=np.float32), RP3betaConfig())


def test_blend_takes_rp3beta_as_its_item_model():
    x = _random_plays(seed=5, users=40, artists=12)
    train = sp.csr_matrix(x.astype(np.float32))
    parts = [
        {"model": {"name": "als", "factors": 3, "iterations": 3}, "weight": 1},
        {"model": {"name": "rp3beta"}, "weight": 1},
    ]
    model = fit(train, model_config({"name": "blend", "parts": parts}))
    assert isinstance(model, Blend) and isinstance(model.parts[1][1], RP3beta)
    rp3beta = model.params["parts"][1]["model"]
    assert rp3beta["name"] == "rp3beta" and rp3beta["random_state"] == 42
    scores = model.score(np.arange(40), train)
    assert scores.shape == (40, 12) and np.isfinite(scores).all()
