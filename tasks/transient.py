"""The one policy for which failures another attempt can fix, and how often to try again.

``is_transient`` is asked by every retry on every call path: Prefect's ``retry_condition_fn``
for the flow's download and publish tasks, the download's own loop when it runs outside a flow
(``recs data``, tuning), and nothing else retries. Transient: refused/reset/aborted connections,
timeouts, temporary name-resolution failures, HTTP 5xx, a dropped PostgreSQL connection, a
locked SQLite database. Everything else (a 404, an unknown host, a checksum mismatch, bad data,
a missing database) fails at once, and so does any database error of SQLSTATE class 22 (data
exception), 23 (integrity violation) or 54 (program limit exceeded, e.g. an index row over the
btree limit) wherever it sits in the chain: the same rows fail the same way on every attempt.
"""

from __future__ import annotations

import errno
import http.client
import socket
import sqlite3
import urllib.error

import psycopg
from pydantic import Field
from sqlalchemy.exc import InterfaceError, OperationalError

from tasks.contracts import StageConfig

_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EPIPE,
}
# psycopg reports a database that does not exist, bad credentials and the like as
# OperationalError too; SQLSTATE class 08 (connection exception) and 57P0x (server shutting
# down) are the ones a later attempt can get past. A connection that never got as far as a
# SQLSTATE (refused, timed out) has none.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "40001", "40P01")
# the rows themselves are at fault: a value too long or malformed (22), a broken constraint (23),
# a server limit such as the btree index row size (54)
_PERMANENT_SQLSTATE_CLASSES = ("22", "23", "54")
_PERMANENT_CONNECT_TEXT = ("does not exist", "authentication failed", "password", "no pg_hba.conf entry", "role ")


class RetryConfig(StageConfig):
    """Retries of the steps that talk to the network or the database (download, publish).

    Only transient failures are retried (see ``tasks.transient``); a 404, a checksum mismatch or
    bad data fails at once.
    """

    attempts: int = Field(2, ge=0, le=10, description="retries after the first try")
    backoff_seconds: float = Field(10.0, ge=0, description="first delay; doubles on each retry")


def is_transient(exc: BaseException | None) -> bool:
    """True if ``exc`` or anything in its cause/context chain is a failure worth retrying, and
    nothing in that chain is a permanent data error (``data_error``)."""
    if data_error(exc) is not None:
        return False
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlite3.OperationalError):
            return "locked" in str(exc) or "busy" in str(exc)
        if isinstance(exc, OperationalError | InterfaceError):
            return exc.orig is None or is_transient(exc.orig)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return _psycopg_transient(exc)
        if isinstance(exc, urllib.error.HTTPError):
            return exc.code >= 500
        if isinstance(exc, socket.gaierror):
            return exc.errno == socket.EAI_AGAIN
        if isinstance(
            exc,
            TimeoutError
            | socket.timeout
            | ConnectionError
            | http.client.RemoteDisconnected
            | http.client.IncompleteRead,
        ):
            return True
        if isinstance(exc, urllib.error.URLError):
            return is_transient(exc.reason) if isinstance(exc.reason, BaseException) else False
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _psycopg_transient(exc: psycopg.Error) -> bool:
    state = exc.sqlstate or ""
    if state:
        return state.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    text = str(exc).lower()
    return not any(marker in text for marker in _PERMANENT_CONNECT_TEXT)


def data_error(exc: BaseException | None) -> psycopg.Error | None:
    """The PostgreSQL error of SQLSTATE class 22, 23 or 54 in ``exc``'s cause/context chain (the
    data cannot be stored as it is, on any attempt), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in _PERMANENT_SQLSTATE_CLASSES:
            return exc
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return None
