"""Group commit: calls queued for the SQLite writer share one transaction and one commit.

The writer is real: one SQLite file, the reactor (pytest-twisted's), the writer's commit
thread.  To queue several calls behind one another the test holds the writer lock itself,
as another worker process would, until it has queued them all.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from gsem.db import model, partners
from gsem.db.connector import Database
from gsem.db.pool import BatchUndone, WriterLock, run_batch
from gsem.exchange import Exchange, Inbound
from gsem.validation import DocumentValidator

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle" / "01-service-request.xml"
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)


@pytest_twisted.async_yield_fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'gsem.db'}", reactor=reactor)
    db.upgrade()
    db.start()
    try:
        yield db
    finally:
        db.stop()


def _commits(db: Database) -> list[int]:
    counted = [0]
    sa.event.listen(db.engine, "commit", lambda conn: counted.__setitem__(0, counted[0] + 1))
    return counted


def _other_process(db: Database) -> WriterLock:
    """The writer lock, taken as another worker process writing the same file would."""
    lock = WriterLock(f"{db.engine.url.database}-writer.lock")
    lock.acquire()
    return lock


async def _results(deferreds: list[Deferred[Any]]) -> list[tuple[bool, Any]]:
    return list(await DeferredList(deferreds, consumeErrors=True))


def _submit(db: Database, fn: Callable[..., Any]) -> Deferred[Any]:
    return Deferred.fromCoroutine(db.run_batched(fn))


def _add(partner_id: str) -> Callable[[Any], str]:
    def thd(conn: Any) -> str:
        partners.add_partner(conn, partner_id, f"Partner {partner_id}")
        return partner_id
    return thd


def _insert_partner(conn: Any, partner_id: str) -> None:
    """A bare INSERT: an existing id fails with the database's IntegrityError."""
    conn.execute(model.partners.insert(), {"id": partner_id, "name": partner_id, "created_at": NOW})


def _partner_ids(db: Database) -> list[str]:
    return sorted(p.id for p in db.run_sync(partners.list_partners))


@pytest_twisted.ensureDeferred
async def test_queued_calls_share_one_commit_and_are_answered_after_it(database: Database) -> None:
    """Calls queued while another process writes run in one batch: one commit, every result, all kept."""
    other = _other_process(database)
    commits = _commits(database)
    batch = [_submit(database, _add(f"P{i:02}")) for i in range(10)]
    await deferLater(reactor, 0.2, lambda: None)
    assert not any(d.called for d in batch)  # nothing is answered before its commit
    other.release()
    outcomes = await _results(batch)
    assert outcomes == [(True, f"P{i:02}") for i in range(10)]
    assert commits[0] == 1
    assert _partner_ids(database) == [f"P{i:02}" for i in range(10)]
    other.close()
    # What the writer logs when it stops: how much it batched, how long it held the lock.
    summary = database._writer.stats.summary()  # type: ignore[union-attr]
    assert summary.startswith("database writer: 10 transactions in 1 commit (10.0 per commit) in ")
    assert database._writer.stats.waited >= 0.1  # type: ignore[union-attr]


async def _served_while_waiting(database: Database, release: Callable[[], object], partner_id: str) -> None:
    """A call that must wait until *release* is called: the reactor goes on meanwhile."""
    once = threading.Lock()

    def release_once() -> None:
        if once.acquire(blocking=False):
            release()

    # Should the writer wait on the reactor thread, this lets the test end, failing.
    safety = threading.Timer(3.0, release_once)
    safety.start()
    started = time.monotonic()
    waiting = _submit(database, _add(partner_id))
    for _ in range(5):
        await deferLater(reactor, 0.02, lambda: None)
    assert time.monotonic() - started < 2.0 and not waiting.called
    safety.cancel()
    release_once()
    assert await waiting == partner_id


@pytest_twisted.ensureDeferred
async def test_the_reactor_goes_on_while_another_process_holds_the_database(database: Database) -> None:
    """Waiting for the writer lock happens off the reactor thread: timers fire, the wait ends."""
    other = _other_process(database)
    await _served_while_waiting(database, other.release, "LATE")
    other.close()


