"""Group commit: calls queued for the SQLite writer share one transaction and one commit.

The writer thread is real (one SQLite file, one pool thread); the reactor is a stand-in
whose ``callFromThread`` hands calls to the test thread, which runs them: no sockets, no
sleeping.  To queue several calls behind one another, a first call holds the writer
until the test has queued the rest.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from twisted.internet.defer import Deferred

from gsem.db import model, partners
from gsem.db.connector import Database
from gsem.exchange import Exchange, Inbound
from gsem.validation import DocumentValidator

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle" / "01-service-request.xml"
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)


class ThreadHop:
    """The part of a reactor a database pool uses: calls from its thread, run here."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:  # noqa: N802
        self.calls.put((f, args, kwargs))

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            f, args, kwargs = self.calls.get(timeout=30)
            f(*args, **kwargs)


@pytest.fixture
def hop() -> ThreadHop:
    return ThreadHop()


@pytest.fixture
def database(tmp_path: Path, hop: ThreadHop) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'gsem.db'}", reactor=hop)
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


def _hold_writer(db: Database, hop: ThreadHop) -> tuple[threading.Event, Deferred[Any]]:
    """Occupy the writer thread until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold(conn: Any) -> None:
        entered.set()
        assert release.wait(30)

    held = Deferred.fromCoroutine(db.run(hold))
    assert entered.wait(30)
    return release, held


def _results(hop: ThreadHop, deferreds: list[Deferred[Any]]) -> list[tuple[bool, Any]]:
    outcomes: list[tuple[bool, Any] | None] = [None] * len(deferreds)
    for i, d in enumerate(deferreds):
        d.addCallbacks(lambda v, i=i: outcomes.__setitem__(i, (True, v)),
                       lambda f, i=i: outcomes.__setitem__(i, (False, f)))
    hop.run_until(lambda: all(o is not None for o in outcomes))
    return outcomes  # type: ignore[return-value]


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


def test_queued_calls_share_one_commit_and_are_answered_after_it(database: Database, hop: ThreadHop) -> None:
    """Calls queued while the writer is busy run in one batch: one commit, every result, all kept."""
    release, held = _hold_writer(database, hop)
    commits = _commits(database)
    batch = [Deferred.fromCoroutine(database.run_batched(_add(f"P{i:02}"))) for i in range(10)]
    assert not any(d.called for d in batch)  # nothing is answered before its commit
    release.set()
    outcomes = _results(hop, [held, *batch])
    assert outcomes[1:] == [(True, f"P{i:02}") for i in range(10)]
    assert commits[0] == 2  # the held call's, then the batch's one
    assert _partner_ids(database) == [f"P{i:02}" for i in range(10)]


def test_a_failing_call_undoes_only_its_own_changes(database: Database, hop: ThreadHop) -> None:
    """One call's IntegrityError rolls back its SAVEPOINT alone; the others are kept and answered."""
    database.run_sync(partners.add_partner, "TAKEN", "Already there")

    def clash(conn: Any) -> None:
        partners.add_partner(conn, "HALF", "written, then undone")  # its own change before the error
        _insert_partner(conn, "TAKEN")

    release, held = _hold_writer(database, hop)
    batch = [Deferred.fromCoroutine(database.run_batched(_add("A"))),
             Deferred.fromCoroutine(database.run_batched(clash)),
             Deferred.fromCoroutine(database.run_batched(_add("B")))]
    release.set()
    (_, _), first, failed, last = _results(hop, [held, *batch])
    assert first == (True, "A") and last == (True, "B")
    assert failed[0] is False and failed[1].check(IntegrityError)
    assert _partner_ids(database) == ["A", "B", "TAKEN"]


def test_a_failed_commit_fails_every_call_of_the_batch_and_keeps_nothing(database: Database, hop: ThreadHop) -> None:
    """When the one commit fails, every call hears so, and none of their changes is kept."""
    release, held = _hold_writer(database, hop)

    seen = [0]

    def refuse_commit(conn: Any) -> None:
        seen[0] += 1
        if seen[0] == 2:  # the held call's commit passes; the batch's fails
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    sa.event.listen(database.engine, "commit", refuse_commit)
    batch = [Deferred.fromCoroutine(database.run_batched(_add(f"P{i}"))) for i in range(4)]
    release.set()
    outcomes = _results(hop, [held, *batch])
    assert all(ok is False and f.check(OperationalError) for ok, f in outcomes[1:])
    assert _partner_ids(database) == []
    # The writer goes on: the next call is committed and answered.
    assert _results(hop, [Deferred.fromCoroutine(database.run_batched(_add("LATER")))]) == [(True, "LATER")]
    assert _partner_ids(database) == ["LATER"]


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


