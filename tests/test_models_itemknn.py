"""Item-kNN's similarity (tasks.sparse_rows.top_k_of_product on implicit's weighting) against
implicit's own recommenders on real HetRec 2K plays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

from tasks.models.itemknn import ItemKNNConfig, similarity
from tasks.weight import WeightConfig, weight


@pytest.mark.parametrize(
    "cfg, reference",
    [
        (ItemKNNConfig(similarity="bm25", neighbours=50, k1=2.5, b=0.9), BM25Recommender(K=50, K1=2.5, B=0.9)),
        (ItemKNNConfig(similarity="cosine", neighbours=30), CosineRecommender(K=30)),
        (ItemKNNConfig(similarity="tfidf", neighbours=200), TFIDFRecommender(K=200)),
    ],
    ids=["bm25", "cosine", "tfidf"],
)
def test_similarity_is_implicits(hetrec_encoded, cfg, reference):
    train = weight(hetrec_encoded.plays, WeightConfig(scheme="log"))
    ours = similarity(train, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit's own "wanted CSR" note on its COO weighting
        reference.fit(train, show_progress=False)
    theirs = sp.csr_matrix(reference.similarity, dtype=np.float32)
    theirs.eliminate_zeros()  # implicit pads short rows with explicit zeros
    theirs.sort_indices()
    assert ours.dtype == np.float32 and ours.has_sorted_indices and ours.shape == theirs.shape
    np.testing.assert_array_equal(np.diff(ours.indptr), np.diff(theirs.indptr))
    assert np.diff(ours.indptr).max() == cfg.neighbours and (ours.diagonal() > 0).mean() > 0.99
    differ = np.unique((ours != theirs).tocoo().row)
    # the same values in every row; a row's kept artists differ only among ties at its k-th value
    for r in differ:
        a, b = ours[r], theirs[r]
        np.testing.assert_array_equal(np.sort(a.data), np.sort(b.data))
        kth = a.data.min()
        assert set(a.indices[a.data > kth]) == set(b.indices[b.data > kth])
    assert len(differ) < 0.05 * ours.shape[0]
