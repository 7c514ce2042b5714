"""gsem's schema migrations (alembic), configured in code by :class:`gsem.db.connector.Database`."""

__all__: list[str] = []
