"""A cosine blend of factor models: related artists by a weighted mean of several models' cosines.

Each part (ALS, LSA, ...) is fitted on its own weighting of the raw play counts. For related
artists, each part's artist factors are scaled to unit length and by ``sqrt(share)`` (``shares``
normalised to sum 1) and concatenated (``similarity_factors``), so for two artists ``a``, ``b``

    similarity[a] @ similarity[b] = sum_p share_p * cos_p(a, b)

exactly, and every row is already unit length. One nearest-neighbour index over those rows and the
exact rescoring of its candidates therefore give the blended cosine with no artists x artists
matrix, at any catalogue size. On HetRec 2K, ALS gives tag-coherent lists and a low-rank LSA keeps
a relabelled artist's two halves together; their blend does both better than either
(docs/models.md, "How the related-artists model was chosen").

As a user scorer (the run evaluates it like any model) the blend is the sum of its parts' scores
weighted by the shares: user and artist factors are the parts' own, concatenated and scaled by
``sqrt(share)``. The parts stay available (``CosineBlend.parts``), so a run publishes each part's
own related lists beside the blend's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field, model_validator

from tasks.contracts import Factors
from tasks.errors import RecsError
from tasks.index import normalise
from tasks.models.base import BaseModelConfig, fit
from tasks.models.implicit_mf import ALSConfig, BPRConfig, LMFConfig
from tasks.models.lsa import LSAConfig
from tasks.weight import WeightConfig, weight

# The models with artist factors, discriminated on ``name``.
FactorPart = Annotated[ALSConfig | BPRConfig | LMFConfig | LSAConfig, Field(discriminator="name")]


class CosineBlendConfig(BaseModelConfig):
    """Factor models whose artist cosines are mixed by ``shares``; each part weights the raw plays
    by its own ``weight`` (the blend's own ``weight`` must stay ``none``: it passes the raw plays)."""

    name: Literal["cosine_blend"] = "cosine_blend"
    weight: WeightConfig = Field(
        default_factory=lambda: WeightConfig(scheme="none"),
        description="must be none: each part weights the raw play counts itself",
    )
    # Chosen on HetRec 2K by tag coherence@10 and label-split synonyms on validation seeds
    # (docs/models.md "How the related-artists model was chosen"): ALS for coherent lists, a
    # 24-factor LSA that keeps a relabelled artist's halves together, both on BM25 with b = 1.
    # ALS's 15 passes (searched at 30) lose no coherence or synonym on those validation seeds
    # (benchmarks/related_quality.py --als-iterations) and halve the fit.
    parts: list[FactorPart] = Field(
        default_factory=lambda: _shipped_parts(),
        min_length=2,
        description="the factor models, each with its own weight",
    )
    shares: list[float] = Field(
        default_factory=lambda: [0.6, 0.4], description="each part's share of the mixed cosine (normalised to sum 1)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> CosineBlendConfig:
        if self.weight.scheme != "none":
            raise ValueError("cosine_blend passes raw plays to its parts; set its weight.scheme to none")
        if len(self.shares) != len(self.parts) or min(self.shares) < 0 or sum(self.shares) <= 0:
            raise ValueError("cosine_blend needs one non-negative share per part, not all zero")
        if len({part.name for part in self.parts}) != len(self.parts):
            raise ValueError("cosine_blend's parts must be different models (each publishes under its name)")
        # the parts follow the blend's seed, so one random_state changes the whole model
        self.parts = [
            part
            if part.random_state == self.random_state
            else part.model_copy(update={"random_state": self.random_state})
            for part in self.parts
        ]
        return self

    def fit_scorer(self, train: sp.csr_matrix) -> CosineBlend:
        return fit_cosine_blend(train, self)


def _shipped_parts() -> list[FactorPart]:
    return [
        ALSConfig(factors=24, iterations=15, weight=WeightConfig(scheme="bm25", k1=10.0, b=1.0)),
        LSAConfig(factors=24, weight=WeightConfig(scheme="bm25", k1=50.0, b=1.0)),
    ]


@dataclass(frozen=True)
class CosineBlend(Factors):
    """``Factors`` of the blend (see the module docstring): the fitted ``parts`` in the
    configuration's order and the rows related artists are compared by (float32, n_artists x sum
    of the parts' factors, unit length)."""

    parts: tuple[Factors, ...] = ()
    blended: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))

    @property
    def similarity_factors(self) -> np.ndarray:
        return self.blended


def fit_cosine_blend(plays: sp.csr_matrix, cfg: CosineBlendConfig) -> CosineBlend:
    """Fit every part of ``cfg`` on its own weighting of ``plays`` (CSR, users x artists, raw play
    counts); see the module docstring for how they are joined."""
    if not sp.issparse(plays) or plays.nnz == 0:
        raise RecsError("cosine_blend needs a non-empty sparse users x artists matrix; check the data filters")
    start = time.perf_counter()
    parts = []
    for part in cfg.parts:
        fitted = fit(weight(plays, part.weight), part)
        if not isinstance(fitted, Factors):  # FactorPart only admits factor models
            raise RecsError(f"cosine_blend part {part.name!r} has no artist factors; use als, bpr, lmf or lsa")
        parts.append(fitted)
    scale = _scale(cfg.shares)

    def joined(side: str) -> np.ndarray:
        return np.ascontiguousarray(np.hstack([s * getattr(p, side) for s, p in zip(scale, parts)]), np.float32)

    return CosineBlend(
        name=cfg.name,
        params=cfg.params(parts=[p.params for p in parts]),
        user_factors=joined("user_factors"),
        artist_factors=joined("artist_factors"),
        fit_seconds=time.perf_counter() - start,
        parts=tuple(parts),
        blended=blend_rows(parts, cfg.shares),
    )


def _scale(shares: list[float]) -> np.ndarray:
    """``sqrt(share)`` of each part, the shares normalised to sum 1 (float32)."""
    return np.sqrt(np.asarray(shares, dtype=np.float64) / sum(shares)).astype(np.float32)


def blend_rows(parts: list[Factors], shares: list[float]) -> np.ndarray:
    """The rows related artists are compared by: each part's unit artist factors times
    ``sqrt(share)``, joined (float32, n_artists x sum of the parts' factors, C-contiguous)."""
    rows = np.hstack([s * normalise(p.artist_factors) for s, p in zip(_scale(shares), parts)])
    return np.ascontiguousarray(rows, dtype=np.float32)
