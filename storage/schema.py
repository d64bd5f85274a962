"""The public SQL schema: tables, indexes and the two reader views.

Design: every table except ``runs`` and ``schema_version`` is **versioned by run** — ``artists`` and
``users`` included. ``artist_id`` / ``user_id`` are the encoded codes of that run (the row/column of
its matrix), so a run's rows load straight from its NumPy arrays with no key lookups, a run is
published or dropped as one unit, and an old run never changes when the catalogue does. The cost,
~0.7 M small rows per run at Last.fm 360K scale, is small beside its 6.6 M top-N rows. The stable
identities across runs are the source keys (``artist_key``, ``user_key``), which is what the views
expose.

In PostgreSQL each of these per-run tables is partitioned by run_id (see ``PER_RUN``).

The bulk tables have no foreign keys: they are written only by ``storage.publish`` from validated
arrays in one transaction, and per-row constraint triggers would halve COPY throughput. Their
relationships are stated in the column comments.

Comments are stored in the database: ``COMMENT ON`` in PostgreSQL (``\\d+ runs`` in psql) and as
``/* ... */`` inside the stored ``CREATE TABLE`` text in SQLite (``.schema runs`` in sqlite3).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateColumn, CreateTable

RUN_STATUSES = ("loading", "published", "failed", "rejected", "pruned")

# Options of the per-run tables. PostgreSQL: one partition per run (``<table>_run_<id>``), loaded
# without indexes and attached at publish, dropped whole at retention. SQLite: clustered on the
# primary key (WITHOUT ROWID), so a run's rows are contiguous and in lookup order.
PER_RUN = {"postgresql_partition_by": "LIST (run_id)", "sqlite_with_rowid": False}


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    __table_args__ = {"comment": "Version of this schema in the database; see storage/engine.py."}

    version: Mapped[int] = mapped_column(
        sa.Integer, primary_key=True, autoincrement=False, comment="schema version number"
    )
    applied_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), comment="when this version was created or upgraded to (UTC)"
    )


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        sa.CheckConstraint(sa.column("status").in_(RUN_STATUSES), name="ck_runs_status"),
        sa.Index("ix_runs_status_run_id", "status", "run_id"),
        {
            "comment": "One row per publish attempt. The views show the highest run_id with status "
            "'published'; older published runs are kept up to the retention setting.",
            "sqlite_autoincrement": True,
        },
    )

    run_id: Mapped[int] = mapped_column(
        sa.Integer, primary_key=True, autoincrement=True, comment="increasing id of the run"
    )
    status: Mapped[str] = mapped_column(
        sa.String(16),
        comment="loading (rows being written, invisible), published (readable), failed (crashed "
        "or errored; rows removed), rejected (quality gate refused it; rows never loaded), "
        "pruned (past retention; rows removed, metrics kept)",
    )
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), comment="UTC")
    finished_at: Mapped[datetime | None] = mapped_column(
        sa.DateTime(timezone=True), comment="UTC, when the run left 'loading'"
    )
    message: Mapped[str | None] = mapped_column(sa.Text, comment="why a run failed or was rejected")
    dataset: Mapped[str] = mapped_column(sa.Text, comment="dataset name, e.g. lastfm-360k")
    source: Mapped[str] = mapped_column(sa.Text, comment="path or URL the data was read from")
    data_sha256: Mapped[str] = mapped_column(sa.String(64), comment="SHA-256 of the downloaded data")
    config: Mapped[dict] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), comment="the full retrain config (JSON)"
    )
    code_version: Mapped[str] = mapped_column(sa.Text, comment="version of the code that made the run")
    related_model: Mapped[str] = mapped_column(sa.Text, comment="model behind related_artists")
    user_model: Mapped[str] = mapped_column(sa.Text, comment="model behind user_recommendations")
    n_artists: Mapped[int] = mapped_column(sa.Integer, comment="rows in artists for this run")
    n_users: Mapped[int] = mapped_column(sa.Integer, comment="rows in users for this run")
    n_related: Mapped[int] = mapped_column(sa.Integer, comment="rows in related_artists for this run")
    n_recommendations: Mapped[int] = mapped_column(
        sa.Integer, comment="rows in user_recommendations for this run"
    )


class Artist(Base):
    __tablename__ = "artists"
    __table_args__ = (
        sa.Index("ix_artists_run_id_artist_key", "run_id", "artist_key", unique=True),
        {"comment": "Artists of one run (versioned with the run).", **PER_RUN},
    )

    run_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, comment="runs.run_id")
    artist_id: Mapped[int] = mapped_column(
        sa.Integer, primary_key=True, comment="artist code within the run (0-based column of its matrix)"
    )
    artist_key: Mapped[str] = mapped_column(
        sa.Text, comment="the source's artist id: HetRec id, MusicBrainz id, or normalised name"
    )
    name: Mapped[str] = mapped_column(sa.Text, comment="display name")
    listeners: Mapped[int] = mapped_column(sa.Integer, comment="users who played the artist")
    plays: Mapped[float] = mapped_column(sa.Double, comment="total plays of the artist")


# The case-insensitive name lookup; queries must say ``lower(name) = lower(:name)`` to use it.
sa.Index("ix_artists_run_id_lower_name", Artist.run_id, sa.func.lower(Artist.name))


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        sa.Index("ix_users_run_id_user_key", "run_id", "user_key", unique=True),
        {"comment": "Users of one run (versioned with the run).", **PER_RUN},
    )

    run_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, comment="runs.run_id")
    user_id: Mapped[int] = mapped_column(
        sa.Integer, primary_key=True, comment="user code within the run (0-based row of its matrix)"
    )
    user_key: Mapped[str] = mapped_column(sa.Text, comment="the source's user id")


class RelatedArtist(Base):
    __tablename__ = "related_artists"
    __table_args__ = {
        "comment": "Top-N most similar artists per artist, per run.",
        **PER_RUN,
    }

    run_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, comment="runs.run_id")
    artist_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, comment="artists.artist_id")
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, comment="1 = most similar")
    related_artist_id: Mapped[int] = mapped_column(sa.Integer, comment="artists.artist_id")
    score: Mapped[float] = mapped_column(sa.REAL, comment="similarity (cosine of factors), higher = closer")


class UserRecommendation(Base):
    __tablename__ = "user_recommendations"
    __table_args__ = {
        "comment": "Top-N new artists per user (artists the user already played excluded), per run.",
        **PER_RUN,
    }

    run_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, comment="runs.run_id")
    user_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, comment="users.user_id")
    rank: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, comment="1 = best")
    artist_id: Mapped[int] = mapped_column(sa.Integer, comment="artists.artist_id")
    score: Mapped[float] = mapped_column(sa.REAL, comment="model score, higher = better")


class RunMetric(Base):
    __tablename__ = "run_metrics"
    __table_args__ = (
        sa.Index("ix_run_metrics_run_id", "run_id"),
        {"comment": "Evaluation results of each run: models, baselines and index recall."},
    )

    metric_id: Mapped[int] = mapped_column(
        sa.Integer, primary_key=True, autoincrement=True, comment="row id (k may be NULL, so no natural key)"
    )
    run_id: Mapped[int] = mapped_column(sa.Integer, comment="runs.run_id")
    model: Mapped[str] = mapped_column(
        sa.Text, comment="model name, or popularity / random (baselines), or annoy / faiss (index recall)"
    )
    metric: Mapped[str] = mapped_column(sa.Text, comment="e.g. precision, ndcg, map, rmse, recall")
    k: Mapped[int | None] = mapped_column(sa.Integer, comment="cut-off, NULL for metrics without one")
    value: Mapped[float] = mapped_column(sa.Double, comment="the figure")


# The views readers query. The latest published run is joined once as ``cur`` so that both
# databases probe the (run_id, ...) indexes of every table with a known run_id.
CURRENT_RUN_SQL = "SELECT max(run_id) AS run_id FROM runs WHERE status = 'published'"

VIEWS: dict[str, tuple[str, str]] = {
    "current_related_artists": (
        f"""
