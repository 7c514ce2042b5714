"""The database: one engine, its private thread pool, and its schema migrations.

The same code serves SQLite (the default: a file in the data directory) and PostgreSQL
(``postgresql+psycopg://…``, for several hub nodes on one database).  Durability follows
SPEC §6: SQLite runs in WAL mode with ``synchronous=FULL``; PostgreSQL with
``synchronous_commit=on``.  A server refuses to start on a schema that is missing or
behind and names the command that upgrades it (buildbot ``master/buildbot/db/connector.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from twisted.internet.interfaces import IReactorFromThreads

from gsem.db.pool import DBThreadPool, GroupCommitWriter, WriterLock, run_in_transaction
from gsem.errors import GsemError

__all__ = ["Database", "SchemaOutOfDate", "MIGRATIONS_DIR", "SQLITE_BUSY_TIMEOUT_MS", "SQLITE_PAGE_SIZE"]

T = TypeVar("T")

#: Where the alembic environment and revisions live (shipped inside the package).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: How long an SQLite connection waits for another process's write lock (e.g. the CLI
#: while the server writes) before it gives up with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: The page size of a new SQLite database, in bytes (an existing one keeps its own).
SQLITE_PAGE_SIZE = 8192

#: Threads (and pooled connections) for PostgreSQL; SQLite always has exactly one.
POSTGRES_THREADS = 4


class SchemaOutOfDate(GsemError):
    """The database schema is missing, behind, or newer than this gsem knows."""


def _upgrade_command(data_dir: Path | str | None) -> str:
    return f"gsem db upgrade --data-dir {data_dir if data_dir is not None else 'DIR'}"


def _configure_sqlite(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take BEGIN away from the sqlite3 module, whose legacy mode does not begin a
        # transaction before SELECT or DDL; we emit our own in on_begin (the recipe in
        # SQLAlchemy's SQLite dialect docs, "Transactions with SQLite and the sqlite3 driver").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # 8 KiB pages for a new database (an existing one keeps its own): gsem's rows
            # carry 2 KB documents, which left 4 KiB pages half empty, so a transaction
            # wrote 13 log frames instead of 6 and its commit took longer while the other
            # workers waited (docs/decisions.md 35).  Only before WAL, which fixes the size.
            cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk when it returns, so "Acknowledge=Yes" is durable
            # even across a power loss (SPEC §6); NORMAL would lose recent commits.
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # Inside a transaction SQLite keeps a statement journal: a copy of each page a
            # statement changes, so that the statement alone can fail (and of each page a
            # SAVEPOINT changes, as the group commit's calls once had).  On file (the
            # default) it spills past 64 KiB into a temporary file: the hub made 55 write
            # system calls a transaction instead of 23 while holding the database
            # (docs/decisions.md 33).  In memory it is a copy in the process, emptied when
            # the statement ends; never needed after a crash (the WAL is what recovers).
            cursor.execute("PRAGMA temp_store = MEMORY")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        # IMMEDIATE takes the write lock up front: a transaction that reads and then
        # writes cannot fail half-way with SQLITE_BUSY when another process (the CLI, a
        # second server) wrote in between; it waits busy_timeout for the lock instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _configure_postgres(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # The server default may have been relaxed by a DBA; a "Yes" acknowledgement
        # needs the commit on disk (SPEC §6), so insist on it for our sessions.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET synchronous_commit TO on")
        finally:
            cursor.close()
        dbapi_connection.commit()


def _create_engine(url: str) -> tuple[sa.Engine, int]:
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise GsemError(f"database url {url!r}: gsem needs an SQLite file, not memory")
        engine = sa.create_engine(parsed)
        _configure_sqlite(engine)
        return engine, 1
    if backend == "postgresql":
        engine = sa.create_engine(
            parsed, pool_size=POSTGRES_THREADS, max_overflow=2, pool_pre_ping=True
        )
        _configure_postgres(engine)
        return engine, POSTGRES_THREADS
    raise GsemError(
        f"database url {parsed.render_as_string(hide_password=True)!r}: gsem supports "
        "sqlite:///FILE and postgresql+psycopg://USER@HOST/DB"
    )


class Database:
    """gsem's store: run small functions in transactions off the reactor thread.

    ``Database(url)`` opens nothing yet; :meth:`start` starts the thread pool that
    :meth:`run` uses.  :meth:`run_sync` needs no pool and no reactor (the CLI uses it).
    """

    def __init__(self, url: str, *, reactor: IReactorFromThreads | None = None) -> None:
        self.url = url
        self.engine, threads = _create_engine(url)
        writer_lock = None
        # Group commit only on SQLite, which has one writer anyway: on PostgreSQL several
        # threads (and nodes) each holding a batch's row locks until one commit could
        # deadlock, and each thread already commits in parallel with the others.
        self._writer: GroupCommitWriter | None = None
        if self.engine.dialect.name == "sqlite":
            # Server processes sharing the file take turns through this lock (pool.py);
            # the writer opens it for itself, so it and the pool exclude each other too.
            lock_path = f"{self.engine.url.database}-writer.lock"
            writer_lock = WriterLock(lock_path)
            self._writer = GroupCommitWriter(self.engine, WriterLock(lock_path), reactor=reactor)
        self._pool = DBThreadPool(
            self.engine, threads=threads, name="gsem-db", reactor=reactor, writer_lock=writer_lock
        )

    @property
    def dialect_name(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"<Database {self.engine.url.render_as_string(hide_password=True)}>"

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the thread pool used by :meth:`run` and the writer of :meth:`run_batched`."""
        self._pool.start()
        if self._writer is not None:
            self._writer.start()

    def stop(self) -> None:
        """Finish queued calls, stop the threads and close every pooled connection."""
        if self._writer is not None:
            self._writer.stop()
        self._pool.stop()
        self.engine.dispose()

    # -- running functions -----------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in the pool, in one transaction.

        Returns ``fn``'s result after the commit.  Any exception, including a failed
        commit, propagates and nothing of the transaction is kept.  ``fn`` must return
        plain (frozen) objects, never rows or result sets.
        """
        return await self._pool.run(fn, *args, **kwargs)

    async def run_batched(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`run`, with group commit on SQLite (:class:`~gsem.db.pool.GroupCommitWriter`).

        ``fn`` may share its transaction with other calls queued at the same time, and runs
        on the reactor thread; its result comes back only after the commit that holds its
        changes.  When another call of its batch raises, the batch is rolled back and this
        call raises :class:`~gsem.db.pool.BatchUndone` (nothing of it was kept): the caller
        runs it again, from scratch.  A failed commit reaches every call of the batch, and
        then nothing of any of them was kept.  On PostgreSQL it is :meth:`run`.
        """
        if self._writer is not None:
            return await self._writer.submit(fn, *args, **kwargs)
        return await self._pool.run(fn, *args, **kwargs)

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The same as :meth:`run`, in the calling thread (for the CLI; no reactor)."""
        return run_in_transaction(self.engine, fn, *args, **kwargs)

    # -- schema ------------------------------------------------------------------------

    def _alembic_config(self, connection: sa.Connection | None = None) -> AlembicConfig:
        # Configured in code: no alembic.ini to find or to keep in step with the package.
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        return config

    def head_revision(self) -> str:
        """The newest revision this gsem knows."""
        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        assert head is not None, "gsem ships at least one migration"
        return head

    def upgrade(self) -> None:
        """Bring the schema up to the newest revision, in one transaction."""
        with self.engine.begin() as conn:
            command.upgrade(self._alembic_config(conn), "head")

    def current_revision(self) -> str | None:
        """The revision the database is at; ``None`` for a database without gsem tables."""
        with self.engine.begin() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def check_current(self, *, data_dir: Path | str | None = None) -> None:
        """Raise :class:`SchemaOutOfDate` unless the schema is at the newest revision.

        The message names the command that fixes it, with *data_dir* filled in when given.
        """
        current = self.current_revision()
        head = self.head_revision()
        if current == head:
            return
        where = self.engine.url.render_as_string(hide_password=True)
        if current is None:
            raise SchemaOutOfDate(
                f"the database {where} has no gsem tables yet; "
                f"create them with '{_upgrade_command(data_dir)}'"
            )
        script = ScriptDirectory.from_config(self._alembic_config())
        known = {rev.revision for rev in script.walk_revisions()}
        if current not in known:
            raise SchemaOutOfDate(
                f"the database {where} is at schema revision {current}, which this gsem "
                f"does not know (its newest is {head}): the database was upgraded by a "
                "newer gsem; run that version instead"
            )
        raise SchemaOutOfDate(
            f"the database {where} is at schema revision {current}, behind {head}; "
            f"upgrade it with '{_upgrade_command(data_dir)}'"
        )
