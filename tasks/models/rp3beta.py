"""RP3beta (Paudel et al. 2017; as Dacrema et al. 2019 implement it): a three-step random walk
user -> artist -> user -> artist, its arrival divided by the arrival artist's popularity.

On the weighted matrix X (users x artists) the artists x artists weights are

    W_ij = Σ_u P(u|i)^α · P(j|u)^α / pop(j)^β,   P(u|i) = x_ui / Σ_u x_ui,   P(j|u) = x_uj / Σ_j x_uj,

with ``pop(j)`` the artist's listeners (users with a non-zero entry). The walk runs on the
weighted confidences, not on a binarised X, so a user's heavier listening carries more of the
walk; binarised plays are the special case every ``x_ui`` equal. As in Dacrema et al., the
diagonal (the walk back to the same artist) is dropped, and each row keeps its ``neighbours``
largest entries. A user's scores are ``x_u @ W``.

W is built a row at a time in compiled code (``tasks.sparse_rows.top_k_of_product``): the row's walk accumulated in
a dense vector over its listeners' histories, then its ``neighbours`` largest kept with a bounded
heap, the rows split over the cores. scipy's sparse product of the same blocks materialised every
pair of co-listened artists and sorted them all to keep a few (185 s of the default blend's 243 s
fit at a quarter of Last.fm 360K, docs/performance.md). No dense artists x artists matrix exists
at any size: memory is the kept ``n_artists x neighbours`` entries (300K x 100: 30M) plus one
artists-long vector per core.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from tasks.errors import RecsError
from tasks.models.base import BaseModelConfig
from tasks.sparse_rows import top_k_of_product


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
        return (self.history(heard) @ self.weights).toarray()

    def history(self, heard: sp.csr_matrix) -> sp.csr_matrix:
        """``heard`` as the rows ``score = history(heard) @ weights`` takes: CSR, float32 (the
        two-stage blend's input)."""
        return sp.csr_matrix(heard, dtype=np.float32)


def _row_normalised(x: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """``x`` (CSR, float64) with each row divided by its sum, then raised to ``alpha``."""
    sums = np.asarray(x.sum(axis=1)).ravel()
    out = x.copy()
    out.data /= np.repeat(sums, np.diff(x.indptr))
    out.data **= alpha
    return out


def rp3beta_weights(
    train: sp.csr_matrix, alpha: float, beta: float, k: int, threads: int | None = None
) -> sp.csr_matrix:
    """W of RP3beta on ``train`` (CSR, users x artists, non-negative confidences): CSR, artists x
    artists, float32, the ``k`` largest per row (ties to the lower artist), zero diagonal. Rows are
    split over ``threads`` (default: every core) in runs of about equal multiplications."""
    x = sp.csr_matrix(train, dtype=np.float64)
    x.eliminate_zeros()
    n = x.shape[1]
    to_artist = _row_normalised(x, alpha)  # P(j|u)^α: users x artists
    to_user = _row_normalised(x.T.tocsr(), alpha)  # P(u|i)^α: artists x users
    listeners = np.bincount(x.indices, minlength=n).astype(np.float64)
    discount = np.where(listeners > 0, np.maximum(listeners, 1.0) ** -beta, 0.0)
    return top_k_of_product(to_user, to_artist, k, discount, threads=threads)


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
