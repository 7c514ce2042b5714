"""The delivery commands, and the three acknowledgements in 'acks' and 'incidents show', run in-process."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gsem.cli import main
from gsem.db import deliveries, model
from gsem.db.connector import Database

NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
T0 = NOW - dt.timedelta(minutes=30)
LONG_ERROR = ("connection refused by chs.globex.example:443 (TLS handshake did not complete "
              "within 10 s; the partner's endpoint may be down for maintenance)")

Gsem = Callable[..., tuple[int, str, str]]


def _at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.fixture
def gsem(run_gsem: Gsem, monkeypatch: pytest.MonkeyPatch) -> Gsem:
    """:func:`run_gsem` on an upgraded database with ACME (pull) and GLOBEX (push); the operator is alice."""
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("USER", "alice")
    assert run_gsem("db", "upgrade")[0] == 0
    assert run_gsem("partners", "add", "ACME", "--name", "Acme")[0] == 0
    assert run_gsem("partners", "add", "GLOBEX", "--name", "Globex", "--delivery-mode", "push")[0] == 0
    return run_gsem


@pytest.fixture
def database(data_dir: Path, gsem: Gsem) -> Iterator[Database]:
    """The data directory's database, to write what the delivery service would."""
    db = Database(f"sqlite:///{data_dir / 'gsem.db'}")
    yield db
    db.stop()


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def story(database: Database, store_rows) -> dict[str, int]:
    """Deliveries as the service leaves them; their ids (and incidents') by name.

    REQ-7: the Service_Request was acknowledged by GLOBEX; ACME said No to the Entitlement
    (dead); the next transaction waits behind it.  REQ-8: its request keeps failing to
    connect.  One rejected message has no delivery.
    """
    def write(conn: sa.Connection) -> dict[str, int]:
        ids: dict[str, int] = {}
        ids["req7"] = store_rows.incident(conn, requester_ref="REQ-7", provider_ref="G-7", state="Entitled")
        ids["req8"] = store_rows.incident(conn, requester_ref="REQ-8")
        for name, incident, sender, to, transaction, minute in [
            ("requested", "req7", "ACME", "GLOBEX", "Service_Request", 0),
            ("entitled", "req7", "GLOBEX", "ACME", "Entitlement", 1),
            ("waiting", "req7", "ACME", "GLOBEX", "Provide_Problem_Information", 2),
            ("failing", "req8", "ACME", "GLOBEX", "Service_Request", 3),
        ]:
            ref = "REQ-7" if incident == "req7" else "REQ-8"
            _, message = store_rows.ack(conn, partner=sender, transaction=transaction, requester_ref=ref,
                                        state_after="Entitled", created_at=_at(minute),
                                        incident_id=ids[incident])
            ids[name] = conn.execute(model.deliveries.insert().values(
                message_id=message, incident_id=ids[incident], recipient_id=to, state="pending",
                transaction_name=transaction, requester_ref=ref, document=f"<SERVICE_INCIDENT>{name}</SERVICE_INCIDENT>".encode(),
                attempts=0, next_attempt_at=_at(minute), created_at=_at(minute), updated_at=_at(minute),
            )).inserted_primary_key[0]
        store_rows.ack(conn, partner="ACME", transaction="Confirm_Close", requester_ref="REQ-7", result="No",
                       http_status=409, error_codes=["not-allowed-in-state"], created_at=_at(4),
                       incident_id=ids["req7"])

        deliveries.claim_due(conn, owner="node-a", now=_at(5), lease_seconds=30)
        deliveries.record_attempt(conn, ids["requested"], owner="node-a", started_at=_at(5), finished_at=_at(5),
                                  outcome="acknowledged", http_status=200,
                                  receiver_ack=b"<ACKNOWLEDGEMENT><Acknowledge>Yes</Acknowledge></ACKNOWLEDGEMENT>")
        deliveries.record_attempt(conn, ids["failing"], owner="node-a", started_at=_at(5), finished_at=_at(5),
                                  outcome="transient", error=LONG_ERROR, next_attempt_at=_at(40))
        deliveries.mailbox_next(conn, "ACME", now=_at(6), visibility_timeout=60)
        deliveries.mailbox_ack(conn, "ACME", ids["entitled"], now=_at(7), acknowledged=False,
                               receiver_ack=b"<ACKNOWLEDGEMENT><Acknowledge>No</Acknowledge></ACKNOWLEDGEMENT>",
                               error="rule-violation: ContactPerson is required")
        return ids

    return database.run_sync(write)


