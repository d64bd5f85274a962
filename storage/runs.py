"""What every reader and writer agrees on about runs: which one is current, and the figure the
quality gate compares (the user model's precision@10)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.schema import Run

GATE_METRIC = "precision"
GATE_K = 10


def current_run_id(conn: Connection) -> int | None:
    """run_id the views show (the newest published run), None before the first publish."""
    return conn.execute(sa.select(sa.func.max(Run.run_id)).where(Run.status == "published")).scalar_one()
