"""Publish throughput: ``storage.publish`` beside a bare executemany / COPY of the same rows.

    python -m benchmarks.publish [--rows 1000000] [--repeat 3] [--postgres-url URL]

Generates one run with ``rows`` top-N rows (half related artists, half user recommendations,
N = 10) plus its artists and users, publishes it into a fresh SQLite file and a fresh PostgreSQL
schema (URL from --postgres-url, RECS_BENCH_POSTGRES_URL or RECS_TEST_POSTGRES_URL; skipped when
none), and times the same rows loaded by the driver alone: ``sqlite3`` executemany of pre-built
tuples in one transaction, psycopg ``COPY`` with ``write_row`` of pre-built tuples, into the same
schema (for PostgreSQL: into the run's partitions, created with their indexes beforehand, which is
the plain way to load a partitioned table). Each measurement uses ``--repeat`` fresh databases.
Prints JSON: best and median rows/s of each and the publish / bare ratio of the best. Targets:
>= 300K rows/s SQLite, >= 500K rows/s PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import sqlalchemy as sa
from psycopg import sql

from storage.engine import make_engine, scratch_schema
from storage.publish import RunOutputs, publish
from tasks.contracts import Encoded, Metric, TopN
from tasks.names import search_keys

N = 10


def make_run(rows: int, seed: int = 0) -> RunOutputs:
    """``rows`` top-N rows split between artists and users, N = 10, random codes and scores."""
    rng = np.random.default_rng(seed)
    n_artists = n_users = max(rows // (2 * N), 1)
    plays = sp.csr_matrix(
        (np.ones(n_users, dtype=np.float32), (np.arange(n_users), rng.integers(0, n_artists, n_users))),
        shape=(n_users, n_artists),
    )
    encoded = Encoded(
        plays=plays,
        user_keys=np.array([f"user-{i}" for i in range(n_users)], dtype=object),
        artist_keys=np.array([f"artist-{i}" for i in range(n_artists)], dtype=object),
        artist_names=np.array([f"Artist Name {i}" for i in range(n_artists)], dtype=object),
    )

    def top(n_rows: int) -> TopN:
        ids = rng.integers(0, n_artists, (n_rows, N), dtype=np.int32)
        return TopN(ids, np.sort(rng.random((n_rows, N), dtype=np.float32), axis=1)[:, ::-1].copy())

    return RunOutputs(
        encoded=encoded,
        related=top(n_artists),
        recommendations=top(n_users),
        metrics=[Metric("als", "precision", 10, 0.1)],
        config={},
        dataset="synthetic",
        source="benchmarks.publish",
        data_sha256="0" * 64,
        related_model="als",
        user_model="als",
        code_version="bench",
    )


def table_rows(outputs: RunOutputs, run_id: int) -> dict[str, list[tuple]]:
    """The same rows publish writes (the search keys included, computed here untimed), as the
    Python tuples a bare driver call takes."""
    enc = outputs.encoded

    def topn(t: TopN, *model: str) -> list[tuple]:
        owner, rank = np.nonzero(t.ids >= 0)
        return list(
            zip(
                [run_id] * len(owner),
                *([m] * len(owner) for m in model),
                owner.tolist(),
                (rank + 1).tolist(),
                t.ids[owner, rank].tolist(),
                t.scores[owner, rank].tolist(),
                strict=True,
            )
        )

    return {
        "artists": list(
            zip(
                [run_id] * enc.n_artists,
                range(enc.n_artists),
                enc.artist_keys.tolist(),
                enc.artist_names.tolist(),
                enc.listeners.tolist(),
                enc.artist_plays.tolist(),
                search_keys(enc.artist_names).tolist(),
                strict=True,
            )
        ),
        "users": list(zip([run_id] * enc.n_users, range(enc.n_users), enc.user_keys.tolist(), strict=True)),
        "related_artists": topn(outputs.related, outputs.related_model),
        "user_recommendations": topn(outputs.recommendations),
    }


COLUMNS = {
    "artists": ("run_id", "artist_id", "artist_key", "name", "listeners", "plays", "search_key"),
    "users": ("run_id", "user_id", "user_key"),
    "related_artists": ("run_id", "model", "artist_id", "rank", "related_artist_id", "score"),
    "user_recommendations": ("run_id", "user_id", "rank", "artist_id", "score"),
}
PG_TYPES = {
    "artists": ("int4", "int4", "text", "text", "int4", "float8", "text"),
    "users": ("int4", "int4", "text"),
    "related_artists": ("int4", "text", "int4", "int2", "int4", "float4"),
    "user_recommendations": ("int4", "int4", "int2", "int4", "float4"),
}


def bare_sqlite(engine: sa.Engine, rows: dict[str, list[tuple]]) -> float:
    with engine.connect() as conn:
        dbapi = conn.connection.driver_connection
        start = time.perf_counter()
        dbapi.execute("BEGIN")
        for table, values in rows.items():
            marks = ", ".join("?" * len(COLUMNS[table]))
            dbapi.executemany(f"INSERT INTO {table} ({', '.join(COLUMNS[table])}) VALUES ({marks})", values)
        dbapi.execute("COMMIT")
        return time.perf_counter() - start


def bare_postgres(engine: sa.Engine, rows: dict[str, list[tuple]]) -> float:
    with engine.connect() as conn:
        dbapi = conn.connection.driver_connection
        with dbapi.cursor() as cursor:  # the run's partitions, with their indexes, made beforehand
            for table in rows:
                cursor.execute(
                    sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES IN (1)").format(
                        sql.Identifier(f"{table}_run_1"), sql.Identifier(table)
                    )
                )
        dbapi.commit()
        start = time.perf_counter()
        with dbapi.cursor() as cursor:
            for table, values in rows.items():
                statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table]))
                )
                with cursor.copy(statement) as copy:
                    copy.set_types(PG_TYPES[table])
                    for row in values:
                        copy.write_row(row)
        dbapi.commit()
        return time.perf_counter() - start


def measure(url_of, bare, outputs: RunOutputs, total_rows: int, repeat: int) -> dict:
    """Publish into a fresh database, bare-load the same rows into another, ``repeat`` times;
    rows/s of each (best and median: the machine is shared, the best is the least disturbed)."""
    publish_seconds, bare_seconds = [], []
    for i in range(repeat):
        engine = make_engine(url_of(f"publish{i}"))
        start = time.perf_counter()
        publish(engine, outputs)
        publish_seconds.append(time.perf_counter() - start)
        engine.dispose()
        engine = make_engine(url_of(f"bare{i}"))
        bare_seconds.append(bare(engine, table_rows(outputs, 1)))
        engine.dispose()
    best_publish, best_bare = min(publish_seconds), min(bare_seconds)
    return {
        "publish_rows_per_s_best": round(total_rows / best_publish),
        "publish_rows_per_s_median": round(total_rows / statistics.median(publish_seconds)),
        "bare_rows_per_s_best": round(total_rows / best_bare),
        "bare_rows_per_s_median": round(total_rows / statistics.median(bare_seconds)),
        "publish_over_bare_best": round(best_bare / best_publish, 2),
        "publish_seconds": [round(x, 3) for x in publish_seconds],
        "bare_seconds": [round(x, 3) for x in bare_seconds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="top-N rows (artists/users come on top)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh databases per measurement")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("RECS_BENCH_POSTGRES_URL") or os.environ.get("RECS_TEST_POSTGRES_URL")
    )
    args = parser.parse_args()

    outputs = make_run(args.rows)
    enc = outputs.encoded
    total = (
        enc.n_artists
        + enc.n_users
        + int((outputs.related.ids >= 0).sum())
        + int((outputs.recommendations.ids >= 0).sum())
    )
    report: dict = {"rows": total, "top_n_rows": total - enc.n_artists - enc.n_users}

    with tempfile.TemporaryDirectory() as tmp:
        report["sqlite"] = measure(
            lambda name: f"sqlite:///{Path(tmp) / name}.db", bare_sqlite, outputs, total, args.repeat
        )
        report["sqlite"]["target_rows_per_s"] = 300_000

    if args.postgres_url:
        with ExitStack() as stack:
            urls = {
                f"{kind}{i}": stack.enter_context(scratch_schema(args.postgres_url, f"bench_{kind}{i}"))
                for kind in ("publish", "bare")
                for i in range(args.repeat)
            }
            report["postgresql"] = measure(urls.__getitem__, bare_postgres, outputs, total, args.repeat)
            report["postgresql"]["target_rows_per_s"] = 500_000
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