def test_transactions_of_one_batch_are_all_acknowledged_yes_and_stored(database: Database, hop: ThreadHop) -> None:
    """Several Service_Requests decided in one batch: all Yes, all stored, one commit for them."""
    exchange = _exchange_setup(database)
    release, held = _hold_writer(database, hop)
    commits = _commits(database)
    refs = [f"ACME-BATCH-{i}" for i in range(8)]
    batch = [Deferred.fromCoroutine(exchange.receive(_inbound(_service_request(ref)))) for ref in refs]
    release.set()
    outcomes = _results(hop, [held, *batch])
    assert commits[0] == 2
    for ok, outcome in outcomes[1:]:
        assert ok and outcome.http_status == 200 and b"<Acknowledge>Yes</Acknowledge>" in outcome.document
    stored = database.run_sync(lambda conn: sorted(
        r.requester_ref for r in conn.execute(sa.select(model.incidents.c.requester_ref))))
    assert stored == sorted(refs)
    kept = database.run_sync(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(model.deliveries)).scalar())
    assert kept == len(refs)


def test_duplicates_in_one_batch_are_one_original_and_its_replays(database: Database, hop: ThreadHop) -> None:
    """The same key three times in one batch: one original, two duplicates of it, one incident."""
    exchange = _exchange_setup(database)
    release, held = _hold_writer(database, hop)
    body = _service_request("ACME-DUP-1")
    batch = [Deferred.fromCoroutine(exchange.receive(_inbound(body, key="k-1"))) for _ in range(3)]
    release.set()
    outcomes = [o for _, o in _results(hop, [held, *batch])[1:]]
    assert [o.http_status for o in outcomes] == [200, 200, 200]
    assert [b"<Duplicate>Yes</Duplicate>" in o.document for o in outcomes] == [False, True, True]
    count = database.run_sync(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(model.incidents)).scalar())
    assert count == 1


def test_a_rejected_transaction_does_not_take_its_batch_down(database: Database, hop: ThreadHop) -> None:
    """A transaction that loses a unique-key race in a batch is retried; the others are kept."""
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
    release, held = _hold_writer(database, hop)
    refs = [f"ACME-R-{i}" for i in range(3)]
    batch = [Deferred.fromCoroutine(exchange.receive(_inbound(_service_request(ref)))) for ref in refs]
    release.set()
    outcomes = [o for _, o in _results(hop, [held, *batch])[1:]]
    # The second one was retried (its first attempt lost the race) and then accepted.
    assert calls[0] == 4
    assert all(o.http_status == 200 for o in outcomes)
    stored = database.run_sync(lambda conn: sorted(
        r.requester_ref for r in conn.execute(sa.select(model.incidents.c.requester_ref))))
    assert stored == refs


def test_a_failed_batch_commit_acknowledges_every_transaction_unavailable(database: Database, hop: ThreadHop) -> None:
    """SPEC §6: when the batch's commit fails, each of its transactions is told 'unavailable', none is kept."""
    exchange = _exchange_setup(database)
    seen = [0]

    def refuse_commit(conn: Any) -> None:
        seen[0] += 1
        if seen[0] == 2:
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    release, held = _hold_writer(database, hop)
    sa.event.listen(database.engine, "commit", refuse_commit)
    refs = [f"ACME-LOST-{i}" for i in range(4)]
    batch = [Deferred.fromCoroutine(exchange.receive(_inbound(_service_request(ref)))) for ref in refs]
    release.set()
    outcomes = [o for _, o in _results(hop, [held, *batch])[1:]]
    assert [o.http_status for o in outcomes] == [503] * 4
    assert all(b'code="unavailable"' in o.document and b"<Acknowledge>No</Acknowledge>" in o.document
               for o in outcomes)
    count = database.run_sync(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(model.incidents)).scalar())
    assert count == 0
