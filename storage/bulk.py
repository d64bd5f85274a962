"""Bulk loading: NumPy columns -> table rows, in batches, through each database's fast path.

A *batch* is a dict ``column name -> 1-D array`` (all the same length) in the table's column order.
Batches are made lazily from the run's arrays, so memory holds one batch at a time however many
rows a run has. PostgreSQL gets them through ``COPY ... FROM STDIN (FORMAT BINARY)``: numeric
batches are encoded to the binary row format by NumPy in one go, text batches row by row by
psycopg. SQLite gets one ``executemany`` per batch, inside the caller's transaction.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection

from tasks.contracts import TopN

Batch = dict[str, np.ndarray]

# The binary COPY format: file signature, flags (int32 0), header extension length (int32 0) ...
PG_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
# ... and a field count of -1 to end.
PG_COPY_TRAILER = b"\xff\xff"
# psycopg type names for the row-by-row (text-bearing) COPY path.
PG_TYPE_NAMES = {"INTEGER": "int4", "SMALLINT": "int2", "REAL": "float4", "DOUBLE": "float8", "TEXT": "text"}


def topn_batches(run_id: int, topn: TopN, owner: str, target: str, batch_rows: int) -> Iterator[Batch]:
    """Rows ``(run_id, owner code, rank, target code, score)`` of a TopN, padding (-1) dropped.

    ``owner`` / ``target`` name the code columns (``artist_id`` / ``related_artist_id`` for related
    artists, ``user_id`` / ``artist_id`` for recommendations). Ranks are 1-based. Dtypes match the
    columns: int32 codes and run_id, int16 rank, float32 score.
    """
    n_rows, n = topn.ids.shape
    step = max(1, batch_rows // max(n, 1))
    ranks = np.arange(1, n + 1, dtype=np.int16)
    for start in range(0, n_rows, step):
        ids = topn.ids[start : start + step]
        keep = ids >= 0
        owners = np.arange(start, start + len(ids), dtype=np.int32)
        count = int(keep.sum())
        yield {
            "run_id": np.full(count, run_id, dtype=np.int32),
            owner: np.broadcast_to(owners[:, None], ids.shape)[keep],
            "rank": np.broadcast_to(ranks, ids.shape)[keep],
            target: ids[keep].astype(np.int32, copy=False),
            "score": topn.scores[start : start + step][keep].astype(np.float32, copy=False),
        }


def column_batches(columns: Batch, batch_rows: int) -> Iterator[Batch]:
    """Slices of equal-length columns, ``batch_rows`` rows at a time (views, not copies)."""
    total = len(next(iter(columns.values())))
    for start in range(0, total, batch_rows):
        yield {name: values[start : start + batch_rows] for name, values in columns.items()}


def write_batches(conn: Connection, table: sa.Table, batches: Iterable[Batch]) -> int:
    """Append every batch to ``table`` inside ``conn``'s open transaction; returns rows written."""
    dbapi = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        return _copy_batches(dbapi, table, batches)
    return _insert_batches(dbapi, conn.dialect, table, batches)


def _insert_batches(dbapi, dialect, table: sa.Table, batches: Iterable[Batch]) -> int:
    cursor = dbapi.cursor()
    written = 0
    try:
        statement = None
        for batch in batches:
            if statement is None:
                statement = str(sa.insert(table).compile(dialect=dialect, column_keys=list(batch)))
            # tolist() turns NumPy scalars into the Python ints/floats/strs sqlite3 binds natively.
            cursor.executemany(statement, zip(*(values.tolist() for values in batch.values()), strict=True))
            written += len(next(iter(batch.values())))
    finally:
        cursor.close()
    return written


def _copy_batches(dbapi, table: sa.Table, batches: Iterable[Batch]) -> int:
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return 0
    names = list(first)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    numeric = all(values.dtype.kind in "iuf" for values in first.values())
    written = 0
    with dbapi.cursor() as cursor, cursor.copy(statement) as copy:
        if numeric:
            copy.write(PG_COPY_SIGNATURE)
        else:
            copy.set_types([_pg_type(table.c[name].type) for name in names])
        for batch in itertools.chain([first], batches):
            if numeric:
                copy.write(pg_binary_rows(batch))
            else:
                for row in zip(*(values.tolist() for values in batch.values()), strict=True):
                    copy.write_row(row)
            written += len(next(iter(batch.values())))
        if numeric:
            copy.write(PG_COPY_TRAILER)
    return written


def pg_binary_rows(batch: Batch) -> bytes:
    """Rows of a numeric batch in PostgreSQL's binary COPY format (no signature, no trailer).

    Each row is an int16 field count then, per field, an int32 byte length and the big-endian
    value; a NumPy structured array with that layout is filled column by column. The array dtypes
    must be the columns' exact types (int16/int32/int64/float32/float64 for smallint/integer/
    bigint/real/double precision).
    """
    columns = list(batch.values())
    layout = [("fields", ">i2")]
    for i, values in enumerate(columns):
        layout += [(f"size{i}", ">i4"), (f"value{i}", values.dtype.newbyteorder(">"))]
    rows = np.empty(len(columns[0]), dtype=np.dtype(layout))
    rows["fields"] = len(columns)
    for i, values in enumerate(columns):
        rows[f"size{i}"] = values.dtype.itemsize
        rows[f"value{i}"] = values
    return rows.tobytes()


def _pg_type(column_type: sa.types.TypeEngine) -> str:
    return PG_TYPE_NAMES[str(column_type).split()[0]]
