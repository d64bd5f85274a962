"""What every reader and writer agrees on about runs: which one is current for a dataset, the
figure the quality gate compares (the user model's precision@10), and the hash of a config."""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.schema import CurrentRun

GATE_METRIC = "precision"
GATE_K = 10


def current_run_id(conn: Connection, dataset: str | None = None) -> int | None:
    """run_id the views show for ``dataset``; with None, the current run that became current last
    (what the read commands default to). None when there is none."""
    query = sa.select(CurrentRun.run_id)
    if dataset is not None:
        return conn.execute(query.where(CurrentRun.dataset == dataset)).scalar_one_or_none()
    return conn.execute(query.order_by(CurrentRun.since.desc(), CurrentRun.run_id.desc()).limit(1)).scalar()


def current_datasets(conn: Connection) -> list[str]:
    """Datasets that have a current run, by name."""
    return list(conn.execute(sa.select(CurrentRun.dataset).order_by(CurrentRun.dataset)).scalars())


def config_hash(config: dict) -> str:
    """SHA-256 (hex) of ``config`` (JSON values) as canonical JSON: sorted keys, no spaces, so the
    same settings give the same hash whatever their order in a file."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
