"""Where a run is published and how many published runs are kept; URLs shown or stored with
their secrets masked (docs/operations.md "Secrets").

A database password is never a flow parameter value: ``recs run`` moves it into ``PGPASSWORD``
(which libpq honours) and a deployment names a Prefect ``Secret`` block holding the whole URL
(``db_secret``). What is stored (``runs.config``, ``runs.source``), reported and logged goes
through ``masked_url``.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tasks.contracts import StageConfig
from tasks.files import DATA_DIR
from tasks.urls import masked_url

__all__ = ["StorageConfig", "masked_url", "without_password"]

LOCK_TIMEOUT_SECONDS = 1800.0  # a publish of Last.fm 360K takes minutes; a stuck one is named in the error


class StorageConfig(StageConfig):
    """Where results are published."""

    db: str = Field(
        f"sqlite:///{DATA_DIR / 'recs.db'}",
        description="SQLAlchemy URL, without a password (PGPASSWORD or db_secret supply it)",
    )
    db_secret: str | None = Field(
        None, description="name of a Prefect Secret block holding the full URL; used instead of db when set"
    )
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


def without_password(db: str) -> tuple[str, str | None]:
    """(``db`` without its password, the password or None) for a SQLAlchemy URL."""
    try:
        url = make_url(db)
    except ArgumentError:
        return db, None
    if url.password is None:
        return db, None
    return url._replace(password=None).render_as_string(hide_password=False), str(url.password)