@pytest_twisted.ensureDeferred
async def test_the_reactor_goes_on_while_the_command_line_holds_sqlites_write_lock(database: Database) -> None:
    """A process that takes SQLite's write lock without the writer lock (the CLI) does not stall the reactor."""
    cli = sqlite3.connect(database.engine.url.database, isolation_level=None, check_same_thread=False)
    cli.execute("BEGIN IMMEDIATE")
    await _served_while_waiting(database, lambda: cli.execute("COMMIT"), "AFTER-CLI")
    cli.close()


def _wait_until_taken(lock_path: str) -> None:
    """Block the calling (reactor) thread until someone else holds the writer lock."""
    deadline = time.monotonic() + 3.0
    with open(lock_path, "a+b") as probe:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            fcntl.flock(probe, fcntl.LOCK_UN)
            time.sleep(0.001)
    raise AssertionError("the writer never took the lock")


@pytest_twisted.ensureDeferred
async def test_a_call_queued_while_the_reactor_is_busy_runs_the_granted_batch_at_once(database: Database) -> None:
    """The lock is granted while the reactor is busy: the next call queued runs the batch there and then.

    Under load the reactor may spend tens of milliseconds reading and validating requests
    before it comes back to the writer; the lock must not sit idle meanwhile, since the
    other workers are waiting for it.
    """
    other = _other_process(database)
    ran: list[str] = []

    def recorded(partner_id: str) -> Callable[[Any], str]:
        def thd(conn: Any) -> str:
            ran.append(partner_id)
            return _add(partner_id)(conn)
        return thd

    commits = _commits(database)
    first = _submit(database, recorded("FIRST"))
    await deferLater(reactor, 0.05, lambda: None)  # the writer's thread now waits for the lock
    other.release()
    # From here the reactor is busy (this test holds it) while the writer takes the lock.
    _wait_until_taken(f"{database.engine.url.database}-writer.lock")
    time.sleep(0.2)  # and begins its transaction
    second = _submit(database, recorded("SECOND"))
    assert ran == ["FIRST", "SECOND"]  # both ran before the reactor's next turn
    assert await _results([first, second]) == [(True, "FIRST"), (True, "SECOND")]
    assert commits[0] == 1
    assert _partner_ids(database) == ["FIRST", "SECOND"]
    other.close()


@pytest_twisted.ensureDeferred
async def test_a_failing_call_undoes_its_batch_and_the_calls_after_it_run_in_the_next(database: Database) -> None:
    """One call's IntegrityError rolls back its batch: nothing of it or the call before it is kept.

    The call before it hears BatchUndone (its caller runs it again); the call after it had
    not run, and runs in the next batch, committed and answered as usual.
    """
    database.run_sync(partners.add_partner, "TAKEN", "Already there")

    def clash(conn: Any) -> None:
        partners.add_partner(conn, "HALF", "written, then undone")  # its own change before the error
        _insert_partner(conn, "TAKEN")

    other = _other_process(database)
    commits = _commits(database)
    batch = [_submit(database, _add("A")), _submit(database, clash), _submit(database, _add("B"))]
    other.release()
    first, failed, last = await _results(batch)
    assert first[0] is False and first[1].check(BatchUndone)
    assert "nothing of this call was kept" in str(first[1].value)
    assert failed[0] is False and failed[1].check(IntegrityError)
    assert last == (True, "B")
    assert commits[0] == 1  # B's batch; the undone one was rolled back, not committed
    assert _partner_ids(database) == ["B", "TAKEN"]
    # Run again, the undone call is kept.
    assert await _submit(database, _add("A")) == "A"
    assert _partner_ids(database) == ["A", "B", "TAKEN"]
    other.close()
    summary = database._writer.stats.summary()  # type: ignore[union-attr]
    assert summary.startswith("database writer: 4 transactions in 2 commits")
    assert summary.endswith("; 1 batch rolled back for a call that raised")


