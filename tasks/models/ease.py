"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): a closed-form item model.

On the weighted matrix X (users x artists) the artists x artists weights are

    P = (XᵀX + λI)⁻¹,   B = I - P / diag(P)   (column j divided by P_jj),   so diag(B) = 0,

and a user's scores are ``x_u @ B``. B is dense, so the model is bounded by its catalogue: the
Gram matrix and its inverse are one float64 artists x artists array, inverted in place (LAPACK
Cholesky ``potrf`` + ``potri``, which need no second n x n array, unlike ``np.linalg.inv`` or
``solve(G, I)``), and B is then kept as float32 for scoring. The peak is 8 + 4 = 12 bytes per
cell: ``max_artists`` = 13,000 (the default) is 12 x 13,000² = 2.0 GB, and the kept B 0.68 GB.

A larger catalogue is restricted to its ``max_artists`` most-listened artists (most users with a
non-zero entry in the training matrix; ties to the lower artist code): EASE is fitted on those
columns alone, which is exactly EASE on that smaller catalogue, and every other artist scores
``-inf``, so EASE never recommends it. Users who heard none of the kept artists score 0 for all of
them. On HetRec 2K (17,632 artists) the 4,632 left out are artists with one or two listeners. At
Last.fm 360K size (300K artists) EASE sees only the head of the catalogue: use item-kNN or
RP3beta there.

The default λ (3,000) was picked on HetRec 2K's validation split (seed 0, log1p weights, 7,000
artists for speed; tried 50, 500, 1,000, 3,000, 5,000, 10,000): validation precision@10 rose from
0.100 at 50 to 0.131 at 3,000-5,000 and fell at 10,000 (200 on 13,000 artists: 0.114). Log-weighted confidences make XᵀX's diagonal larger than on binary data, where
Steck's λ is in the hundreds.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from tasks.cores import cores
from tasks.errors import RecsError
from tasks.models.base import BaseModelConfig

# Gram columns filled per block: 16M float64 products (128 MB) of intermediate sparse result at most
GRAM_BLOCK_CELLS = 1 << 24


class EASEConfig(BaseModelConfig):
    """EASE: closed-form linear item-item weights with a zero diagonal."""

    name: Literal["ease"] = "ease"
    l2: float = Field(3000.0, gt=0, description="λ: L2 penalty added to the diagonal of XᵀX (weighted confidences²)")
    max_artists: int = Field(
        13_000,
        ge=1,
        description="artists EASE is fitted on (the most listened); others are never recommended by it. "
        "Peak memory is 12 bytes x max_artists² (13,000: 2.0 GB)",
    )

    def fit_scorer(self, train: sp.csr_matrix) -> EASE:
        return fit_ease(train, self)


class EASE:
    """A fitted EASE ``Scorer``.

    ``kept``: int64, the artist codes B covers (sorted; every artist unless restricted);
    ``weights``: B, float32, len(kept) x len(kept), zero diagonal. ``score(users, heard)`` is
    ``heard[:, kept] @ B`` on the kept artists and ``-inf`` on the others; ``heard`` is the users'
    rows of the matrix EASE was fitted on (the weighted confidences, as the pipeline passes it).
    """

    def __init__(
        self, name: str, params: dict, kept: np.ndarray, weights: np.ndarray, n_artists: int, fit_seconds: float
    ):
        self.name = name
        self.params = params
        self.kept = kept
        self.weights = weights
        self.n_artists = n_artists
        self.fit_seconds = fit_seconds

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        heard = sp.csr_matrix(heard, dtype=np.float32)
        if len(self.kept) == self.n_artists:
            return np.asarray(heard @ self.weights, dtype=np.float32)
        out = np.full((heard.shape[0], self.n_artists), -np.inf, dtype=np.float32)
        out[:, self.kept] = heard[:, self.kept] @ self.weights
        return out


def most_listened(train: sp.csr_matrix, count: int) -> np.ndarray:
    """The ``count`` artist codes of ``train`` (CSR, users x artists) with the most listeners
    (non-zero entries per column; ties to the lower code), sorted; int64."""
    listeners = np.bincount(train.indices, minlength=train.shape[1])
    if count >= train.shape[1]:
        return np.arange(train.shape[1], dtype=np.int64)
    return np.sort(np.argsort(-listeners, kind="stable")[:count]).astype(np.int64)


def gram(x: sp.csc_matrix) -> np.ndarray:
    """XᵀX of ``x`` (CSC, users x m), dense float64 m x m, filled a block of columns at a time so
    the sparse intermediate stays within ``GRAM_BLOCK_CELLS``."""
    m = x.shape[1]
    xt = x.T.tocsr()
    out = np.empty((m, m), dtype=np.float64)
    step = max(1, GRAM_BLOCK_CELLS // max(m, 1))
    for lo in range(0, m, step):
        out[:, lo : lo + step] = (xt @ x[:, lo : lo + step]).toarray()
    return out


def ease_weights(x: sp.csc_matrix, l2: float) -> np.ndarray:
    """B = I - P / diag(P), P = (XᵀX + l2 I)⁻¹, for ``x`` (CSC, users x m, float64): float32 m x m,
    zero diagonal. The inverse is computed in the one float64 m x m array of the Gram matrix."""
    g = gram(x)
    g[np.diag_indices_from(g)] += l2
    # g is symmetric, so its transpose is the same matrix in Fortran order: LAPACK works on it in
    # place (its "upper" triangle is g's lower one in C order)
    f = g.T
    c, info = lapack.dpotrf(f, lower=0, clean=0, overwrite_a=1)
    if info == 0:
        c, info = lapack.dpotri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise RecsError(
            f"EASE: XᵀX + {l2:g}·I is not positive definite (LAPACK info {info}); "
            "check the weighted matrix for huge values or raise l2"
        )
    p = c.T  # C order again; its lower triangle holds P
    m = p.shape[0]
    step = max(1, GRAM_BLOCK_CELLS // max(m, 1))
    for lo in range(0, m, step):  # mirror the lower triangle into the upper one, a block of rows at a time
        hi = min(lo + step, m)
        d = p[lo:hi, lo:hi]
        d[:] = np.tril(d) + np.tril(d, -1).T
        p[lo:hi, hi:] = p[hi:, lo:hi].T
    p /= -np.diagonal(p).copy()[None, :]
    np.fill_diagonal(p, 0.0)
    return p.astype(np.float32)


def fit_ease(train: sp.csr_matrix, cfg: EASEConfig) -> EASE:
    """Fit EASE on ``train`` (CSR, users x artists, float32 weighted confidences), restricted to
    the ``cfg.max_artists`` most-listened artists when there are more."""
    if not sp.issparse(train) or train.nnz == 0:
        raise RecsError("EASE needs a non-empty sparse users x artists matrix; check the data filters")
    if not np.isfinite(train.data).all():
        raise RecsError("EASE: the weighted matrix has NaN or infinite values; check the weighting settings")
    start = time.perf_counter()
    kept = most_listened(sp.csr_matrix(train), cfg.max_artists)
    x = sp.csc_matrix(train, dtype=np.float64)[:, kept]
    # base.fit limits BLAS to one thread for implicit's sake; the dense Cholesky inverse is
    # BLAS-3 work that scales with cores, and nothing else runs beside it in this process
    with threadpool_limits(cores(), "blas"):
        weights = ease_weights(x, cfg.l2)
    params = cfg.params(artists_fitted=len(kept))
    return EASE(cfg.name, params, kept, weights, train.shape[1], time.perf_counter() - start)
