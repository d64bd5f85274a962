"""The current run per dataset, and a fuller run record.

- ``current_runs`` (dataset -> run_id) names the run the views show for each dataset; the publish
  and ``recs runs promote`` switch it in their transaction. It starts with each dataset's newest
  published run, so a database where a run of another dataset had hidden one gets it back.
- The views show every dataset's current run and gain a ``dataset`` column (first).
- ``runs`` gains ``config_hash``, ``flow_run_id``, ``flow_run_url``, ``seconds``, ``timings``,
  ``choices`` and ``promoted_at``, and the status ``unchanged``. SQLite cannot change a CHECK in
  place, so there ``runs`` is rebuilt (copy, drop, rename), which keeps its comments and ids.

The downgrade gives back the 0002 schema: ``unchanged`` runs (they hold no rows) are deleted and
the views follow the newest published run again.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

OLD_STATUSES = ("loading", "published", "failed", "rejected", "pruned")
NEW_STATUSES = (*OLD_STATUSES, "unchanged")
OLD_STATUS_COMMENT = (
    "loading (rows being written, invisible), published (readable), failed (crashed "
    "or errored; rows removed), rejected (quality gate refused it; rows never loaded), "
    "pruned (past retention; rows removed, metrics kept)"
)
NEW_STATUS_COMMENT = (
    OLD_STATUS_COMMENT + ", unchanged (same data, config and code as its dataset's current run; nothing retrained)"
)
OLD_MESSAGE_COMMENT = "why a run failed or was rejected"
NEW_MESSAGE_COMMENT = "why a run failed, was rejected or was unchanged; the quality gate's figures"
OLD_TABLE_COMMENT = (
    "One row per publish attempt. The views show the highest run_id with status "
    "'published'; older published runs are kept up to the retention setting."
)
NEW_TABLE_COMMENT = (
    "One row per publish attempt. The views show, per dataset, the run named in "
    "current_runs; older published runs are kept up to the retention setting."
)
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _old_columns(status_comment: str, message_comment: str) -> list[sa.Column]:
    """``runs``' columns as 0001 made them (comments of status and message as given)."""
    return [
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True, comment="increasing id of the run"),
        sa.Column("status", sa.String(16), nullable=False, comment=status_comment),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, comment="UTC"),
        sa.Column("finished_at", sa.DateTime(timezone=True), comment="UTC, when the run left 'loading'"),
        sa.Column("message", sa.Text, comment=message_comment),
        sa.Column("dataset", sa.Text, nullable=False, comment="dataset name, e.g. lastfm-360k"),
        sa.Column("source", sa.Text, nullable=False, comment="path or URL the data was read from"),
        sa.Column("data_sha256", sa.String(64), nullable=False, comment="SHA-256 of the downloaded data"),
        sa.Column("config", JSON, nullable=False, comment="the full retrain config (JSON)"),
        sa.Column("code_version", sa.Text, nullable=False, comment="version of the code that made the run"),
        sa.Column("related_model", sa.Text, nullable=False, comment="model behind related_artists"),
        sa.Column("user_model", sa.Text, nullable=False, comment="model behind user_recommendations"),
        sa.Column("n_artists", sa.Integer, nullable=False, comment="rows in artists for this run"),
        sa.Column("n_users", sa.Integer, nullable=False, comment="rows in users for this run"),
        sa.Column("n_related", sa.Integer, nullable=False, comment="rows in related_artists for this run"),
        sa.Column("n_recommendations", sa.Integer, nullable=False, comment="rows in user_recommendations for this run"),
    ]


def _added_columns() -> list[sa.Column]:
    return [
        sa.Column(
            "config_hash", sa.String(64), comment="SHA-256 of the canonical JSON of config (storage.runs.config_hash)"
        ),
        sa.Column("flow_run_id", sa.Text, comment="id of the Prefect flow run that made the run"),
        sa.Column("flow_run_url", sa.Text, comment="that flow run in the Prefect UI"),
        sa.Column("seconds", sa.Double, comment="wall seconds from the flow's start to the run leaving 'loading'"),
        sa.Column("timings", JSON, comment="wall seconds per stage before the publish (JSON)"),
        sa.Column("choices", JSON, comment="choices the flow made beyond the config (JSON)"),
        sa.Column(
            "promoted_at",
            sa.DateTime(timezone=True),
            comment="UTC, when `recs runs promote` last made it current again",
        ),
    ]


def _status_check(statuses: tuple[str, ...]) -> sa.CheckConstraint:
    return sa.CheckConstraint(sa.column("status").in_(statuses), name="ck_runs_status")


