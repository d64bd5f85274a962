"""tasks.transient: the one policy for which failures are retried, on real errors where they can be
caused here (a refused port, a database that does not exist) and built ones where they cannot."""

from __future__ import annotations

import os
import socket
import sqlite3
import urllib.error
import urllib.request

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from tasks.errors import RecsError
from tasks.transient import is_transient


def _wrapped(cause: BaseException) -> RecsError:
    try:
        raise RecsError("one line") from cause
    except RecsError as exc:
        return exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_network_failures_another_attempt_can_fix():
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{_free_port()}/x", timeout=5)
    assert is_transient(_wrapped(refused.value))
    assert is_transient(_wrapped(urllib.error.HTTPError("http://x", 503, "Unavailable", {}, None)))
    assert is_transient(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))


def test_failures_that_fail_at_once():
    assert not is_transient(_wrapped(urllib.error.HTTPError("http://x", 404, "Not Found", {}, None)))
    assert not is_transient(RecsError("checksum mismatch"))
    assert not is_transient(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert not is_transient(ValueError("bad data"))


def test_sqlite_locked_is_transient_unopenable_is_not():
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    cannot_open = OperationalError("connect", {}, sqlite3.OperationalError("unable to open database file"))
    assert is_transient(_wrapped(locked))
    assert not is_transient(_wrapped(cannot_open))


@pytest.mark.postgres
def test_postgres_refused_is_transient_missing_database_is_not():
    url = os.environ.get("RECS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RECS_TEST_POSTGRES_URL is not set")
    from sqlalchemy.engine import make_url

    base = make_url(url).set(drivername="postgresql")
    with pytest.raises(psycopg.OperationalError) as missing:
        psycopg.connect(base.set(database="recs_no_such_db").render_as_string(hide_password=False), connect_timeout=5)
    assert not is_transient(_wrapped(missing.value))
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(base.set(port=_free_port()).render_as_string(hide_password=False), connect_timeout=5)
    assert is_transient(_wrapped(refused.value))


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.ProgramLimitExceeded("index row requires 9016 bytes, maximum size is 8191"),
        psycopg.errors.StringDataRightTruncation("value too long for type character varying(10)"),
        psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"),
    ],
)
def test_data_errors_of_classes_22_23_54_are_permanent(error):
    wrapped = OperationalError("COPY", {}, error)
    assert not is_transient(_wrapped(wrapped))
    # also when a dropped connection follows it in the chain (the cleanup after the failed COPY)
    try:
        try:
            raise error
        except psycopg.Error:
            raise ConnectionResetError("reset while rolling back") from None
    except ConnectionResetError as reset:
        reset.__context__ = error
        assert not is_transient(reset)
