"""Drop ``schema_version``: ``recs_alembic_version`` now says which schema a database has.

The downgrade puts it back at version 1, so that the pre-Alembic code can open the database again.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_table("schema_version")


def downgrade() -> None:
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
    op.bulk_insert(schema_version, [{"version": 1, "applied_at": datetime.now(UTC)}])
