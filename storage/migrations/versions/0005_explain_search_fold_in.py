"""Why a user gets each artist, Unicode-aware lookups, and what a run keeps to fold in new listeners.

- ``user_recommendations`` gains ``because_artist_id``: the heard artist that contributed most to
  the recommendation (-1 when none did; NULL in runs published before this revision).
- ``artists`` gains ``search_key`` (NFKC + case folding of ``name``, tasks/names.py) and the index
  ``(run_id, search_key)``; existing runs' artists are filled in here, in Python, because neither
  database folds Unicode case the same way (SQLite's ``lower()`` folds ASCII only).
- ``fold_in_arrays`` holds, per run, the user model's arrays a reader needs to score a listener
  who is not in the data (factors, item weights), as ``.npy`` bytes cut into chunks.
- The views gain ``artist_search_key`` (related artists) and ``because_artist_key`` /
  ``because_artist_name`` (user recommendations), as their last columns.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import re
import unicodedata

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

BECAUSE_COMMENT = (
    "artists.artist_id of the heard artist that contributed most to this recommendation "
    "(item models: largest contribution; factor models: most similar in factor space; blends: "
    "the dominating part's); -1 when none did, NULL in runs published before it was recorded"
)
SEARCH_KEY_COMMENT = "name folded for lookups: NFKC, casefold, white space collapsed (tasks/names.py)"
FOLD_IN_COMMENT = (
    "Per run, the user model's arrays needed to fold in a listener who is not in the data "
    "(storage/foldin.py); removed with the run's rows."
)
# sqlite_stat1's row for the new index: one artist per search key and run, like the name index
SEARCH_KEY_STAT = ("artists", "ix_artists_run_id_search_key", "1500000 300000 1")
BACKFILL_ROWS = 10_000
_SPACES = re.compile(r"\s+")

VIEWS: dict[str, tuple[str, str]] = {
    "current_related_artists": (
        """
SELECT c.dataset AS dataset, a.artist_key AS artist_key, a.name AS artist_name, r.rank AS rank,
       b.artist_key AS related_artist_key, b.name AS related_artist_name, r.score AS score,
       a.search_key AS artist_search_key
FROM current_runs AS c
JOIN runs AS m ON m.run_id = c.run_id
JOIN artists AS a ON a.run_id = c.run_id
JOIN related_artists AS r ON r.run_id = c.run_id AND r.model = m.related_model AND r.artist_id = a.artist_id
JOIN artists AS b ON b.run_id = c.run_id AND b.artist_id = r.related_artist_id
""",
        "Related artists of the current run of each dataset (its shipped model, runs.related_model), "
        "names joined in. Look up by dataset and artist_search_key (NFKC + casefold of the name) or artist_key.",
    ),
    "current_user_recommendations": (
        """
SELECT c.dataset AS dataset, u.user_key AS user_key, r.rank AS rank, a.artist_key AS artist_key,
       a.name AS artist_name, r.score AS score,
       w.artist_key AS because_artist_key, w.name AS because_artist_name
FROM current_runs AS c
JOIN users AS u ON u.run_id = c.run_id
JOIN user_recommendations AS r ON r.run_id = c.run_id AND r.user_id = u.user_id
JOIN artists AS a ON a.run_id = c.run_id AND a.artist_id = r.artist_id
LEFT JOIN artists AS w ON w.run_id = c.run_id AND w.artist_id = r.because_artist_id
""",
        "Top-N new artists per user of the current run of each dataset, names joined in, with the "
        "heard artist that contributed most (because_artist_*). Look up by dataset and user_key.",
    ),
}
# 0004's views, for the downgrade.
OLD_VIEWS: dict[str, tuple[str, str]] = {
    "current_related_artists": (
        """
SELECT c.dataset AS dataset, a.artist_key AS artist_key, a.name AS artist_name, r.rank AS rank,
       b.artist_key AS related_artist_key, b.name AS related_artist_name, r.score AS score
