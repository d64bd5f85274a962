"""Publish one run: bulk load its rows, then make it the current run in the same transaction.

Steps, all under a publish lock (one writer per database; the OS or server drops it if the holder
dies, so a ``loading`` run seen while holding it is a leftover of a dead publish):

1. leftovers: runs still ``loading`` are marked ``failed`` (their rows were never committed);
2. quality gate: compare precision@10 of the user model with the current run of the same dataset;
   the two figures go into the run's ``message``; with ``max_regression`` set and a regression
   beyond it the run is recorded as ``rejected`` and nothing loads;
3. a ``runs`` row with status ``loading`` and the metrics are committed;
4. ONE transaction writes artists, users, related_artists (every model's lists, each under its
   name in ``related_artists.model``) and user_recommendations in batches,
   measures stability against the dataset's current run (``stability``), points ``current_runs``
   at the new run and flips it to ``published``; the views switch to it when it commits, never
   before, and only for its dataset;
5. retention: published runs past the newest ``retention`` lose their rows and become ``pruned``,
   except the current run of every dataset.

``promote`` makes an older published run current again and ``skip_if_unchanged`` records a run
that would repeat the current one; both take the same lock.

No ANALYZE afterwards: PostgreSQL's index builds at attach record each partition's size, which is
all the view plans need (autovacuum analyzes the new partitions later); SQLite's statistics are
fixed at schema creation (storage/migrations/versions/0001_baseline.py).

A crash or SIGKILL anywhere leaves the database in one of these committed states, so readers keep
the previous run until step 4 commits.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import pandas as pd
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.bulk import column_batches, drop_run_rows, topn_batches, write_run_rows
from storage.config import LOCK_TIMEOUT_SECONDS
from storage.engine import database_errors, write_transaction
from storage.foldin import drop_fold_in, write_fold_in
from storage.runs import GATE_K, GATE_METRIC, config_hash, current_run_id
from storage.schema import Artist, CurrentRun, RelatedArtist, Run, RunMetric, User, UserRecommendation
from tasks.contracts import Encoded, Metric, TopN
from tasks.errors import RecsError
from tasks.names import search_keys
from tasks.transient import data_error

PRUNE_LOCK_TIMEOUT = "5s"
# The switch's wait for readers planned before it (``_lock_current_runs``): one try, the pause
# between tries (when new readers run freely), and the whole wait.
SWITCH_LOCK_TRY = "1s"
SWITCH_LOCK_PAUSE_SECONDS = 2.0
SWITCH_WAIT_SECONDS = 600.0
# the per-run tables as Core tables (the declarative ``__table__`` is typed as a plain FromClause)
ARTISTS, USERS, RELATED, RECOMMENDATIONS = (
    cast(sa.Table, model.__table__) for model in (Artist, User, RelatedArtist, UserRecommendation)
)
BULK_TABLES = (ARTISTS, USERS, RELATED, RECOMMENDATIONS)
log = logging.getLogger(__name__)
_LOCK_KEY_SQL = "hashtext('recs.publish.' || current_schema())"
# run_metrics rows of the stability measure: model, metric names, cut-off
STABILITY_MODEL = "stability"
STABILITY_METRICS = ("related_overlap", "user_overlap")
STABILITY_K = 10
FETCH_ROWS = 100_000  # rows per fetch when reading the previous run's lists


@dataclass(frozen=True)
class RunOutputs:
    """Everything one run publishes.

    ``encoded``: the run's users and artists (keys, names; listeners and plays are derived from
    its CSR). ``related``: TopN with one row per artist code (n_artists x N artist codes), from
    ``related_model`` (the shipped lists, what ``current_related_artists`` shows).
    ``other_related``: the related lists of the run's other factor models, by model name (each
    like ``related``), published beside it for comparison (``current_related_by_model``).
    ``recommendations``: TopN with one row per user code (n_users x N artist codes).
    ``metrics``: evaluation results, stored in run_metrics. ``config``: the run's config as JSON
    values, secrets masked (``config_hash`` hashes it). ``related_model`` / ``user_model``: names of
    the models that fed each output; the quality gate reads ``user_model``'s precision@10.
    ``started_at``: when the flow started (UTC; default: the publish's start), from which
    ``runs.seconds`` is measured. ``flow_run_id`` / ``flow_run_url``: the Prefect flow run and its
    UI page. ``timings``: wall seconds per stage. ``choices``: what the flow chose beyond the config.
    ``because``: int32, the shape of ``recommendations.ids``: per recommendation the heard artist
    code that contributed most (-1: none; ``tasks.explain``); None stores NULL. ``fold_in``: the
    user model's arrays a reader folds new listeners in with (``tasks.foldin.fold_in_arrays``).
    """

    encoded: Encoded
    related: TopN
    recommendations: TopN
    metrics: list[Metric]
    config: dict
    dataset: str
    source: str
    data_sha256: str
    related_model: str
    user_model: str
    code_version: str
    other_related: dict[str, TopN] = field(default_factory=dict)
    started_at: datetime | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    because: np.ndarray | None = None
    fold_in: dict[str, np.ndarray] = field(default_factory=dict)


class RunDescription(Protocol):
    """What recording a run reads besides its rows: ``RunOutputs``, or a Spark run's
    ``storage.spark_publish.SparkRunOutputs`` (field meanings as in ``RunOutputs``)."""

    @property
    def metrics(self) -> list[Metric]: ...
    @property
    def config(self) -> dict: ...
    @property
    def dataset(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def data_sha256(self) -> str: ...
    @property
    def related_model(self) -> str: ...
    @property
    def user_model(self) -> str: ...
    @property
    def code_version(self) -> str: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def flow_run_id(self) -> str | None: ...
    @property
    def flow_run_url(self) -> str | None: ...
    @property
    def timings(self) -> dict[str, float]: ...
    @property
    def choices(self) -> dict: ...


class RunRejected(RecsError):
    """The quality gate refused the run; it is recorded as ``rejected`` with its metrics."""

    def __init__(self, run_id: int, message: str):
        super().__init__(message)
        self.run_id = run_id


def publish(
    engine: Engine,
    outputs: RunOutputs,
    *,
    retention: int = 5,
    max_regression: float | None = None,
    batch_rows: int = 100_000,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
) -> int:
    """Load and publish ``outputs``; returns the new run_id, now what the views show.

    ``retention``: published runs kept (>= 1; the current one is always kept).
    ``max_regression``: refuse the run (raise RunRejected) when the user model's precision@10 is
    below the current run's times ``1 - max_regression``; None disables the gate.
    ``batch_rows``: rows per batch sent to the database, which bounds the extra memory used.
    ``lock_timeout_seconds``: how long to wait for another publisher's lock (``publish_lock``).
    Raises RecsError (one line) for invalid outputs, an unreachable database, values the
    database cannot store (a name or key over PostgreSQL's index row limit) or a lock held too long.
    """
    if retention < 1:
        raise RecsError(f"retention must be at least 1 published run, got {retention}; fix storage.retention")
    if batch_rows < 1:
        raise RecsError(f"batch_rows must be positive, got {batch_rows}")
    if max_regression is not None and max_regression < 0:
        raise RecsError(f"max_regression must be at least 0, got {max_regression}; fix storage.max_regression")
    _validate(outputs, gate=max_regression is not None)
    with database_errors(engine), publish_lock(engine, lock_timeout_seconds):
        _fail_leftovers(engine)
        run_id, rejection = start_run(engine, outputs, max_regression, run_counts(outputs))
        if rejection:
            raise RunRejected(run_id, f"run {run_id} rejected by the quality gate: {rejection}")
        try:
            _load_and_publish(engine, run_id, outputs, batch_rows)
        except BaseException as exc:
            _mark_failed(engine, run_id, exc)
            refused = data_error(exc)
            if refused is not None:
                reason = (str(refused).strip().splitlines() or [type(refused).__name__])[0]
                raise RecsError(
                    f"cannot publish run {run_id}: the database refused its rows ({reason}); nothing "
                    "readers see changed — fix the data (e.g. an artist name or key too long to index)"
                ) from exc
            raise
        _prune(engine, retention)
    return run_id


def _validate(outputs: RunOutputs, *, gate: bool) -> None:
    """RecsError when the outputs cannot make a consistent run (all checks vectorised)."""
    enc = outputs.encoded
    problems = []
    if not (len(enc.artist_keys) == len(enc.artist_names) == enc.n_artists and len(enc.user_keys) == enc.n_users):
        problems.append("key/name arrays do not match the play matrix's shape")
    for label, keys in (
        ("artist_keys", enc.artist_keys),
        ("artist_names", enc.artist_names),
        ("user_keys", enc.user_keys),
    ):
        if len(keys) and pd.api.types.infer_dtype(keys, skipna=False) != "string":
            problems.append(f"{label} must all be str")
    for label, keys in (("artist_keys", enc.artist_keys), ("user_keys", enc.user_keys)):
        if not pd.Index(keys).is_unique:
            problems.append(f"{label} has duplicates")
    if not outputs.related_model or outputs.related_model in outputs.other_related or "" in outputs.other_related:
        problems.append("each related list needs its own non-empty model name")
    for label, topn, rows in (
        ("related", outputs.related, enc.n_artists),
        *((f"related of {name}", topn, enc.n_artists) for name, topn in outputs.other_related.items()),
        ("recommendations", outputs.recommendations, enc.n_users),
    ):
        ids, scores = topn.ids, topn.scores
        if ids.ndim != 2 or ids.shape != scores.shape or ids.shape[0] != rows:
            problems.append(f"{label} is {ids.shape} ids / {scores.shape} scores, expected {rows} rows")
            continue
        if ids.shape[1] > np.iinfo(np.int16).max:
            problems.append(f"{label} lists are longer than {np.iinfo(np.int16).max}")
        if ids.size and (ids.min() < -1 or ids.max() >= enc.n_artists):
            problems.append(f"{label} has artist codes outside [-1, {enc.n_artists})")
        if not np.isfinite(scores[ids >= 0]).all():
            problems.append(f"{label} has NaN or infinite scores")
    because = outputs.because
    if because is not None and (
        because.shape != outputs.recommendations.ids.shape
        or (because.size and (because.min() < -1 or because.max() >= enc.n_artists))
    ):
        problems.append(
            f"because is {because.shape} with codes outside [-1, {enc.n_artists}), expected {outputs.recommendations.ids.shape}"
        )
    try:
        json.dumps(outputs.config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"config is not JSON ({exc})")
    if gate and _gate_value(outputs) is None:
        problems.append(f"the quality gate needs a {GATE_METRIC}@{GATE_K} metric for model {outputs.user_model!r}")
    if problems:
        raise RecsError("cannot publish: " + "; ".join(problems) + "; nothing was written")


def _gate_value(outputs: RunDescription) -> float | None:
    for m in outputs.metrics:
        if m.model == outputs.user_model and m.metric == GATE_METRIC and m.k == GATE_K:
            return m.value
    return None


@contextmanager
def publish_lock(engine: Engine, wait_seconds: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the database's publish lock: a PostgreSQL advisory lock (per schema) or an flock on
    ``<db file>.publish-lock`` beside a SQLite file. Released by the server or the kernel when the
    holder dies. Waits up to ``wait_seconds`` for another publisher, then RecsError naming the
    holder (``lock_holder``)."""
    deadline = time.monotonic() + wait_seconds
    shown = engine.url.render_as_string(hide_password=True)

    def busy(holder: str) -> RecsError:
        return RecsError(
            f"another publish into {shown} holds the lock ({holder}) and has not released it in "
            f"{wait_seconds:g} s; wait for it to finish, or raise storage.lock_timeout_seconds"
        )

    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            while not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({_LOCK_KEY_SQL})").scalar_one():
                if time.monotonic() > deadline:
                    raise busy(_pg_lock_holder(conn))
                time.sleep(0.1)
            # names this session in pg_stat_activity for a waiting publisher's message
            conn.exec_driver_sql("SELECT set_config('application_name', %s, false)", (_holder_name(),))
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK_KEY_SQL})")
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield  # a private in-memory database has one writer by construction
        return
    with open(Path(database).with_name(Path(database).name + ".publish-lock"), "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    raise busy(handle.read().strip() or "holder unknown") from None
                time.sleep(0.1)
        # who holds it, for a waiting publisher's message; stale text is harmless (the flock decides)
        handle.truncate(0)
        handle.write(f"{_holder_name()}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder_name() -> str:
    return f"recs publish pid {os.getpid()} on {socket.gethostname()}"


def _pg_lock_holder(conn: Connection) -> str:
    """Who holds this schema's publish lock: pid, application name, client and since when."""
    row = conn.exec_driver_sql(
        "SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local'), a.state_change "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        f"AND l.classid::bigint = (({_LOCK_KEY_SQL})::bigint >> 32) & 4294967295 "
        f"AND l.objid::bigint = ({_LOCK_KEY_SQL})::bigint & 4294967295 AND l.objsubid = 1"
    ).first()
    if row is None:
        return "holder unknown"
    pid, app, client, since = row
    return (
        f"server pid {pid}, application_name {app or '(none)'!r}, client {client}, since {since:%Y-%m-%d %H:%M:%S %Z}"
    )


def _fail_leftovers(engine: Engine) -> None:
    """Mark ``loading`` runs failed and drop any rows they left: a Spark publish
    (storage/spark_publish.py) commits its partitions before the switch, this one never does."""
    with write_transaction(engine) as conn:
        leftovers = list(conn.execute(sa.select(Run.run_id).where(Run.status == "loading")).scalars())
        for table in BULK_TABLES if leftovers else ():
            drop_run_rows(conn, table, leftovers)
        conn.execute(
            sa.update(Run)
            .where(Run.status == "loading")
            .values(
                status="failed",
                finished_at=datetime.now(UTC),
                message="the publishing process stopped before committing; its rows were rolled back",
            )
        )


def run_counts(outputs: RunOutputs) -> dict[str, int]:
    """Rows the run adds per table: ``n_artists``, ``n_users``, ``n_related``, ``n_recommendations``."""
    return {
        "n_artists": outputs.encoded.n_artists,
        "n_users": outputs.encoded.n_users,
        "n_related": sum(int((topn.ids >= 0).sum()) for _, topn in _related_lists(outputs)),
        "n_recommendations": int((outputs.recommendations.ids >= 0).sum()),
    }


def start_run(
    engine: Engine, outputs: RunDescription, max_regression: float | None, counts: dict[str, int]
) -> tuple[int, str | None]:
    """Record the run (``loading`` with the gate's figures, or ``rejected`` with the reason) and
    its metrics; returns the run_id and the rejection, if any. ``outputs`` is read for its
    description only (dataset, models, metrics, config...), so any object with those attributes
    (``storage.spark_publish.SparkRunOutputs``) does; ``counts`` as ``run_counts`` gives them."""
    with write_transaction(engine) as conn:
        decision, rejected = _quality_gate(conn, outputs, max_regression)
        started = outputs.started_at or datetime.now(UTC)
        now = datetime.now(UTC)
        run_id = conn.execute(
            sa.insert(Run)
            .values(
                status="rejected" if rejected else "loading",
                started_at=started,
                finished_at=now if rejected else None,
                seconds=(now - started).total_seconds() if rejected else None,
                message=decision,
                config_hash=config_hash(outputs.config),
                flow_run_id=outputs.flow_run_id,
                flow_run_url=outputs.flow_run_url,
                timings=outputs.timings,
                choices=outputs.choices,
                dataset=outputs.dataset,
                source=outputs.source,
                data_sha256=outputs.data_sha256,
                config=outputs.config,
                code_version=outputs.code_version,
                related_model=outputs.related_model,
                user_model=outputs.user_model,
                **counts,
            )
            .returning(Run.run_id)
        ).scalar_one()
        if outputs.metrics:
            conn.execute(
                sa.insert(RunMetric),
                [
                    {"run_id": run_id, "model": m.model, "metric": m.metric, "k": m.k, "value": float(m.value)}
                    for m in outputs.metrics
                ],
            )
    return run_id, decision if rejected else None


def _quality_gate(conn: Connection, outputs: RunDescription, max_regression: float | None) -> tuple[str | None, bool]:
    """The gate's decision as one line with both figures (None when there is nothing to compare),
    and whether it rejects the run. Compared with the current run of the same dataset only."""
    label = f"{GATE_METRIC}@{GATE_K} of {outputs.user_model}"
    current = current_run_id(conn, outputs.dataset)
    if current is None:
        return (None if max_regression is None else f"quality gate passed: first run of {outputs.dataset}"), False
    previous = conn.execute(
        sa.select(RunMetric.value)
        .join(Run, Run.run_id == RunMetric.run_id)
        .where(
            Run.run_id == current,
            RunMetric.model == Run.user_model,
            RunMetric.metric == GATE_METRIC,
            RunMetric.k == GATE_K,
        )
    ).scalar()
    value = _gate_value(outputs)  # _validate refuses a gated run without it
    if previous is None or value is None:
        return (None if max_regression is None else f"quality gate passed: nothing to compare in run {current}"), False
    if max_regression is None:
        return f"quality gate off: {label} is {value:.4f} (current run {current}: {previous:.4f})", False
    floor = previous * (1.0 - max_regression)
    figures = f"(current run {current}: {previous:.4f}, max regression {max_regression:.1%})"
    if value >= floor:
        return f"quality gate passed: {label} is {value:.4f}, at least {floor:.4f} {figures}", False
    return f"{label} is {value:.4f}, below {floor:.4f} {figures}; readers keep run {current}", True


def _load_and_publish(engine: Engine, run_id: int, outputs: RunOutputs, batch_rows: int) -> None:
    enc = outputs.encoded
    artists = {
        "run_id": np.full(enc.n_artists, run_id, dtype=np.int32),
        "artist_id": np.arange(enc.n_artists, dtype=np.int32),
        "artist_key": enc.artist_keys,
        "name": enc.artist_names,
        "listeners": enc.listeners.astype(np.int32),
        "plays": enc.artist_plays.astype(np.float64),
        "search_key": search_keys(enc.artist_names),
    }
    users = {
        "run_id": np.full(enc.n_users, run_id, dtype=np.int32),
        "user_id": np.arange(enc.n_users, dtype=np.int32),
        "user_key": enc.user_keys,
    }
    with write_transaction(engine) as conn:
        write_run_rows(conn, ARTISTS, run_id, column_batches(artists, batch_rows))
        write_run_rows(conn, USERS, run_id, column_batches(users, batch_rows))
        related = (
            topn_batches(run_id, topn, "artist_id", "related_artist_id", batch_rows, model=model)
            for model, topn in _related_lists(outputs)
        )
        write_run_rows(conn, RELATED, run_id, itertools.chain.from_iterable(related))
        write_run_rows(
            conn,
            RECOMMENDATIONS,
            run_id,
            topn_batches(
                run_id,
                outputs.recommendations,
                "user_id",
                "artist_id",
                batch_rows,
                extra=None if outputs.because is None else {"because_artist_id": outputs.because},
            ),
        )
        write_fold_in(conn, run_id, outputs.fold_in)
        previous = current_run_id(conn, outputs.dataset)
        if previous is not None:
            _record_stability(conn, run_id, previous, outputs)
        _make_current(conn, outputs.dataset, run_id)
        _mark_published(conn, run_id)


def _related_lists(outputs: RunOutputs) -> list[tuple[str, TopN]]:
    """(model, related lists) of every model the run publishes, the shipped one first."""
    return [(outputs.related_model, outputs.related), *outputs.other_related.items()]


def _make_current(conn: Connection, dataset: str, run_id: int) -> None:
    """Point ``current_runs`` for ``dataset`` at ``run_id`` (inside the caller's transaction).

    On PostgreSQL it first takes ``current_runs`` exclusively, held to the commit: a READ
    COMMITTED statement is planned before it takes the snapshot it reads with, so a view query
    planned while the run's partitions were still unattached could otherwise read with a snapshot
    taken after the commit and find the new run current but none of its rows in the plan. Every
    view joins ``current_runs``, so the lock waits out statements planned before the switch and
    makes later ones plan after it (see ``_lock_current_runs``).
    """
    if conn.dialect.name == "postgresql":
        _lock_current_runs(conn)
    conn.execute(sa.delete(CurrentRun).where(CurrentRun.dataset == dataset))
    conn.execute(sa.insert(CurrentRun).values(dataset=dataset, run_id=run_id, since=datetime.now(UTC)))


def _lock_current_runs(conn: Connection) -> None:
    """Take ``current_runs`` in ACCESS EXCLUSIVE mode inside the caller's transaction.

    Tries for ``SWITCH_LOCK_TRY`` at a time, stepping out of the queue between tries: a waiting
    ACCESS EXCLUSIVE request queues every new reader behind it, so one long reader transaction
    must not stall the others for the whole wait. RecsError (one line) after
    ``SWITCH_WAIT_SECONDS``; the caller's transaction then rolls back and readers keep the
    previous run.
    """
    deadline = time.monotonic() + SWITCH_WAIT_SECONDS
    while True:
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{SWITCH_LOCK_TRY}'")
                conn.exec_driver_sql("LOCK TABLE current_runs IN ACCESS EXCLUSIVE MODE")
                conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
            return
        except sa.exc.OperationalError as exc:
            if not isinstance(exc.orig, psycopg.errors.LockNotAvailable):
                raise
        if time.monotonic() >= deadline:
            raise RecsError(
                f"readers held current_runs for over {SWITCH_WAIT_SECONDS:.0f} s (an open transaction? see "
                "pg_stat_activity); the run was not published and readers keep the previous one — retry when they end"
            )
        time.sleep(SWITCH_LOCK_PAUSE_SECONDS)


def _mark_published(conn: Connection, run_id: int) -> None:
    now = datetime.now(UTC)
    conn.execute(
        sa.update(Run)
        .where(Run.run_id == run_id)
        .values(status="published", finished_at=now, seconds=_seconds_since(conn, run_id, now))
    )


def _seconds_since(conn: Connection, run_id: int, now: datetime) -> float:
    started = conn.execute(sa.select(Run.started_at).where(Run.run_id == run_id)).scalar_one()
    if started.tzinfo is None:  # SQLite hands DateTime(timezone=True) back naive, in UTC as written
        started = started.replace(tzinfo=UTC)
    return (now - started).total_seconds()


def _record_stability(conn: Connection, run_id: int, previous: int, outputs: RunOutputs) -> None:
    """Store overlap@``STABILITY_K`` of this run's related-artist and user lists with run
    ``previous``'s (``stability`` in run_metrics); nothing when no owner is in both runs."""
    enc = outputs.encoded
    old_artists = _keys_by_code(conn, ARTISTS, "artist_id", "artist_key", previous)
    old_users = _keys_by_code(conn, USERS, "user_id", "user_key", previous)
    artist_codes = pd.Index(enc.artist_keys).get_indexer(old_artists)  # old artist code -> new, -1 if gone
    user_codes = pd.Index(enc.user_keys).get_indexer(old_users)
    # the shipped related lists of both runs, whichever models they came from
    shipped = RELATED.c.model == sa.select(Run.related_model).where(Run.run_id == previous).scalar_subquery()
    rows = []
    for metric, new, table, owner, target, owner_codes, only in (
        (STABILITY_METRICS[0], outputs.related, RELATED, "artist_id", "related_artist_id", artist_codes, shipped),
        (STABILITY_METRICS[1], outputs.recommendations, RECOMMENDATIONS, "user_id", "artist_id", user_codes, sa.true()),
    ):
        old = _old_topn(conn, table, owner, target, previous, owner_codes, artist_codes, new.ids.shape[0], only)
        value = list_overlap(new.ids[:, :STABILITY_K], old, owner_codes[owner_codes >= 0])
        if value is not None:
            rows.append(
                {"run_id": run_id, "model": STABILITY_MODEL, "metric": metric, "k": STABILITY_K, "value": value}
            )
    if rows:
        conn.execute(sa.insert(RunMetric), rows)


def _keys_by_code(conn: Connection, table: sa.Table, code: str, key: str, run_id: int) -> np.ndarray:
    """The run's keys indexed by its codes (codes are 0..n-1, the rows of its matrix)."""
    query = sa.select(table.c[key]).where(table.c.run_id == run_id).order_by(table.c[code])
    return np.array(conn.execute(query).scalars().all(), dtype=object)


def _old_topn(
    conn: Connection,
    table: sa.Table,
    owner: str,
    target: str,
    run_id: int,
    owner_codes: np.ndarray,
    artist_codes: np.ndarray,
    n_owners: int,
    only: sa.ColumnElement[bool],
) -> np.ndarray:
    """Run ``run_id``'s top-``STABILITY_K`` lists in this run's codes: n_owners x K int64, row =
    this run's owner code, -1 where the list is shorter, the artist is not in this run, or the
    owner was not in run ``run_id``. ``only``: a further condition on the rows (one model's)."""
    query = sa.select(table.c[owner], table.c.rank, table.c[target]).where(
        table.c.run_id == run_id, table.c.rank <= STABILITY_K, only
    )
    # the driver's tuples, a batch at a time, straight into one flat NumPy array (no Row objects)
    cursor = conn.execute(query).cursor
    rows = itertools.chain.from_iterable(iter(lambda: cursor.fetchmany(FETCH_ROWS), []))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64)
    owners, ranks, targets = flat.reshape(-1, 3).T
    lists = np.full((n_owners, STABILITY_K), -1, dtype=np.int64)
    kept = owner_codes[owners] >= 0
    lists[owner_codes[owners[kept]], ranks[kept] - 1] = artist_codes[targets[kept]]
    return lists


def list_overlap(new: np.ndarray, old: np.ndarray, owners: np.ndarray) -> float | None:
    """Share of the entries of ``new``'s lists (rows ``owners``) that are also in the same row of
    ``old``: both n x K artist codes, -1 = no entry. 1.0 = the same sets (order aside); None when
    those rows of ``new`` hold no entries."""
    new, old = new[owners], old[owners, : new.shape[1]]
    valid = new >= 0
    hits = ((new[:, :, None] == old[:, None, :]) & valid[:, :, None]).any(axis=2)
    total = int(valid.sum())
    return float(hits.sum() / total) if total else None


def _mark_failed(engine: Engine, run_id: int, exc: BaseException) -> None:
    """Best effort: if the database is gone too, the next publish marks the run failed instead."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        with write_transaction(engine) as conn:
            conn.execute(
                sa.update(Run)
                .where(Run.run_id == run_id, Run.status == "loading")
                .values(status="failed", finished_at=datetime.now(UTC), message=f"{type(exc).__name__}: {reason}")
            )
    except (sa.exc.SQLAlchemyError, psycopg.Error, sqlite3.Error):
        pass


def _prune(engine: Engine, retention: int) -> None:
    """Drop the rows of published runs older than the newest ``retention`` (one transaction).

    Dropping a PostgreSQL partition locks the parent table against readers for a moment; if a
    long query holds it past ``PRUNE_LOCK_TIMEOUT`` the prune is left to the next publish.
    """
    try:
        with write_transaction(engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{PRUNE_LOCK_TIMEOUT}'")
            current = set(conn.execute(sa.select(CurrentRun.run_id)).scalars())
            newest_first = sa.select(Run.run_id).where(Run.status == "published").order_by(Run.run_id.desc())
            old = [run for run in conn.execute(newest_first.offset(retention)).scalars() if run not in current]
            if not old:
                return
            for table in BULK_TABLES:
                drop_run_rows(conn, table, list(old))
            drop_fold_in(conn, old)
            conn.execute(sa.update(Run).where(Run.run_id.in_(old)).values(status="pruned"))
    except sa.exc.OperationalError as exc:
        if not isinstance(exc.orig, psycopg.errors.LockNotAvailable):
            raise
        log.warning(
            "retention skipped: readers held the tables for over %s; the next publish prunes", PRUNE_LOCK_TIMEOUT
        )


def promote(engine: Engine, run_id: int) -> str:
    """Make published run ``run_id`` the current run of its dataset again (one transaction, under
    the publish lock) and stamp ``runs.promoted_at``; returns its dataset. RecsError (one line)
    when the run is unknown or its rows are gone."""
    with database_errors(engine), publish_lock(engine), write_transaction(engine) as conn:
        run = conn.execute(sa.select(Run.status, Run.dataset).where(Run.run_id == run_id)).first()
        if run is None:
            raise RecsError(f"there is no run {run_id} in {_masked(engine)}; `recs runs` lists the runs")
        if run.status != "published":
            raise RecsError(
                f"run {run_id} is {run.status}, so it has no rows to serve; promote a published run (`recs runs`)"
            )
        _make_current(conn, run.dataset, run_id)
        conn.execute(sa.update(Run).where(Run.run_id == run_id).values(promoted_at=datetime.now(UTC)))
    return run.dataset


@dataclass(frozen=True)
class RunIdentity:
    """What decides whether a run would repeat its dataset's current run: the data, the config
    (JSON values, secrets masked) and the code; plus what a skipped run records about itself."""

    dataset: str
    source: str
    data_sha256: str
    config: dict
    code_version: str
    started_at: datetime | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None


def skip_if_unchanged(engine: Engine, identity: RunIdentity) -> tuple[int, int] | None:
    """When the current run of ``identity.dataset`` has the same data SHA-256, config hash and code
    version, record a run with status ``unchanged`` (no rows, nothing readers see changes) and
    return ``(its run_id, the current run_id)``; otherwise None and nothing is written."""
    digest = config_hash(identity.config)
    with database_errors(engine), publish_lock(engine), write_transaction(engine) as conn:
        current = conn.execute(
            sa.select(Run.run_id, Run.related_model, Run.user_model)
            .join(CurrentRun, CurrentRun.run_id == Run.run_id)
            .where(
                CurrentRun.dataset == identity.dataset,
                Run.data_sha256 == identity.data_sha256,
                Run.config_hash == digest,
                Run.code_version == identity.code_version,
            )
        ).first()
        if current is None:
            return None
        started, now = identity.started_at or datetime.now(UTC), datetime.now(UTC)
        run_id = conn.execute(
            sa.insert(Run)
            .values(
                status="unchanged",
                started_at=started,
                finished_at=now,
                seconds=(now - started).total_seconds(),
                message=f"same data, config and code as current run {current.run_id}; nothing retrained",
                dataset=identity.dataset,
                source=identity.source,
                data_sha256=identity.data_sha256,
                config=identity.config,
                config_hash=digest,
                code_version=identity.code_version,
                flow_run_id=identity.flow_run_id,
                flow_run_url=identity.flow_run_url,
                related_model=current.related_model,
                user_model=current.user_model,
                n_artists=0,
                n_users=0,
                n_related=0,
                n_recommendations=0,
            )
            .returning(Run.run_id)
        ).scalar_one()
    return run_id, current.run_id


def _masked(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
