"""Where a run is published and how many published runs are kept."""

from __future__ import annotations

from pydantic import Field, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

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

    @field_validator("db")
    @classmethod
    def _durable(cls, db: str) -> str:
        """Refuse an in-memory SQLite database: a run published there vanishes with the process."""
        try:
            url = make_url(db)
        except ArgumentError:  # not a URL at all: storage.engine.make_engine says so in one line
            return db
        if url.get_backend_name() == "sqlite" and (
            url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
        ):
            raise ValueError(
                f"{db} is an in-memory SQLite database, whose published run would vanish when the run ends; "
                "give a file, e.g. sqlite:///data/recs.db"
            )
        return db
