"""The public SQL schema as SQLAlchemy models: tables, indexes and handles on the reader views.

The DDL that builds it in a database is in the migrations, storage/migrations/versions (views and
SQLite statistics included); tests/test_storage_migrations.py checks that the two agree.

Design: every table except ``runs`` is **versioned by run** — ``artists`` and ``users``
included. ``artist_id`` / ``user_id`` are the encoded codes of that run (the row/column of
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

# The table Alembic records the schema revision in. Not Alembic's default "alembic_version":
# Prefect's own server database uses that name, and a PostgreSQL schema shared with it would make
# each read the other's revision.
VERSION_TABLE = "recs_alembic_version"
RUN_STATUSES = ("loading", "published", "failed", "rejected", "pruned", "unchanged")

STATUS_COMMENT = (
    "loading (rows being written, invisible), published (readable), failed (crashed "
    "or errored; rows removed), rejected (quality gate refused it; rows never loaded), "
    "pruned (past retention; rows removed, metrics kept), unchanged (same data, config and code "
    "as its dataset's current run; nothing retrained)"
)

# Options of the per-run tables. PostgreSQL: one partition per run (``<table>_run_<id>``), loaded
# without indexes and attached at publish, dropped whole at retention. SQLite: clustered on the
# primary key (WITHOUT ROWID), so a run's rows are contiguous and in lookup order.
PER_RUN = {"postgresql_partition_by": "LIST (run_id)", "sqlite_with_rowid": False}


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        sa.CheckConstraint(sa.column("status").in_(RUN_STATUSES), name="ck_runs_status"),
        sa.Index("ix_runs_status_run_id", "status", "run_id"),
        {
            "comment": "One row per publish attempt. The views show, per dataset, the run named in "
            "current_runs; older published runs are kept up to the retention setting.",
            "sqlite_autoincrement": True,
        },
    )

    run_id: Mapped[int] = mapped_column(
        sa.Integer, primary_key=True, autoincrement=True, comment="increasing id of the run"
    )
    status: Mapped[str] = mapped_column(
        sa.String(16),
        comment=STATUS_COMMENT,
    )
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), comment="UTC")
    finished_at: Mapped[datetime | None] = mapped_column(
        sa.DateTime(timezone=True), comment="UTC, when the run left 'loading'"
    )
    message: Mapped[str | None] = mapped_column(
        sa.Text, comment="why a run failed, was rejected or was unchanged; the quality gate's figures"
    )
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
    n_recommendations: Mapped[int] = mapped_column(sa.Integer, comment="rows in user_recommendations for this run")
    config_hash: Mapped[str | None] = mapped_column(
        sa.String(64), comment="SHA-256 of the canonical JSON of config (storage.runs.config_hash)"
    )
    flow_run_id: Mapped[str | None] = mapped_column(sa.Text, comment="id of the Prefect flow run that made the run")
    flow_run_url: Mapped[str | None] = mapped_column(sa.Text, comment="that flow run in the Prefect UI")
    seconds: Mapped[float | None] = mapped_column(
        sa.Double, comment="wall seconds from the flow's start to the run leaving 'loading'"
    )
    timings: Mapped[dict | None] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), comment="wall seconds per stage before the publish (JSON)"
    )
    choices: Mapped[dict | None] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), comment="choices the flow made beyond the config (JSON)"
    )
    promoted_at: Mapped[datetime | None] = mapped_column(
        sa.DateTime(timezone=True), comment="UTC, when `recs runs promote` last made it current again"
    )


class CurrentRun(Base):
    __tablename__ = "current_runs"
    __table_args__ = {
        "comment": "The run the views show for each dataset; switched in the publish or promote transaction."
    }

    dataset: Mapped[str] = mapped_column(sa.Text, primary_key=True, comment="runs.dataset")
    run_id: Mapped[int] = mapped_column(sa.Integer, comment="runs.run_id, a published run of that dataset")
    since: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), comment="UTC, when it became current")


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
    model: Mapped[str] = mapped_column(
        sa.Text,
        primary_key=True,
        comment="the factor model the list comes from (runs.related_model is the shipped one)",
    )
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


# Query-side handles on the views readers query (columns only; the migrations create them).
current_related_artists = sa.table(
    "current_related_artists",
    sa.column("dataset", sa.Text),
    sa.column("artist_key", sa.Text),
    sa.column("artist_name", sa.Text),
    sa.column("rank", sa.Integer),
    sa.column("related_artist_key", sa.Text),
    sa.column("related_artist_name", sa.Text),
    sa.column("score", sa.Float),
)
current_related_by_model = sa.table(
    "current_related_by_model",
    sa.column("dataset", sa.Text),
    sa.column("model", sa.Text),
    sa.column("shipped", sa.Boolean),
    sa.column("artist_key", sa.Text),
    sa.column("artist_name", sa.Text),
    sa.column("rank", sa.Integer),
    sa.column("related_artist_key", sa.Text),
    sa.column("related_artist_name", sa.Text),
    sa.column("score", sa.Float),
)
current_user_recommendations = sa.table(
    "current_user_recommendations",
    sa.column("dataset", sa.Text),
    sa.column("user_key", sa.Text),
    sa.column("rank", sa.Integer),
    sa.column("artist_key", sa.Text),
    sa.column("artist_name", sa.Text),
    sa.column("score", sa.Float),
)


# SQLite's planner statistics are written once, at schema creation, by the baseline migration
# (SQLITE_STATS in storage/migrations/versions/0001_baseline.py), so a publish never re-ANALYZEs.


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
