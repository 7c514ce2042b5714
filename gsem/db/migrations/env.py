"""The alembic environment: always run on a connection that gsem hands in.

:meth:`gsem.db.connector.Database.upgrade` opens the transaction and passes its connection
in ``config.attributes["connection"]``; there is no alembic.ini and no URL here, so the
migrations run with exactly the engine settings (WAL, foreign keys …) the server uses.
"""

from __future__ import annotations

from alembic import context

from gsem.db import model

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run gsem's migrations through 'gsem db upgrade', which opens the database")

context.configure(
    connection=connection,
    target_metadata=model.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