def _state(database: Database, delivery_id: int) -> str:
    return database.run_sync(deliveries.get_delivery, delivery_id).delivery.state


# -- gsem deliveries list / dead -------------------------------------------------------------


def test_deliveries_list_table(gsem: Gsem, story: dict[str, int]) -> None:
    """The table shows each delivery newest first within 100 columns, long errors cut short."""
    code, out, _ = gsem("deliveries", "list")
    lines = _lines(out)
    assert code == 0 and all(len(line) <= 100 for line in lines)
    assert lines[0].split() == ["ID", "INCIDENT", "TRANSACTION", "TO", "STATE", "TRIES", "NEXT", "ATTEMPT",
                                "LAST", "ERROR"]
    assert [line.split()[0] for line in lines[1:]] == [
        str(story[n]) for n in ("failing", "waiting", "entitled", "requested")]
    failing = lines[1].split()
    assert failing[1:6] == [f"{story['req8']}/REQ-8", "Service_Request", "GLOBEX", "pending", "1"]
    assert f"{_at(40):%Y-%m-%d %H:%M}" in lines[1]
    assert "connection refused" in lines[1] and lines[1].endswith("…")
    assert lines[3].split()[3:6] == ["ACME", "dead", "1"] and "rule-violation" in lines[3]
    assert lines[4].split()[4] == "acknowledged"


def test_deliveries_list_filters_and_formats(gsem: Gsem, story: dict[str, int]) -> None:
    """--state, --partner and --incident narrow the list; JSON and CSV carry every field in full."""
    def ids(*argv: str) -> list[int]:
        code, out, _ = gsem("deliveries", "list", "--format", "json", *argv)
        assert code == 0
        return [d["id"] for d in json.loads(out)]

    assert ids("--state", "pending") == [story["failing"], story["waiting"]]
    assert ids("--partner", "ACME") == [story["entitled"]]
    assert ids("--incident", str(story["req8"])) == [story["failing"]]
    assert ids("--partner", "GLOBEX", "--limit", "1") == [story["failing"]]
    assert gsem("deliveries", "list", "--state", "sent") == (0, "no deliveries match\n", "")
    [dead] = json.loads(gsem("deliveries", "list", "--format", "json", "--state", "dead")[1])
    assert dead == {
        "id": story["entitled"], "incident_id": story["req7"], "requester_id": "REQ-7",
        "transaction": "Entitlement", "recipient": "ACME", "state": "dead", "attempts": 1,
        "next_attempt_at": None, "last_error": "rule-violation: ContactPerson is required",
        "message_id": dead["message_id"], "created_at": _at(1).isoformat() + "Z",
        "updated_at": _at(7).isoformat() + "Z", "delivered_at": _at(6).isoformat() + "Z",
        "acknowledged_at": None, "receiver_ack": "No", "replay_of": None, "lease_owner": None,
        "lease_until": None}
    rows = list(csv.DictReader(io.StringIO(gsem("deliveries", "list", "--format", "csv")[1])))
    assert [int(r["id"]) for r in rows] == [story[n] for n in ("failing", "waiting", "entitled", "requested")]
    assert rows[0]["last_error"] == LONG_ERROR and rows[0]["next_attempt_at"] == _at(40).isoformat() + "Z"
    assert (rows[3]["state"], rows[3]["receiver_ack"], rows[3]["acknowledged_at"]) == (
        "acknowledged", "Yes", _at(5).isoformat() + "Z")


def test_deliveries_dead_lists_dead_letters_and_what_to_do(gsem: Gsem, story: dict[str, int]) -> None:
    """'dead' lists only dead deliveries and says how to replay or discard them."""
    code, out, _ = gsem("deliveries", "dead")
    lines = _lines(out)
    assert code == 0 and [line.split()[0] for line in lines[1:-1]] == [str(story["entitled"])]
    assert "gsem deliveries replay ID… --reason TEXT" in lines[-1]
    assert gsem("deliveries", "dead", "--format", "json")[1] == gsem(
        "deliveries", "list", "--state", "dead", "--format", "json")[1]
    assert gsem("deliveries", "dead", "--partner", "GLOBEX") == (0, "no dead deliveries\n", "")


# -- gsem deliveries show --------------------------------------------------------------------


