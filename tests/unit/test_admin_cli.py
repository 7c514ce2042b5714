"""The operator commands, run in-process against a data directory with an SQLite database."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gsem import admin_cli
from gsem.cli import main
from gsem.db.connector import Database
from gsem.pki import fingerprint_sha256

NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)

Gsem = Callable[..., tuple[int, str, str]]


@pytest.fixture
def gsem(run_gsem: Gsem) -> Gsem:
    """:func:`run_gsem` on an empty data directory (tests/unit/conftest.py)."""
    return run_gsem


@pytest.fixture
def ready(gsem: Gsem) -> Gsem:
    """:func:`gsem` on an upgraded database with partners ACME and GLOBEX."""
    assert gsem("db", "upgrade")[0] == 0
    assert gsem("partners", "add", "ACME", "--name", "Acme Corporation")[0] == 0
    assert gsem("partners", "add", "GLOBEX", "--name", "Globex", "--delivery-mode", "push")[0] == 0
    return gsem


@pytest.fixture
def database(data_dir: Path, ready: Gsem) -> Iterator[Database]:
    """The data directory's database, to write rows the CLI then reads."""
    db = Database(f"sqlite:///{data_dir / 'gsem.db'}")
    yield db
    db.stop()


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- the database ----------------------------------------------------------------------


def test_commands_refuse_an_empty_database_and_name_the_fix(gsem: Gsem, data_dir: Path) -> None:
    """Before 'gsem db upgrade', every command fails with the exact command that fixes it."""
    code, out, err = gsem("partners", "list")
    assert code == 2 and out == ""
    assert f"create them with 'gsem db upgrade --data-dir {data_dir}'" in err


def test_db_upgrade_and_current(gsem: Gsem, data_dir: Path) -> None:
    """'db current' reports a missing schema (exit 1) until 'db upgrade' creates it."""
    code, out, _ = gsem("db", "current")
    assert code == 1 and "none (no gsem tables)" in out and f"--data-dir {data_dir}" in out
    code, out, _ = gsem("db", "upgrade")
    assert code == 0 and "upgraded from empty to revision 0005_incident_entries" in out
    assert "up to date (revision 0005_incident_entries)" in gsem("db", "upgrade")[1]
    assert gsem("db", "current") == (0, "revision 0005_incident_entries (up to date)\n", "")


