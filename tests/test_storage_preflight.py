"""storage.preflight against real SQLite and PostgreSQL: each failure one RecsError, at once."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from storage.engine import make_engine, scratch_schema
from storage.preflight import check_database
from storage.publish import publish_lock
from tasks.errors import RecsError
from tasks.transient import is_transient

PG = os.environ.get("RECS_TEST_POSTGRES_URL")
needs_pg = pytest.mark.skipif(not PG, reason="RECS_TEST_POSTGRES_URL not set")


def test_a_new_sqlite_database_passes(tmp_path):
    db = tmp_path / "sub" / "recs.db"
    check_database(f"sqlite:///{db}")
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM runs").scalar_one() == 0


def test_a_held_publish_lock_fails_within_seconds(tmp_path):
    url = f"sqlite:///{tmp_path / 'recs.db'}"
    engine = make_engine(url)
    with publish_lock(engine):
        start = time.monotonic()
        with pytest.raises(RecsError, match="another publish into .* wait for it to finish") as busy:
            check_database(url, lock_wait_seconds=1)
        assert time.monotonic() - start < 10
    assert not is_transient(busy.value)
    check_database(url, lock_wait_seconds=1)  # free again
    engine.dispose()


@needs_pg
def test_a_missing_postgresql_database_is_not_retried():
    missing = make_url(PG).set(database=f"recs_missing_{uuid.uuid4().hex[:8]}").render_as_string(hide_password=False)
    start = time.monotonic()
    with pytest.raises(RecsError, match="does not exist") as exc:
        check_database(missing)
    assert time.monotonic() - start < 15
    assert not is_transient(exc.value)
    assert "\n" not in str(exc.value)


@needs_pg
def test_a_read_only_postgresql_database_is_refused():
    assert PG
    with scratch_schema(PG, "preflight") as url:
        make_engine(url).dispose()  # the schema exists, at the current revision
        options = make_url(url).query["options"]
        read_only = (
            make_url(url)
            .update_query_dict({"options": f"{options} -cdefault_transaction_read_only=on"})
            .render_as_string(hide_password=False)
        )
        with pytest.raises(RecsError, match="is not writable: .*read-only transaction; grant write access"):
            check_database(read_only)
        check_database(url)
