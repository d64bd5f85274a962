"""Alembic environment: run the migrations on the connection storage.engine hands over.

There is no alembic.ini and no URL here: ``storage.engine.alembic_config(conn)`` puts an open
connection into ``config.attributes["connection"]``, already inside the write transaction that
holds the schema lock, so the migrations and the ``recs_alembic_version`` update commit or roll back
with it (Alembic begins no transaction of its own on a connection that is in one).
"""

from __future__ import annotations

from alembic import context

# Also registers the SQLite compile hooks that write comments into the stored CREATE TABLE text.
from storage.schema import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("storage/migrations runs on a connection given by storage.engine.alembic_config(conn)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    # SQLite can ALTER almost nothing in place; batch operations (copy, swap) work on both databases.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
