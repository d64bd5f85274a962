"""Related artists per model: ``related_artists.model``, and views to compare the models.

- ``related_artists`` gains ``model`` (text, in the primary key after ``run_id``): a run publishes
  the related lists of every factor model it fits (the shipped one is ``runs.related_model``).
  Existing rows get their run's ``related_model``. SQLite rebuilds the table (a primary key cannot
  change in place); PostgreSQL adds the column to the partitioned table, which carries it to every
  run's partition, and swaps the primary key (rebuilding each partition's index).
- ``current_related_artists`` shows the shipped model's lists only, as before.
- ``current_related_by_model``: every model's lists, with ``model`` and ``shipped``.
- ``current_related_comparison``: each other model's list beside the shipped one, rank by rank,
  with where each of its artists sits in the shipped list (a slopegraph's two columns).

The downgrade keeps the shipped model's rows only and gives back the 0003 schema.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

MODEL_COMMENT = "the factor model the list comes from (runs.related_model is the shipped one)"
TABLE_COMMENT = "Top-N most similar artists per artist, per run."
# sqlite_stat1 rows of related_artists' primary key: total rows, then rows per run_id, per
# (run_id, model), per (run_id, model, artist_id) and per full key (three models of 300K artists).
NEW_STAT = ("related_artists", "related_artists", "45000000 9000000 3000000 10 1")
OLD_STAT = ("related_artists", "related_artists", "15000000 3000000 10 1")

_CURRENT = """
FROM current_runs AS c
JOIN runs AS m ON m.run_id = c.run_id
JOIN artists AS a ON a.run_id = c.run_id
"""
NEW_VIEWS: dict[str, tuple[str, str]] = {
    "current_related_artists": (
        f"""
SELECT c.dataset AS dataset, a.artist_key AS artist_key, a.name AS artist_name, r.rank AS rank,
       b.artist_key AS related_artist_key, b.name AS related_artist_name, r.score AS score
{_CURRENT}
JOIN related_artists AS r ON r.run_id = c.run_id AND r.model = m.related_model AND r.artist_id = a.artist_id
JOIN artists AS b ON b.run_id = c.run_id AND b.artist_id = r.related_artist_id
""",
        "Related artists of the current run of each dataset (its shipped model, runs.related_model), "
        "names joined in. Look up by dataset and lower(artist_name) or artist_key.",
    ),
    "current_related_by_model": (
        f"""
SELECT c.dataset AS dataset, r.model AS model, r.model = m.related_model AS shipped,
       a.artist_key AS artist_key, a.name AS artist_name, r.rank AS rank,
       b.artist_key AS related_artist_key, b.name AS related_artist_name, r.score AS score
{_CURRENT}
JOIN related_artists AS r ON r.run_id = c.run_id AND r.artist_id = a.artist_id
JOIN artists AS b ON b.run_id = c.run_id AND b.artist_id = r.related_artist_id
""",
        "Related artists of every factor model of the current run of each dataset; shipped marks "
        "the one current_related_artists shows. Look up by dataset, model and lower(artist_name).",
    ),
    "current_related_comparison": (
        f"""
SELECT c.dataset AS dataset, a.artist_key AS artist_key, a.name AS artist_name, r.rank AS rank,
       m.related_model AS shipped_model, sb.name AS shipped_artist_name, s.score AS shipped_score,
       r.model AS model, b.name AS related_artist_name, r.score AS score,
       t.rank AS rank_in_shipped
{_CURRENT}
JOIN related_artists AS r ON r.run_id = c.run_id AND r.artist_id = a.artist_id AND r.model <> m.related_model
JOIN artists AS b ON b.run_id = c.run_id AND b.artist_id = r.related_artist_id
LEFT JOIN related_artists AS s
  ON s.run_id = c.run_id AND s.model = m.related_model AND s.artist_id = r.artist_id AND s.rank = r.rank
LEFT JOIN artists AS sb ON sb.run_id = c.run_id AND sb.artist_id = s.related_artist_id
LEFT JOIN related_artists AS t
  ON t.run_id = c.run_id AND t.model = m.related_model AND t.artist_id = r.artist_id
 AND t.related_artist_id = r.related_artist_id