def test_run_batch_rolls_back_a_failing_calls_batch_and_runs_the_rest_in_another(tmp_path: Path) -> None:
    """run_batch (the writer's batch when it stops, and the benchmarks') fails as the writer does."""
    db = Database(f"sqlite:///{tmp_path / 'gsem.db'}", reactor=reactor)
    db.upgrade()
    db.run_sync(partners.add_partner, "TAKEN", "Already there")
    commits = _commits(db)
    outcomes = run_batch(db.engine, [(_add("A"), (), {}), (_insert_partner, ("TAKEN",), {}),
                                     (_add("B"), (), {}), (_add("C"), (), {})])
    assert outcomes[0][0] is False and outcomes[0][1].check(BatchUndone)
    assert outcomes[1][0] is False and outcomes[1][1].check(IntegrityError)
    assert outcomes[2:] == [(True, "B"), (True, "C")]
    assert commits[0] == 1
    assert sorted(p.id for p in db.run_sync(partners.list_partners)) == ["B", "C", "TAKEN"]
    db.engine.dispose()


@pytest_twisted.ensureDeferred
async def test_a_failed_commit_fails_every_call_of_the_batch_and_keeps_nothing(database: Database) -> None:
    """When the one commit fails, every call hears so, and none of their changes is kept."""
    def refuse_commit(conn: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    other = _other_process(database)
    sa.event.listen(database.engine, "commit", refuse_commit)
    batch = [_submit(database, _add(f"P{i}")) for i in range(4)]
    other.release()
    outcomes = await _results(batch)
    assert all(ok is False and f.check(OperationalError) for ok, f in outcomes)
    sa.event.remove(database.engine, "commit", refuse_commit)
    assert _partner_ids(database) == []
    # The writer goes on: the next call is committed and answered.
    assert await _submit(database, _add("LATER")) == "LATER"
    assert _partner_ids(database) == ["LATER"]
    other.close()


@pytest_twisted.ensureDeferred
async def test_stopping_commits_and_answers_what_is_queued(database: Database) -> None:
    """stop() waits for the other process, then commits and answers the queued calls."""
    other = _other_process(database)
    batch = [_submit(database, _add(f"S{i}")) for i in range(3)]
    await deferLater(reactor, 0.05, lambda: None)  # the writer is waiting for the lock now
    threading.Timer(0.3, other.release).start()
    database.stop()
    assert [d.called for d in batch] == [True] * 3
    assert await _results(batch) == [(True, "S0"), (True, "S1"), (True, "S2")]
    assert _partner_ids(database) == ["S0", "S1", "S2"]
    other.close()


def test_a_stopped_writer_refuses_calls(tmp_path: Path) -> None:
    """A call after stop() fails at once instead of waiting for ever."""
    db = Database(f"sqlite:///{tmp_path / 'gsem.db'}", reactor=reactor)
    db.upgrade()
    db.start()
    db.stop()
    with pytest.raises(RuntimeError, match="not started"):
        db.run_batched(_add("NEVER")).send(None)


def _exchange_setup(db: Database) -> Exchange:
    def setup(conn: Any) -> None:
        partners.add_partner(conn, "ACME", "Acme")
        partners.add_partner(conn, "GLOBEX", "Globex")
        partners.add_agreement(conn, "ACME", "GLOBEX", "C-100")
    db.run_sync(setup)
    return Exchange(db, DocumentValidator())


def _service_request(requester_ref: str) -> bytes:
    return FIXTURE.read_bytes().replace(b"ACME-INC-20931", requester_ref.encode())


def _inbound(body: bytes, key: str | None = None) -> Inbound:
    return Inbound(partner_id="ACME", fingerprint="00" * 32, body=body, received_at=NOW, idempotency_key=key)


@pytest_twisted.ensureDeferred
async def test_transactions_of_one_batch_are_all_acknowledged_yes_and_stored(database: Database) -> None:
    """Several Service_Requests decided in one batch: all Yes, all stored, one commit for them."""
    exchange = _exchange_setup(database)
    other = _other_process(database)
    commits = _commits(database)
    refs = [f"ACME-BATCH-{i}" for i in range(8)]
    batch = [Deferred.fromCoroutine(exchange.receive(_inbound(_service_request(ref)))) for ref in refs]
    other.release()
    outcomes = await _results(batch)
    assert commits[0] == 1
    for ok, outcome in outcomes:
        assert ok and outcome.http_status == 200 and b"<Acknowledge>Yes</Acknowledge>" in outcome.document
    stored = database.run_sync(lambda conn: sorted(
        r.requester_ref for r in conn.execute(sa.select(model.incidents.c.requester_ref))))
    assert stored == sorted(refs)
    kept = database.run_sync(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(model.deliveries)).scalar())
    assert kept == len(refs)
    other.close()