def test_data_dir_may_follow_the_sub_command(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'gsem db upgrade --data-dir DIR', as the error message suggests, works too."""
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    assert "revision 0005_incident_entries" in capsys.readouterr().out


def test_a_missing_configuration_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A data directory without gsem.toml gets the configuration error, not a traceback."""
    assert main(["--data-dir", str(tmp_path / "nowhere"), "acks"]) == 2
    assert "gsem init" in capsys.readouterr().err


# -- partners --------------------------------------------------------------------------


def test_partners_add_list_show_disable(ready: Gsem) -> None:
    """Partners show up in the list and in 'show'; a disabled one says so."""
    code, out, _ = ready("partners", "add", "INITECH", "--name", "Initech", "--strict")
    assert code == 0 and "added partner INITECH (Initech), delivery pull, strict" in out
    code, out, _ = ready("partners", "list")
    lines = _lines(out)
    assert lines[0].split() == ["ID", "NAME", "ENABLED", "STRICT", "DELIVERY", "VALID", "CERTS", "ADDED"]
    assert lines[1].split()[:6] == ["ACME", "Acme", "Corporation", "yes", "no", "pull"]
    assert lines[2].split()[:5] == ["GLOBEX", "Globex", "yes", "no", "push"]
    assert lines[3].split()[:4] == ["INITECH", "Initech", "yes", "yes"]
    assert ready("partners", "disable", "GLOBEX")[1].startswith("disabled partner GLOBEX")
    out = ready("partners", "show", "GLOBEX")[1]
    assert "enabled   no (connections refused)" in out and "delivery  push" in out
    assert "certificates: none (it cannot connect)" in out
    assert _lines(ready("partners", "list")[1])[2].split()[:3] == ["GLOBEX", "Globex", "no"]


def test_unknown_partner_errors_name_the_known_partners(ready: Gsem, tmp_path: Path, make_cert) -> None:
    """Every command given an unknown partner says so and lists the partners that exist."""
    cert = tmp_path / "c.pem"
    cert.write_bytes(make_cert("x"))
    for argv in (["partners", "show", "NOPE"], ["partners", "disable", "NOPE"],
                 ["partners", "certs", "add", "NOPE", str(cert)], ["partners", "certs", "list", "NOPE"],
                 ["agreements", "add", "ACME", "NOPE", "C-1"]):
        code, out, err = ready(*argv)
        assert code == 2 and out == ""
        assert err == ("gsem: no partner 'NOPE' (known partners: ACME, GLOBEX); "
                       "add one with 'gsem partners add ID --name NAME'\n"), argv


def test_duplicate_partner_is_refused(ready: Gsem) -> None:
    """Adding an existing id fails with the name it already has."""
    assert ready("partners", "add", "ACME", "--name", "Again") == (
        2, "", "gsem: partner ACME exists already (named 'Acme Corporation')\n")


# -- certificates ------------------------------------------------------------------------


def test_certs_add_list_retire(ready: Gsem, tmp_path: Path, make_cert) -> None:
    """A certificate is registered, listed with its expiry and status, then retired by prefix."""
    current = tmp_path / "acme.pem"
    current.write_bytes(make_cert("acme-chs", not_after=dt.datetime(2031, 6, 30, tzinfo=dt.UTC)))
    old = tmp_path / "old.pem"
    old.write_bytes(make_cert("acme-old", not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                              not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC)))
    fingerprint = fingerprint_sha256(current.read_bytes())

    code, out, err = ready("partners", "certs", "add", "ACME", str(current))
    assert code == 0 and err == ""
    assert f"registered certificate {fingerprint} for partner ACME" in out
    assert "to 2031-06-30 00:00:00 UTC" in out
    code, out, err = ready("partners", "certs", "add", "ACME", str(old))
    assert code == 0 and "note: the certificate is expired now" in err

    lines = _lines(ready("partners", "certs", "list")[1])
    assert lines[0].split() == ["PARTNER", "FINGERPRINT", "VALID", "FROM", "VALID", "UNTIL", "STATUS", "SUBJECT"]
    assert lines[1].split()[:2] == ["ACME", fingerprint[:16]]
    assert "2031-06-30 00:00" in lines[1] and "valid" in lines[1] and "CN=acme-chs" in lines[1]
    assert "2021-01-01 00:00" in lines[2] and "expired" in lines[2]
    assert all(len(line) <= 100 for line in lines)

    before = dt.datetime.now(dt.UTC)
    code, out, _ = ready("partners", "certs", "retire", fingerprint[:12])
    after = dt.datetime.now(dt.UTC)
    assert code == 0 and f"retired certificate {fingerprint} of partner ACME" in out
    # The day it was retired (a run across midnight may see either side of it).
    listed = _lines(ready("partners", "certs", "list", "ACME")[1])[1]
    assert f"retired {before:%Y-%m-%d}" in listed or f"retired {after:%Y-%m-%d}" in listed
    assert f"{fingerprint}  retired" in ready("partners", "show", "ACME")[1]
    assert ready("partners", "list")[1].splitlines()[1].split()[6] == "0"  # "Acme Corporation": no valid cert left


def test_certs_add_with_a_window(ready: Gsem, tmp_path: Path, make_cert) -> None:
    """--valid-from and --valid-until (UTC dates or ISO times) narrow the accepted window."""
    cert = tmp_path / "c.pem"
    cert.write_bytes(make_cert("x"))
    code, out, _ = ready("partners", "certs", "add", "ACME", str(cert), "--valid-from", "2026-12-01",
                         "--valid-until", "2027-01-31T18:00:00+01:00")
    assert code == 0 and "accepted 2026-12-01 00:00:00 to 2027-01-31 17:00:00 UTC" in out


def test_certs_add_refuses_a_file_that_is_not_a_certificate(ready: Gsem, tmp_path: Path) -> None:
    """A key or garbage instead of a certificate is refused, naming the file."""
    bad = tmp_path / "key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    code, out, err = ready("partners", "certs", "add", "ACME", str(bad))
    assert code == 2 and out == ""
    assert err.startswith(f"gsem: {bad}: not a PEM certificate")
    code, _, err = ready("partners", "certs", "add", "ACME", str(tmp_path / "missing.pem"))
    assert code == 2 and "cannot read" in err and "No such file" in err