FROM current_runs AS c
JOIN runs AS m ON m.run_id = c.run_id
JOIN artists AS a ON a.run_id = c.run_id
JOIN related_artists AS r ON r.run_id = c.run_id AND r.model = m.related_model AND r.artist_id = a.artist_id
JOIN artists AS b ON b.run_id = c.run_id AND b.artist_id = r.related_artist_id
""",
        "Related artists of the current run of each dataset (its shipped model, runs.related_model), "
        "names joined in. Look up by dataset and lower(artist_name) or artist_key.",
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


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _search_key(name: str) -> str:
    """tasks.names.search_key as of this revision (a migration keeps its own copy)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return _SPACES.sub(" ", folded).strip()


def _views(views: dict[str, tuple[str, str]], create: bool) -> None:
    # COMMENT ON takes no bind parameters; the SQL is assembled from the constants above only.
    for name, (select_sql, comment) in views.items():
        if not create:
            op.execute(f"DROP VIEW {name}")
            continue
        op.execute(f"CREATE VIEW {name} AS {select_sql}")
        if not _sqlite():
            op.execute(f"COMMENT ON VIEW {name} IS '{comment}'")


def _add_column(table: str, column: sa.Column) -> None:
    """ADD COLUMN with its comment: COMMENT ON in PostgreSQL, inside the stored DDL in SQLite."""
    if _sqlite():
        kind = column.type.compile(dialect=op.get_bind().dialect)
        comment = str(column.comment).replace("*/", "* /")
        op.execute(f"ALTER TABLE {table} ADD COLUMN {column.name} /* {comment} */ {kind}")
    else:
        op.add_column(table, column)


def _backfill_search_keys() -> None:
    """Fill artists.search_key of the runs already stored, a batch of rows at a time."""
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT run_id, artist_id, name FROM artists WHERE search_key IS NULL"))
    update = sa.text("UPDATE artists SET search_key = :key WHERE run_id = :run AND artist_id = :artist")
    while batch := rows.fetchmany(BACKFILL_ROWS):
        conn.execute(update, [{"key": _search_key(name), "run": run, "artist": artist} for run, artist, name in batch])


def upgrade() -> None:
    _views(OLD_VIEWS, create=False)
    _add_column("user_recommendations", sa.Column("because_artist_id", sa.Integer, comment=BECAUSE_COMMENT))
    _add_column("artists", sa.Column("search_key", sa.Text, comment=SEARCH_KEY_COMMENT))
    _backfill_search_keys()
    op.create_index("ix_artists_run_id_search_key", "artists", ["run_id", "search_key"])
    op.create_table(
        "fold_in_arrays",
        sa.Column("run_id", sa.Integer, primary_key=True, comment="runs.run_id"),
        sa.Column("name", sa.Text, primary_key=True, comment="the array, e.g. 0.artist_factors (part 0 of a blend)"),
        sa.Column("chunk", sa.Integer, primary_key=True, comment="0-based piece of the array's .npy bytes"),
        sa.Column("data", sa.LargeBinary, nullable=False, comment="the piece's bytes"),
        comment=FOLD_IN_COMMENT,
    )
    if _sqlite():
        op.get_bind().exec_driver_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", SEARCH_KEY_STAT)
        op.get_bind().exec_driver_sql("ANALYZE sqlite_master")  # this connection reloads the statistics
    _views(VIEWS, create=True)


def downgrade() -> None:
    _views(VIEWS, create=False)
    op.drop_table("fold_in_arrays")
    op.drop_index("ix_artists_run_id_search_key", "artists")
    if _sqlite():
        op.get_bind().exec_driver_sql("DELETE FROM sqlite_stat1 WHERE idx = ?", (SEARCH_KEY_STAT[1],))
        op.execute("ALTER TABLE artists DROP COLUMN search_key")
        op.execute("ALTER TABLE user_recommendations DROP COLUMN because_artist_id")
    else:
        op.drop_column("artists", "search_key")
        op.drop_column("user_recommendations", "because_artist_id")
    _views(OLD_VIEWS, create=True)
