"""Every model the pipeline can fit, as one configuration type discriminated on ``name``.

``ModelConfig`` is the union of the families' configuration classes, so a config file (or the
Prefect UI form) for ``name: als`` accepts, and shows, only ALS's fields:

- ``als``, ``bpr``, ``lmf`` (``tasks.models.implicit_mf``): implicit's factor models;
- ``lsa`` (``tasks.models.lsa``): truncated SVD;
- ``explicit`` (``tasks.models.explicit``): biased MF of the observed values (ALS-WR);
- ``itemknn`` (``tasks.models.itemknn``): implicit's item-item similarities;
- ``ease`` (``tasks.models.ease``): Steck's closed-form item-item weights, on up to ``max_artists``;
- ``rp3beta`` (``tasks.models.rp3beta``): popularity-discounted random-walk item-item weights;
- ``blend`` (``tasks.models.blend``): any of the above, each standardised per user, mixed by weights;
- ``spark_als`` (``tasks.models.spark_als``): Spark MLlib's ALS.

``fit(train, cfg)`` (``tasks.models.base``) fits any of them.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

from pydantic import Field, TypeAdapter

from tasks.models.base import BaseModelConfig, fit
from tasks.models.blend import BlendConfig
from tasks.models.ease import EASEConfig
from tasks.models.explicit import ExplicitConfig
from tasks.models.implicit_mf import ALSConfig, BPRConfig, LMFConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.lsa import LSAConfig
from tasks.models.rp3beta import RP3betaConfig
from tasks.models.spark_als import SparkALSConfig

ModelConfig = Annotated[
    ALSConfig
    | BPRConfig
    | LMFConfig
    | LSAConfig
    | ExplicitConfig
    | ItemKNNConfig
    | EASEConfig
    | RP3betaConfig
    | BlendConfig
    | SparkALSConfig,
    Field(discriminator="name"),
]

# name -> configuration class
MODELS: dict[str, type[BaseModelConfig]] = {
    cls.model_fields["name"].default: cls for cls in get_args(get_args(ModelConfig)[0])
}

_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)


def model_config(raw: dict[str, Any]) -> ModelConfig:
    """The configuration class ``raw["name"]`` names, validated from ``raw`` (a config file's
    mapping or a recorded ``params``); unknown names and fields are errors."""
    return _ADAPTER.validate_python(raw)


__all__ = ["MODELS", "ModelConfig", "fit", "model_config"]
