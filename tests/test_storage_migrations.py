"""storage/migrations and the schema upgrade in storage/engine.py, on real databases.

Every test runs on SQLite files in tmp_path and on the real PostgreSQL from
``RECS_TEST_POSTGRES_URL`` (fresh schemas from ``scratch_schema``, dropped afterwards); the
PostgreSQL half skips only when that variable is unset.

The pre-Alembic databases come from tests/fixtures/pre_alembic.{sqlite,postgresql}.sql, made with
the code of commit 98a38d4 (``schema_version`` 1, no Alembic): ``make_engine`` on an empty database,
then ``publish(engine, make_outputs(7, n_artists=6, n_users=5, n=3, names=["Motörhead", "O'Brien"]))``,
then ``sqlite3 pre.db .dump`` (verbatim) and ``pg_dump -n <schema> --inserts --no-owner
--no-privileges`` with the schema name, CREATE SCHEMA, the search_path reset, psql's \\restrict
lines and the comment blocks taken out, so that it loads into whatever schema search_path names.
Each file's header says the same.
"""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from test_storage import BULK, PG_URL, expected_views, make_outputs, statuses, views_of

from storage.engine import (
    BASELINE_REVISION,
    HEAD_REVISION,
    alembic_config,
    make_engine,
    scratch_schema,
    write_transaction,
)
from storage.publish import publish
from storage.queries import related_artists
from storage.schema import VERSION_TABLE, Base
from tasks.errors import RecsError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).with_name("fixtures")
SCRIPTS = ScriptDirectory.from_config(alembic_config())
# The run in the fixtures: rows its views show (6 artists x top-3 and 5 users x top-3, some short).
FIXTURE_ROWS = (16, 13)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_db(request, tmp_path) -> Iterator[Callable[[], str]]:
    """Makes URLs of new, empty databases of one kind: SQLite files, or PostgreSQL schemas that
    are dropped afterwards."""
    if request.param == "postgresql" and not PG_URL:
        pytest.skip("RECS_TEST_POSTGRES_URL is not set")
    with ExitStack() as stack:
        count = itertools.count()

        def make() -> str:
            if request.param == "sqlite":
                return f"sqlite:///{tmp_path / f'recs{next(count)}.db'}"
            return stack.enter_context(scratch_schema(PG_URL, "recs_test"))

        yield make


