"""What every model shares: its configuration's common fields and the one way to fit it.

A model's configuration *is* its parameters: each family module defines one pydantic class per
model (``name`` a literal, only the fields that model uses, each described) and its ``fit``;
``tasks.models.registry`` joins them as one union discriminated on ``name``. ``fit`` below is
the single entry point, used by the flow, the blend (for its parts) and tuning alike.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from threadpoolctl import threadpool_limits

from tasks.contracts import Scorer, StageConfig
from tasks.errors import RecsError
from tasks.weight import WeightConfig


class BaseModelConfig(StageConfig):
    """Fields every model has: how its input is weighted and its seed."""

    name: str
    weight: WeightConfig = Field(
        default_factory=WeightConfig, description="how raw play counts become this model's confidences"
    )
    random_state: int = Field(42, description="seed: the same data and seed give the same model")

    # True for a model fitted on the observed values as ratings (explicit MF): its RMSE compares
    # predictions with the weighted held-out plays rather than with 0/1 preferences.
    predicts_weights: ClassVar[bool] = False

    def fit_scorer(self, train: sp.csr_matrix) -> Scorer:
        """Fit on ``train`` (CSR, users x artists, float32 confidences); called through ``fit``."""
        raise NotImplementedError

    def params(self, **extra: Any) -> dict[str, Any]:
        """The hyper-parameters as JSON-ready values (what ``runs`` and the report record)."""
        return self.model_dump(mode="json") | extra


def fit(train: sp.csr_matrix, cfg: BaseModelConfig) -> Scorer:
    """Fit the model ``cfg`` describes on ``train`` (CSR, users x artists, float32 weighted
    confidences). The same ``train`` and ``cfg.random_state`` give the same model."""
    if not sp.issparse(train) or train.format != "csr":
        raise RecsError(f"fit() needs a scipy CSR matrix (users x artists), got {type(train).__name__}")
    if train.nnz == 0:
        raise RecsError("the training matrix is empty; check the data filters (min_listeners, min_artists)")
    # implicit parallelises itself (and warns otherwise); a multi-threaded BLAS underneath only
    # oversubscribes the cores. The limit covers model construction too, where implicit checks it.
    with threadpool_limits(1, "blas"):
        return cfg.fit_scorer(train.astype(np.float32))
