"""Where a run is published and how many published runs are kept."""

from __future__ import annotations

from pydantic import Field

from tasks.contracts import StageConfig
from tasks.files import DATA_DIR


class StorageConfig(StageConfig):
    """Where results are published."""

    db: str = Field(f"sqlite:///{DATA_DIR / 'recs.db'}", description="SQLAlchemy URL")
    retention: int = Field(5, ge=1, description="published runs kept")
    max_regression: float | None = Field(
        None,
        ge=0,
        description="refuse to publish if precision@10 drops by more than this fraction below the current "
        "run of the same dataset (None: publish whatever it is; the scheduled deployment sets 0.10)",
    )
    skip_unchanged: bool = Field(
        True,
        description="end a run early, recorded as 'unchanged', when its data, config and code equal those of "
        "its dataset's current run (false, or `recs run --force`: retrain anyway)",
    )
