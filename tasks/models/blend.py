"""A blend of a factor model with an item model (item-kNN, EASE or RP3beta): the shipped user
model (with item-kNN).

The two scores live on unrelated scales (factor dot products vs summed similarities), so each is
standardised per user over the artists the user has not heard (mean 0, standard deviation 1)
before mixing: ``blend_weight * z(factor) + (1 - blend_weight) * z(item model)``. Heard artists are
left out of the statistics because item-kNN scores them highest (their self-similarity) and they
are never recommended anyway; so are ``-inf`` scores (the artists EASE leaves out of its
restricted catalogue), which stay ``-inf`` in the mix.

With item-kNN or RP3beta both parts are sparse or low-rank, so the blend scales like its parts:
factors are users x f and artists x f, the item weights keep ``neighbours`` entries per artist.
EASE's weights are dense on at most ``max_artists`` artists.
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
from tasks.models.ease import EASEConfig
from tasks.models.implicit_mf import ALSConfig, BPRConfig, LMFConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.lsa import LSAConfig
from tasks.models.rp3beta import RP3betaConfig


def _part_name(default: str):
    """A part's model name, from a mapping or a config; ``default`` when a config file leaves it out."""

    def name(value: object) -> str:
        return value.get("name", default) if isinstance(value, dict) else getattr(value, "name", default)

    return name


FactorPart = Annotated[
    Annotated[ALSConfig, Tag("als")]
    | Annotated[BPRConfig, Tag("bpr")]
    | Annotated[LMFConfig, Tag("lmf")]
    | Annotated[LSAConfig, Tag("lsa")],
    Discriminator(_part_name("als")),
]

ItemPart = Annotated[
    Annotated[ItemKNNConfig, Tag("itemknn")]
    | Annotated[EASEConfig, Tag("ease")]
    | Annotated[RP3betaConfig, Tag("rp3beta")],
    Discriminator(_part_name("itemknn")),
]


class BlendConfig(BaseModelConfig):
    """A factor model and an item model, each standardised per user, mixed by ``blend_weight``.

    Both parts are fitted on the blend's weighted matrix with the blend's seed: their own
    ``weight`` and ``random_state`` are set to the blend's.
    """

    name: Literal["blend"] = "blend"
    factor: FactorPart = Field(default_factory=ALSConfig, description="the factor model")
    knn: ItemPart = Field(
        default_factory=ItemKNNConfig, description="the item model: item-kNN (when name is left out), EASE or RP3beta"
    )
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
    standard deviation of the row's entries outside ``heard`` (CSR, same shape) and not ``-inf``
    (artists the model never recommends, e.g. those EASE's restriction leaves out; they stay
    ``-inf``). In place; returns ``scores``. A constant row becomes 0."""
    n_rows, n_cols = scores.shape
    excluded = np.isneginf(scores)
    scores[excluded] = 0.0  # zeros add nothing to the sums below; counted out of n instead
    rows = np.repeat(np.arange(n_rows), np.diff(heard.indptr))
    at_heard = scores[rows, heard.indices].astype(np.float64)
    excluded_unheard = excluded.sum(axis=1) - np.bincount(rows, excluded[rows, heard.indices], minlength=n_rows)
    n = np.maximum(n_cols - np.diff(heard.indptr) - excluded_unheard, 1)
    total = scores.sum(axis=1, dtype=np.float64) - np.bincount(rows, at_heard, minlength=n_rows)
    squares = np.einsum("ij,ij->i", scores, scores, dtype=np.float64) - np.bincount(rows, at_heard**2, minlength=n_rows)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    std[std < 1e-12] = 1.0
    scores -= mean[:, None].astype(np.float32)
    scores /= std[:, None].astype(np.float32)
    scores[excluded] = -np.inf
    return scores


class Blend:
    """``Scorer`` mixing a factor model and an item model, each standardised per user."""

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
        b = standardise(np.asarray(self.knn.score(users, heard), dtype=np.float32), heard)
        excluded = np.isneginf(b)
        with np.errstate(invalid="ignore"):  # 0 x -inf when blend_weight is 1; set just below
            a *= self.weight
            a += (1.0 - self.weight) * b
        a[excluded] = -np.inf  # an artist the item model never recommends stays out of the mix
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
