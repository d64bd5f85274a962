"""Item-kNN: artists scored by their similarity to the artists a user has heard.

The similarity is implicit's (``BM25Recommender``, ``CosineRecommender``, ``TFIDFRecommender``):
a sparse artists x artists matrix keeping each artist's ``cfg.neighbours`` nearest, so memory is
``n_artists * neighbours`` entries (300K artists x 100: 30M), never a dense artists x artists.

BM25 runs on whatever ``fit`` is given (the pipeline's weighted matrix). On log-scaled plays a
small ``knn_k1`` (about 0.5) works best on HetRec 2K; on raw play counts implicit's examples use
K1=100, B=0.8.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_limits

from flows.config import ModelConfig
from tasks.errors import RecsError


class ItemKNN:
    """A fitted item-kNN ``Scorer``.

    ``similarity``: CSR, artists x artists, float32; row ``a`` holds ``a``'s nearest artists.
    ``score(users, heard)`` is ``binary(heard) @ similarity``: the summed similarity of each artist
    to the artists a user has heard. Binary, so it does not matter whether callers pass raw or
    weighted rows.
    """

    def __init__(self, name: str, params: dict, similarity: sp.csr_matrix, fit_seconds: float):
        self.name = name
        self.params = params
        self.similarity = similarity
        self.fit_seconds = fit_seconds

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        heard = sp.csr_matrix(heard, dtype=np.float32, copy=True)
        heard.data[:] = 1.0
        return (heard @ self.similarity).toarray()


def similarity(train: sp.csr_matrix, cfg: ModelConfig) -> sp.csr_matrix:
    """implicit's item-item similarity of ``train`` (CSR, users x artists, float32 confidences):
    CSR, artists x artists, float32, ``cfg.neighbours`` per row."""
    if cfg.knn_similarity == "bm25":
        model = BM25Recommender(K=cfg.neighbours, K1=cfg.knn_k1, B=cfg.knn_b, num_threads=1)
    elif cfg.knn_similarity == "cosine":
        model = CosineRecommender(K=cfg.neighbours, num_threads=1)
    elif cfg.knn_similarity == "tfidf":
        model = TFIDFRecommender(K=cfg.neighbours, num_threads=1)
    else:  # ModelConfig's Literal already refuses other names; this guards direct callers
        raise RecsError(f"unknown item-kNN similarity {cfg.knn_similarity!r}; use bm25, cosine or tfidf")
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # BM25/TFIDF hand implicit's own weighting result (COO) to its kNN, which then warns
        # that it wanted CSR; nothing a caller can change
        warnings.simplefilter("ignore", ParameterWarning)
        model.fit(sp.csr_matrix(train, dtype=np.float32), show_progress=False)
    out = sp.csr_matrix(model.similarity, dtype=np.float32)
    out.sort_indices()
    return out


def fit_itemknn(train: sp.csr_matrix, cfg: ModelConfig) -> ItemKNN:
    """Fit item-kNN on ``train`` (CSR, users x artists, float32 weighted confidences)."""
    if not sp.issparse(train) or train.nnz == 0:
        raise RecsError("item-kNN needs a non-empty sparse users x artists matrix; check the data filters")
    start = time.perf_counter()
    sim = similarity(train, cfg)
    params = {
        "name": "itemknn",
        "similarity": cfg.knn_similarity,
        "neighbours": cfg.neighbours,
        "weight": cfg.weight.model_dump(),
    }
    if cfg.knn_similarity == "bm25":
        params |= {"k1": cfg.knn_k1, "b": cfg.knn_b}
    return ItemKNN("itemknn", params, sim, time.perf_counter() - start)
