"""Publish a Spark run: its rows go from the Spark partitions into the run's tables, then the same
one-transaction switch as ``storage.publish``.

PostgreSQL: the run's four partitions (``<table>_run_<id>``, no indexes yet) are created and
committed empty; then every Spark task streams its partition of rows through its own
``COPY ... FROM STDIN (FORMAT BINARY)`` connection (``storage.bulk``'s encoder) and commits, so
``publish_partitions`` streams load in parallel, from the executors, without the rows passing
through the driver. The partitions are not attached to the tables the views read, and the run is
``loading``, so readers see nothing of it. Then ONE transaction attaches the partitions (building
their indexes), points ``current_runs`` at the run and marks it ``published``.

SQLite (one writer by design): the driver pulls the partitions in turn (``toLocalIterator``) and
writes them in the switch's transaction, as ``storage.publish`` does.

A crash or SIGKILL anywhere before the switch commits leaves the views on the previous run; the
run stays ``loading`` with detached partitions, which the next publish (of either engine) marks
``failed`` and drops (``storage.publish._fail_leftovers``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Engine

from storage.bulk import _copy_batches, _driver, partition_name, write_run_rows
from storage.config import LOCK_TIMEOUT_SECONDS
from storage.engine import database_errors, write_transaction
from storage.publish import (
    ARTISTS,
    BULK_TABLES,
    RECOMMENDATIONS,
    RELATED,
    USERS,
    RunRejected,
    _fail_leftovers,
    _make_current,
    _mark_failed,
    _mark_published,
    _prune,
    publish_lock,
    start_run,
)
from storage.runs import GATE_K, GATE_METRIC
from tasks.contracts import Metric
from tasks.errors import RecsError
from tasks.spark.session import first

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

# numpy dtypes of the run tables' columns (the binary COPY needs each column's exact type)
DTYPES = {
    "run_id": np.int32,
    "artist_id": np.int32,
    "user_id": np.int32,
    "related_artist_id": np.int32,
    "rank": np.int16,
    "listeners": np.int32,
    "plays": np.float64,
    "score": np.float32,
    "artist_key": object,
    "name": object,
    "user_key": object,
    "model": object,
    "search_key": object,
}


_COUNT_OF = {
    ARTISTS.name: "n_artists",
    USERS.name: "n_users",
    RELATED.name: "n_related",
    RECOMMENDATIONS.name: "n_recommendations",
}


@dataclass(frozen=True)
class SparkRunOutputs:
    """Everything a Spark run publishes: ``storage.publish.RunOutputs``' description fields, with
    its rows as Spark DataFrames and their counts.

    ``artists``: ``artist_id, artist_key, name, listeners, plays, search_key``; ``users``:
    ``user_id, user_key``; ``related``: ``model, artist_id, rank, related_artist_id, score``;
    ``recommendations``: ``user_id, rank, artist_id, score`` (ranks 1-based, no padding).
    """

    artists: DataFrame
    users: DataFrame
    related: DataFrame
    recommendations: DataFrame
    n_artists: int
    n_users: int
    n_related: int
    n_recommendations: int
    metrics: list[Metric]
    config: dict
    dataset: str
    source: str
    data_sha256: str
    related_model: str
    user_model: str
    code_version: str
    started_at: datetime | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    choices: dict = field(default_factory=dict)

    def frames(self) -> list[tuple[sa.Table, DataFrame]]:
        return [
            (ARTISTS, self.artists),
            (USERS, self.users),
            (RELATED, self.related),
            (RECOMMENDATIONS, self.recommendations),
        ]

    def counts(self) -> dict[str, int]:
        return {
            "n_artists": self.n_artists,
            "n_users": self.n_users,
            "n_related": self.n_related,
            "n_recommendations": self.n_recommendations,
        }


def publish_spark(
    engine: Engine,
    outputs: SparkRunOutputs,
    *,
    retention: int = 5,
    max_regression: float | None = None,
    partitions: int = 4,
    batch_rows: int = 50_000,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
) -> int:
    """Load and publish ``outputs``; returns the new run_id, now what the views show.

    ``partitions``: parallel COPY streams into PostgreSQL (Spark tasks); ``batch_rows``: rows per
    batch a task encodes at a time. Other arguments and errors as ``storage.publish.publish``.
    """
    if retention < 1:
        raise RecsError(f"retention must be at least 1 published run, got {retention}; fix storage.retention")
    _validate(outputs, gate=max_regression is not None)
    with database_errors(engine), publish_lock(engine, lock_timeout_seconds):
        _fail_leftovers(engine)
        run_id, rejection = start_run(engine, outputs, max_regression, outputs.counts())
        if rejection:
            raise RunRejected(run_id, f"run {run_id} rejected by the quality gate: {rejection}")
        try:
            if engine.dialect.name == "postgresql":
                _load_postgres(engine, run_id, outputs, partitions, batch_rows)
            else:
                _load_sqlite(engine, run_id, outputs, batch_rows)
        except BaseException as exc:
            _mark_failed(engine, run_id, exc)
            raise
        _prune(engine, retention)
    return run_id


def _validate(outputs: SparkRunOutputs, *, gate: bool) -> None:
    problems = []
    try:
        json.dumps(outputs.config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"config is not JSON ({exc})")
    if gate and not any(
        m.model == outputs.user_model and m.metric == GATE_METRIC and m.k == GATE_K for m in outputs.metrics
    ):
        problems.append(f"the quality gate needs a {GATE_METRIC}@{GATE_K} metric for model {outputs.user_model!r}")
    for table, frame in outputs.frames():
        # a nullable column a Spark run does not compute (because_artist_id) is left NULL
        missing = {col.name for col in table.columns if not col.nullable} - {"run_id"} - set(frame.columns)
        if missing:
            problems.append(f"{table.name} lacks column(s) {', '.join(sorted(missing))}")
    if problems:
        raise RecsError("cannot publish: " + "; ".join(problems) + "; nothing was written")


def _rows(frame: DataFrame, table: sa.Table, run_id: int) -> DataFrame:
    """``frame`` as the table's columns it has, in the table's order, ``run_id`` first."""
    from pyspark.sql import functions as F

    names = [col.name for col in table.columns if col.name == "run_id" or col.name in frame.columns]
    return frame.select(*[F.lit(run_id).alias(c) if c == "run_id" else F.col(c) for c in names])


def _as_batch(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {name: frame[name].to_numpy(dtype=DTYPES[name]) for name in frame.columns}


def _copy_partition(
    conninfo: str, table_name: str, target: str, batches: Iterator[pd.DataFrame]
) -> Iterator[pd.DataFrame]:
    """The ``mapInPandas`` function of one Spark task: COPY its batches into ``target`` (a
    partition of the run table ``table_name``) over its own connection, committed when the
    task's rows are in; yields how many rows it wrote. A module-level function bound to strings
    (``functools.partial``), so it pickles by reference, not with the schema objects."""
    import psycopg

    table = next(t for t in BULK_TABLES if t.name == table_name)
    with psycopg.connect(conninfo) as conn:
        written = _copy_batches(conn, sql.Identifier(target), table, (_as_batch(b) for b in batches))
    yield pd.DataFrame({"rows": [written]})


def _load_postgres(engine: Engine, run_id: int, outputs: SparkRunOutputs, partitions: int, batch_rows: int) -> None:
    from pyspark.sql import functions as F

    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with write_transaction(engine) as conn, _driver(conn).cursor() as cursor:
        for table in BULK_TABLES:
            cursor.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS, CHECK (run_id = {}))").format(
                    sql.Identifier(partition_name(table, run_id)), sql.Identifier(table.name), sql.Literal(run_id)
                )
            )
    outputs.artists.sparkSession.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_rows))
    for table, frame in outputs.frames():
        rows = _rows(frame, table, run_id).repartition(partitions)
        copied = rows.mapInPandas(
            functools.partial(_copy_partition, conninfo, table.name, partition_name(table, run_id)), schema="rows long"
        )
        written = first(copied.agg(F.sum("rows")))[0] or 0
        expected = outputs.counts()[_COUNT_OF[table.name]]
        if written != expected:
            raise RecsError(
                f"{table.name}: {written:,} rows copied, {expected:,} expected; nothing readers see changed"
            )
    with write_transaction(engine) as conn:
        with _driver(conn).cursor() as cursor:
            cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
            for table in BULK_TABLES:
                cursor.execute(
                    sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
                        sql.Identifier(table.name), sql.Identifier(partition_name(table, run_id)), sql.Literal(run_id)
                    )
                )
        _make_current(conn, outputs.dataset, run_id)
        _mark_published(conn, run_id)


def _local_batches(frame: DataFrame, batch_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """``frame``'s rows on the driver, one partition at a time, as column batches."""
    columns = frame.columns
    rows = frame.toLocalIterator(prefetchPartitions=True)
    while True:
        chunk = [tuple(r) for _, r in zip(range(batch_rows), rows, strict=False)]
        if not chunk:
            return
        yield _as_batch(pd.DataFrame.from_records(chunk, columns=columns))


def _load_sqlite(engine: Engine, run_id: int, outputs: SparkRunOutputs, batch_rows: int) -> None:
    with write_transaction(engine) as conn:
        for table, frame in outputs.frames():
            write_run_rows(conn, table, run_id, _local_batches(_rows(frame, table, run_id), batch_rows))
        _make_current(conn, outputs.dataset, run_id)
        _mark_published(conn, run_id)