def test_certs_retire_unknown_fingerprint(ready: Gsem) -> None:
    """Retiring a fingerprint nobody has is an error pointing at the list."""
    code, _, err = ready("partners", "certs", "retire", "deadbeefdeadbeef")
    assert code == 2 and "no registered certificate has fingerprint deadbeefdeadbeef" in err


# -- agreements --------------------------------------------------------------------------


def test_agreements_add_and_list(ready: Gsem) -> None:
    """An agreement is added, listed, shown on both partners and refused twice."""
    code, out, _ = ready("agreements", "add", "ACME", "GLOBEX", "CONTRACT-42")
    assert code == 0 and out == "added agreement: ACME may pass calls to GLOBEX under contract CONTRACT-42\n"
    lines = _lines(ready("agreements", "list")[1])
    assert lines[0].split() == ["REQUESTER", "PROVIDER", "CONTRACT", "ADDED"]
    assert lines[1].split()[:3] == ["ACME", "GLOBEX", "CONTRACT-42"]
    assert "ACME -> GLOBEX  contract CONTRACT-42" in ready("partners", "show", "GLOBEX")[1]
    code, _, err = ready("agreements", "add", "ACME", "GLOBEX", "CONTRACT-42")
    assert code == 2 and "already passes contract 'CONTRACT-42' to GLOBEX" in err
    assert ready("agreements", "list", "--partner", "GLOBEX")[1] == ready("agreements", "list")[1]


# -- acknowledgements ------------------------------------------------------------------


@pytest.fixture
def ack_log(database: Database, store_rows) -> list[str]:
    """Four acknowledgements ten minutes apart (the last one 10 minutes ago); their ids, oldest first."""
    rows = [
        dict(partner="ACME", transaction="Service_Request", requester_ref="REQ-1", state_after="Beginning_State"),
        dict(partner="ACME", transaction="Provide_Problem_Information", requester_ref="REQ-2026-000042",
             result="No", http_status=422, error_codes=["missing-mandatory", "rule-violation"]),
        dict(partner="GLOBEX", transaction="Entitlement", requester_ref="REQ-1", provider_ref="G-1",
             state_after="Entitled"),
        dict(partner="GLOBEX", transaction="Problem_Resolution", requester_ref="REQ-1", result="No",
             http_status=409, error_codes=["not-allowed-in-state"], state_after="Entitled"),
    ]
    start = NOW - dt.timedelta(minutes=40)
    return [database.run_sync(lambda conn, n=n, v=v: store_rows.ack(
        conn, created_at=start + dt.timedelta(minutes=10 * n), **v))[0] for n, v in enumerate(rows)]


def test_acks_table_newest_first_in_100_columns(ready: Gsem, ack_log: list[str]) -> None:
    """The table shows every column, newest first, a rejection's codes below it, within 100 columns."""
    code, out, _ = ready("acks")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "ACK", "ID", "PARTNER", "TRANSACTION", "REQUESTERID", "OK", "HTTP",
                                "STATE", "AFTER"]
    assert all(len(line) <= 100 for line in lines)
    assert [line.split()[1] for line in lines if line[:2].isdigit() and ":" in line[:8]] == ack_log[::-1]
    rejected = next(i for i, line in enumerate(lines) if ack_log[1] in line)
    cells = lines[rejected].split()
    assert cells[2] == "ACME" and cells[3].startswith("Provide_Proble")
    assert cells[5:7] == ["No", "422"]
    assert lines[rejected + 1].strip() == "errors: missing-mandatory, rule-violation"
    assert f"{(NOW - dt.timedelta(minutes=10)):%Y-%m-%d} (UTC)" in lines


