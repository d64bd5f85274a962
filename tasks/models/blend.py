"""A blend of any models (factor models, item-kNN, EASE, RP3beta, ...) with tuned weights: the
shipped user model.

The parts' scores live on unrelated scales (factor dot products vs summed similarities), so each
is standardised per user over the artists the user has not heard (mean 0, standard deviation 1)
before mixing: ``sum_i w_i * z(part_i)``, the weights ``w_i >= 0`` normalised to sum 1. Heard
artists are left out of the statistics because item-kNN scores them highest (their
self-similarity) and they are never recommended anyway; so are ``-inf`` scores (the artists EASE
leaves out of its restricted catalogue), which stay ``-inf`` in the mix.

With factor, item-kNN or RP3beta parts every part is sparse or low-rank, so the blend scales like
its parts: factors are users x f and artists x f, the item weights keep ``neighbours`` entries
per artist. EASE's weights are dense on at most ``max_artists`` artists.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field, model_validator

from tasks.contracts import Scorer, StageConfig
from tasks.errors import RecsError
from tasks.models.base import BaseModelConfig, fit
from tasks.models.ease import EASEConfig
from tasks.models.explicit import ExplicitConfig
from tasks.models.implicit_mf import ALSConfig, BPRConfig, LMFConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.lsa import LSAConfig
from tasks.models.rp3beta import RP3betaConfig
from tasks.models.spark_als import SparkALSConfig

# Every model but the blend itself, discriminated on ``name``: a part validates as its own
# model's class (``tasks.models.registry.ModelConfig`` adds the blend to it).
PartModel = Annotated[
    ALSConfig
    | BPRConfig
    | LMFConfig
    | LSAConfig
    | ExplicitConfig
    | ItemKNNConfig
    | EASEConfig
    | RP3betaConfig
    | SparkALSConfig,
    Field(discriminator="name"),
]


class BlendPart(StageConfig):
    """One model of a blend and its share of the mix (normalised over the parts by the blend)."""

    model: PartModel = Field(description="the part's model (any model but a blend)")
    weight: float = Field(ge=0, description="share of this part in the mix, before normalising to sum 1")


def _default_parts() -> list[BlendPart]:
    return [BlendPart(model=ALSConfig(), weight=0.5), BlendPart(model=ItemKNNConfig(), weight=0.5)]


class BlendConfig(BaseModelConfig):
    """Models, each standardised per user, mixed by their weights (normalised to sum 1).

    Every part is fitted on the blend's weighted matrix with the blend's seed: its own ``weight``
    (weighting) and ``random_state`` are set to the blend's.
    """

    name: Literal["blend"] = "blend"
    parts: list[BlendPart] = Field(
        default_factory=_default_parts, min_length=1, description="the models mixed and their shares"
    )

    @model_validator(mode="after")
    def _normalise_and_follow_the_blend(self) -> BlendConfig:
        total = sum(p.weight for p in self.parts)
        if total <= 0:
            raise ValueError("the blend's part weights sum to 0; give at least one part a weight > 0")
        shared = {"weight": self.weight, "random_state": self.random_state}
        parts = []
        for part in self.parts:
            model = part.model
            if any(getattr(model, k) != v for k, v in shared.items()):
                model = model.model_copy(update=shared)
            # weights already summing to 1 are kept as given: a dumped config reads back equal
            share = part.weight if abs(total - 1.0) < 1e-9 else part.weight / total
            parts.append(BlendPart(model=model, weight=share))
        self.parts = parts
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
    """``Scorer`` mixing fitted models, each standardised per user. ``parts``: (weight, fitted
    part) pairs, the weights summing to 1."""

    name = "blend"

    def __init__(self, params: dict, parts: list[tuple[float, Scorer]], fit_seconds: float):
        self.params = params
        self.parts = parts
        self.fit_seconds = fit_seconds

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        """Scores of ``users`` (int codes) for every artist, float32 users x artists; ``heard`` is
        their rows of the train matrix (CSR). An artist any part scores ``-inf`` stays ``-inf``."""
        heard = sp.csr_matrix(heard)
        mix: np.ndarray | None = None
        excluded: np.ndarray | None = None
        for w, part in self.parts:
            z = standardise(np.asarray(part.score(users, heard), dtype=np.float32), heard)
            out = np.isneginf(z)
            z[out] = 0.0  # 0 x -inf would be NaN; these artists are set to -inf below
            z *= w
            if mix is None or excluded is None:
                mix, excluded = z, out
            else:
                mix += z
                excluded |= out
        assert mix is not None and excluded is not None  # BlendConfig has at least one part
        mix[excluded] = -np.inf
        return mix


def fit_blend(train: sp.csr_matrix, cfg: BlendConfig) -> Blend:
    """Fit every part of ``cfg`` on the same ``train`` (CSR, users x artists, float32
    confidences), mixed by the parts' normalised weights."""
    if not sp.issparse(train) or train.nnz == 0:
        raise RecsError("blend needs a non-empty sparse users x artists matrix; check the data filters")
    start = time.perf_counter()
    parts = [(p.weight, fit(train, p.model)) for p in cfg.parts]
    params = cfg.params(parts=[{"model": scorer.params, "weight": w} for w, scorer in parts])
    return Blend(params, parts, time.perf_counter() - start)
