"""The retrain flow's parameters: one typed config composed from the stages' own configs, rendered
by the Prefect UI as a form (a model shows only its own fields).

The same model loads from a YAML/TOML file (``RetrainConfig.from_file``) and is overridden by
CLI flags. Defaults are the tuned, shipped configuration.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from storage.config import StorageConfig
from tasks.contracts import StageConfig
from tasks.data.datasets import DataConfig
from tasks.evaluate import MAX_N, EvalConfig
from tasks.files import DATA_DIR
from tasks.index import IndexConfig
from tasks.models.blend import BlendConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.registry import ModelConfig
from tasks.spark.config import SparkConfig
from tasks.transient import RetryConfig
from tasks.weight import WeightConfig


class RetrainConfig(StageConfig):
    """Everything one retrain needs."""

    data: DataConfig = DataConfig()
    engine: Literal["local", "spark"] = Field(
        "local",
        description="local: pandas/NumPy/implicit in this process; spark: parse to publish on Spark (see spark)",
    )
    spark: SparkConfig = Field(SparkConfig(), description="engine: spark only: where it runs, its ALS model")
    # Chosen on HetRec 2K by tag coherence@10 and label-split synonyms (tests/test_related_quality.py,
    # docs/models.md "How the related-artists model was chosen"): few factors keep a split
    # label's halves together.
    related_model: ModelConfig = Field(
        ALSConfig(factors=24, iterations=30, weight=WeightConfig(scheme="bm25", k1=50.0, b=1.0)),
        description="the factor model related artists come from (nearest artists in its factor space)",
    )
    # Tuned on HetRec 2K by `recs tune` (validation split of the train part; docs/models.md
    # "Evaluation and tuning"): ALS on log1p(plays) blended 0.6/0.4 with BM25 item-kNN, each part
    # standardised per user. No challenger beats it on validation by more than 1 %, so `recs tune`
    # keeps it.
    user_model: ModelConfig = Field(
        BlendConfig(
            weight=WeightConfig(scheme="log", alpha=1.0, eps=1.0),
            factor=ALSConfig(factors=32, regularization=0.3, alpha=1.0, iterations=15),
            knn=ItemKNNConfig(similarity="bm25", neighbours=200, k1=0.5, b=0.6),
            blend_weight=0.6,
        ),
        description="the model per-user recommendations come from",
    )
    index: IndexConfig = IndexConfig()
    n: int = Field(10, ge=1, le=MAX_N, description="length of related-artist and user top-N lists")
    eval: EvalConfig = EvalConfig()
    storage: StorageConfig = StorageConfig()
    work_dir: Path = DATA_DIR / "runs"
    retry: RetryConfig = RetryConfig()

    @classmethod
    def from_file(cls, path: Path) -> RetrainConfig:
        """Load from ``.yaml``/``.yml``/``.toml``; unknown keys are an error."""
        text = Path(path).read_text()
        raw = tomllib.loads(text) if Path(path).suffix == ".toml" else yaml.safe_load(text)
        return cls.model_validate(raw or {})
