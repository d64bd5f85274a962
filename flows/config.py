"""The retrain flow's parameters: one typed config, rendered by the Prefect UI as a form.

The same model loads from a YAML/TOML file (``RetrainConfig.from_file``) and is overridden by
CLI flags. Defaults are the tuned, shipped configuration.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DATA_DIR = Path(os.environ.get("RECS_DATA_DIR", "data"))


class _Strict(BaseModel):
    """Unknown keys are an error, so a typo in a config file is not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class SyntheticConfig(_Strict):
    """Size of the generated dataset (written in the Last.fm 360K file format)."""

    users: int = Field(2_000, ge=10, le=360_000)
    artists: int = Field(5_000, ge=10, le=300_000)
    rows: int = Field(100_000, ge=10, le=17_600_000)
    genres: int = Field(40, ge=1)
    seed: int = 0


class DataConfig(_Strict):
    """Where the listening data comes from and how it is filtered."""

    dataset: Literal["lastfm-2k", "lastfm-360k", "synthetic"] = "synthetic"
    source: str | None = Field(None, description="A path or URL overriding the dataset's own location.")
    sha256: str | None = Field(None, description="Expected SHA-256 of the download; enforced when given.")
    cache_dir: Path = DATA_DIR / "cache"
    min_listeners: int = Field(1, ge=1, description="Drop artists with fewer listeners.")
    min_artists: int = Field(1, ge=1, description="Drop users with fewer artists.")
    synthetic: SyntheticConfig = SyntheticConfig()


class WeightConfig(_Strict):
    """How raw play counts become confidences (see tasks/weight.py)."""

    scheme: Literal["bm25", "tfidf", "log", "none"] = "bm25"
    k1: float = 100.0
    b: float = 0.8
    alpha: float = 1.0
    eps: float = 1.0


class ModelConfig(_Strict):
    """One model and its hyper-parameters (see tasks/factorize.py)."""

    name: Literal["als", "lsa", "bpr", "lmf", "explicit", "itemknn", "blend", "spark_als"] = "als"
    weight: WeightConfig = WeightConfig()
    factors: int = Field(64, ge=1)
    regularization: float = 0.01
    alpha: float = 1.0
    iterations: int = Field(15, ge=1)
    learning_rate: float = 0.01
    neighbours: int = Field(100, ge=1, description="item-kNN neighbourhood size")
    blend_weight: float = Field(0.5, ge=0, le=1, description="share of the factor model in a blend")
    knn_similarity: Literal["bm25", "cosine", "tfidf"] = Field(
        "bm25", description="item-kNN similarity (implicit's BM25/Cosine/TFIDFRecommender)"
    )
    knn_k1: float = Field(0.5, gt=0, description="item-kNN BM25 saturation K1 (on the weighted matrix)")
    knn_b: float = Field(0.75, ge=0, le=1, description="item-kNN BM25 length normalisation B")
    blend_factor_model: Literal["als", "bpr", "lmf", "lsa"] = Field(
        "als", description="the factor model a blend mixes with item-kNN"
    )
    random_state: int = 42


class IndexConfig(_Strict):
    """Nearest-neighbour index for related artists and approximate user top-N (tasks/index.py)."""

    # annoy for small catalogues (the design's index); faiss for large ones: at 300K artists on 2
    # cores Annoy was no faster than exact search at recall@10 >= 0.95, faiss IVF more than 15x
    # faster (README "Performance"; deployments/lastfm-360k.yaml selects it).
    engine: Literal["annoy", "faiss"] = Field("annoy", description="annoy (trees) or faiss (IVF lists)")
    # 100 trees: on a 300K-artist synthetic catalogue 50 trees reached recall@10 0.93 at Annoy's
    # default search_k, 100 trees 0.98 (README "Models and related artists", benchmarks/related.py).
    n_trees: int = Field(100, ge=1, description="annoy: trees")
    search_k: int = Field(-1, description="annoy: nodes a query inspects; -1: Annoy's default (n_trees * k)")
    n_lists: int | None = Field(None, ge=1, description="faiss: k-means lists; None: about 3 sqrt(artists)")
    # 24 and 96 of 1,643 lists: recall@10 0.97 (related) and 0.96 (users) on 64-d ALS factors of
    # 300K synthetic artists (a sweep of 16-24 and 64-96 on 2,000 artists / 20,000 users)
    n_probe: int = Field(24, ge=1, description="faiss: lists a related-artists query scans")
    n_probe_users: int = Field(96, ge=1, description="faiss: lists a user query scans (inner product)")
    recall_sample: int = Field(1_000, ge=10, description="artists/users checked against exact search")
    # Off by default: with Annoy (the default engine) exact search was quicker for users at every
    # size measured; with faiss at 300K artists the index was 4.8x quicker at recall@10 0.96, so
    # deployments/lastfm-360k.yaml turns it on (README "Performance").
    approximate_users: bool = Field(False, description="the index (inner product) for user top-N of factor models")


class EvalConfig(_Strict):
    """Holdout evaluation."""

    holdout: float = Field(0.2, gt=0, lt=1)
    min_artists: int = Field(5, ge=2, description="users with fewer artists are never held out")
    k: list[int] = [10]
    seed: int = 0
    max_users: int | None = Field(
        10_000, ge=100, description="rank a seeded sample of at most this many test users (None: all)"
    )


class StorageConfig(_Strict):
    """Where results are published."""

    db: str = Field(f"sqlite:///{DATA_DIR / 'recs.db'}", description="SQLAlchemy URL")
    retention: int = Field(5, ge=1, description="published runs kept")
    max_regression: float | None = Field(
        None, ge=0, description="refuse to publish if precision@10 drops by more than this fraction"
    )


class RetryConfig(_Strict):
    """Retries of the steps that talk to the network or the database (download, publish).

    Only transient failures are retried (refused/reset connections, timeouts, HTTP 5xx, database
    connection errors); a 404, a checksum mismatch or bad data fails at once.
    """

    attempts: int = Field(2, ge=0, le=10, description="retries after the first try")
    backoff_seconds: float = Field(10.0, ge=0, description="first delay; doubles on each retry")


class RetrainConfig(_Strict):
    """Everything one retrain needs."""

    data: DataConfig = DataConfig()
    # Chosen on HetRec 2K by tag coherence@10 and label-split synonyms (tests/test_related_quality.py,
    # README "Models and related artists"): few factors keep a split label's halves together.
    related_model: ModelConfig = ModelConfig(
        name="als", factors=24, iterations=30, weight=WeightConfig(scheme="bm25", k1=50.0, b=1.0)
    )
    # Tuned on HetRec 2K by `recs tune` (validation split of the train part; README "Evaluation and
    # tuning"): ALS on log1p(plays) blended 0.6/0.4 with BM25 item-kNN, each part standardised per
    # user. No challenger beats it on validation by more than 1 %, so `recs tune` keeps it.
    user_model: ModelConfig = ModelConfig(
        name="blend", weight=WeightConfig(scheme="log", alpha=1.0, eps=1.0),
        factors=32, regularization=0.3, alpha=1.0, iterations=15,
        neighbours=200, knn_similarity="bm25", knn_k1=0.5, knn_b=0.6,
        blend_factor_model="als", blend_weight=0.6,
    )
    index: IndexConfig = IndexConfig()
    n: int = Field(10, ge=1, le=500, description="length of related-artist and user top-N lists")
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