""",
        "The related artists of each other model beside those of the shipped model at the same "
        "rank, for the current run of each dataset; rank_in_shipped is the rank of that artist in "
        "the shipped list (NULL: not in it). Look up by dataset, model and lower(artist_name).",
    ),
}
# 0003's view, for the downgrade.
OLD_VIEWS: dict[str, tuple[str, str]] = {
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
}


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _drop_views(views: dict[str, tuple[str, str]]) -> None:
    for name in views:
        op.execute(f"DROP VIEW {name}")


def _create_views(views: dict[str, tuple[str, str]]) -> None:
    # COMMENT ON takes no bind parameters; the SQL is assembled from the constants above only
    # (written without quotes).
    for name, (select_sql, comment) in views.items():
        op.execute(f"CREATE VIEW {name} AS {select_sql}")
        if not _sqlite():
            op.execute(f"COMMENT ON VIEW {name} IS '{comment}'")


def _columns(with_model: bool) -> list[sa.Column]:
    model = [sa.Column("model", sa.Text, primary_key=True, comment=MODEL_COMMENT)] if with_model else []
    return [
        sa.Column("run_id", sa.Integer, primary_key=True, comment="runs.run_id"),
        *model,
        sa.Column("artist_id", sa.Integer, primary_key=True, comment="artists.artist_id"),
        sa.Column("rank", sa.SmallInteger, primary_key=True, comment="1 = most similar"),
        sa.Column("related_artist_id", sa.Integer, nullable=False, comment="artists.artist_id"),
        sa.Column("score", sa.REAL, nullable=False, comment="similarity (cosine of factors), higher = closer"),
    ]


def _rebuild_sqlite(with_model: bool, stat: tuple[str, str, str]) -> None:
    """Replace ``related_artists`` by a copy with or without ``model`` (views dropped first:
    SQLite checks them at a rename). Rows gain their run's related_model, or keep only it."""
    op.create_table("related_artists_rebuilt", *_columns(with_model), comment=TABLE_COMMENT, sqlite_with_rowid=False)
    kept = "r.run_id, r.artist_id, r.rank, r.related_artist_id, r.score"
    if with_model:
        op.execute(
            f"INSERT INTO related_artists_rebuilt (run_id, artist_id, rank, related_artist_id, score, model) "
            f"SELECT {kept}, m.related_model FROM related_artists AS r JOIN runs AS m ON m.run_id = r.run_id"
        )
    else:
        op.execute(
            f"INSERT INTO related_artists_rebuilt (run_id, artist_id, rank, related_artist_id, score) "
            f"SELECT {kept} FROM related_artists AS r JOIN runs AS m ON m.run_id = r.run_id "
            "WHERE r.model = m.related_model"
        )
    op.execute("DROP TABLE related_artists")
    op.execute("ALTER TABLE related_artists_rebuilt RENAME TO related_artists")
    conn = op.get_bind()
    conn.exec_driver_sql("DELETE FROM sqlite_stat1 WHERE tbl = 'related_artists'")
    conn.exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", stat)
    conn.exec_driver_sql("ANALYZE sqlite_master")  # this connection reloads the statistics


def upgrade() -> None:
    _drop_views(OLD_VIEWS)
    if _sqlite():
        _rebuild_sqlite(with_model=True, stat=NEW_STAT)
    else:
        op.add_column("related_artists", sa.Column("model", sa.Text, comment=MODEL_COMMENT))
        op.execute("UPDATE related_artists AS r SET model = m.related_model FROM runs AS m WHERE m.run_id = r.run_id")
        op.alter_column("related_artists", "model", nullable=False, existing_type=sa.Text)
        op.drop_constraint("related_artists_pkey", "related_artists", type_="primary")
        op.create_primary_key("related_artists_pkey", "related_artists", ["run_id", "model", "artist_id", "rank"])
    _create_views(NEW_VIEWS)


def downgrade() -> None:
    _drop_views(NEW_VIEWS)
    if _sqlite():
        _rebuild_sqlite(with_model=False, stat=OLD_STAT)
    else:
        op.execute(
            "DELETE FROM related_artists AS r USING runs AS m WHERE m.run_id = r.run_id AND r.model <> m.related_model"
        )
        op.drop_constraint("related_artists_pkey", "related_artists", type_="primary")
        op.create_primary_key("related_artists_pkey", "related_artists", ["run_id", "artist_id", "rank"])
        op.drop_column("related_artists", "model")
    _create_views(OLD_VIEWS)
