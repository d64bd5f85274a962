"""tasks.sparse_rows against scipy's own product ``heard @ W`` on real HetRec 2K matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.models.itemknn import ItemKNNConfig
from tasks.models.registry import fit
from tasks.models.rp3beta import RP3betaConfig
from tasks.sparse_rows import moments_and_top, values_at
from tasks.weight import WeightConfig, weight


@pytest.fixture(scope="module", params=["itemknn", "rp3beta"])
def product(request, hetrec_encoded):
    """(heard rows as the part takes them, W, scipy's product) for both sparse parts, fitted on
    every pair of HetRec 2K's log-weighted plays."""
    weighted = weight(hetrec_encoded.plays, WeightConfig(scheme="log"))
    cfg = ItemKNNConfig(neighbours=200) if request.param == "itemknn" else RP3betaConfig(neighbours=100)
    model = fit(weighted, cfg)
    rows = model.history(weighted)
    return rows, model.weights, sp.csr_matrix(rows @ model.weights)


def _unheard(rows: sp.csr_matrix, full: sp.csr_matrix) -> sp.csr_matrix:
    """``full`` without the entries at ``rows``' non-zeros (each user's heard artists)."""
    binary = sp.csr_matrix((np.ones(rows.nnz, np.float32), rows.indices, rows.indptr), shape=rows.shape)
    out = (full - full.multiply(binary)).tocsr()
    out.eliminate_zeros()
    return out


def test_moments_are_the_unheard_entries_sums(product):
    rows, weights, full = product
    stats = moments_and_top(rows, weights, depth=0)
    fresh = _unheard(rows, full).astype(np.float64)
    np.testing.assert_allclose(stats.total, np.asarray(fresh.sum(axis=1)).ravel(), rtol=1e-9)
    np.testing.assert_allclose(stats.squares, np.asarray(fresh.power(2).sum(axis=1)).ravel(), rtol=1e-9)
    assert stats.ids.shape == (rows.shape[0], 0)


def test_top_entries_are_the_largest_unheard_best_first(product):
    rows, weights, full = product
    depth = 50
    stats = moments_and_top(rows, weights, depth)
    fresh = _unheard(rows, full)
    for r in np.random.default_rng(0).choice(rows.shape[0], 200, replace=False):
        row = fresh[r]
        positive = row.data > 0
        values, cols = row.data[positive], row.indices[positive]
        order = np.lexsort((cols, -values))[:depth]  # best first, ties to the lower code
        k = len(order)
        np.testing.assert_array_equal(stats.ids[r, :k], cols[order])
        np.testing.assert_array_equal(stats.values[r, :k], values[order].astype(np.float64))
        assert (stats.ids[r, k:] == -1).all() and np.isneginf(stats.values[r, k:]).all()


def test_values_at_are_scipys_bit_for_bit(product):
    rows, weights, full = product
    rng = np.random.default_rng(1)
    codes = rng.integers(0, full.shape[1], size=(rows.shape[0], 30))
    # half of them on the support, where a value can differ at all
    support = np.repeat(np.arange(rows.shape[0]), np.diff(full.indptr))
    picked = rng.integers(0, full.nnz, size=rows.shape[0] * 15)
    codes[support[picked], np.arange(len(picked)) % 15] = full.indices[picked]
    expected = np.take_along_axis(full.toarray(), codes, axis=1)
    np.testing.assert_array_equal(values_at(rows, weights, codes), expected)
    # read in the same pass as the statistics, which the reading leaves as they were
    together, alone = moments_and_top(rows, weights, 20, codes), moments_and_top(rows, weights, 20)
    np.testing.assert_array_equal(together.at, expected)
    for name in ("total", "squares", "ids", "values"):
        np.testing.assert_array_equal(getattr(together, name), getattr(alone, name))


def test_unsorted_weights_are_refused(product):
    rows, weights, _ = product
    shuffled = sp.csr_matrix(weights)
    shuffled.indices[: weights.indptr[2]] = shuffled.indices[: weights.indptr[2]][::-1]
    shuffled.has_sorted_indices = False
    with pytest.raises(ValueError, match="sorted indices"):
        moments_and_top(rows, shuffled, 5)