SELECT a.artist_key AS artist_key, a.name AS artist_name, r.rank AS rank,
       b.artist_key AS related_artist_key, b.name AS related_artist_name, r.score AS score
FROM ({CURRENT_RUN_SQL}) AS cur
JOIN artists AS a ON a.run_id = cur.run_id
JOIN related_artists AS r ON r.run_id = cur.run_id AND r.artist_id = a.artist_id
JOIN artists AS b ON b.run_id = cur.run_id AND b.artist_id = r.related_artist_id
""",
        "Related artists of the latest published run, names joined in. "
        "Look up by lower(artist_name) or artist_key.",
    ),
    "current_user_recommendations": (
        f"""
SELECT u.user_key AS user_key, r.rank AS rank, a.artist_key AS artist_key,
       a.name AS artist_name, r.score AS score
FROM ({CURRENT_RUN_SQL}) AS cur
JOIN users AS u ON u.run_id = cur.run_id
JOIN user_recommendations AS r ON r.run_id = cur.run_id AND r.user_id = u.user_id
JOIN artists AS a ON a.run_id = cur.run_id AND a.artist_id = r.artist_id
""",
        "Top-N new artists per user of the latest published run, names joined in. Look up by user_key.",
    ),
}

# Query-side handles on the views (columns only; the DDL above is what creates them).
current_related_artists = sa.table(
    "current_related_artists",
    sa.column("artist_key", sa.Text),
    sa.column("artist_name", sa.Text),
    sa.column("rank", sa.Integer),
    sa.column("related_artist_key", sa.Text),
    sa.column("related_artist_name", sa.Text),
    sa.column("score", sa.Float),
)
current_user_recommendations = sa.table(
    "current_user_recommendations",
    sa.column("user_key", sa.Text),
    sa.column("rank", sa.Integer),
    sa.column("artist_key", sa.Text),
    sa.column("artist_name", sa.Text),
    sa.column("score", sa.Float),
)


def create_views(conn: sa.Connection) -> None:
    """Create both views; PostgreSQL also gets their comments.

    The SQL is assembled from the constants above only (COMMENT ON takes no bind parameters).
    """
    for name, (select_sql, comment) in VIEWS.items():
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {select_sql}")
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"COMMENT ON VIEW {name} IS '{comment}'")


# SQLite's planner statistics, written once instead of measured: without them it scans a run's
# artists by primary key rather than use the name index. They describe the shape that matters
# (a few runs; per run one row per artist name / artist key / user key, N rows per top-N owner),
# which holds at every size, so a publish never needs to re-ANALYZE. Format: total rows, then
# rows per distinct value of each index prefix (see https://sqlite.org/fileformat2.html#stat1tab).
SQLITE_STATS = (
    ("runs", "ix_runs_status_run_id", "100 20 1"),
    ("artists", "artists", "1500000 300000 1"),
    ("artists", "ix_artists_run_id_lower_name", "1500000 300000 1"),
    ("artists", "ix_artists_run_id_artist_key", "1500000 300000 1"),
    ("users", "users", "1800000 360000 1"),
    ("users", "ix_users_run_id_user_key", "1800000 360000 1"),
    ("related_artists", "related_artists", "15000000 3000000 10 1"),
    ("user_recommendations", "user_recommendations", "18000000 3600000 10 1"),
    ("run_metrics", "ix_run_metrics_run_id", "1000 20"),
)


def seed_sqlite_statistics(conn: sa.Connection) -> None:
    """Write ``SQLITE_STATS`` into sqlite_stat1 (ANALYZE on the empty schema creates that table)."""
    conn.exec_driver_sql("ANALYZE")
    conn.exec_driver_sql("DELETE FROM sqlite_stat1")
    conn.exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", list(SQLITE_STATS))
    conn.exec_driver_sql("ANALYZE sqlite_master")  # makes this connection reload them too


def _sqlite_comment(text: str) -> str:
    return " /* " + text.replace("*/", "* /") + " */"


@compiles(CreateColumn, "sqlite")
def _sqlite_column_with_comment(element, compiler, **kw):
    text = compiler.visit_create_column(element, **kw)
    comment = element.element.comment
    return text + _sqlite_comment(comment) if comment and text else text


@compiles(CreateTable, "sqlite")
def _sqlite_table_with_comment(element, compiler, **kw):
    text = compiler.visit_create_table(element, **kw)
    comment = element.element.comment
    return text.replace("(\n", "(" + _sqlite_comment(comment) + "\n", 1) if comment else text
