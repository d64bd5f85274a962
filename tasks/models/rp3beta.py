"""RP3beta (Paudel et al. 2017; as Dacrema et al. 2019 implement it): a three-step random walk
user -> artist -> user -> artist, its arrival divided by the arrival artist's popularity.

On the weighted matrix X (users x artists) the artists x artists weights are

    W_ij = Σ_u P(u|i)^α · P(j|u)^α / pop(j)^β,   P(u|i) = x_ui / Σ_u x_ui,   P(j|u) = x_uj / Σ_j x_uj,

with ``pop(j)`` the artist's listeners (users with a non-zero entry). The walk runs on the
weighted confidences, not on a binarised X, so a user's heavier listening carries more of the
walk; binarised plays are the special case every ``x_ui`` equal. As in Dacrema et al., the
diagonal (the walk back to the same artist) is dropped, and each row keeps its ``neighbours``
largest entries. A user's scores are ``x_u @ W``.

W is built a block of rows at a time, each block a sparse product whose size is bounded by
``BLOCK_PRODUCTS`` (the multiplications it takes, an upper bound on its non-zeros), with a
vectorised top-k per row, so no dense artists x artists matrix exists at any size: memory is the
kept ``n_artists x neighbours`` entries (300K x 100: 30M) plus one block.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from tasks.errors import RecsError
from tasks.models.base import BaseModelConfig

# Multiplications per block of W's rows: 8M, so a block's sparse product and its sort keys stay
# within a few hundred MB
BLOCK_PRODUCTS = 1 << 23


class RP3betaConfig(BaseModelConfig):
    """RP3beta: random-walk item-item weights, popularity-discounted, ``neighbours`` per artist."""

    name: Literal["rp3beta"] = "rp3beta"
    alpha: float = Field(1.0, ge=0, description="exponent α on both transition probabilities")
    beta: float = Field(0.25, ge=0, description="exponent β of the arrival artist's listeners dividing the weight")
    neighbours: int = Field(100, ge=1, description="largest weights kept per artist")

    def fit_scorer(self, train: sp.csr_matrix) -> RP3beta:
        return fit_rp3beta(train, self)


class RP3beta:
    """A fitted RP3beta ``Scorer``.

    ``weights``: W, CSR, artists x artists, float32, at most ``neighbours`` per row, zero diagonal.
    ``score(users, heard)`` is ``heard @ W``; ``heard`` is the users' rows of the matrix it was
    fitted on (the weighted confidences, as the pipeline passes it).
    """

    def __init__(self, name: str, params: dict, weights: sp.csr_matrix, fit_seconds: float):
        self.name = name
        self.params = params
        self.weights = weights
        self.fit_seconds = fit_seconds

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        return self.sparse_score(users, heard).toarray()

    def sparse_score(self, users: np.ndarray, heard: sp.csr_matrix) -> sp.csr_matrix:
        """``score`` without the zeros: CSR, len(users) x artists, float32 (the two-stage blend's input)."""
        return sp.csr_matrix(sp.csr_matrix(heard, dtype=np.float32) @ self.weights)


def _row_normalised(x: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """``x`` (CSR, float64) with each row divided by its sum, then raised to ``alpha``."""
    sums = np.asarray(x.sum(axis=1)).ravel()
    out = x.copy()
    out.data /= np.repeat(sums, np.diff(x.indptr))
    out.data **= alpha
    return out


def top_k_rows(block: sp.csr_matrix, first_row: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` largest positive entries of each row of ``block`` (CSR, rows ``first_row``... of an
    artists x artists matrix), the diagonal left out; ties to the lower column. Returns
    ``(rows, columns, values)``: int64, int64, float64 of the kept entries, in row order."""
    rows = np.repeat(np.arange(first_row, first_row + block.shape[0]), np.diff(block.indptr))
    cols, vals = block.indices.astype(np.int64), block.data
    keep = (cols != rows) & (vals > 0)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows - first_row, minlength=block.shape[0])
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    best = rank < k
    return rows[best], cols[best], vals[best]


def rp3beta_weights(train: sp.csr_matrix, alpha: float, beta: float, k: int) -> sp.csr_matrix:
    """W of RP3beta on ``train`` (CSR, users x artists, non-negative confidences): CSR, artists x
    artists, float32, the ``k`` largest per row, zero diagonal."""
    x = sp.csr_matrix(train, dtype=np.float64)
    x.eliminate_zeros()
    n = x.shape[1]
    to_artist = _row_normalised(x, alpha)  # P(j|u)^α: users x artists
    to_user = _row_normalised(x.T.tocsr(), alpha)  # P(u|i)^α: artists x users
    listeners = np.bincount(x.indices, minlength=n).astype(np.float64)
    discount = np.where(listeners > 0, np.maximum(listeners, 1.0) ** -beta, 0.0)
    # a row's multiplications: the summed history lengths of its listeners; blocks cut where
    # their running total crosses a multiple of BLOCK_PRODUCTS
    history = np.diff(x.indptr).astype(np.float64)
    work = np.bincount(np.repeat(np.arange(n), np.diff(to_user.indptr)), history[to_user.indices], minlength=n)
    before = np.cumsum(work) - work
    cuts = np.flatnonzero(np.diff(before // BLOCK_PRODUCTS)) + 1
    bounds = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    counts, cols, vals = [], [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        block = (to_user[lo:hi] @ to_artist).tocsr()
        block.data *= discount[block.indices]
        rows, c, v = top_k_rows(block, int(lo), k)
        # kept compact (int32 / float32) and in row order, so CSR is built without a COO copy
        counts.append(np.bincount(rows - lo, minlength=hi - lo))
        cols.append(c.astype(np.int32))
        vals.append(v.astype(np.float32))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    out = sp.csr_matrix((np.concatenate(vals), np.concatenate(cols), indptr), shape=(n, n))
    out.sort_indices()
    return out


def fit_rp3beta(train: sp.csr_matrix, cfg: RP3betaConfig) -> RP3beta:
    """Fit RP3beta on ``train`` (CSR, users x artists, float32 weighted confidences)."""
    if not sp.issparse(train) or train.nnz == 0:
        raise RecsError("RP3beta needs a non-empty sparse users x artists matrix; check the data filters")
    if not np.isfinite(train.data).all() or (train.data < 0).any():
        raise RecsError(
            "RP3beta: the weighted matrix has negative, NaN or infinite values, which are no transition "
            "probabilities; use a non-negative weighting (log, bm25, tfidf or none)"
        )
    start = time.perf_counter()
    weights = rp3beta_weights(train, cfg.alpha, cfg.beta, cfg.neighbours)
    return RP3beta(cfg.name, cfg.params(), weights, time.perf_counter() - start)