def test_deliveries_show_tells_the_whole_story(gsem: Gsem, story: dict[str, int]) -> None:
    """'show' prints the delivery, every attempt, the receiver's acknowledgement and the audit trail."""
    code, out, _ = gsem("deliveries", "show", str(story["entitled"]))
    assert code == 0
    assert out.startswith(f"delivery {story['entitled']}: dead\n")
    assert f"incident      {story['req7']}, RequesterID REQ-7" in out
    assert "transaction   Entitlement (message" in out and "recipient     ACME (pull)" in out
    assert f"delivered     {_at(6):%Y-%m-%d %H:%M:%S} UTC" in out
    assert "receiver      No (Acknowledge=No)" in out
    assert "last error    rule-violation: ContactPerson is required" in out
    assert "attempts: 2" in out and "1. " in out and "mailbox  accepted" in out and "mailbox  permanent" in out
    assert "error: rule-violation: ContactPerson is required" in out
    assert "the receiver's acknowledgement:\n<ACKNOWLEDGEMENT><Acknowledge>No</Acknowledge></ACKNOWLEDGEMENT>" in out
    assert "audit trail: none" in out
    assert "<SERVICE_INCIDENT>" not in out
    assert "<SERVICE_INCIDENT>entitled</SERVICE_INCIDENT>" in gsem(
        "deliveries", "show", str(story["entitled"]), "--document")[1]

    out = gsem("deliveries", "show", str(story["failing"]))[1]
    assert f"next attempt  {_at(40):%Y-%m-%d %H:%M:%S} UTC" in out
    assert "node-a  transient" in out and f"error: {LONG_ERROR}" in out
    assert "receiver      — (no acknowledgement yet)" in out and "delivered     not yet" in out
    out = gsem("deliveries", "show", str(story["requested"]))[1]
    assert f"receiver      Yes, {_at(5):%Y-%m-%d %H:%M:%S} UTC" in out and "node-a  acknowledged  HTTP 200" in out
    assert gsem("deliveries", "show", "999") == (2, "", "gsem: no delivery 999; see 'gsem deliveries list'\n")


# -- replay and discard ------------------------------------------------------------------------


def test_replay_is_printed_audited_and_linked_both_ways(gsem: Gsem, story: dict[str, int],
                                                         database: Database) -> None:
    """Replaying prints the new id; both deliveries show the link, the old one the audit entry."""
    old = story["entitled"]
    code, out, err = gsem("deliveries", "replay", str(old), "--reason", "ACME added the contact field")
    assert code == 0 and err == ""
    new = int(out.split()[-1])
    assert out == f"replayed {old} as {new}\n"
    shown = gsem("deliveries", "show", str(old))[1]
    assert shown.startswith(f"delivery {old}: replayed\n") and f"replayed as   delivery {new}" in shown
    assert f"replay by alice -> delivery {new}: ACME added the contact field" in shown
    shown = gsem("deliveries", "show", str(new))[1]
    assert shown.startswith(f"delivery {new}: pending\n")
    assert f"replay of     delivery {old}, by alice at " in shown and "attempts: 0" in shown
    assert f"#{new} Entitlement to ACME (replay of #{old}): pending" in gsem(
        "incidents", "show", str(story["req7"]))[1]
    assert database.run_sync(deliveries.mailbox_next, "ACME", now=NOW, visibility_timeout=60).id == new


def test_replay_refuses_and_changes_nothing(gsem: Gsem, story: dict[str, int], database: Database) -> None:
    """One delivery that is not dead refuses the whole replay, naming it and its state."""
    code, out, err = gsem("deliveries", "replay", str(story["entitled"]), str(story["requested"]),
                          "--reason", "try again")
    assert (code, out) == (2, "")
    assert err == (f"gsem: cannot replay: delivery {story['requested']} is acknowledged (only dead or "
                   "discarded deliveries can be replayed); nothing was changed\n")
    assert _state(database, story["entitled"]) == "dead"
    assert "audit trail: none" in gsem("deliveries", "show", str(story["entitled"]))[1]


