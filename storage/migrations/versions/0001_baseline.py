"""Baseline: the schema as the pre-Alembic code created it (its ``schema_version`` 1).

A frozen copy written out as explicit DDL, not ``Base.metadata.create_all``: this revision must
build the same schema for as long as it exists, whatever storage/schema.py's models become later,
so the tables, indexes, comments, views and SQLite statistics are all spelled out here. Changes go
into new revisions. A database made before Alembic is stamped at this revision by storage.engine
without running it.

In SQLite the comments land inside the stored ``CREATE TABLE`` text through the compile hooks in
storage/schema.py, which env.py imports.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Per-run tables: one partition per run in PostgreSQL, clustered on the primary key in SQLite.
PER_RUN: dict[str, Any] = {"postgresql_partition_by": "LIST (run_id)", "sqlite_with_rowid": False}

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
        "Related artists of the latest published run, names joined in. Look up by lower(artist_name) or artist_key.",
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


def upgrade() -> None:
    """Create the tables, their indexes and comments, the views and (SQLite) the statistics."""
    schema_version = op.create_table(
        "schema_version",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False, comment="schema version number"),
        sa.Column(
            "applied_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="when this version was created or upgraded to (UTC)",
        ),
        comment="Version of this schema in the database; see storage/engine.py.",
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True, comment="increasing id of the run"),
        sa.Column(
            "status",
            sa.String(16),
            nullable=False,
            comment="loading (rows being written, invisible), published (readable), failed (crashed "
            "or errored; rows removed), rejected (quality gate refused it; rows never loaded), "
            "pruned (past retention; rows removed, metrics kept)",
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, comment="UTC"),
        sa.Column("finished_at", sa.DateTime(timezone=True), comment="UTC, when the run left 'loading'"),
        sa.Column("message", sa.Text, comment="why a run failed or was rejected"),
        sa.Column("dataset", sa.Text, nullable=False, comment="dataset name, e.g. lastfm-360k"),
        sa.Column("source", sa.Text, nullable=False, comment="path or URL the data was read from"),
        sa.Column("data_sha256", sa.String(64), nullable=False, comment="SHA-256 of the downloaded data"),
        sa.Column(
            "config",
            sa.JSON().with_variant(JSONB(), "postgresql"),
            nullable=False,
            comment="the full retrain config (JSON)",
        ),
        sa.Column("code_version", sa.Text, nullable=False, comment="version of the code that made the run"),
        sa.Column("related_model", sa.Text, nullable=False, comment="model behind related_artists"),
        sa.Column("user_model", sa.Text, nullable=False, comment="model behind user_recommendations"),
        sa.Column("n_artists", sa.Integer, nullable=False, comment="rows in artists for this run"),
        sa.Column("n_users", sa.Integer, nullable=False, comment="rows in users for this run"),
        sa.Column("n_related", sa.Integer, nullable=False, comment="rows in related_artists for this run"),
        sa.Column("n_recommendations", sa.Integer, nullable=False, comment="rows in user_recommendations for this run"),
        sa.CheckConstraint(
            sa.column("status").in_(("loading", "published", "failed", "rejected", "pruned")), name="ck_runs_status"
        ),
        sa.Index("ix_runs_status_run_id", "status", "run_id"),
        comment="One row per publish attempt. The views show the highest run_id with status "
        "'published'; older published runs are kept up to the retention setting.",
        sqlite_autoincrement=True,
    )
    op.create_table(
        "artists",
        sa.Column("run_id", sa.Integer, primary_key=True, comment="runs.run_id"),
        sa.Column(
            "artist_id",
            sa.Integer,
            primary_key=True,
            comment="artist code within the run (0-based column of its matrix)",
        ),
        sa.Column(
            "artist_key",
            sa.Text,
            nullable=False,
            comment="the source's artist id: HetRec id, MusicBrainz id, or normalised name",
        ),
        sa.Column("name", sa.Text, nullable=False, comment="display name"),
        sa.Column("listeners", sa.Integer, nullable=False, comment="users who played the artist"),
        sa.Column("plays", sa.Double, nullable=False, comment="total plays of the artist"),
        sa.Index("ix_artists_run_id_artist_key", "run_id", "artist_key", unique=True),
        comment="Artists of one run (versioned with the run).",
        **PER_RUN,
    )
    # The case-insensitive name lookup; queries must say ``lower(name) = lower(:name)`` to use it.
    op.create_index("ix_artists_run_id_lower_name", "artists", ["run_id", sa.text("lower(name)")])
    op.create_table(
        "users",
        sa.Column("run_id", sa.Integer, primary_key=True, comment="runs.run_id"),
        sa.Column(
            "user_id", sa.Integer, primary_key=True, comment="user code within the run (0-based row of its matrix)"
        ),
        sa.Column("user_key", sa.Text, nullable=False, comment="the source's user id"),
        sa.Index("ix_users_run_id_user_key", "run_id", "user_key", unique=True),
        comment="Users of one run (versioned with the run).",
        **PER_RUN,
    )
    op.create_table(
        "related_artists",
        sa.Column("run_id", sa.Integer, primary_key=True, comment="runs.run_id"),
        sa.Column("artist_id", sa.Integer, primary_key=True, comment="artists.artist_id"),
        sa.Column("rank", sa.SmallInteger, primary_key=True, comment="1 = most similar"),
        sa.Column("related_artist_id", sa.Integer, nullable=False, comment="artists.artist_id"),
        sa.Column("score", sa.REAL, nullable=False, comment="similarity (cosine of factors), higher = closer"),
        comment="Top-N most similar artists per artist, per run.",
        **PER_RUN,
    )
    op.create_table(
        "user_recommendations",
        sa.Column("run_id", sa.Integer, primary_key=True, comment="runs.run_id"),
        sa.Column("user_id", sa.Integer, primary_key=True, comment="users.user_id"),
        sa.Column("rank", sa.SmallInteger, primary_key=True, comment="1 = best"),
        sa.Column("artist_id", sa.Integer, nullable=False, comment="artists.artist_id"),
        sa.Column("score", sa.REAL, nullable=False, comment="model score, higher = better"),
        comment="Top-N new artists per user (artists the user already played excluded), per run.",
        **PER_RUN,
    )
    op.create_table(
        "run_metrics",
        sa.Column(
            "metric_id",
            sa.Integer,
            primary_key=True,
            autoincrement=True,
            comment="row id (k may be NULL, so no natural key)",
        ),
        sa.Column("run_id", sa.Integer, nullable=False, comment="runs.run_id"),
        sa.Column(
            "model",
            sa.Text,
            nullable=False,
            comment="model name, or popularity / random (baselines), or annoy / faiss (index recall)",
        ),
        sa.Column("metric", sa.Text, nullable=False, comment="e.g. precision, ndcg, map, rmse, recall"),
        sa.Column("k", sa.Integer, comment="cut-off, NULL for metrics without one"),
        sa.Column("value", sa.Double, nullable=False, comment="the figure"),
        sa.Index("ix_run_metrics_run_id", "run_id"),
        comment="Evaluation results of each run: models, baselines and index recall.",
    )
    # COMMENT ON takes no bind parameters; the SQL is assembled from the constants above only.
    for name, (select_sql, comment) in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select_sql}")
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"COMMENT ON VIEW {name} IS '{comment}'")
    if op.get_bind().dialect.name == "sqlite":
        _seed_sqlite_statistics()
    # The pre-Alembic code's own stamp, so that this revision is exactly what it made; 0002 drops it.
    op.bulk_insert(schema_version, [{"version": 1, "applied_at": datetime.now(UTC)}])


def _seed_sqlite_statistics() -> None:
    """Write ``SQLITE_STATS`` into sqlite_stat1 (ANALYZE on the empty schema creates that table)."""
    conn = op.get_bind()
    conn.exec_driver_sql("ANALYZE")
    conn.exec_driver_sql("DELETE FROM sqlite_stat1")
    conn.exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", list(SQLITE_STATS))
    conn.exec_driver_sql("ANALYZE sqlite_master")  # makes this connection reload them too


def downgrade() -> None:
    """Drop everything ``upgrade`` created (every run's rows with it)."""
    for name in VIEWS:
        op.execute(f"DROP VIEW {name}")
    for table in (
        "run_metrics",
        "user_recommendations",
        "related_artists",
        "users",
        "artists",
        "runs",
        "schema_version",
    ):
        op.drop_table(table)
