"""The database layer under the real reactor, on PostgreSQL (and SQLite for comparison).

The store's queries themselves run on both backends in ``tests/unit/test_db.py`` (its
``postgres`` parameter); this file checks what only a real server and real threads show:
the thread pools, synchronous commit, and concurrent writers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from gsem.db import partners
from gsem.db.connector import POSTGRES_THREADS, Database

pytestmark = pytest.mark.integration


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A started, migrated :class:`Database` that hands results to the running reactor."""
    db = Database(database_url, reactor=reactor)
    db.upgrade()
    db.start()
    yield db
    db.stop()


def _run(database: Database, fn, *args) -> Deferred:  # noqa: ANN001
    return Deferred.fromCoroutine(database.run(fn, *args))


@pytest.mark.postgres
def test_postgres_sessions_commit_synchronously(pg_database_url: str) -> None:
    """Even on a database whose default is synchronous_commit=off, gsem's sessions commit synchronously."""
    name = sa.make_url(pg_database_url).database
    admin = sa.create_engine(pg_database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    admin.dispose()
    database = Database(pg_database_url)
    try:
        assert database.run_sync(lambda conn: conn.exec_driver_sql("SHOW synchronous_commit").scalar()) == "on"
    finally:
        database.stop()


@pytest_twisted.ensureDeferred
async def test_run_commits_in_a_pool_thread(database: Database) -> None:
    """run() calls the function off the reactor thread and returns once its work is committed."""
    caller = threading.get_ident()

    def add(conn: sa.Connection) -> tuple[int, str]:
        partners.add_partner(conn, "ACME", "Acme")
        return threading.get_ident(), "done"

    thread, result = await database.run(add)
    assert result == "done" and thread != caller
    # A separate connection sees it: it was committed before run() returned.
    other = sa.create_engine(database.url)
    with other.connect() as conn:
        assert conn.exec_driver_sql("SELECT name FROM partners WHERE id = 'ACME'").scalar() == "Acme"
    other.dispose()


@pytest_twisted.ensureDeferred
async def test_run_propagates_errors_and_keeps_nothing(database: Database) -> None:
    """An exception in the function reaches the caller and its writes are rolled back."""
    def add_then_fail(conn: sa.Connection) -> None:
        partners.add_partner(conn, "ACME", "Acme")
        raise partners.PartnerStoreError("changed my mind")

    with pytest.raises(partners.PartnerStoreError, match="changed my mind"):
        await database.run(add_then_fail)
    assert await database.run(partners.list_partners) == []
    with pytest.raises(partners.UnknownPartner):
        await database.run(partners.get_partner, "ACME")


@pytest_twisted.ensureDeferred
async def test_sqlite_has_one_writer_thread_postgres_several(database: Database) -> None:
    """Concurrent calls run one at a time on SQLite's single thread, side by side on PostgreSQL."""
    lock = threading.Lock()
    active = {"now": 0, "max": 0}
    threads: set[int] = set()

    def slow(conn: sa.Connection, n: int) -> int:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            threads.add(threading.get_ident())
        conn.execute(sa.text("SELECT 1"))
        time.sleep(0.05)
        with lock:
            active["now"] -= 1
        return n

    results = await gatherResults([_run(database, slow, n) for n in range(8)])
    assert results == list(range(8))
    if database.dialect_name == "sqlite":
        assert (len(threads), active["max"]) == (1, 1)
    else:
        assert 1 < len(threads) <= POSTGRES_THREADS and active["max"] > 1


def test_a_second_process_waits_for_the_sqlite_writer(sqlite_database_url: str) -> None:
    """While one connection holds the write lock, another's write waits for it instead of failing."""
    server = Database(sqlite_database_url)
    cli = Database(sqlite_database_url)
    server.upgrade()
    holding = threading.Event()

    def hold(conn: sa.Connection) -> None:
        partners.add_partner(conn, "ACME", "Acme")
        holding.set()
        time.sleep(0.5)

    try:
        writer = threading.Thread(target=server.run_sync, args=(hold,))
        writer.start()
        assert holding.wait(5)
        started = time.monotonic()
        cli.run_sync(partners.add_partner, "GLOBEX", "Globex")
        waited = time.monotonic() - started
        writer.join()
        assert waited > 0.2
        assert [p.id for p in cli.run_sync(partners.list_partners)] == ["ACME", "GLOBEX"]
    finally:
        server.stop()
        cli.stop()


@pytest.mark.postgres
def test_two_nodes_see_each_others_certificates(pg_database_url: str, make_cert) -> None:
    """Two hub nodes on one PostgreSQL database share partners and see a retirement at once."""
    node_a, node_b = Database(pg_database_url), Database(pg_database_url)
    node_a.upgrade()
    try:
        node_a.run_sync(partners.add_partner, "ACME", "Acme")
        cert = node_a.run_sync(partners.add_cert, "ACME", make_cert("acme"))
        before = node_b.run_sync(partners.trust_version)
        assert node_b.run_sync(partners.trust_snapshot)[cert.fingerprint].retired_at is None
        node_a.run_sync(partners.retire_cert, cert.fingerprint)
        assert node_b.run_sync(partners.trust_version) != before
        assert node_b.run_sync(partners.trust_snapshot)[cert.fingerprint].retired_at is not None
    finally:
        node_a.stop()
        node_b.stop()
