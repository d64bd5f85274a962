"""Where a run is published and how many published runs are kept."""

from __future__ import annotations

from pydantic import Field

from tasks.contracts import StageConfig
from tasks.files import DATA_DIR

LOCK_TIMEOUT_SECONDS = 1800.0  # a publish of Last.fm 360K takes minutes; a stuck one is named in the error


class StorageConfig(StageConfig):
    """Where results are published."""

    db: str = Field(f"sqlite:///{DATA_DIR / 'recs.db'}", description="SQLAlchemy URL")
    retention: int = Field(5, ge=1, description="published runs kept")
    max_regression: float | None = Field(
        None, ge=0, description="refuse to publish if precision@10 drops by more than this fraction"
    )
    lock_timeout_seconds: float = Field(
        LOCK_TIMEOUT_SECONDS, gt=0, description="how long a publish waits for another publisher's lock"
    )
