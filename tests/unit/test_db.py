"""The store: migrations, durability settings, partners, certificates, agreements, acks, incidents.

Every test that takes ``database_url`` or ``migrated_database`` runs twice: on an SQLite
file and on the PostgreSQL server of ``GSEM_TEST_PG_URL`` (skipped with the reason when
there is none).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gsem.db import acks, incidents_read, model, partners
from gsem.db.connector import Database, SchemaOutOfDate
from gsem.errors import GsemError
from gsem.pki import fingerprint_sha256

NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


# -- schema and migrations -----------------------------------------------------------------


def test_upgrade_creates_exactly_the_model_tables(database_url: str) -> None:
    """Upgrading an empty database gives the model's tables: alembic finds no difference."""
    database = Database(database_url)
    try:
        database.upgrade()
        with database.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), model.metadata)
            tables = set(sa.inspect(conn).get_table_names())
        assert diff == []
        assert tables == set(model.metadata.tables) | {"alembic_version"}
        assert database.current_revision() == database.head_revision() == "0005_incident_entries"
    finally:
        database.stop()


def test_upgrade_twice_changes_nothing(database_url: str) -> None:
    """Running the upgrade on an up-to-date database is harmless and keeps the data."""
    database = Database(database_url)
    try:
        database.upgrade()
        database.run_sync(partners.add_partner, "ACME", "Acme")
        database.upgrade()
        assert [p.id for p in database.run_sync(partners.list_partners)] == ["ACME"]
    finally:
        database.stop()


def test_check_current_on_an_empty_database_names_the_upgrade_command(database_url: str) -> None:
    """A server on an empty database is told which command creates the tables."""
    database = Database(database_url)
    try:
        with pytest.raises(SchemaOutOfDate) as raised:
            database.check_current(data_dir="/srv/gsem")
        assert "gsem db upgrade --data-dir /srv/gsem" in str(raised.value)
        assert isinstance(raised.value, GsemError)
        database.upgrade()
        database.check_current(data_dir="/srv/gsem")
    finally:
        database.stop()


def test_check_current_on_a_newer_schema_says_to_run_the_newer_gsem(database_url: str) -> None:
    """A schema revision this gsem does not know is reported, not silently used."""
    database = Database(database_url)
    try:
        database.upgrade()
        database.run_sync(lambda conn: conn.execute(sa.text(
            "UPDATE alembic_version SET version_num = '0099_future'")))
        with pytest.raises(SchemaOutOfDate, match="0099_future.*newer gsem"):
            database.check_current()
    finally:
        database.stop()


def _pragmas(conn: sa.Connection) -> dict[str, object]:
    return {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "temp_store", "page_size")}


def test_sqlite_connections_are_durable_and_enforce_foreign_keys(sqlite_database_url: str) -> None:
    """Every SQLite connection reads back WAL, synchronous=FULL, foreign keys and a busy timeout,
    and keeps its temporary data (its statement journal) in memory; a new database has 8 KiB pages."""
    database = Database(sqlite_database_url)
    try:
        assert database.run_sync(_pragmas) == {
            "journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 10_000, "temp_store": 2,
            "page_size": 8192}
    finally:
        database.stop()