def test_acks_filters(ready: Gsem, ack_log: list[str]) -> None:
    """--partner, --transaction, --requester-id, --result, --code, --since, --limit each narrow the list."""
    def ids(*argv: str) -> list[str]:
        code, out, _ = ready("acks", "--format", "json", *argv)
        assert code == 0
        return [a["ack_id"] for a in json.loads(out)]

    assert ids("--partner", "GLOBEX") == [ack_log[3], ack_log[2]]
    assert ids("--transaction", "Entitlement") == [ack_log[2]]
    assert ids("--requester-id", "REQ-2026-000042") == [ack_log[1]]
    assert ids("--result", "no") == [ack_log[3], ack_log[1]]
    assert ids("--code", "rule-violation") == [ack_log[1]]
    # Absolute times: the rows are placed relative to NOW, taken when this module was
    # imported, which may be minutes before this test runs in a long suite.
    assert ids("--since", (NOW - dt.timedelta(minutes=25)).isoformat()) == [ack_log[3], ack_log[2]]
    assert ids("--since", "1d") == ack_log[::-1]  # relative to the real now
    assert ids("--until", (NOW - dt.timedelta(minutes=25)).isoformat()) == [ack_log[1], ack_log[0]]
    assert ids("--limit", "1") == [ack_log[3]]
    assert ids("--partner", "INITECH") == []
    assert ready("acks", "--partner", "INITECH")[1] == "no acknowledgements match\n"


def test_acks_csv_is_parseable(ready: Gsem, ack_log: list[str]) -> None:
    """--format csv has a header and one row per acknowledgement, codes space-separated."""
    code, out, _ = ready("acks", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["ack_id"] for r in rows] == ack_log[::-1]
    assert rows[2] == {
        "time": (NOW - dt.timedelta(minutes=30)).isoformat() + "Z", "ack_id": ack_log[1], "partner": "ACME",
        "transaction": "Provide_Problem_Information", "requester_id": "REQ-2026-000042", "result": "No",
        "http_status": "422", "error_codes": "missing-mandatory rule-violation", "state_after": "",
        "provider_id": "", "delivery_id": "", "delivery_state": "", "delivered_at": "", "receiver_ack": ""}


def test_acks_json_is_parseable(ready: Gsem, ack_log: list[str]) -> None:
    """--format json is one array of objects with typed fields."""
    code, out, _ = ready("acks", "--format", "json", "--partner", "GLOBEX")
    assert code == 0
    records = json.loads(out)
    assert records[1] == {
        "time": (NOW - dt.timedelta(minutes=20)).isoformat() + "Z", "ack_id": ack_log[2], "partner": "GLOBEX",
        "transaction": "Entitlement", "requester_id": "REQ-1", "result": "Yes", "http_status": 200,
        "error_codes": [], "state_after": "Entitled", "provider_id": "G-1", "delivery_id": None,
        "delivery_state": None, "delivered_at": None, "receiver_ack": None}


