"""Database URL -> ready SQLAlchemy Engine, with the schema created or upgraded on first use.

``sqlite:///path.db`` (the default; WAL journal so readers never wait for the publisher) or
``postgresql+psycopg://user@host/db`` (a plain ``postgresql://`` URL is given the psycopg 3 driver;
choose a schema with ``?options=-csearch_path%3Dname``).

Schema versions are Alembic revisions in storage/migrations/versions (``0001_baseline`` is the
schema as the pre-Alembic code made it). ``recs_alembic_version`` (``storage.schema.VERSION_TABLE``) holds the revision a database is at,
in the current schema. ``make_engine`` reads it directly and, when it is ``HEAD_REVISION``, is done
without importing Alembic; otherwise it takes the schema lock, reads it again and runs
``alembic upgrade head`` on that same connection inside one transaction, so two processes starting
at once upgrade once. A database made before Alembic (``schema_version`` 1, no revision table)
is stamped at the baseline first, then upgraded like any other.

To change the schema: change the models in storage/schema.py, then add the next revision in
storage/migrations/versions and set ``HEAD_REVISION`` to it. Write it by hand (copy the newest
file, bump ``revision`` / ``down_revision``), or let Alembic draft it by comparing the models
with a new database made by the current code (new, so that it has no per-run partitions for
Alembic to take for tables to drop; review the draft: it does not see views, SQLite statistics,
expression indexes or SQLite's comments)::

    from alembic import command
    from storage.engine import alembic_config, make_engine

    with make_engine("sqlite:////tmp/draft.db").connect() as conn:
        command.revision(alembic_config(conn), "add runs.notes", rev_id="0003", autogenerate=True)

Without ``autogenerate`` (and without a connection) it writes an empty file from
storage/migrations/script.py.mako. No alembic.ini is needed, at run time or for this. A revision
spells out its DDL (a view's SQL included) rather than import it from storage/schema.py, so that
it keeps doing the same when the models change again; tests/test_storage_migrations.py checks
that the head revision builds what the models describe.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from storage.schema import VERSION_TABLE
from tasks.errors import RecsError

if TYPE_CHECKING:
    from alembic.config import Config

# The newest revision in storage/migrations/versions (tests check they agree): a database already
# there costs one query, not an import of Alembic (~0.1 s) and a read of every migration file.
HEAD_REVISION = "0005"
# Databases made before Alembic: their schema_version, and the revision that is their schema.
LEGACY_SCHEMA_VERSION = 1
BASELINE_REVISION = "0001"
MIGRATIONS = Path(__file__).with_name("migrations")
# alembic.context and alembic.op are module-level proxies: one migration run per process at a time.
_MIGRATING = threading.Lock()

# WAL (``_wal_mode``): readers keep reading the last committed run while a publish writes. synchronous=NORMAL is
# crash-safe in WAL mode (a power cut may lose the last commit, never corrupt). Bigger page cache
# and in-memory temp b-trees speed up the bulk load. journal_size_limit: a publish grows the WAL
# to the size of its run; after the next checkpoint it shrinks back to 64 MB instead of staying.
SQLITE_PRAGMAS = (
    "synchronous=NORMAL",
    "temp_store=MEMORY",
    "cache_size=-65536",
    "journal_size_limit=67108864",
)
# Pages of a new database file (an existing file keeps its own: SQLite fixes it at creation). A
# run's fold-in arrays are ~2.2 GB of BLOBs at the 360K shape, chained through overflow pages: with
# 64 KiB pages a whole publish of that shape took 32-35 s against 43-44 s with SQLite's default
# 4 KiB; small top-N rows alone write about 15 % slower, the API's lookups took the same
# (docs/storage.md, docs/performance.md).
SQLITE_PAGE_SIZE = 65536
SQLITE_BUSY_SECONDS = 30
READ_ONLY_SQLITE_POOL = 40  # anyio's default thread limit: the most sync requests FastAPI runs at once


def make_engine(url: str, *, create: bool = True, read_only: bool = False) -> Engine:
    """An Engine for ``url`` whose schema is at ``HEAD_REVISION``; RecsError if unreachable.

    ``create=False`` (readers): a SQLite file that does not exist is a RecsError instead of a new,
    empty database (PostgreSQL databases are never created here either way).
    ``read_only=True`` (servers; implies ``create=False``): the schema must already be at
    ``HEAD_REVISION`` (RecsError otherwise: nothing is upgraded) and the database itself refuses
    writes on every connection (SQLite ``query_only``; PostgreSQL read-only transactions). On
    PostgreSQL each transaction is REPEATABLE READ, so the queries of one request read one
    snapshot even when a publish commits between them (SQLite's WAL readers already do).
    """
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            if (read_only or not create) and not Path(parsed.database).is_file():
                raise RecsError(
                    f"no database at {parsed.database}; publish a run there first (recs run) "
                    "or point --db / RECS_DB at an existing database"
                )
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RecsError(
                    f"cannot create the folder for database {parsed.database}: {exc.strerror}; choose another --db path"
                ) from exc
        # a server's request threads each hold a connection: keep as many open as it runs at once,
        # or every request past the pool's 5 opens (and WAL-checks) a new one
        pool = {"pool_size": READ_ONLY_SQLITE_POOL} if read_only else {}
        engine = sa.create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_SECONDS}, **pool)
        _configure_sqlite(engine, read_only)
    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        if read_only:
            engine = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    with database_errors(engine):
        if read_only:
            _require_head(engine)
        else:
            upgrade_schema(engine)
    return engine


def _require_head(engine: Engine) -> None:
    """RecsError unless the schema is at ``HEAD_REVISION`` (what a read-only engine can read)."""
    with engine.connect() as conn:
        revision = _revision(conn)
    if revision != HEAD_REVISION:
        raise RecsError(
            f"{engine.url.render_as_string(hide_password=True)} has schema revision {revision or 'none'}, "
            f"this code reads {HEAD_REVISION}; publish a run there with this version first (recs run)"
        )


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise RecsError(
            f"not a database URL: {url!r}; use sqlite:///path/to/recs.db or postgresql+psycopg://user@host:5432/dbname"
        ) from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql" and "+" not in parsed.drivername:
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif (backend, driver) not in {("sqlite", "pysqlite"), ("postgresql", "psycopg")}:
        raise RecsError(
            f"unsupported database URL {parsed.render_as_string(hide_password=True)}; "
            "use sqlite:///… or postgresql+psycopg://…"
        )
    return parsed


def _wal_mode(cursor) -> None:
    """Put the database file in WAL mode (it stays so), a new file with ``SQLITE_PAGE_SIZE``
    pages: a no-op once it is. Switching needs the file to itself, and SQLite answers "database is locked" at once, without waiting out the busy
    timeout, when another process connects at the same moment (seen with four starting together
    on a new file), so the switch is tried again for up to ``SQLITE_BUSY_SECONDS``."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                # a no-op unless the file is still empty; must precede WAL, which fixes it
                cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
                cursor.execute("PRAGMA journal_mode=WAL")  # an in-memory database answers "memory"
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _configure_sqlite(engine: Engine, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # We issue BEGIN ourselves: pysqlite's implicit BEGIN skips SELECTs, which would let a
        # read-then-write transaction see two different snapshots.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        _wal_mode(cursor)
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        if read_only:
            cursor.execute("PRAGMA query_only=ON")  # any write now fails with "attempt to write a readonly database"
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
    return (
        f"database {engine.url.render_as_string(hide_password=True)} failed: {reason}; "
        "check that it is running and reachable and that --db / RECS_DB is right"
    )


def upgrade_schema(engine: Engine) -> None:
    """Create the schema in an empty database or upgrade an older one to ``HEAD_REVISION``."""
    with engine.connect() as conn:
        revision = _revision(conn)
        conn.rollback()
    if revision == HEAD_REVISION:
        return
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('recs.schema.' || current_schema()))")
        revision = _revision(conn)  # another process may have upgraded it while we waited
        if revision != HEAD_REVISION:
            _migrate(conn, revision, engine.url.render_as_string(hide_password=True))


def _migrate(conn: Connection, revision: str | None, shown_url: str) -> None:
    """Run ``alembic upgrade head`` on ``conn`` (in its transaction), from ``revision``."""
    # Imported here: a database already at HEAD_REVISION never needs Alembic.
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config(conn)
    legacy = None
    if revision is not None:
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        if revision not in known:
            raise RecsError(f"database schema is at revision {revision}, newer than this code; upgrade lastfm-recs")
    else:
        legacy = _legacy_version(conn)
        if legacy is None and sa.inspect(conn).has_table("runs"):
            raise RecsError(
                f"{shown_url} has a runs table but no {VERSION_TABLE} or schema_version: "
                "it is not a recs database; use another --db"
            )
        if legacy not in (None, LEGACY_SCHEMA_VERSION):
            raise RecsError(
                f"{shown_url} has schema_version {legacy}; only {LEGACY_SCHEMA_VERSION} (lastfm-recs "
                "before Alembic) can be upgraded; use another --db"
            )
    with _MIGRATING:
        if legacy is not None:
            command.stamp(config, BASELINE_REVISION)
        command.upgrade(config, "head")


def alembic_config(conn: Connection | None = None) -> Config:
    """Alembic's configuration for storage/migrations, set up in code (there is no alembic.ini).

    ``conn``: the connection env.py runs the migrations on; commands that touch no database
    (``revision`` without autogenerate, ``history``, ``heads``) need none.
    """
    from alembic.config import Config  # imported here for the same reason as in _migrate

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))  # ConfigParser syntax
    config.attributes["connection"] = conn
    return config


def _revision(conn: Connection) -> str | None:
    """The database's Alembic revision, None when it has none (no revision table or row)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar_one_or_none()


def _legacy_version(conn: Connection) -> int | None:
    """``schema_version`` of a database made before Alembic, None when there is no such table."""
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    return conn.exec_driver_sql("SELECT max(version) FROM schema_version").scalar_one()


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
            yield (
                make_url(url)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    finally:
        admin.dispose()