def test_an_existing_sqlite_database_keeps_its_page_size(tmp_path: Path) -> None:
    """A database made with SQLite's default 4 KiB pages (gsem before 8 KiB) is used as it is."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode = WAL")  # fixes the page size, as gsem's first connection did
    old.execute("CREATE TABLE made_before (x)")
    old.close()
    database = Database(f"sqlite:///{path}")
    try:
        database.upgrade()
        assert database.run_sync(_pragmas)["page_size"] == 4096
        database.run_sync(partners.add_partner, "ACME", "Acme")
        assert [p.id for p in database.run_sync(partners.list_partners)] == ["ACME"]
    finally:
        database.stop()


def test_a_failing_function_keeps_nothing(migrated_database: Database) -> None:
    """When the function raises, its transaction is rolled back and the error propagates."""
    def add_then_fail(conn: sa.Connection) -> None:
        partners.add_partner(conn, "ACME", "Acme")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        migrated_database.run_sync(add_then_fail)
    assert migrated_database.run_sync(partners.list_partners) == []


def test_foreign_keys_are_enforced(migrated_database: Database) -> None:
    """A certificate row for a partner that does not exist is refused by the database."""
    def orphan(conn: sa.Connection) -> None:
        conn.execute(model.partner_certs.insert().values(
            fingerprint="a" * 64, partner_id="NOBODY", subject="CN=x", issuer="CN=x", serial="1",
            valid_from=NOW, valid_until=NOW, pem="", added_at=NOW))

    with pytest.raises(sa.exc.IntegrityError):
        migrated_database.run_sync(orphan)


def test_an_unsupported_database_url_is_refused() -> None:
    """A URL of another database kind is refused with the kinds gsem supports."""
    with pytest.raises(GsemError, match="sqlite:///FILE and postgresql"):
        Database("mysql://gsem@localhost/gsem")


# -- partners ------------------------------------------------------------------------------


def test_add_list_and_show_partners(migrated_database: Database) -> None:
    """Added partners are listed by id and shown with their settings."""
    run = migrated_database.run_sync
    run(partners.add_partner, "GLOBEX", "Globex", delivery_mode="push", strict=True)
    run(partners.add_partner, "ACME", "Acme Corporation")
    assert [(p.id, p.name, p.enabled, p.strict, p.delivery_mode) for p in run(partners.list_partners)] == [
        ("ACME", "Acme Corporation", True, False, "pull"),
        ("GLOBEX", "Globex", True, True, "push"),
    ]
    detail = run(partners.get_partner, "GLOBEX")
    assert detail.partner.strict and detail.certs == () and detail.agreements == ()


def test_duplicate_partner_is_refused_with_its_existing_name(migrated_database: Database) -> None:
    """Adding a partner id twice fails and names the partner that has it."""
    migrated_database.run_sync(partners.add_partner, "ACME", "Acme Corporation")
    with pytest.raises(partners.DuplicatePartner, match="ACME exists already.*Acme Corporation"):
        migrated_database.run_sync(partners.add_partner, "ACME", "Other")


@pytest.mark.parametrize("bad", ["", "has space", "-dash", "x" * 65])
def test_bad_partner_ids_are_refused(migrated_database: Database, bad: str) -> None:
    """Partner ids are short and safe to print; anything else is refused with the rule."""
    with pytest.raises(partners.PartnerStoreError, match="letters, digits"):
        migrated_database.run_sync(partners.add_partner, bad, "Name")


def test_unknown_delivery_mode_is_refused(migrated_database: Database) -> None:
    """Only the four delivery modes of SPEC §7 are accepted."""
    with pytest.raises(partners.PartnerStoreError, match="pull, push, spool, adapter"):
        migrated_database.run_sync(partners.add_partner, "ACME", "Acme", delivery_mode="email")


def test_unknown_partner_lists_the_known_ones(migrated_database: Database) -> None:
    """Asking for a partner that does not exist names those that do."""
    migrated_database.run_sync(partners.add_partner, "ACME", "Acme")
    with pytest.raises(partners.UnknownPartner, match="no partner 'ACNE' .*known partners: ACME"):
        migrated_database.run_sync(partners.get_partner, "ACNE")


def test_disable_and_enable_partner(migrated_database: Database) -> None:
    """Disabling a partner shows in the list and in the trust snapshot; enabling undoes it."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    assert run(partners.disable_partner, "ACME").enabled is False
    assert run(partners.list_partners)[0].enabled is False
    assert run(partners.enable_partner, "ACME").enabled is True


# -- certificates --------------------------------------------------------------------------


def test_add_cert_defaults_to_the_certificates_own_validity(migrated_database: Database, make_cert) -> None:
    """A registered certificate is keyed by its SHA-256 fingerprint and accepted for its validity."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    not_before = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    not_after = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    pem = make_cert("acme-chs", not_before=not_before, not_after=not_after)
    cert = run(partners.add_cert, "ACME", pem)
    assert cert.fingerprint == fingerprint_sha256(pem)
    assert len(cert.fingerprint) == 64 and cert.fingerprint == cert.fingerprint.lower()
    assert (cert.valid_from, cert.valid_until) == (dt.datetime(2026, 1, 1), dt.datetime(2030, 1, 1))
    assert cert.subject == "CN=acme-chs" and cert.retired_at is None
    assert "BEGIN CERTIFICATE" in cert.pem
    assert [c.fingerprint for c in run(partners.get_partner, "ACME").certs] == [cert.fingerprint]


def test_add_cert_with_a_narrower_window(migrated_database: Database, make_cert) -> None:
    """--valid-from/--valid-until replace the certificate's own window (for rotation)."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    start, end = dt.datetime(2027, 2, 1), dt.datetime(2027, 3, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    cert = run(partners.add_cert, "ACME", make_cert("a"), valid_from=start, valid_until=end)
    assert (cert.valid_from, cert.valid_until) == (start, dt.datetime(2027, 3, 1, 10, 30))