def load_pre_alembic(url: str) -> None:
    """Fill the empty database at ``url`` from the pre-Alembic fixture of its kind."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with closing(sqlite3.connect(parsed.database)) as db:
            db.executescript((FIXTURES / "pre_alembic.sqlite.sql").read_text())
        return
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql((FIXTURES / "pre_alembic.postgresql.sql").read_text())
    engine.dispose()


def plain_engine(url: str) -> sa.Engine:
    """An engine that does not touch the schema, to look at a database as it is."""
    return sa.create_engine(url)


def views_as_is(url: str) -> tuple[set[tuple], set[tuple]]:
    engine = plain_engine(url)
    views = views_of(engine)
    engine.dispose()
    return views


def tables(url: str) -> set[str]:
    engine = plain_engine(url)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    return names


def revisions(url: str) -> list[str]:
    engine = plain_engine(url)
    with engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT version_num FROM recs_alembic_version").scalars().all()
    engine.dispose()
    return found


# PostgreSQL: the schema's own objects, partitions (one per published run) left out.
PG_OWN = "c.relnamespace = current_schema()::regnamespace AND NOT c.relispartition"
PG_CATALOG = {
    "relations": "SELECT c.relname, c.relkind::text, obj_description(c.oid, 'pg_class'), pg_get_partkeydef(c.oid), "
    f"CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END FROM pg_class c WHERE {PG_OWN}",
    "columns": "SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum) "
    "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    f"WHERE {PG_OWN} AND a.attnum > 0 AND NOT a.attisdropped",
    # Names, kinds and columns only: a CHECK read back from pg_dump's text deparses with other casts.
    "constraints": "SELECT c.relname, k.conname, k.contype::text, k.conkey::text "
    f"FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE {PG_OWN}",
    "indexes": "SELECT replace(pg_get_indexdef(c.oid), current_schema() || '.', '') "
    f"FROM pg_class c WHERE {PG_OWN} AND c.relkind IN ('i', 'I')",
}


def schema_of(url: str) -> dict[str, list[tuple]]:
    """Everything that describes the schema: SQLite's stored DDL and statistics, PostgreSQL's catalog."""
    engine = plain_engine(url)
    with engine.connect() as conn:

        def rows(sql: str) -> list[tuple]:
            return sorted(tuple(row) for row in conn.exec_driver_sql(sql))

        if engine.dialect.name == "sqlite":
            ddl = rows("SELECT type, name, tbl_name, sql FROM sqlite_master")
            has_stats = any(row[1] == "sqlite_stat1" for row in ddl)
            found = {"ddl": ddl, "statistics": rows("SELECT tbl, idx, stat FROM sqlite_stat1") if has_stats else []}
        else:
            found = {name: rows(sql) for name, sql in PG_CATALOG.items()}
    engine.dispose()
    return found


def test_history_is_linear_and_head_revision_is_its_end():
    assert SCRIPTS.get_heads() == [HEAD_REVISION]
    assert [script.revision for script in SCRIPTS.walk_revisions()][-1] == BASELINE_REVISION


def test_fresh_database_gets_the_full_schema_at_head(new_db):
    url = new_db()
    engine = make_engine(url)
    assert revisions(url) == [HEAD_REVISION]
    assert tables(url) == {"recs_alembic_version", "runs", "run_metrics", "current_runs", *BULK}
    assert views_of(engine) == (set(), set())
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            stats = conn.exec_driver_sql("SELECT tbl, idx, stat FROM sqlite_stat1").all()
            # the baseline's, with 0004's for related_artists (its primary key gained model)
            related = SCRIPTS.get_revision("0004").module.NEW_STAT
            baseline = SCRIPTS.get_revision(BASELINE_REVISION).module.SQLITE_STATS
            assert sorted(stats) == sorted([s for s in baseline if s[0] != "related_artists"] + [related])
        else:
            partitioned = dict(
                conn.exec_driver_sql(
                    "SELECT relname, pg_get_partkeydef(oid) FROM pg_class "
                    "WHERE relkind = 'p' AND relnamespace = current_schema()::regnamespace"
                ).all()
            )
            assert partitioned == {table: "LIST (run_id)" for table in BULK}
            # recs_alembic_version lives in the search_path schema, like the tables.
            scratch = sa.make_url(url).query["options"].removeprefix("-csearch_path=")
            assert conn.exec_driver_sql(
                "SELECT current_schema(), to_regclass(quote_ident(current_schema()) "
                "|| '.recs_alembic_version') IS NOT NULL"
            ).one() == (scratch, True)
    outputs = make_outputs(1)
    assert publish(engine, outputs) == 1 and views_of(engine) == expected_views(outputs)
    engine.dispose()


def test_models_match_what_the_migrations_build(new_db):
    engine = make_engine(new_db())
    with engine.connect() as conn, warnings.catch_warnings():
        # Neither side can reflect the lower(name) index; the schema comparison test covers it.
        warnings.filterwarnings("ignore", "(?i).*expression-based index")
        assert (
            compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), Base.metadata)
            == []
        )
    engine.dispose()


def test_pre_alembic_database_is_upgraded_in_place(new_db):
    legacy_url, fresh_url = new_db(), new_db()
    load_pre_alembic(legacy_url)
    before = views_as_is(legacy_url)
    assert tuple(map(len, before)) == FIXTURE_ROWS
    engine = make_engine(legacy_url)
    assert views_of(engine) == before and statuses(engine) == {1: "published"}
    assert related_artists(engine, "o'brien").artist_name == "O'Brien"
    assert revisions(legacy_url) == [HEAD_REVISION] and "schema_version" not in tables(legacy_url)
    make_engine(fresh_url).dispose()
    assert schema_of(legacy_url) == schema_of(fresh_url)  # the baseline is what the old code made
    outputs = make_outputs(8)
    assert publish(engine, outputs) == 2
    assert views_of(engine) == expected_views(outputs) and statuses(engine) == {1: "published", 2: "published"}
    engine.dispose()


START = r"""
import sys
sys.path[:0] = [sys.argv[2]]
import alembic.command, alembic.script  # imported now, so that all starters reach the DDL together
from storage.engine import make_engine
print("ready", flush=True)
sys.stdin.readline()
make_engine(sys.argv[1]).dispose()
"""


def start_in_processes(url: str, n: int) -> None:
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", START, url, str(ROOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for child in starters:  # all imported and waiting, then released together
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in starters:
            child.stdin.write("go\n")
            child.stdin.close()
        for child in starters:
            assert child.wait(60) == 0, child.stderr.read()
    finally:
        for child in starters:
            child.kill()
            child.wait(30)
            child.stdout.close()
            child.stderr.close()


def start_in_threads(url: str, n: int) -> None:
    barrier = threading.Barrier(n)

    def start() -> None:
        barrier.wait()
        make_engine(url).dispose()

    with ThreadPoolExecutor(n) as pool:
        for future in [pool.submit(start) for _ in range(n)]:
            future.result()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start", [start_in_processes, start_in_threads])
def test_concurrent_starts_on_a_fresh_database_upgrade_once(new_db, start):
    url = new_db()
    start(url, 4)
    assert revisions(url) == [HEAD_REVISION]
    assert tables(url) == {"recs_alembic_version", "runs", "run_metrics", "current_runs", *BULK}


FAST = r"""
import sys
sys.path[:0] = [sys.argv[2]]
from storage.engine import make_engine
make_engine(sys.argv[1]).dispose()
print(sorted(name for name in sys.modules if name.split(".")[0] == "alembic"))
"""


def test_current_database_opens_without_alembic(new_db):
    url = new_db()
    make_engine(url).dispose()
    result = subprocess.run([sys.executable, "-c", FAST, url, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_downgrades_give_back_the_pre_alembic_schema_then_nothing(new_db):
    url = new_db()
    engine = make_engine(url)
    outputs = make_outputs(9)
    publish(engine, outputs)
    with write_transaction(engine) as conn:
        command.downgrade(alembic_config(conn), BASELINE_REVISION)
    with engine.connect() as conn:  # what the pre-Alembic code checks for
        assert conn.exec_driver_sql("SELECT version FROM schema_version").scalars().all() == [1]
    assert views_of(engine) == expected_views(outputs)
    with write_transaction(engine) as conn:
        command.downgrade(alembic_config(conn), "base")
    assert tables(url) == {"recs_alembic_version"} and revisions(url) == []
    engine.dispose()
    engine = make_engine(url)  # an empty recs_alembic_version is an empty database
    assert revisions(url) == [HEAD_REVISION] and views_of(engine) == (set(), set())
    engine.dispose()


def _newer(url: str) -> None:
    make_engine(url).dispose()
    engine = plain_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE recs_alembic_version SET version_num = 'ffffffffffff'")
    engine.dispose()


def _foreign(url: str) -> None:
    engine = plain_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE runs (id INTEGER PRIMARY KEY, what TEXT)")
    engine.dispose()


def _unknown_legacy(url: str) -> None:
    load_pre_alembic(url)
    engine = plain_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_version SET version = 7")
    engine.dispose()


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (_newer, "database schema is at revision ffffffffffff, newer than this code; upgrade lastfm-recs"),
        (
            _foreign,
            "has a runs table but no recs_alembic_version or schema_version: it is not a recs database; "
            "use another --db",
        ),
        (
            _unknown_legacy,
            "has schema_version 7; only 1 (lastfm-recs before Alembic) can be upgraded; use another --db",
        ),
    ],
)
def test_databases_it_cannot_upgrade_are_one_line_errors_and_left_alone(new_db, prepare, message):
    url = new_db()
    prepare(url)
    before = schema_of(url)
    with pytest.raises(RecsError) as err:
        make_engine(url)
    assert str(err.value).endswith(message) and "\n" not in str(err.value)
    assert schema_of(url) == before


def test_0002_database_with_published_runs_gets_a_current_run_per_dataset(new_db):
    """0002 showed only the newest published run of any dataset; 0003 makes each dataset's newest
    published run current, keeps every run and its rows, and adds the status ``unchanged``."""
    url = new_db()
    load_pre_alembic(url)  # run 1: synthetic, published, with rows
    engine = plain_engine(url)
    with write_transaction(engine) as conn:
        command.stamp(alembic_config(conn), BASELINE_REVISION)
        command.upgrade(alembic_config(conn), "0002")
        # a later run of another dataset (no rows of its own), which hid run 1 from the 0002 views
        conn.exec_driver_sql(
            "INSERT INTO runs (status, started_at, finished_at, dataset, source, data_sha256, config, "
            "code_version, related_model, user_model, n_artists, n_users, n_related, n_recommendations) "
            "VALUES ('published', '2026-12-02 00:00:00', '2026-12-02 00:01:00', 'lastfm-2k', 'x', 'ab', '{}', "
            "'old', 'als', 'als', 0, 0, 0, 0)"
        )
    assert views_of(engine) == (set(), set())  # what readers of 0002 saw: run 2's (empty) lists
    engine.dispose()
    engine = make_engine(url)
    assert revisions(url) == [HEAD_REVISION]
    with engine.connect() as conn:
        assert dict(conn.exec_driver_sql("SELECT dataset, run_id FROM current_runs").all()) == {
            "synthetic": 1,
            "lastfm-2k": 2,
        }
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM current_related_artists WHERE dataset = 'synthetic'"
            ).scalar_one()
            == FIXTURE_ROWS[0]
        )
        assert conn.exec_driver_sql("SELECT config_hash, seconds, choices FROM runs WHERE run_id = 1").one() == (
            None,
            None,
            None,
        )
    assert statuses(engine) == {1: "published", 2: "published"}
    assert related_artists(engine, "o'brien", dataset="synthetic").artist_name == "O'Brien"
    outputs = make_outputs(8)
    assert publish(engine, outputs) == 3
    assert statuses(engine) == {1: "published", 2: "published", 3: "published"}
    with engine.connect() as conn:
        conn.exec_driver_sql("UPDATE runs SET status = 'unchanged' WHERE run_id = 2")  # the new status is allowed
        conn.rollback()
    engine.dispose()
    fresh = new_db()
    make_engine(fresh).dispose()
    assert schema_of(url) == schema_of(fresh)  # the upgrade builds what a new database gets
