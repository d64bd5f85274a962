"""Explicit matrix factorization: the *observed* entries of the weighted matrix as ratings.

Biased MF fitted by ALS with weighted-lambda regularisation (ALS-WR, Zhou et al. 2008). Paired
with weight scheme ``log`` it models log-scaled play counts, the view behind an RMSE figure.
Written here because implicit has no explicit-feedback model and Spark's would need a cluster
for a model this small.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp

from tasks.contracts import Factors
from tasks.models.implicit_mf import FactorParams


class ExplicitConfig(FactorParams):
    """Biased MF of the observed values (ALS-WR); RMSE against the weighted held-out plays."""

    name: Literal["explicit"] = "explicit"
    predicts_weights: ClassVar[bool] = True

    def fit_scorer(self, train: sp.csr_matrix) -> Factors:
        return fit_explicit(train, self)


def fit_explicit(train: sp.csr_matrix, cfg: ExplicitConfig) -> Factors:
    """ALS-WR with user and artist biases on the observed entries of ``train``.

    Prediction is ``mu + b_user + c_artist + p_user @ q_artist``; it is folded into ``Factors``
    as user ``[p, b, 1]`` and artist ``[q, 1, c + mu]`` so that ``Factors.score`` needs nothing
    else. Each half-step solves one ridge problem per user (artist) with the other side fixed,
    the bias riding along as an extra unknown against a constant-1 column.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.random_state)
    f, lam = cfg.factors, cfg.regularization
    mu = float(train.data.mean())
    by_artist = train.T.tocsr()
    p = rng.normal(0, 0.01, (train.shape[0], f))
    q = rng.normal(0, 0.01, (train.shape[1], f))
    b = np.zeros(train.shape[0])
    c = np.zeros(train.shape[1])
    for _ in range(cfg.iterations):
        # users: unknowns [p_u, b_u] against artist columns [q, 1], target r - mu - c
        pb = _ridge_rows(train, np.column_stack([q, np.ones(len(q))]), mu + c, lam)
        p, b = pb[:, :f], pb[:, f]
        qc = _ridge_rows(by_artist, np.column_stack([p, np.ones(len(p))]), mu + b, lam)
        q, c = qc[:, :f], qc[:, f]
    seconds = time.perf_counter() - start
    ones_u, ones_a = np.ones((len(p), 1)), np.ones((len(q), 1))
    return Factors(
        name=cfg.name,
        params=cfg.params(global_mean=mu),
        user_factors=np.hstack([p, b[:, None], ones_u]).astype(np.float32),
        artist_factors=np.hstack([q, ones_a, (c + mu)[:, None]]).astype(np.float32),
        fit_seconds=seconds,
    )


def _ridge_rows(r: sp.csr_matrix, other: np.ndarray, offset: np.ndarray, lam: float, nnz_block: int = 16_384):
    """Solve, for every row i of ``r``, ``(Y_i' Y_i + lam n_i I) x_i = Y_i' (r_i - offset_i)``.

    ``Y_i`` is ``other`` (float64, n_cols x k) restricted to row i's observed columns, ``n_i`` their
    number (ALS-WR's weighted lambda). Rows are taken in blocks of about ``nnz_block`` observed
    entries, so memory stays at ``nnz_block * k * k`` floats whatever the matrix size. Rows
    without entries get x = 0. Returns float64, n_rows x k.
    """
    n_rows, k = r.shape[0], other.shape[1]
    out = np.zeros((n_rows, k))
    counts = np.diff(r.indptr)
    cuts = np.unique(np.searchsorted(r.indptr, np.arange(0, r.nnz, nnz_block), side="right") - 1)
    bounds = np.append(cuts, n_rows)
    eye = np.eye(k)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = np.arange(lo, hi)
        rows = rows[counts[rows] > 0]
        if not len(rows):
            continue
        s, e = r.indptr[lo], r.indptr[hi]
        cols = r.indices[s:e]
        y = other[cols]
        target = r.data[s:e] - offset[cols]
        starts = r.indptr[rows] - s
        gram = np.add.reduceat(y[:, :, None] * y[:, None, :], starts, axis=0)
        rhs = np.add.reduceat(y * target[:, None], starts, axis=0)
        gram += lam * counts[rows, None, None] * eye
        out[rows] = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    return out