def test_add_cert_refuses_an_empty_window(migrated_database: Database, make_cert) -> None:
    """A window that ends before it starts is refused with both times."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    with pytest.raises(partners.BadCertificate, match="2027-03-01 00:00:00 to 2027-02-01"):
        run(partners.add_cert, "ACME", make_cert("a"), valid_from=dt.datetime(2027, 3, 1),
            valid_until=dt.datetime(2027, 2, 1))


def test_the_same_certificate_twice_is_refused(migrated_database: Database, make_cert) -> None:
    """A certificate already registered (for any partner) is refused, naming its owner."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    run(partners.add_partner, "GLOBEX", "Globex")
    pem = make_cert("shared")
    run(partners.add_cert, "ACME", pem)
    with pytest.raises(partners.DuplicateCertificate, match=f"{fingerprint_sha256(pem)} is already registered for partner ACME"):
        run(partners.add_cert, "GLOBEX", pem)


@pytest.mark.parametrize("pem", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"])
def test_a_file_that_is_not_a_certificate_is_refused(migrated_database: Database, pem: bytes) -> None:
    """Anything but a PEM certificate is refused with what was expected."""
    migrated_database.run_sync(partners.add_partner, "ACME", "Acme")
    with pytest.raises(partners.BadCertificate, match="not a PEM certificate"):
        migrated_database.run_sync(partners.add_cert, "ACME", pem)


def test_a_chain_is_refused(migrated_database: Database, make_cert) -> None:
    """A file with several certificates is refused: which one identifies the partner is unclear."""
    migrated_database.run_sync(partners.add_partner, "ACME", "Acme")
    with pytest.raises(partners.BadCertificate, match="holds 2 certificates"):
        migrated_database.run_sync(partners.add_cert, "ACME", make_cert("a") + make_cert("b"))


def test_a_certificate_for_an_unknown_partner_is_refused(migrated_database: Database, make_cert) -> None:
    """Registering a certificate for a partner that does not exist tells how to add it."""
    with pytest.raises(partners.UnknownPartner, match="gsem partners add ID --name NAME"):
        migrated_database.run_sync(partners.add_cert, "ACME", make_cert("a"))


def test_cert_status_shows_expired_and_retired(migrated_database: Database, make_cert) -> None:
    """Listed certificates report whether they are valid, expired, not yet valid or retired."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    old = run(partners.add_cert, "ACME", make_cert("old", not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                                                  not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC)))
    current = run(partners.add_cert, "ACME", make_cert("current"))
    future = run(partners.add_cert, "ACME", make_cert("next"), valid_from=NOW + dt.timedelta(days=30))
    gone = run(partners.add_cert, "ACME", make_cert("gone"))
    run(partners.retire_cert, gone.fingerprint)
    status = {c.fingerprint: c.status() for c in run(partners.list_certs, "ACME")}
    assert status == {old.fingerprint: "expired", current.fingerprint: "valid",
                      future.fingerprint: "not-yet-valid", gone.fingerprint: "retired"}


def test_retire_accepts_colons_upper_case_and_a_unique_prefix(migrated_database: Database, make_cert) -> None:
    """A fingerprint as openssl prints it, or its first 8 digits, retires the certificate."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    one = run(partners.add_cert, "ACME", make_cert("one"))
    two = run(partners.add_cert, "ACME", make_cert("two"))
    openssl_style = ":".join(one.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
    assert run(partners.retire_cert, openssl_style).retired_at is not None
    assert run(partners.retire_cert, two.fingerprint[:8]).fingerprint == two.fingerprint


def test_retire_refuses_unknown_and_too_short_fingerprints(migrated_database: Database, make_cert) -> None:
    """An unknown fingerprint or a prefix under 8 digits is refused, not guessed."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    cert = run(partners.add_cert, "ACME", make_cert("one"))
    with pytest.raises(partners.UnknownCertificate, match="no registered certificate"):
        run(partners.retire_cert, "f" * 64 if not cert.fingerprint.startswith("f") else "e" * 64)
    with pytest.raises(partners.UnknownCertificate, match="at least 8 hex digits"):
        run(partners.retire_cert, cert.fingerprint[:7])


# -- trust ---------------------------------------------------------------------------------


def test_trust_snapshot_maps_fingerprints_to_partners(migrated_database: Database, make_cert) -> None:
    """The snapshot holds every certificate with its window, retirement and partner state."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    run(partners.add_partner, "GLOBEX", "Globex")
    acme = run(partners.add_cert, "ACME", make_cert("acme"))
    globex = run(partners.add_cert, "GLOBEX", make_cert("globex"))
    run(partners.disable_partner, "GLOBEX")
    snapshot = run(partners.trust_snapshot)
    assert set(snapshot) == {acme.fingerprint, globex.fingerprint}
    entry = snapshot[acme.fingerprint]
    assert (entry.partner_id, entry.valid_from, entry.valid_until, entry.retired_at, entry.partner_enabled) == (
        "ACME", acme.valid_from, acme.valid_until, None, True)
    assert entry.accepts(NOW)
    assert not snapshot[globex.fingerprint].accepts(NOW)
    assert not entry.accepts(acme.valid_until + dt.timedelta(seconds=1))


def test_trust_version_changes_with_every_partner_or_cert_change(migrated_database: Database, make_cert) -> None:
    """Adding, retiring and disabling each change the trust version; reading does not."""
    run = migrated_database.run_sync
    versions = [run(partners.trust_version)]

    def changed() -> bool:
        versions.append(run(partners.trust_version))
        return versions[-1] != versions[-2]

    run(partners.add_partner, "ACME", "Acme")
    assert changed()
    cert = run(partners.add_cert, "ACME", make_cert("acme"))
    assert changed()
    run(partners.list_certs)
    assert not changed()
    run(partners.retire_cert, cert.fingerprint)
    assert changed()
    run(partners.disable_partner, "ACME")
    assert changed()
    run(partners.enable_partner, "ACME")
    assert changed()


# -- agreements ----------------------------------------------------------------------------


def test_agreements_route_a_contract_to_its_provider(migrated_database: Database) -> None:
    """find_provider follows the agreement; tags after ';' in the ContractID are ignored."""
    run = migrated_database.run_sync
    for pid in ("ACME", "GLOBEX", "INITECH"):
        run(partners.add_partner, pid, pid.title())
    run(partners.add_agreement, "ACME", "GLOBEX", "C-1")
    run(partners.add_agreement, "ACME", "INITECH", "C-2")
    assert run(partners.find_provider, "ACME", "C-1") == "GLOBEX"
    assert run(partners.find_provider, "ACME", "C-2;CN=42;SN=X9") == "INITECH"
    assert run(partners.find_provider, "ACME", "C-3") is None
    assert run(partners.find_provider, "GLOBEX", "C-1") is None
    assert [(a.requester_id, a.provider_id, a.contract_id) for a in run(partners.list_agreements)] == [
        ("ACME", "GLOBEX", "C-1"), ("ACME", "INITECH", "C-2")]
    assert [a.contract_id for a in run(partners.list_agreements, "INITECH")] == ["C-2"]
    assert [a.contract_id for a in run(partners.get_partner, "GLOBEX").agreements] == ["C-1"]


def test_agreement_mistakes_are_refused_with_a_reason(migrated_database: Database) -> None:
    """Duplicate contracts, self-agreements, tagged ids and unknown partners are refused."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme")
    run(partners.add_partner, "GLOBEX", "Globex")
    run(partners.add_agreement, "ACME", "GLOBEX", "C-1")
    with pytest.raises(partners.DuplicateAgreement, match="ACME already passes contract 'C-1' to GLOBEX"):
        run(partners.add_agreement, "ACME", "GLOBEX", "C-1")
    with pytest.raises(partners.BadAgreement, match="with itself"):
        run(partners.add_agreement, "ACME", "ACME", "C-9")
    with pytest.raises(partners.BadAgreement, match="register 'C-2'"):
        run(partners.add_agreement, "ACME", "GLOBEX", "C-2;CN=1")
    with pytest.raises(partners.UnknownPartner, match="no partner 'NOPE'"):
        run(partners.add_agreement, "ACME", "NOPE", "C-3")


# -- acknowledgements ----------------------------------------------------------------------


@pytest.fixture
def ack_log(migrated_database: Database, store_rows) -> dict[str, str]:
    """Five acknowledgements an hour apart, oldest first; returns their ids by name."""
    t0 = NOW - dt.timedelta(hours=5)
    rows = {
        "request": dict(partner="ACME", transaction="Service_Request", requester_ref="R-1",
                        state_after="Beginning_State"),
        "missing": dict(partner="ACME", transaction="Service_Request", requester_ref="R-2", result="No",
                        http_status=422, error_codes=["missing-mandatory", "rule-violation"]),
        "entitle": dict(partner="GLOBEX", transaction="Entitlement", requester_ref="R-1",
                        provider_ref="P-1", state_after="Entitled"),
        "state": dict(partner="GLOBEX", transaction="Problem_Resolution", requester_ref="R-1",
                      result="No", http_status=409, error_codes=["not-allowed-in-state"]),
        "rule": dict(partner="ACME", transaction="Reject_Resolution", requester_ref="R-1", result="No",
                     http_status=422, error_codes=["rule-violation"]),
    }
    ids = {}
    for n, (name, values) in enumerate(rows.items()):
        ids[name] = migrated_database.run_sync(
            lambda conn, v=values, n=n: store_rows.ack(conn, created_at=t0 + dt.timedelta(hours=n), **v))[0]
    return ids


def _names(found: list[acks.AckRow], ids: dict[str, str]) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[a.ack_id] for a in found]


def test_list_acks_newest_first_with_every_field(migrated_database: Database, ack_log: dict[str, str]) -> None:
    """Without filters all acks come back newest first, error codes split into a tuple."""
    found = migrated_database.run_sync(acks.list_acks)
    assert _names(found, ack_log) == ["rule", "state", "entitle", "missing", "request"]
    missing = found[3]
    assert (missing.partner_id, missing.transaction_name, missing.requester_ref, missing.result,
            missing.http_status, missing.error_codes, missing.state_after) == (
        "ACME", "Service_Request", "R-2", "No", 422, ("missing-mandatory", "rule-violation"), None)
    assert found[2].provider_ref == "P-1"


@pytest.mark.parametrize(("filters", "expected"), [
    (dict(partner="GLOBEX"), ["state", "entitle"]),
    (dict(transaction="Service_Request"), ["missing", "request"]),
    (dict(requester_ref="R-2"), ["missing"]),
    (dict(result="No"), ["rule", "state", "missing"]),
    (dict(result="yes"), ["entitle", "request"]),
    (dict(error_code="rule-violation"), ["rule", "missing"]),
    (dict(error_code="missing-mandatory"), ["missing"]),
    (dict(error_code="rule"), []),
    (dict(error_code="%"), []),
    (dict(partner="ACME", result="No", error_code="rule-violation"), ["rule", "missing"]),
    (dict(limit=2), ["rule", "state"]),
    (dict(limit=2, oldest_first=True), ["request", "missing"]),
])
def test_list_acks_filters(migrated_database: Database, ack_log: dict[str, str], filters: dict, expected: list[str]) -> None:
    """Each filter keeps exactly the matching acknowledgements; an error code matches whole codes only."""
    assert _names(migrated_database.run_sync(acks.list_acks, **filters), ack_log) == expected


def test_list_acks_time_window_and_paging(migrated_database: Database, ack_log: dict[str, str]) -> None:
    """since is inclusive, until exclusive, aware times are converted, after_ack_id pages forward."""
    run = migrated_database.run_sync
    t0 = NOW - dt.timedelta(hours=5)
    assert _names(run(acks.list_acks, since=t0 + dt.timedelta(hours=1), until=t0 + dt.timedelta(hours=3)),
                  ack_log) == ["entitle", "missing"]
    aware = (t0 + dt.timedelta(hours=4)).replace(tzinfo=dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert _names(run(acks.list_acks, since=aware), ack_log) == ["rule"]
    assert _names(run(acks.list_acks, after_ack_id=ack_log["entitle"]), ack_log) == ["rule", "state"]


def test_get_ack_returns_the_document_sent(migrated_database: Database, ack_log: dict[str, str]) -> None:
    """One acknowledgement can be fetched with the XML that went to the partner."""
    row, document = migrated_database.run_sync(acks.get_ack, ack_log["request"])
    assert row.ack_id == ack_log["request"] and document == b"<ACKNOWLEDGEMENT/>"
    assert migrated_database.run_sync(acks.get_ack, "0" * 26) is None


# -- incidents -----------------------------------------------------------------------------


@pytest.fixture
def incident_story(migrated_database: Database, store_rows) -> int:
    """ACME's REQ-7 to GLOBEX: request, entitlement, one rejection, two deliveries."""
    run = migrated_database.run_sync
    for pid in ("ACME", "GLOBEX"):
        run(partners.add_partner, pid, pid.title())

    def story(conn: sa.Connection) -> int:
        incident = store_rows.incident(conn, requester_ref="REQ-7", provider_ref="G-7", state="Entitled")
        store_rows.incident(conn, requester_ref="REQ-8", state="Beginning_State")
        t0 = NOW - dt.timedelta(minutes=30)
        _, m1 = store_rows.ack(conn, partner="ACME", transaction="Service_Request", requester_ref="REQ-7",
                               state_before=None, state_after="Beginning_State", created_at=t0,
                               incident_id=incident)
        store_rows.ack(conn, partner="ACME", transaction="Confirm_Close", requester_ref="REQ-7",
                       result="No", http_status=409, error_codes=["not-allowed-in-state"],
                       state_before="Beginning_State", created_at=t0 + dt.timedelta(minutes=5),
                       incident_id=incident)
        _, m2 = store_rows.ack(conn, partner="GLOBEX", transaction="Entitlement", requester_ref="REQ-7",
                               state_before="Beginning_State", state_after="Entitled",
                               created_at=t0 + dt.timedelta(minutes=10), incident_id=incident)
        store_rows.delivery(conn, message_id=m1, incident_id=incident, recipient="GLOBEX",
                            state="delivered", attempts=1, receiver_ack=b"<ACKNOWLEDGEMENT/>")
        store_rows.delivery(conn, message_id=m2, incident_id=incident, recipient="ACME",
                            state="pending", attempts=3, last_error="connection refused")
        return incident

    return run(story)


def test_get_incident_gives_its_full_history(migrated_database: Database, incident_story: int) -> None:
    """An incident comes with its accepted transactions in order, its rejections and its deliveries."""
    detail = migrated_database.run_sync(incidents_read.get_incident, incident_story)
    i = detail.incident
    assert (i.requester_id, i.provider_id, i.requester_ref, i.provider_ref, i.state) == (
        "ACME", "GLOBEX", "REQ-7", "G-7", "Entitled")
    assert [(h.transaction_name, h.partner_id, h.state_before, h.state_after) for h in detail.history] == [
        ("Service_Request", "ACME", None, "Beginning_State"),
        ("Entitlement", "GLOBEX", "Beginning_State", "Entitled"),
    ]
    assert [(r.transaction_name, r.http_status, r.error_codes) for r in detail.rejections] == [
        ("Confirm_Close", 409, ("not-allowed-in-state",))]
    assert [(d.transaction_name, d.recipient_id, d.state, d.attempts, d.last_error, d.receiver_acknowledged)
            for d in detail.deliveries] == [
        ("Service_Request", "GLOBEX", "delivered", 1, None, True),
        ("Entitlement", "ACME", "pending", 3, "connection refused", False),
    ]
    assert detail.document == b"<SERVICE_INCIDENT/>"


def test_get_incident_by_requester_and_requester_id(migrated_database: Database, incident_story: int) -> None:
    """(requester, RequesterID) finds the same incident; an unknown one is a clear error."""
    detail = migrated_database.run_sync(incidents_read.get_incident, ("ACME", "REQ-7"))
    assert detail.incident.id == incident_story
    with pytest.raises(incidents_read.UnknownIncident, match="RequesterID 'REQ-9' from requester ACME"):
        migrated_database.run_sync(incidents_read.get_incident, ("ACME", "REQ-9"))
    with pytest.raises(incidents_read.UnknownIncident, match="no incident 999"):
        migrated_database.run_sync(incidents_read.get_incident, 999)


def test_list_incidents_filters(migrated_database: Database, incident_story: int) -> None:
    """Incidents are filtered by either party and by state."""
    run = migrated_database.run_sync
    assert sorted(i.requester_ref for i in run(incidents_read.list_incidents)) == ["REQ-7", "REQ-8"]
    assert [i.requester_ref for i in run(incidents_read.list_incidents, partner="GLOBEX", state="Entitled")] == ["REQ-7"]
    assert run(incidents_read.list_incidents, partner="INITECH") == []
    assert [i.id for i in run(incidents_read.list_incidents, requester_ref="REQ-7")] == [incident_story]