def test_acks_bad_time_is_a_usage_error(ready: Gsem, capsys: pytest.CaptureFixture[str]) -> None:
    """A --since that is not a time fails before touching the database, saying what is accepted."""
    with pytest.raises(SystemExit) as exited:
        ready("acks", "--since", "yesterday")
    assert exited.value.code == 2
    assert "'yesterday' is not a time" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_acks_follow_prints_new_ones_as_they_arrive(ready: Gsem, ack_log: list[str], database: Database,
                                                    store_rows, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """--follow prints the latest ones oldest first, then each new one once, until Ctrl-C (exit 0)."""
    arrived: list[str] = []

    def sleep(seconds: float) -> None:
        assert seconds == admin_cli.FOLLOW_INTERVAL
        if len(arrived) == 2:
            raise KeyboardInterrupt
        arrived.append(database.run_sync(lambda conn: store_rows.ack(
            conn, partner="GLOBEX", transaction="Accept_Problem", requester_ref="REQ-1",
            state_after="Open_Provider"))[0])

    monkeypatch.setattr(admin_cli, "_sleep", sleep)
    code, out, _ = ready("acks", "--follow", "--limit", "2", "--partner", "GLOBEX", "--format", fmt)
    assert code == 0
    expected = [ack_log[2], ack_log[3], *arrived]
    if fmt == "json":
        assert [json.loads(line)["ack_id"] for line in out.splitlines()] == expected
    elif fmt == "csv":
        assert [r["ack_id"] for r in csv.DictReader(io.StringIO(out))] == expected
    else:
        assert [w for line in out.splitlines() for w in line.split() if len(w) == 26] == expected
        assert out.splitlines()[0].startswith("TIME")


# -- incidents -------------------------------------------------------------------------


@pytest.fixture
def incident(database: Database, store_rows) -> int:
    """ACME's REQ-7 with GLOBEX: requested, entitled, one rejection, a pending delivery."""
    def story(conn: sa.Connection) -> int:
        incident_id = store_rows.incident(conn, requester_ref="REQ-7", provider_ref="G-7", state="Entitled")
        t0 = NOW - dt.timedelta(minutes=30)
        store_rows.ack(conn, partner="ACME", transaction="Service_Request", requester_ref="REQ-7",
                       state_after="Beginning_State", created_at=t0, incident_id=incident_id)
        store_rows.ack(conn, partner="ACME", transaction="Confirm_Close", requester_ref="REQ-7", result="No",
                       http_status=409, error_codes=["not-allowed-in-state"], state_before="Beginning_State",
                       created_at=t0 + dt.timedelta(minutes=1), incident_id=incident_id)
        _, message = store_rows.ack(conn, partner="GLOBEX", transaction="Entitlement", requester_ref="REQ-7",
                                    state_before="Beginning_State", state_after="Entitled",
                                    created_at=t0 + dt.timedelta(minutes=2), incident_id=incident_id)
        store_rows.delivery(conn, message_id=message, incident_id=incident_id, recipient="ACME",
                            state="pending", attempts=2, last_error="connection refused")
        return incident_id

    return database.run_sync(story)


def test_incidents_list(ready: Gsem, incident: int) -> None:
    """The list shows each incident's parties, ids and state, and filters by partner and state."""
    lines = _lines(ready("incidents", "list")[1])
    assert lines[0].split()[:6] == ["ID", "REQUESTER", "REQUESTERID", "PROVIDER", "PROVIDERID", "STATE"]
    assert lines[1].split()[:6] == [str(incident), "ACME", "REQ-7", "GLOBEX", "G-7", "Entitled"]
    assert ready("incidents", "list", "--partner", "GLOBEX", "--state", "Entitled")[1] == ready("incidents", "list")[1]
    assert ready("incidents", "list", "--state", "Closed")[1] == "no incidents match\n"


def test_incidents_show_prints_the_full_history(ready: Gsem, incident: int) -> None:
    """'show' prints the state, each transaction with its state change, rejections and deliveries."""
    code, out, _ = ready("incidents", "show", str(incident))
    assert code == 0
    assert out.startswith(f"incident {incident}: Entitled\n")
    assert "requester  ACME, RequesterID REQ-7" in out and "provider   GLOBEX, ProviderID G-7" in out
    assert "history: 2 accepted transaction(s), oldest first" in out
    assert out.index("Service_Request from ACME") < out.index("Entitlement from GLOBEX")
    assert "(new) -> Beginning_State" in out and "Beginning_State -> Entitled" in out
    assert "Confirm_Close from ACME" in out and "HTTP 409 not-allowed-in-state" in out
    assert "Entitlement to ACME: pending, 2 attempt(s), no receiver ack yet" in out
    assert "last error: connection refused" in out
    assert "<SERVICE_INCIDENT/>" not in out
    assert "<SERVICE_INCIDENT/>" in ready("incidents", "show", str(incident), "--document")[1]
    assert ready("incidents", "show", "--requester", "ACME", "--requester-id", "REQ-7")[1] == out


def test_incidents_show_errors(ready: Gsem, incident: int) -> None:
    """An unknown incident, or no way to name one, is explained."""
    assert ready("incidents", "show", "999") == (2, "", "gsem: no incident 999; see 'gsem incidents list'\n")
    code, _, err = ready("incidents", "show", "--requester", "ACME", "--requester-id", "NOPE")
    assert code == 2 and "no incident with RequesterID 'NOPE' from requester ACME" in err
    code, _, err = ready("incidents", "show")
    assert code == 2 and "--requester P --requester-id R" in err


# -- help --------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "words"), [
    (["acks"], ["--follow", "--format", "newest first", "Ctrl-C", "--requester-id", "--code"]),
    (["partners", "certs", "add"], ["--valid-from", "notBefore", "UTC"]),
    (["partners", "certs", "retire"], ["prefix", "colons"]),
    (["incidents", "show"], ["--requester", "history"]),
    (["db", "upgrade"], ["migration"]),
    (["agreements", "add"], ["CONTRACT_ID", "ContractID"]),
])
def test_every_command_explains_itself(argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--help of each command describes what it does and its options."""
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text
