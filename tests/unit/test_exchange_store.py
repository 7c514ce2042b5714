"""What ``decide_and_store`` writes through its hot statements (gsem.exchange).

The hot path runs its statements on SQLite's own connection and formats each
transaction's time once; what it stores must still be what SQLAlchemy would store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gsem.db import model, partners
from gsem.db.connector import Database
from gsem.db.pool import run_batch
from gsem.exchange import Inbound, Outcome, decide_and_store
from gsem.incident import ForwardTemplate
from gsem.validation import DocumentValidator

LIFECYCLE = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "lifecycle").glob("0*.xml"))
RECEIVED = dt.datetime(2026, 11, 22, 8, 3, 41, 500000)
#: Every DATETIME column the transactions below write, by table.
TIME_COLUMNS = {"incidents": ("created_at", "updated_at"), "messages": ("received_at",),
                "acknowledgements": ("created_at",), "idempotency_keys": ("created_at",),
                "deliveries": ("next_attempt_at", "created_at", "updated_at")}


@pytest.fixture(scope="module")
def validator() -> DocumentValidator:
    """One validator for the module (it compiles the schema)."""
    return DocumentValidator()


@pytest.fixture
def db(migrated_database: Database) -> Database:
    """A migrated database with ACME passing calls to GLOBEX under contract C-100."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    run(partners.add_partner, "GLOBEX", "Globex")
    run(partners.add_agreement, "ACME", "GLOBEX", "C-100")
    return migrated_database


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[dt.datetime]:
    """The times the next transactions take as ``now``, in order (a list to fill)."""
    times: list[dt.datetime] = []
    monkeypatch.setattr("gsem.exchange._now", lambda: times.pop(0))
    return times


def _call(validator: DocumentValidator, partner: str, body: bytes) -> object:
    """One call of a group commit, prepared as ``Exchange.receive`` prepares it."""
    inbound = Inbound(partner_id=partner, fingerprint="f" * 64, body=body, received_at=RECEIVED)
    inspection = validator.inspect(body)
    forward = ForwardTemplate.prepare(body)
    validator.precheck_matrix(inspection)
    return lambda conn: decide_and_store(conn, inbound, inspection, validator, {}, forward)


def _commit(db: Database, *calls: object) -> list[Outcome]:
    outcomes = run_batch(db.engine, [(call, (), {}) for call in calls])
    assert all(ok for ok, _ in outcomes), outcomes
    return [outcome for _, outcome in outcomes]


def _raw_times(db: Database) -> Iterator[tuple[str, str, object]]:
    with db.engine.connect() as conn:
        for table, columns in TIME_COLUMNS.items():
            for column in columns:
                for (value,) in conn.exec_driver_sql(f"SELECT {column} FROM {table}"):
                    yield table, column, value


@pytest.mark.parametrize("now", [dt.datetime(2026, 11, 22, 8, 3, 42), dt.datetime(2026, 11, 22, 8, 3, 42, 70)],
                         ids=["whole second", "microseconds"])
def test_stored_times_are_what_sqlalchemy_writes(db: Database, validator: DocumentValidator,
                                                 clock: list[dt.datetime], now: dt.datetime) -> None:
    """Every time of a transaction is stored as SQLAlchemy stores that datetime, and reads back equal."""
    clock.extend([now, now])
    _commit(db, _call(validator, "ACME", LIFECYCLE[0].read_bytes()))
    _commit(db, _call(validator, "GLOBEX", LIFECYCLE[1].read_bytes()))

    def sqlalchemy_writes(conn: sa.Connection) -> object:
        conn.execute(model.idempotency_keys.insert().values(partner_id="X", key="k", digest="d", ack_id="a",
                                                            created_at=now))
        return conn.exec_driver_sql("SELECT created_at FROM idempotency_keys WHERE partner_id = 'X'").scalar()

    stored = list(_raw_times(db))
    expected = db.run_sync(sqlalchemy_writes)
    assert {table for table, _, _ in stored} == set(TIME_COLUMNS)
    assert {value for _, _, value in stored} == {expected}
    if db.engine.dialect.name == "sqlite":
        assert expected == now.strftime("%Y-%m-%d %H:%M:%S.%f")
    with db.engine.connect() as conn:
        for table, columns in TIME_COLUMNS.items():
            for column in columns:
                read = conn.execute(sa.select(model.metadata.tables[table].c[column])).scalars().all()
                assert read and set(read) == {now}, (table, column)


def test_each_call_of_a_group_commit_keeps_its_own_time(db: Database, validator: DocumentValidator,
                                                        clock: list[dt.datetime]) -> None:
    """Calls sharing one commit take different times; each row has its call's."""
    first, second = dt.datetime(2026, 11, 22, 8, 3, 42), dt.datetime(2026, 11, 22, 8, 3, 42, 1)
    clock.extend([first, second, first])
    other = LIFECYCLE[0].read_bytes().replace(b"ACME-INC-20931", b"ACME-INC-20932")
    third = LIFECYCLE[0].read_bytes().replace(b"ACME-INC-20931", b"ACME-INC-20933")
    _commit(db, *(_call(validator, "ACME", body) for body in (LIFECYCLE[0].read_bytes(), other, third)))
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(model.incidents.c.requester_ref, model.incidents.c.created_at,
                                      model.messages.c.received_at)
                            .join(model.messages, model.messages.c.incident_id == model.incidents.c.id)
                            .order_by(model.incidents.c.id)).all()
    assert [tuple(row) for row in rows] == [("ACME-INC-20931", first, first), ("ACME-INC-20932", second, second),
                                           ("ACME-INC-20933", first, first)]
