"""LSA: truncated SVD of the weighted matrix (scipy ``svds``).

User factors are the left singular vectors, artist factors the right ones scaled by the singular
values, so ``user @ artist.T`` is the rank-``factors`` reconstruction and artist cosines are
those of LSA.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from scipy.sparse.linalg import svds

from tasks.contracts import Factors
from tasks.errors import RecsError
from tasks.models.base import BaseModelConfig


class LSAConfig(BaseModelConfig):
    """Truncated SVD of the weighted matrix."""

    name: Literal["lsa"] = "lsa"
    factors: int = Field(64, ge=1, description="singular vectors kept (< min(users, artists))")

    def fit_scorer(self, train: sp.csr_matrix) -> Factors:
        k = self.factors
        if k >= min(train.shape):
            raise RecsError(f"lsa needs factors < min(users, artists) = {min(train.shape)}, got {k}; lower factors")
        start = time.perf_counter()
        u, s, vt = svds(train, k=k, random_state=self.random_state)
        seconds = time.perf_counter() - start
        order = np.argsort(s)[::-1]  # svds returns ascending singular values; keep the strongest first
        return Factors(
            name=self.name,
            params=self.params(),
            user_factors=np.ascontiguousarray(u[:, order], dtype=np.float32),
            artist_factors=np.ascontiguousarray(vt[order].T * s[order], dtype=np.float32),
            fit_seconds=seconds,
        )
