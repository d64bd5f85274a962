"""implicit's factor models on the confidences (implicit feedback): ``als``, ``bpr``, ``lmf``.

- ``als``: ``AlternatingLeastSquares`` (Hu, Koren & Volinsky 2008).
- ``bpr``, ``lmf``: ``BayesianPersonalizedRanking`` / ``LogisticMatrixFactorization``, fitted
  single-threaded so that a seed gives the same factors (their multi-threaded SGD is racy).

Each returns ``Factors`` (user factors, artist factors, fit seconds, params).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from tasks.contracts import Factors
from tasks.models.base import BaseModelConfig

if TYPE_CHECKING:  # the annotation only: configs load without implicit, which is imported to build a model
    from implicit.cpu.als import AlternatingLeastSquares


class FactorParams(BaseModelConfig):
    """Fields every latent-factor model has."""

    factors: int = Field(64, ge=1, description="latent dimensions")
    regularization: float = Field(0.01, ge=0, description="L2 penalty on the factors")
    iterations: int = Field(15, ge=1, description="passes over the data")


class ALSParams(FactorParams):
    """Alternating least squares on confidences (shared with Spark's ALS)."""

    alpha: float = Field(1.0, description="confidence scale: confidence = alpha * weighted plays")


class ALSConfig(ALSParams):
    """implicit's ``AlternatingLeastSquares``."""

    name: Literal["als"] = "als"
    cg_steps: int = Field(
        3,
        ge=1,
        description="conjugate-gradient steps per row and pass (implicit's default 3); each costs a pass over its plays",
    )

    def implicit_model(self, calculate_training_loss: bool = False) -> AlternatingLeastSquares:
        """implicit's (unfitted) CPU ``AlternatingLeastSquares`` with these settings; construct it
        under ``threadpool_limits(1, "blas")``, where implicit checks the BLAS."""
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            calculate_training_loss=calculate_training_loss,
        )
        # implicit's CPU ALS takes cg_steps as an attribute only (its solver reads it at fit)
        model.cg_steps = self.cg_steps
        return model

    def fit_scorer(self, train: sp.csr_matrix) -> Factors:
        return fit_implicit(self.implicit_model(), train, self)


class SGDParams(FactorParams):
    """implicit's SGD models take the same hyper-parameters."""

    learning_rate: float = Field(0.01, gt=0, description="SGD step size")

    def fit_scorer(self, train: sp.csr_matrix) -> Factors:
        from implicit.cpu.bpr import BayesianPersonalizedRanking
        from implicit.cpu.lmf import LogisticMatrixFactorization

        model_class = {"bpr": BayesianPersonalizedRanking, "lmf": LogisticMatrixFactorization}[self.name]
        model = model_class(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            num_threads=1,
            random_state=self.random_state,
        )
        return fit_implicit(model, train, self)


class BPRConfig(SGDParams):
    """implicit's ``BayesianPersonalizedRanking``."""

    name: Literal["bpr"] = "bpr"


class LMFConfig(SGDParams):
    """implicit's ``LogisticMatrixFactorization``."""

    name: Literal["lmf"] = "lmf"


def fit_implicit(model, train: sp.csr_matrix, cfg: BaseModelConfig) -> Factors:
    """Fit an implicit CPU model and wrap its factors; implicit's tqdm progress bar is shown only
    when stderr is a terminal (its carriage returns would litter redirected output and logs)."""
    start = time.perf_counter()
    model.fit(train, show_progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    return Factors(
        name=cfg.name,
        params=cfg.params(),
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        artist_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
        fit_seconds=seconds,
    )
