"""What ``decide_and_store`` writes through its hot statements (gsem.exchange).

The hot path runs its statements on SQLite's own connection, formats each transaction's
time once, and reads the document's ids before the transaction (``Prepared``); what it
stores must still be what SQLAlchemy and the decision inside the transaction would store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from gsem.ack import mark_duplicate
from gsem.db import incidents_read, model, partners
from gsem.db.connector import Database
from gsem.db.pool import run_batch
from gsem.errors import AckCode, Problem
from gsem.exchange import Inbound, Outcome, Prepared, decide_and_store, prepare_inbound
from gsem.incident import split
from gsem.validation import DocumentValidator, Inspection

LIFECYCLE = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "lifecycle").glob("0*.xml"))
RECEIVED = dt.datetime(2026, 11, 22, 8, 3, 41, 500000)
#: Every DATETIME column the transactions below write, by table.
TIME_COLUMNS = {"incidents": ("created_at", "updated_at"), "messages": ("received_at",),
                "acknowledgements": ("created_at",),
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


def _call(validator: DocumentValidator, partner: str, body: bytes, *, prepare: bool = True,
          key: str | None = None) -> object:
    """One call of a group commit, prepared as ``Exchange.receive`` prepares it (or not at all)."""
    inbound = Inbound(partner_id=partner, fingerprint="f" * 64, body=body, received_at=RECEIVED,
                      idempotency_key=key)
    if not prepare:
        inspection = validator.inspect(body)
        return lambda conn: decide_and_store(conn, inbound, inspection, validator, {})
    inspection, forward, prepared = prepare_inbound(validator, inbound)
    return lambda conn: decide_and_store(conn, inbound, inspection, validator, {}, forward, prepared)


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
        conn.execute(model.partners.insert().values(id="X", name="X", created_at=now))
        return conn.exec_driver_sql("SELECT created_at FROM partners WHERE id = 'X'").scalar()

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


@pytest.mark.parametrize("prepare", [True, False], ids=["prepared", "decided inside"])
def test_what_the_matrix_drops_is_not_acknowledged(db: Database, validator: DocumentValidator,
                                                   prepare: bool) -> None:
    """A Service_Request's ProviderID (not in its matrix) is ignored, prepared before or not."""
    body = LIFECYCLE[0].read_bytes().replace(b"</RequesterID>", b"</RequesterID><ProviderID>GX-1</ProviderID>")
    [outcome] = _commit(db, _call(validator, "ACME", body, prepare=prepare))
    ack = etree.fromstring(outcome.document)
    assert ack.findtext("Acknowledge") == "Yes"
    assert ack.find("ProviderID").text is None
    assert [w.get("code") for w in ack.findall("WARNING")] == ["ignored-element"]
    assert outcome.log_fields["provider_id"] is None
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(model.incidents.c.provider_ref)).scalar_one() is None


