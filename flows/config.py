"""The retrain flow's parameters: one typed config composed from the stages' own configs, rendered
by the Prefect UI as a form (a model shows only its own fields).

The same model loads from a YAML/TOML file (``RetrainConfig.from_file``) and is overridden by
CLI flags. Defaults are the tuned, shipped configuration.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from pydantic import Field

from storage.config import StorageConfig
from tasks.contracts import StageConfig
from tasks.data.datasets import DataConfig
from tasks.evaluate import MAX_N, EvalConfig
from tasks.files import DATA_DIR
from tasks.index import IndexConfig
from tasks.models.blend import BlendConfig, BlendPart
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNNConfig
from tasks.models.registry import ModelConfig
from tasks.models.rp3beta import RP3betaConfig
from tasks.transient import RetryConfig
from tasks.weight import WeightConfig


class RetrainConfig(StageConfig):
    """Everything one retrain needs."""

    data: DataConfig = DataConfig()
    # Chosen on HetRec 2K by tag coherence@10 and label-split synonyms (tests/test_related_quality.py,
    # docs/models.md "How the related-artists model was chosen"): few factors keep a split
    # label's halves together.
    related_model: ModelConfig = Field(
        ALSConfig(factors=24, iterations=30, weight=WeightConfig(scheme="bm25", k1=50.0, b=1.0)),
        description="the factor model related artists come from (nearest artists in its factor space)",
    )
    # Tuned on HetRec 2K by `recs tune` (Optuna, 53 trials on validation folds of the train part;
    # docs/models.md "Evaluation and tuning"), exactly as its best.yaml wrote it: ALS, BM25 item-kNN
    # and RP3beta on log1p(plays / 3.3), each standardised per user, mixed 0.40/0.40/0.20. Every
    # part is sparse or low-rank, so it fits at Last.fm 360K size too (no dense EASE inverse).
    user_model: ModelConfig = Field(
        BlendConfig(
            weight=WeightConfig(scheme="log", alpha=1.0, eps=3.298222222442483),
            parts=[
                BlendPart(
                    model=ALSConfig(
                        factors=24, regularization=0.30810773301806854, alpha=1.3344130857569276, iterations=16
                    ),
                    weight=0.39669123799003964,
                ),
                BlendPart(
                    model=ItemKNNConfig(similarity="bm25", neighbours=278, k1=1.0653062015482746, b=0.8172657656589734),
                    weight=0.40357475807295123,
                ),
                BlendPart(
                    model=RP3betaConfig(alpha=1.3511590172408772, beta=0.03405989733740691, neighbours=115),
                    weight=0.1997340039370091,
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