def test_discard_needs_a_reason_and_records_who(gsem: Gsem, story: dict[str, int], database: Database,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Discarding without a reason is refused; with one it is audited under the sudo user."""
    with pytest.raises(SystemExit) as exited:
        gsem("deliveries", "discard", str(story["entitled"]))
    assert exited.value.code == 2 and "--reason" in capsys.readouterr().err
    code, _, err = gsem("deliveries", "discard", str(story["entitled"]), "--reason", " ")
    assert code == 2 and "say why you discard" in err
    monkeypatch.setenv("SUDO_USER", "bob")
    code, out, _ = gsem("deliveries", "discard", str(story["entitled"]), str(story["failing"]),
                        "--reason", "closed by phone")
    assert code == 0 and out == f"discarded {story['entitled']}\ndiscarded {story['failing']}\n"
    assert "discard by bob: closed by phone" in gsem("deliveries", "show", str(story["failing"]))[1]
    code, out, _ = gsem("deliveries", "discard", str(story["requested"]), "--reason", "x", "--actor", "carol")
    assert code == 2 and out == ""
    assert _state(database, story["waiting"]) == "pending"
    assert [d.id for d in database.run_sync(deliveries.claim_due, owner="n", now=NOW, lease_seconds=5)] == [
        story["waiting"]]


# -- gsem partners delivery ------------------------------------------------------------------


def test_partners_delivery_sets_and_shows_each_mode(gsem: Gsem, tmp_path: Path, make_cert) -> None:
    """Each mode's settings are stored and shown by 'partners show', durations with their units."""
    ca = tmp_path / "globex-ca.pem"
    ca.write_bytes(make_cert("globex-ca"))
    assert "delivery  push, not configured yet" in gsem("partners", "show", "GLOBEX")[1]
    code, out, _ = gsem("partners", "delivery", "GLOBEX", "--mode", "push", "--url",
                        "https://chs.globex.example/sis", "--ca", str(ca), "--timeout", "15",
                        "--max-attempts", "8", "--max-age", "2h")
    assert code == 0 and out.startswith("partner GLOBEX now receives its deliveries by push\n")
    shown = gsem("partners", "show", "GLOBEX")[1]
    assert "delivery  push\n" in shown and "url                 https://chs.globex.example/sis" in shown
    assert f"server CA           {ca}" in shown and "timeout             15 s" in shown
    assert "dead after 8 attempts or 2 h" in shown
    (tmp_path / "out").mkdir()
    code, out, err = gsem("partners", "delivery", "ACME", "--mode", "spool", "--outbox", str(tmp_path / "out"),
                          "--acks", str(tmp_path / "acks"))
    assert code == 0 and f"outbox              {tmp_path / 'out'}" in out
    assert f"note: {tmp_path / 'acks'} does not exist yet" in err
    code, out, _ = gsem("partners", "delivery", "ACME", "--mode", "adapter", "--adapter", "memory",
                        "--option", "queue=SIS", "--option", "owner=hub")
    assert code == 0 and "adapter             memory" in out and "option queue        SIS" in out
    code, out, _ = gsem("partners", "delivery", "ACME", "--mode", "pull", "--visibility-timeout", "2m")
    assert code == 0 and "visibility timeout  2 m" in gsem("partners", "show", "ACME")[1]
    assert "(defaults)" in out


@pytest.mark.parametrize(("argv", "messages"), [
    (["--mode", "push"], ["push delivery needs the partner's url (--url https://HOST/PATH)"]),
    (["--mode", "push", "--url", "http://chs.example/", "--outbox", "/tmp"],
     ["--outbox is for --mode spool, not --mode push", "url 'http://chs.example/' is not an https:// URL"]),
    (["--mode", "push", "--url", "https://chs.example/", "--ca", "/nonexistent/ca.pem"],
     ["cannot read the CA file /nonexistent/ca.pem: No such file"]),
    (["--mode", "spool", "--outbox", "/tmp/gsem-out"], ["spool delivery needs the acks directory (--acks DIR)"]),
    (["--mode", "adapter", "--option", "queue"], ["adapter delivery needs the adapter", "--option 'queue': write KEY=VALUE"]),
    (["--mode", "pull", "--retry-base", "10m", "--retry-cap", "1m"],
     ["the first retry delay (600 s, --retry-base) is longer than the cap (60 s, --retry-cap)"]),
    (["--mode", "pull", "--pause", "1h", "--max-pause", "5m"],
     ["the circuit breaker's first pause (3600 s, --pause) is longer than its longest (300 s, --max-pause)"]),
])
def test_partners_delivery_explains_what_is_wrong(gsem: Gsem, argv: list[str], messages: list[str]) -> None:
    """Wrong or missing settings are refused with every problem named; the old settings stay."""
    code, out, err = gsem("partners", "delivery", "GLOBEX", *argv)
    assert (code, out) == (2, "") and err.startswith("gsem: partner GLOBEX: ")
    for message in messages:
        assert message in err
    assert "delivery  push, not configured yet" in gsem("partners", "show", "GLOBEX")[1]


def test_partners_delivery_usage_errors(gsem: Gsem, capsys: pytest.CaptureFixture[str]) -> None:
    """A duration that is not one, or no --mode, fails before touching the database."""
    for argv, message in ((["--mode", "pull", "--visibility-timeout", "soon"], "'soon' is not a duration"),
                          (["--url", "https://x.example/"], "--mode"),
                          (["--mode", "email"], "invalid choice: 'email'")):
        with pytest.raises(SystemExit) as exited:
            gsem("partners", "delivery", "GLOBEX", *argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err
    code, _, err = gsem("partners", "delivery", "NOPE", "--mode", "pull")
    assert code == 2 and "no partner 'NOPE'" in err


# -- the three acknowledgements ----------------------------------------------------------------


def test_acks_show_delivery_and_receiver(gsem: Gsem, story: dict[str, int]) -> None:
    """Under each accepted transaction the table shows its delivery and the receiver's answer."""
    code, out, _ = gsem("acks")
    lines = out.splitlines()
    assert code == 0 and all(len(line) <= 100 for line in lines)

    def below(transaction: str, ref: str = "REQ-7") -> str:
        row = next(i for i, line in enumerate(lines) if line[:1].isdigit() and transaction in line and ref in line)
        return lines[row + 1].strip()

    assert below("Service_Request") == (
        f"delivery {story['requested']} to GLOBEX: acknowledged, delivered {_at(5):%H:%M:%S}; receiver Yes")
    assert below("Entitlement") == (
        f"delivery {story['entitled']} to ACME: dead, delivered {_at(6):%H:%M:%S}; receiver No")
    assert below("Provide_Problem") == f"delivery {story['waiting']} to GLOBEX: pending; receiver —"
    assert below("Service_Request", "REQ-8") == f"delivery {story['failing']} to GLOBEX: pending; receiver —"
    assert below("Confirm_Close") == "errors: not-allowed-in-state"
    records = {r["transaction"] + " " + r["requester_id"]: r for r in json.loads(gsem("acks", "--format", "json")[1])}
    assert {k: records["Service_Request REQ-7"][k] for k in
            ("delivery_id", "delivery_state", "delivered_at", "receiver_ack")} == {
        "delivery_id": story["requested"], "delivery_state": "acknowledged",
        "delivered_at": _at(5).isoformat() + "Z", "receiver_ack": "Yes"}
    assert records["Entitlement REQ-7"]["receiver_ack"] == "No"
    assert records["Confirm_Close REQ-7"]["delivery_state"] is None
    rows = {r["transaction"] + " " + r["requester_id"]: r
            for r in csv.DictReader(io.StringIO(gsem("acks", "--format", "csv")[1]))}
    assert (rows["Service_Request REQ-8"]["delivery_state"], rows["Service_Request REQ-8"]["receiver_ack"]) == (
        "pending", "")


def test_acks_follow_the_replay(gsem: Gsem, story: dict[str, int]) -> None:
    """After a replay, the transaction's delivery columns show the replay, not the dead original."""
    new = int(gsem("deliveries", "replay", str(story["entitled"]), "--reason", "fixed")[1].split()[-1])
    [record] = [r for r in json.loads(gsem("acks", "--format", "json", "--transaction", "Entitlement")[1])]
    assert (record["delivery_id"], record["delivery_state"], record["receiver_ack"]) == (new, "pending", None)


def test_incidents_show_the_three_acknowledgements(gsem: Gsem, story: dict[str, int]) -> None:
    """Each accepted transaction in an incident's history shows its ack, its delivery and the receiver's answer."""
    code, out, _ = gsem("incidents", "show", str(story["req7"]))
    assert code == 0
    history = out[out.index("history:"):out.index("rejected:")]
    assert f"delivery {story['requested']} to GLOBEX: acknowledged, delivered {_fmt(_at(5))}; receiver Yes" in history
    assert f"delivery {story['entitled']} to ACME: dead, delivered {_fmt(_at(6))}; receiver No" in history
    assert f"delivery {story['waiting']} to GLOBEX: pending; receiver —" in history
    assert "Entitlement to ACME: dead, 1 attempt(s), the receiver said No" in out
    assert "Service_Request to GLOBEX: acknowledged, 1 attempt(s), the receiver said Yes" in out


def _fmt(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize(("argv", "words"), [
    (["deliveries", "list"], ["newest first", "--state", "--partner", "--incident", "--format"]),
    (["deliveries", "replay"], ["--reason", "--actor", "All or nothing", "Audited"]),
    (["deliveries", "discard"], ["--reason", "discarded", "later deliveries"]),
    (["partners", "delivery"], ["--url", "--ca", "--outbox", "--acks", "--adapter", "--option",
                                "--visibility-timeout", "--max-attempts", "--retry-base", "--max-age"]),
])
def test_delivery_commands_explain_themselves(argv: list[str], words: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--help of each delivery command describes what it does and its options."""
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text
