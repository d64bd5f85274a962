"""Preflight of the database side of a run, before any download or training: the database is
reachable, exists, is at the current schema, accepts writes to ``runs``, and its publish lock can
be taken. Each failure is one RecsError within seconds (a connect timeout of 10 s at most)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import InternalError, ProgrammingError

from storage.engine import database_errors, make_engine, write_transaction
from storage.publish import publish_lock
from storage.schema import Run
from tasks.errors import RecsError

LOCK_WAIT_SECONDS = 5.0


def check_database(url: str, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
    """RecsError unless a run could be published into ``url`` now (a new SQLite file is created,
    as the publish would)."""
    engine = make_engine(url)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with database_errors(engine):
            try:
                with write_transaction(engine) as conn:
                    # touches no row, but needs the write lock (SQLite) and UPDATE rights in a
                    # writable transaction (PostgreSQL)
                    conn.execute(sa.update(Run).where(sa.false()).values(status=Run.status))
            except (InternalError, ProgrammingError) as exc:  # read-only transaction, permission denied
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                raise RecsError(
                    f"database {shown} is not writable: {reason}; grant write access or use another --db"
                ) from exc
            with publish_lock(engine, wait_seconds=lock_wait_seconds):
                pass
    finally:
        engine.dispose()
