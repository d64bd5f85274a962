"""A blend of a factor model with item-kNN: the shipped user model.

The two scores live on unrelated scales (factor dot products vs summed similarities), so each is
standardised per user over the artists the user has not heard (mean 0, standard deviation 1)
before mixing: ``blend_weight * z(factor) + (1 - blend_weight) * z(item-kNN)``. Heard artists are
left out of the statistics because item-kNN scores them highest (their self-similarity) and they
are never recommended anyway.

Both parts are sparse or low-rank, so the blend scales like its parts: factors are users x f and
artists x f, the kNN similarity keeps ``neighbours`` entries per artist.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Discriminator, Field, Tag, model_validator

from tasks.contracts import Scorer
from tasks.errors import RecsError
from tasks.models.base import BaseModelConfig, fit
from tasks.models.implicit_mf import ALSConfig, BPRConfig, LMFConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.lsa import LSAConfig


def _factor_name(value: object) -> str:
    """The factor part's model name; ALS when a config file leaves it out."""
    return value.get("name", "als") if isinstance(value, dict) else getattr(value, "name", "als")


FactorPart = Annotated[
    Annotated[ALSConfig, Tag("als")]
    | Annotated[BPRConfig, Tag("bpr")]
    | Annotated[LMFConfig, Tag("lmf")]
    | Annotated[LSAConfig, Tag("lsa")],
    Discriminator(_factor_name),
]


class BlendConfig(BaseModelConfig):
    """A factor model and item-kNN, each standardised per user, mixed by ``blend_weight``.

    Both parts are fitted on the blend's weighted matrix with the blend's seed: their own
    ``weight`` and ``random_state`` are set to the blend's.
    """

    name: Literal["blend"] = "blend"
    factor: FactorPart = Field(default_factory=ALSConfig, description="the factor model")
    knn: ItemKNNConfig = Field(default_factory=ItemKNNConfig, description="the item-kNN model")
    blend_weight: float = Field(0.5, ge=0, le=1, description="share of the factor model in the mix")

    @model_validator(mode="after")
    def _parts_follow_the_blend(self) -> BlendConfig:
        shared = {"weight": self.weight, "random_state": self.random_state}
        for part in ("factor", "knn"):
            current = getattr(self, part)
            if any(getattr(current, k) != v for k, v in shared.items()):
                setattr(self, part, current.model_copy(update=shared))
        return self

    def fit_scorer(self, train: sp.csr_matrix) -> Blend:
        return fit_blend(train, self)


def standardise(scores: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
    """Per row of ``scores`` (float32, users x artists): subtract the mean and divide by the
    standard deviation of the row's entries outside ``heard`` (CSR, same shape). In place;
    returns ``scores``. A constant row becomes 0."""
    n_rows, n_cols = scores.shape
    rows = np.repeat(np.arange(n_rows), np.diff(heard.indptr))
    at_heard = scores[rows, heard.indices].astype(np.float64)
    n = np.maximum(n_cols - np.diff(heard.indptr), 1)
    total = scores.sum(axis=1, dtype=np.float64) - np.bincount(rows, at_heard, minlength=n_rows)
    squares = np.einsum("ij,ij->i", scores, scores, dtype=np.float64) - np.bincount(rows, at_heard**2, minlength=n_rows)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    std[std < 1e-12] = 1.0
    scores -= mean[:, None].astype(np.float32)
    scores /= std[:, None].astype(np.float32)
    return scores


class Blend:
    """``Scorer`` mixing a factor model and item-kNN, each standardised per user."""

    name = "blend"

    def __init__(self, params: dict, factor: Scorer, knn: Scorer, weight: float, fit_seconds: float):
        self.params = params
        self.factor = factor
        self.knn = knn
        self.weight = weight
        self.fit_seconds = fit_seconds

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        heard = sp.csr_matrix(heard)
        a = standardise(np.asarray(self.factor.score(users, heard), dtype=np.float32), heard)
        b = standardise(self.knn.score(users, heard), heard)
        a *= self.weight
        a += (1.0 - self.weight) * b
        return a


def fit_blend(train: sp.csr_matrix, cfg: BlendConfig) -> Blend:
    """Fit ``cfg.factor`` and ``cfg.knn`` on the same ``train`` (CSR, users x artists, float32
    confidences), mixed by ``cfg.blend_weight``."""
    if not sp.issparse(train) or train.nnz == 0:
        raise RecsError("blend needs a non-empty sparse users x artists matrix; check the data filters")
    start = time.perf_counter()
    factor = fit(train, cfg.factor)
    knn = fit(train, cfg.knn)
    params = cfg.params(factor=factor.params, knn=knn.params)
    return Blend(params, factor, knn, cfg.blend_weight, time.perf_counter() - start)