@pytest_twisted.ensureDeferred
async def test_duplicates_in_one_batch_are_one_original_and_its_replays(database: Database) -> None:
    """The same key three times in one batch: one original, two duplicates of it, one incident."""
    exchange = _exchange_setup(database)
    other = _other_process(database)
    body = _service_request("ACME-DUP-1")
    batch = [Deferred.fromCoroutine(exchange.receive(_inbound(body, key="k-1"))) for _ in range(3)]
    other.release()
    outcomes = [o for _, o in await _results(batch)]
    assert [o.http_status for o in outcomes] == [200, 200, 200]
    assert [b"<Duplicate>Yes</Duplicate>" in o.document for o in outcomes] == [False, True, True]
    count = database.run_sync(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(model.incidents)).scalar())
    assert count == 1
    other.close()


@pytest_twisted.ensureDeferred
async def test_a_rejected_transaction_does_not_take_its_batch_down(database: Database) -> None:
    """A transaction that loses a unique-key race in a batch is retried; the others are kept.

    Its batch is rolled back: the transaction before it is decided again, the one after
    it is decided in the next batch; each is acknowledged Yes and kept once.
    """
    exchange = _exchange_setup(database)
    real = exchange.database.run_batched
    calls = [0]

    async def flaky(fn: Callable[..., Any]) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the second transaction hits a unique key inside the batch
            def clash(conn: Any) -> Any:
                _insert_partner(conn, "ACME")
            return await real(clash)
        return await real(fn)

    exchange.database = type("D", (), {"run_batched": staticmethod(flaky)})()
    other = _other_process(database)
    refs = [f"ACME-R-{i}" for i in range(3)]
    batch = [Deferred.fromCoroutine(exchange.receive(_inbound(_service_request(ref)))) for ref in refs]
    other.release()
    outcomes = [o for _, o in await _results(batch)]
    # Five runs: the three, the second again (its first attempt lost the race), and the
    # first again (undone with the second's batch).
    assert calls[0] == 5
    assert all(o.http_status == 200 and b"<Acknowledge>Yes</Acknowledge>" in o.document for o in outcomes)
    kept = database.run_sync(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(model.messages)).scalar())
    assert kept == len(refs)
    stored = database.run_sync(lambda conn: sorted(
        r.requester_ref for r in conn.execute(sa.select(model.incidents.c.requester_ref))))
    assert stored == refs
    other.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_batch_commit_acknowledges_every_transaction_unavailable(database: Database) -> None:
    """SPEC §6: when the batch's commit fails, each of its transactions is told 'unavailable', none is kept."""
    exchange = _exchange_setup(database)

    def refuse_commit(conn: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    other = _other_process(database)
    sa.event.listen(database.engine, "commit", refuse_commit)
    refs = [f"ACME-LOST-{i}" for i in range(4)]
    batch = [Deferred.fromCoroutine(exchange.receive(_inbound(_service_request(ref)))) for ref in refs]
    other.release()
    outcomes = [o for _, o in await _results(batch)]
    sa.event.remove(database.engine, "commit", refuse_commit)
    assert [o.http_status for o in outcomes] == [503] * 4
    assert all(b'code="unavailable"' in o.document and b"<Acknowledge>No</Acknowledge>" in o.document
               for o in outcomes)
    count = database.run_sync(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(model.incidents)).scalar())
    assert count == 0
    other.close()
