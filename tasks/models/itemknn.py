"""Item-kNN: artists scored by their similarity to the artists a user has heard.

The similarity is implicit's (``BM25Recommender``, ``CosineRecommender``, ``TFIDFRecommender``:
their weighting, then the same all-pairs top-k computed by ``tasks.sparse_rows``, see
``similarity``): a sparse artists x artists matrix keeping each artist's ``cfg.neighbours``
nearest, so memory is ``n_artists * neighbours`` entries (300K artists x 100: 30M), never a dense
artists x artists.

BM25 runs on whatever ``fit`` is given (the pipeline's weighted matrix). On log-scaled plays a
small ``k1`` (about 0.5) works best on HetRec 2K; on raw play counts implicit's examples use
K1=100, B=0.8.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, normalize, tfidf_weight
from pydantic import Field

from tasks.errors import RecsError
from tasks.models.base import BaseModelConfig
from tasks.sparse_rows import top_k_of_product


class ItemKNNConfig(BaseModelConfig):
    """Item-kNN with implicit's similarities."""

    name: Literal["itemknn"] = "itemknn"
    similarity: Literal["bm25", "cosine", "tfidf"] = Field(
        "bm25", description="implicit's BM25/Cosine/TFIDFRecommender similarity"
    )
    neighbours: int = Field(100, ge=1, description="nearest artists kept per artist")
    k1: float = Field(0.5, gt=0, description="bm25: saturation K1 (on the weighted matrix)")
    b: float = Field(0.75, ge=0, le=1, description="bm25: length normalisation B")

    def fit_scorer(self, train: sp.csr_matrix) -> ItemKNN:
        return fit_itemknn(train, self)


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
        return (self.history(heard) @ self.similarity).toarray()

    @property
    def weights(self) -> sp.csr_matrix:
        """``similarity``: the ``W`` of ``score = history(heard) @ W`` (the two-stage blend's input)."""
        return self.similarity

    def history(self, heard: sp.csr_matrix) -> sp.csr_matrix:
        """``heard`` binarised: CSR, same shape, float32 ones."""
        heard = sp.csr_matrix(heard, dtype=np.float32, copy=True)
        heard.data[:] = 1.0
        return heard


def weighted(train: sp.csr_matrix, cfg: ItemKNNConfig) -> sp.csr_matrix:
    """``train`` (CSR, users x artists) weighted as implicit's ``cfg.similarity`` recommender
    weights it before its all-pairs kNN: CSR, users x artists, float64."""
    x = sp.csr_matrix(train, dtype=np.float32)
    if cfg.similarity == "bm25":
        out = bm25_weight(x.T, cfg.k1, cfg.b).T
    elif cfg.similarity == "cosine":
        out = normalize(x.T).T
    elif cfg.similarity == "tfidf":
        out = normalize(tfidf_weight(x.T)).T
    else:  # ItemKNNConfig's Literal already refuses other names; this guards direct callers
        raise RecsError(f"unknown item-kNN similarity {cfg.similarity!r}; use bm25, cosine or tfidf")
    return sp.csr_matrix(out, dtype=np.float64)


def similarity(train: sp.csr_matrix, cfg: ItemKNNConfig) -> sp.csr_matrix:
    """implicit's item-item similarity of ``train`` (CSR, users x artists, float32 confidences):
    CSR, artists x artists, float32, ``cfg.neighbours`` per row (itself included).

    implicit's weighting, then the same all-pairs top-k as its ``all_pairs_knn`` (each artist's
    dot products with every artist over their weighted listeners, summed in the same order), by
    ``tasks.sparse_rows.top_k_of_product``: implicit's keeps COO rows, columns and float64 values
    of every kept entry and then a CSR copy, 9.6 GB at 876 neighbours x 300K artists, against 8
    bytes an entry here. Ties at the k-th neighbour go to the lower artist (implicit's to either)."""
    y = weighted(train, cfg)
    return top_k_of_product(y.T.tocsr(), y, cfg.neighbours, diagonal=True)


def fit_itemknn(train: sp.csr_matrix, cfg: ItemKNNConfig) -> ItemKNN:
    """Fit item-kNN on ``train`` (CSR, users x artists, float32 weighted confidences)."""
    if not sp.issparse(train) or train.nnz == 0:
        raise RecsError("item-kNN needs a non-empty sparse users x artists matrix; check the data filters")
    start = time.perf_counter()
    sim = similarity(train, cfg)
    params = cfg.params()
    if cfg.similarity != "bm25":  # k1 and b are BM25's alone
        params = {k: v for k, v in params.items() if k not in ("k1", "b")}
    return ItemKNN(cfg.name, params, sim, time.perf_counter() - start)