def test_preparing_outside_stores_what_deciding_inside_stores(tmp_path: Path, validator: DocumentValidator,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole lifecycle, prepared before each transaction or not, stores the same rows.

    Query_Incident, whose matrix is checked before the transaction whoever sends it, is
    sent by both parties, also with an element its matrix ignores.
    """
    monkeypatch.setattr("gsem.exchange._now", lambda: dt.datetime(2026, 11, 22, 8, 3, 42))
    senders = ["ACME", "GLOBEX", "ACME", "GLOBEX", "GLOBEX", "ACME", "GLOBEX", "ACME", "ACME"]
    query = LIFECYCLE[8].read_bytes()
    ignored = query.replace(b"</RequesterID>", b"</RequesterID><Comment>not read</Comment>")
    steps = [*zip(senders, [path.read_bytes() for path in LIFECYCLE], strict=True),
             ("GLOBEX", query), ("ACME", ignored), ("GLOBEX", ignored)]
    stored = []
    for prepare in (True, False):
        database = Database(f"sqlite:///{tmp_path / f'{prepare}.db'}")
        database.upgrade()
        database.run_sync(partners.add_partner, "ACME", "Acme")
        database.run_sync(partners.add_partner, "GLOBEX", "Globex")
        database.run_sync(partners.add_agreement, "ACME", "GLOBEX", "C-100")
        for sender, body in steps:
            [outcome] = _commit(database, _call(validator, sender, body, prepare=prepare))
            assert outcome.log_fields["result"] == "Yes", body
        rows = {}
        with database.engine.connect() as conn:
            for table in ("incidents", "messages", "acknowledgements", "deliveries"):
                columns = [c for c in model.metadata.tables[table].c if c.name not in ("ack_id", "timings")]
                found = conn.execute(sa.select(*columns).order_by(*model.metadata.tables[table].primary_key)).all()
                rows[table] = [tuple(r) for r in found]
        database.engine.dispose()
        for table in ("messages", "acknowledgements"):
            assert len(rows[table]) == len(steps)
        assert sum(b"ignored-element" in row[-1] for row in rows["acknowledgements"]) == 2
        # The acknowledgements differ only by their ids.
        rows["acknowledgements"] = [tuple(etree.tostring(_without_id(v)) if isinstance(v, bytes) else v for v in r)
                                    for r in rows["acknowledgements"]]
        stored.append(rows)
    assert stored[0] == stored[1]


def _without_id(document: bytes) -> etree._Element:
    root = etree.fromstring(document)
    root.find("AckID").text = "-"
    return root


#: Root children in which Prepared finds its texts, in every shape its reading must tell apart.
TEXT_CHILDREN = ["<RequesterID>R-1</RequesterID>", "<RequesterID>  R-2 </RequesterID>", "<RequesterID> </RequesterID>",
                 "<RequesterID/>", "<ProviderID>P-1</ProviderID>", "<ProviderID>\u00a0</ProviderID>", "<ProviderID/>",
                 "<AGREEMENT><ContractID>C-1;CN=x</ContractID></AGREEMENT>", "<AGREEMENT><ContractID/></AGREEMENT>",
                 "<AGREEMENT><AgreementType>t</AgreementType></AGREEMENT>",
                 "<AGREEMENT><X/><ContractID> C-2 </ContractID><ContractID>C-3</ContractID></AGREEMENT>",
                 "<PROBLEM/>", "<PROBLEM><STATEMENT/></PROBLEM>", "<Comment>RequesterID</Comment>", "<!-- c -->",
                 "<Nest><RequesterID>inner</RequesterID><ContractID>inner</ContractID></Nest>"]


@given(children=st.lists(st.sampled_from(TEXT_CHILDREN), max_size=8))
def test_prepared_reads_the_texts_elementpath_reads(children: list[str]) -> None:
    """Prepared's one pass over the root finds what findtext and find find."""
    root = etree.fromstring(("<SERVICE_INCIDENT>" + "".join(children) + "</SERVICE_INCIDENT>").encode())
    inspection = Inspection(tree=etree.ElementTree(root), errors=[Problem(AckCode.SCHEMA_VIOLATION, "no change")])
    prepared = Prepared.of(Inbound(partner_id="ACME", fingerprint="f" * 64, body=b"", received_at=RECEIVED),
                           inspection)
    assert prepared.requester_ref == ((root.findtext("RequesterID") or "").strip() or None)
    assert prepared.provider_ref == ((root.findtext("ProviderID") or "").strip() or None)
    assert prepared.contract == root.findtext("AGREEMENT/ContractID")
    assert prepared.problem is (root.find("PROBLEM") is not None)


def _migrate(database: Database, revision: str, *, down: bool = False) -> None:
    with database.engine.begin() as conn:
        (command.downgrade if down else command.upgrade)(database._alembic_config(conn), revision)


def test_keys_kept_before_0004_still_answer_resends(database_url: str, validator: DocumentValidator,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys in the table of schema 0003 become the accepted messages' keys, and answer as before.

    A database with an accepted Service_Request (body digest as key), an accepted Entitlement
    (a partner's Idempotency-Key) and a rejected message is taken back to 0003, whose
    ``idempotency_keys`` table is what gsem before 0004 wrote for them; upgraded again,
    resends are duplicates with the original acknowledgements, the key with another body is
    a conflict, and the rejected message's key binds nothing (docs/decisions.md 13).
    """
    now = dt.datetime(2026, 11, 22, 8, 3, 42)
    monkeypatch.setattr("gsem.exchange._now", lambda: now)
    database = Database(database_url)
    try:
        database.upgrade()
        database.run_sync(partners.add_partner, "ACME", "Acme")
        database.run_sync(partners.add_partner, "GLOBEX", "Globex")
        request, entitlement = LIFECYCLE[0].read_bytes(), LIFECYCLE[1].read_bytes()
        [refused] = _commit(database, _call(validator, "ACME", request))  # no agreement yet
        database.run_sync(partners.add_agreement, "ACME", "GLOBEX", "C-100")
        [first] = _commit(database, _call(validator, "ACME", request))
        [second] = _commit(database, _call(validator, "GLOBEX", entitlement, key="ent-1"))
        assert refused.log_fields["result"] == "No"
        assert first.log_fields["result"] == second.log_fields["result"] == "Yes"

        _migrate(database, "0003_requester_ref_index", down=True)
        with database.engine.connect() as conn:
            table = sa.table("idempotency_keys", *(sa.column(name) for name in ("partner_id", "key", "digest",
                                                                              "ack_id")),
                             sa.column("created_at", sa.DateTime))
            keys = conn.execute(sa.select(table).order_by(table.c.partner_id)).all()
        digest = hashlib.sha256(request).hexdigest()
        assert [tuple(row) for row in keys] == [
            ("ACME", digest, digest, first.log_fields["ack_id"], now),
            ("GLOBEX", "ent-1", hashlib.sha256(entitlement).hexdigest(), second.log_fields["ack_id"], now)]

        _migrate(database, "head")
        assert database.current_revision() == "0005_incident_entries"
        with database.engine.connect() as conn:
            assert "idempotency_keys" not in sa.inspect(conn).get_table_names()
        again, same_key, other_body = _commit(
            database, _call(validator, "ACME", request), _call(validator, "GLOBEX", entitlement, key="ent-1"),
            _call(validator, "GLOBEX", entitlement.replace(b"</SERVICE_INCIDENT>", b"<Comment>x</Comment>"
                                                           b"</SERVICE_INCIDENT>"), key="ent-1"))
        for resend, original in ((again, first), (same_key, second)):
            assert resend.log_fields["duplicate_of"] == original.log_fields["ack_id"]
            assert resend.http_status == original.http_status
            assert resend.document == mark_duplicate(original.document)
        # The conflict comes first; the document is still decided (here: entitled already).
        assert other_body.log_fields["result"] == "No"
        assert [e["code"] for e in other_body.log_fields["errors"]] == ["idempotency-conflict", "not-allowed-in-state"]
        with database.engine.connect() as conn:
            # The resends are messages of their own, not accepted: the original keeps the key.
            accepted = conn.execute(sa.select(model.messages.c.accepted).order_by(model.messages.c.id)).scalars()
            assert list(accepted) == [False, True, True, False, False, False]
    finally:
        database.stop()


#: Who sends each document of the lifecycle fixtures (bench/loadgen.py plays it the same way).
LIFECYCLE_SENDERS = ("ACME", "GLOBEX", "ACME", "GLOBEX", "GLOBEX", "ACME", "GLOBEX", "ACME", "ACME")


def test_incidents_stored_before_0005_keep_their_whole_history(database_url: str, validator: DocumentValidator) -> None:
    """Migration 0005 moves an incident's appended entries to rows of their own, and back.

    A whole lifecycle is stored; taken back to 0004, the incident's document holds every
    ACTIVITY, SOLUTION and ATTACHMENT as gsem before 0005 stored it; upgraded again, the
    document holds none of them, each is a row, and the incident reads as the same
    document, which later transactions go on from.
    """
    database = Database(database_url)
    try:
        database.upgrade()
        database.run_sync(partners.add_partner, "ACME", "Acme")
        database.run_sync(partners.add_partner, "GLOBEX", "Globex")
        database.run_sync(partners.add_agreement, "ACME", "GLOBEX", "C-100")
        for sender, path in zip(LIFECYCLE_SENDERS[:6], LIFECYCLE, strict=False):
            [outcome] = _commit(database, _call(validator, sender, path.read_bytes()))
            assert outcome.log_fields["result"] == "Yes", (path.name, outcome.document)
        whole = database.run_sync(incidents_read.get_incident, ("ACME", "ACME-INC-20931")).document
        appended = [b"<ACTIVITY>", b"<SOLUTION>", b"<ATTACHMENT>"]
        assert sum(whole.count(tag) for tag in appended) >= 3

        def stored(conn: sa.Connection) -> tuple[bytes, int]:
            document = conn.execute(sa.select(model.incidents.c.document)).scalar_one()
            entries = conn.execute(sa.select(sa.func.count()).select_from(model.incident_entries)).scalar_one()
            return bytes(document), entries

        base, entries = database.run_sync(stored)
        assert entries == sum(whole.count(tag) for tag in appended)
        assert not any(tag in base for tag in appended)

        _migrate(database, "0004_keys_on_messages", down=True)
        with database.engine.connect() as conn:
            assert "incident_entries" not in sa.inspect(conn).get_table_names()
            assert bytes(conn.execute(sa.select(model.incidents.c.document)).scalar_one()) == whole

        _migrate(database, "head")
        assert database.run_sync(stored) == (base, entries)
        assert database.run_sync(incidents_read.get_incident, ("ACME", "ACME-INC-20931")).document == whole
        for sender, path in zip(LIFECYCLE_SENDERS[6:], LIFECYCLE[6:], strict=True):
            [outcome] = _commit(database, _call(validator, sender, path.read_bytes()))
            assert outcome.log_fields["result"] == "Yes", (path.name, outcome.document)
        after = database.run_sync(incidents_read.get_incident, ("ACME", "ACME-INC-20931")).document
        history, later = split(whole)[1], split(after)[1]
        assert later[:len(history)] == history and len(later) > len(history), "the history goes on"
        with database.engine.connect() as conn:
            e, m = model.incident_entries, model.messages
            appended_by = conn.execute(sa.select(e.c.message_id, m.c.transaction_name, m.c.accepted)
                                       .outerjoin(m, m.c.id == e.c.message_id).order_by(e.c.id)).all()
        # Moved out of the document by 0005: which message appended them was not recorded.
        assert [row.message_id for row in appended_by[:entries]] == [None] * entries
        # Appended since: each by an accepted message of the rest of the lifecycle.
        assert appended_by[entries:] and all(row.accepted for row in appended_by[entries:])
        assert {row.transaction_name for row in appended_by[entries:]} <= {
            etree.fromstring(path.read_bytes()).findtext("TransactionName") for path in LIFECYCLE[6:]}
    finally:
        database.stop()
