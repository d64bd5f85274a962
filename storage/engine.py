"""Database URL -> ready SQLAlchemy Engine, with the schema created or upgraded on first use.

``sqlite:///path.db`` (the default; WAL journal so readers never wait for the publisher) or
``postgresql+psycopg://user@host/db`` (a plain ``postgresql://`` URL is given the psycopg 3 driver;
choose a schema with ``?options=-csearch_path%3Dname``).

Schema versions: ``schema_version`` holds the version a database is at. A new database gets the
current models (``Base.metadata``) and views, stamped ``SCHEMA_VERSION``; an older one is brought
forward by ``UPGRADES[v]`` (version v -> v + 1) one step at a time, inside one transaction that
holds a lock, so two processes starting at once upgrade once. A change to the schema adds a step
here and bumps ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from storage.schema import Base, SchemaVersion, create_views, seed_sqlite_statistics
from tasks.errors import RecsError

SCHEMA_VERSION = 1
UPGRADES: dict[int, Callable[[Connection], None]] = {}

# WAL: readers keep reading the last committed run while a publish writes. synchronous=NORMAL is
# crash-safe in WAL mode (a power cut may lose the last commit, never corrupt). Bigger page cache
# and in-memory temp b-trees speed up the bulk load. journal_size_limit: a publish grows the WAL
# to the size of its run; after the next checkpoint it shrinks back to 64 MB instead of staying.
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "temp_store=MEMORY", "cache_size=-65536",
                  "journal_size_limit=67108864")
SQLITE_BUSY_SECONDS = 30


def make_engine(url: str) -> Engine:
    """An Engine for ``url`` whose schema is at ``SCHEMA_VERSION``; RecsError if unreachable."""
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RecsError(f"cannot create the folder for database {parsed.database}: {exc.strerror}; "
                                "choose another --db path") from exc
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_SECONDS})
        _configure_sqlite(engine)
    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    with database_errors(engine):
        upgrade_schema(engine)
    return engine


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise RecsError(f"not a database URL: {url!r}; use sqlite:///path/to/recs.db or "
                        "postgresql+psycopg://user@host:5432/dbname") from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql" and "+" not in parsed.drivername:
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif (backend, driver) not in {("sqlite", "pysqlite"), ("postgresql", "psycopg")}:
        raise RecsError(f"unsupported database URL {parsed.render_as_string(hide_password=True)}; "
                        "use sqlite:///… or postgresql+psycopg://…")
    return parsed


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # We issue BEGIN ourselves: pysqlite's implicit BEGIN skips SELECTs, which would let a
        # read-then-write transaction see two different snapshots.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so a writer
        # never fails half-way with SQLITE_BUSY after having read a stale snapshot.
        write = conn.get_execution_options().get("recs_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection inside one write transaction, committed on success, rolled back on error."""
    with engine.connect() as conn:
        conn.execution_options(recs_write=True)
        with conn.begin():
            yield conn


@contextmanager
def database_errors(engine: Engine) -> Iterator[None]:
    """Turn 'cannot reach / cannot open the database' into a one-line RecsError.

    Covers SQLAlchemy's wrappers and the raw driver errors of the bulk paths, which use the DBAPI
    connection directly. Other database errors are bugs and propagate unchanged.
    """
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise RecsError(_unreachable(engine, exc.orig)) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError, sqlite3.OperationalError) as exc:
        raise RecsError(_unreachable(engine, exc)) from exc


def _unreachable(engine: Engine, exc: BaseException | None) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    return (f"database {engine.url.render_as_string(hide_password=True)} failed: {reason}; "
            "check that it is running and reachable and that --db / RECS_DB is right")


def upgrade_schema(engine: Engine) -> None:
    """Create the schema in an empty database or upgrade an older one to ``SCHEMA_VERSION``."""
    with engine.connect() as conn:
        version = _version(conn)
        conn.rollback()
    if version == SCHEMA_VERSION:
        return
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('recs.schema.' || current_schema()))")
        version = _version(conn)
        if version is None:
            if sa.inspect(conn).has_table("runs"):
                raise RecsError(f"{engine.url.render_as_string(hide_password=True)} has a runs table but "
                                "no schema_version: it is not a recs database; use another --db")
            Base.metadata.create_all(conn)
            create_views(conn)
            if conn.dialect.name == "sqlite":
                seed_sqlite_statistics(conn)
        elif version > SCHEMA_VERSION:
            raise RecsError(f"database schema is version {version}, newer than this code's "
                            f"{SCHEMA_VERSION}; upgrade lastfm-recs")
        else:
            for step in range(version, SCHEMA_VERSION):
                UPGRADES[step](conn)
        if version != SCHEMA_VERSION:
            conn.execute(sa.delete(SchemaVersion))
            conn.execute(sa.insert(SchemaVersion).values(version=SCHEMA_VERSION, applied_at=datetime.now(UTC)))


def _version(conn: Connection) -> int | None:
    """The database's schema version, None when it has no schema_version table."""
    if not sa.inspect(conn).has_table(SchemaVersion.__tablename__):
        return None
    return conn.execute(sa.select(sa.func.max(SchemaVersion.version))).scalar_one_or_none()


@contextmanager
def scratch_schema(url: str, prefix: str) -> Iterator[str]:
    """``url`` (PostgreSQL) pointed at a new, empty schema ``<prefix>_<random>`` through
    ``options=-csearch_path``, dropped with everything in it afterwards: for tests and benchmarks
    that must not touch what the database already holds, nor collide with each other."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"  # generated here, never user input
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            yield make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
                hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    finally:
        admin.dispose()
