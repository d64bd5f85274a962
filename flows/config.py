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
from tasks.models.blend import BlendConfig, BlendPart
from tasks.models.cosine_blend import CosineBlendConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.registry import ModelConfig
from tasks.models.rp3beta import RP3betaConfig
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
    # docs/models.md "How the related-artists model was chosen"): ALS and LSA cosines blended
    # (its defaults); each part's related lists are published too.
    related_model: ModelConfig = Field(
        default_factory=CosineBlendConfig,
        description="the factor model related artists come from (nearest artists in its factor space)",
    )
    # Tuned on HetRec 2K by `recs tune` (Optuna, 222 trials of the ALS + item-kNN + RP3beta blend on
    # validation folds of the train part; docs/models.md "Evaluation and tuning"), exactly as its
    # best.yaml wrote it: ALS, BM25 item-kNN and RP3beta on log1p(plays / 0.40), each standardised
    # per user, mixed 0.61/0.30/0.09. Every part is sparse or low-rank, so it fits at Last.fm 360K
    # size too (no dense EASE inverse). ALS keeps its 27 passes: fewer lose validation precision on
    # every fold (benchmarks/iterations.py, docs/models.md "ALS passes").
    user_model: ModelConfig = Field(
        BlendConfig(
            weight=WeightConfig(scheme="log", alpha=1.0, eps=0.4004779170395047),
            parts=[
                BlendPart(
                    model=ALSConfig(
                        factors=19, regularization=0.22442963561336007, alpha=1.7290460075030514, iterations=27
                    ),
                    weight=0.6144924356200718,
                ),
                BlendPart(
                    model=ItemKNNConfig(similarity="bm25", neighbours=876, k1=2.5591469811953527, b=0.9958445940264574),
                    weight=0.2986732353128183,
                ),
                BlendPart(
                    model=RP3betaConfig(alpha=0.7796971570689982, beta=0.35407930503643315, neighbours=139),
                    weight=0.08683432906710983,
                ),
            ],
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