# The views over the current run of each dataset: ``current_runs`` is joined once as ``c`` so that
# both databases probe the (run_id, ...) indexes with a known run_id for each of its few rows.
NEW_VIEWS: dict[str, tuple[str, str]] = {
    "current_related_artists": (
        """
SELECT c.dataset AS dataset, a.artist_key AS artist_key, a.name AS artist_name, r.rank AS rank,
       b.artist_key AS related_artist_key, b.name AS related_artist_name, r.score AS score
FROM current_runs AS c
JOIN artists AS a ON a.run_id = c.run_id
JOIN related_artists AS r ON r.run_id = c.run_id AND r.artist_id = a.artist_id
JOIN artists AS b ON b.run_id = c.run_id AND b.artist_id = r.related_artist_id
""",
        "Related artists of the current run of each dataset, names joined in. "
        "Look up by dataset and lower(artist_name) or artist_key.",
    ),
    "current_user_recommendations": (
        """
SELECT c.dataset AS dataset, u.user_key AS user_key, r.rank AS rank, a.artist_key AS artist_key,
       a.name AS artist_name, r.score AS score
FROM current_runs AS c
JOIN users AS u ON u.run_id = c.run_id
JOIN user_recommendations AS r ON r.run_id = c.run_id AND r.user_id = u.user_id
JOIN artists AS a ON a.run_id = c.run_id AND a.artist_id = r.artist_id
""",
        "Top-N new artists per user of the current run of each dataset, names joined in. "
        "Look up by dataset and user_key.",
    ),
}
# 0001's views, for the downgrade.
OLD_CURRENT_RUN_SQL = "SELECT max(run_id) AS run_id FROM runs WHERE status = 'published'"
OLD_VIEWS: dict[str, tuple[str, str]] = {
    "current_related_artists": (
        f"""
SELECT a.artist_key AS artist_key, a.name AS artist_name, r.rank AS rank,
       b.artist_key AS related_artist_key, b.name AS related_artist_name, r.score AS score
FROM ({OLD_CURRENT_RUN_SQL}) AS cur
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
FROM ({OLD_CURRENT_RUN_SQL}) AS cur
JOIN users AS u ON u.run_id = cur.run_id
JOIN user_recommendations AS r ON r.run_id = cur.run_id AND r.user_id = u.user_id
JOIN artists AS a ON a.run_id = cur.run_id AND a.artist_id = r.artist_id
""",
        "Top-N new artists per user of the latest published run, names joined in. Look up by user_key.",
    ),
}
# sqlite_stat1's row for the runs index (0001's SQLITE_STATS); the rebuild drops it with the table.
RUNS_STAT = ("runs", "ix_runs_status_run_id", "100 20 1")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _drop_views(views: dict[str, tuple[str, str]]) -> None:
    for name in views:
        op.execute(f"DROP VIEW {name}")


def _create_views(views: dict[str, tuple[str, str]]) -> None:
    # COMMENT ON takes no bind parameters; the SQL is assembled from the constants above only.
    for name, (select_sql, comment) in views.items():
        op.execute(f"CREATE VIEW {name} AS {select_sql}")
        if not _sqlite():
            op.execute(f"COMMENT ON VIEW {name} IS '{comment}'")


def _rebuild_sqlite_runs(columns: Callable[[], list[sa.Column]], statuses: tuple[str, ...], comment: str) -> None:
    """Replace ``runs`` by a copy with ``columns()`` and the CHECK on ``statuses`` (views dropped
    first: SQLite checks them at a rename). The rows keep their run_ids, and AUTOINCREMENT its
    counter, because the copy inserts them with their ids."""
    op.create_table("runs_rebuilt", *columns(), _status_check(statuses), comment=comment, sqlite_autoincrement=True)
    kept = ", ".join(column.name for column in _old_columns("", ""))
    op.execute(f"INSERT INTO runs_rebuilt ({kept}) SELECT {kept} FROM runs")
    op.execute("DROP TABLE runs")
    op.execute("ALTER TABLE runs_rebuilt RENAME TO runs")
    op.create_index("ix_runs_status_run_id", "runs", ["status", "run_id"])
    op.get_bind().exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", RUNS_STAT)
    op.get_bind().exec_driver_sql("ANALYZE sqlite_master")  # this connection reloads the statistics


def upgrade() -> None:
    _drop_views(OLD_VIEWS)
    if _sqlite():
        _rebuild_sqlite_runs(
            lambda: _old_columns(NEW_STATUS_COMMENT, NEW_MESSAGE_COMMENT) + _added_columns(),
            NEW_STATUSES,
            NEW_TABLE_COMMENT,
        )
    else:
        for column in _added_columns():
            op.add_column("runs", column)
        op.drop_constraint("ck_runs_status", "runs", type_="check")
        op.create_check_constraint("ck_runs_status", "runs", sa.column("status").in_(NEW_STATUSES))
        op.alter_column("runs", "status", comment=NEW_STATUS_COMMENT, existing_type=sa.String(16))
        op.alter_column("runs", "message", comment=NEW_MESSAGE_COMMENT, existing_type=sa.Text)
        op.create_table_comment("runs", NEW_TABLE_COMMENT)
    op.create_table(
        "current_runs",
        sa.Column("dataset", sa.Text, primary_key=True, comment="runs.dataset"),
        sa.Column("run_id", sa.Integer, nullable=False, comment="runs.run_id, a published run of that dataset"),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False, comment="UTC, when it became current"),
        comment="The run the views show for each dataset; switched in the publish or promote transaction.",
    )
    op.execute(
        "INSERT INTO current_runs (dataset, run_id, since) "
        "SELECT dataset, max(run_id), max(finished_at) FROM runs WHERE status = 'published' GROUP BY dataset"
    )
    _create_views(NEW_VIEWS)


def downgrade() -> None:
    _drop_views(NEW_VIEWS)
    op.drop_table("current_runs")
    op.execute("DELETE FROM runs WHERE status = 'unchanged'")
    if _sqlite():
        _rebuild_sqlite_runs(
            lambda: _old_columns(OLD_STATUS_COMMENT, OLD_MESSAGE_COMMENT), OLD_STATUSES, OLD_TABLE_COMMENT
        )
    else:
        for column in _added_columns():
            op.drop_column("runs", column.name)
        op.drop_constraint("ck_runs_status", "runs", type_="check")
        op.create_check_constraint("ck_runs_status", "runs", sa.column("status").in_(OLD_STATUSES))
        op.alter_column("runs", "status", comment=OLD_STATUS_COMMENT, existing_type=sa.String(16))
        op.alter_column("runs", "message", comment=OLD_MESSAGE_COMMENT, existing_type=sa.Text)
        op.create_table_comment("runs", OLD_TABLE_COMMENT)
    _create_views(OLD_VIEWS)
