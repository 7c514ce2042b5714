"""gsem's storage: SQLAlchemy Core tables, a private DB thread pool, one module per aggregate."""

__all__: list[str] = []
