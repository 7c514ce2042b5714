"""One incident from raise to close through a real ``gsem serve``, with curl, on SQLite and PostgreSQL.

The nine documents of ``tests/fixtures/lifecycle`` are posted in order by the demo
partners with their client certificates over loopback TLS; what the partners get back
(acknowledgements) and what operators see afterwards (the incident, the message log and
the outbox of deliveries) is checked against SPEC §4–§7.
"""

from __future__ import annotations

import json
import re

import pytest
from hub import COUNTERPARTY, FIXTURES, LIFECYCLE, RunningHub, ack_codes, ack_text
from lxml import etree

from gsem.schema import ack_schema

pytestmark = pytest.mark.integration

REQUESTER_ID = "ACME-INC-20931"
PROVIDER_ID = "GX-55012"


#: A Service_Request with two problems: no AGREEMENT/ContractID, and a severity of 9.
REJECTED_REQUEST = b"""<SERVICE_INCIDENT>
  <TransactionName>Service_Request</TransactionName>
  <RequesterID>ACME-INC-BAD</RequesterID>
  <RequesterSeverity>9</RequesterSeverity>
  <ACTIVITY><LocalDate>2026-11-22 08:02:11</LocalDate><ActionLog>Raised</ActionLog></ACTIVITY>
  <AGREEMENT><AgreementType>Premium 24x7</AgreementType></AGREEMENT>
  <SERVICE_REQUESTER>
    <PERSON><LastName>Natarajan</LastName>
      <LOCATION><LocationType>Primary_Voice</LocationType><LocationID>+44 20 7946 0321</LocationID></LOCATION>
    </PERSON>
  </SERVICE_REQUESTER>
</SERVICE_INCIDENT>
"""


def _run_lifecycle(hub: RunningHub) -> list[tuple[int, etree._Element]]:
    return [hub.post(sender, (FIXTURES / name).read_bytes()) for name, sender, _ in LIFECYCLE]


def test_lifecycle_documents_are_acknowledged_in_order(hub_any_db: RunningHub) -> None:
    """Each of the nine documents gets HTTP 200, Acknowledge=Yes, the right state and a schema-valid ack."""
    schema = ack_schema()
    results = _run_lifecycle(hub_any_db)
    ack_ids = set()
    for (name, _, state), (status, ack) in zip(LIFECYCLE, results, strict=True):
        assert (status, ack_text(ack, "Acknowledge"), ack_codes(ack)) == (200, "Yes", []), name
        assert ack_text(ack, "CurrentState") == state, name
        assert ack_text(ack, "RequesterID") == REQUESTER_ID, name
        assert schema.validate(ack), f"{name}: {schema.error_log}"
        ack_ids.add(ack_text(ack, "AckID"))
    assert len(ack_ids) == len(LIFECYCLE), "every acknowledgement has its own AckID"
    # From the Entitlement on, the hub tells the requester the provider's id.
    assert [ack_text(a, "ProviderID") for _, a in results[1:]] == [PROVIDER_ID] * 8

    incident = results[-1][1].find("SERVICE_INCIDENT")
    assert incident is not None, "Query_Incident embeds the incident"
    assert incident.findtext("CurrentState") == "Closed"
    assert incident.findtext("ProviderID") == PROVIDER_ID
    assert incident.findtext("RequesterID") == REQUESTER_ID
    assert incident.findtext("SOLUTION/Title") == "Header de-duplication fixed in 4.2.1"
    assert incident.findtext("ATTACHMENT/AttachmentName") == "upload.log"
    assert incident.find("ACTIVITY") is None, "the query answer leaves out the ACTIVITY history"
    assert incident.findtext("AGREEMENT/ContractID") == "C-100;CN=C-100"


def test_lifecycle_is_stored_and_forwarded(hub_any_db: RunningHub) -> None:
    """After the lifecycle the store holds 8 accepted transactions and 8 deliveries to the counterparty."""
    hub = hub_any_db
    results = _run_lifecycle(hub)

    incidents = hub.query("SELECT id, requester_id, provider_id, requester_ref, provider_ref, state FROM incidents")
    assert len(incidents) == 1
    incident = incidents[0]
    assert (incident["requester_id"], incident["provider_id"], incident["requester_ref"],
            incident["provider_ref"], incident["state"]) == ("ACME", "GLOBEX", REQUESTER_ID, PROVIDER_ID, "Closed")

    messages = hub.query(
        "SELECT id, partner_id, transaction_name, state_after, ack_id, accepted FROM messages "
        "WHERE incident_id = :incident ORDER BY id", incident=incident["id"])
    # The Query_Incident reads the incident without changing it: it is kept but is not a
    # transaction of the incident's history.
    changing = [m for m in messages if m["transaction_name"] != "Query_Incident"]
    assert len(changing) == 8
    assert all(m["accepted"] for m in messages)
    assert [(m["partner_id"], m["state_after"]) for m in changing] == [(s, st) for _, s, st in LIFECYCLE[:8]]
    assert [m["ack_id"] for m in changing] == [ack_text(a, "AckID") for _, a in results[:8]]

    deliveries = hub.query(
        "SELECT d.recipient_id, d.state, d.document, m.partner_id AS sender, m.ack_id "
        "FROM deliveries d JOIN messages m ON m.id = d.message_id ORDER BY d.id")
    assert len(deliveries) == 8, "every transaction but the Query_Incident is forwarded"
    assert [d["recipient_id"] for d in deliveries] == [COUNTERPARTY[s] for _, s, _ in LIFECYCLE[:8]]
    assert [d["recipient_id"] for d in deliveries] == [
        "GLOBEX", "ACME", "GLOBEX", "ACME", "ACME", "GLOBEX", "ACME", "GLOBEX"]
    for (name, sender, state), delivery in zip(LIFECYCLE[:8], deliveries, strict=True):
        assert delivery["sender"] == sender
        assert delivery["state"] == "pending"
        forwarded = etree.fromstring(bytes(delivery["document"]))
        original = etree.fromstring((FIXTURES / name).read_bytes())
        assert forwarded.findtext("TransactionName") == original.findtext("TransactionName"), name
        assert forwarded.findtext("CurrentState") == state, name
        assert forwarded.findtext("Acknowledge") == "Yes", name
        assert forwarded.findtext("RequesterID") == REQUESTER_ID, name
        # The ProviderID is known from the Entitlement on and filled in for the receiver.
        expected_provider = None if name.startswith("01") else PROVIDER_ID
        assert forwarded.findtext("ProviderID") == expected_provider, name
    # the acknowledgement log on standard output: one line per acknowledgement
    assert sum('"event":"acknowledgement"' in line for line in hub.stdout_lines()) == len(LIFECYCLE)


def test_operator_sees_the_incident_history(hub_any_db: RunningHub) -> None:
    """'gsem incidents show' lists the eight transactions with their states and AckIDs, the query, and eight deliveries."""
    hub = hub_any_db
    results = _run_lifecycle(hub)
    out = hub.gsem("incidents", "show", "--requester", "ACME", "--requester-id", REQUESTER_ID)
    assert re.search(r"^incident \d+: Closed$", out, re.M), out
    assert re.search(r"provider\s+GLOBEX, ProviderID GX-55012", out), out
    history = re.findall(r"^\s*\d+\.\s+\S+ \S+\s+(\w+) from (\w+)\s*\n\s+(\S+) -> (\w+)\s+ack (\w+)", out, re.M)
    expected = []
    before = "(new)"
    for (name, sender, state), (_, ack) in zip(LIFECYCLE, results, strict=True):
        transaction = etree.fromstring((FIXTURES / name).read_bytes()).findtext("TransactionName")
        expected.append((transaction, sender, before, state, ack_text(ack, "AckID")))
        before = state
    assert history == expected, out
    assert re.search(r"^deliveries: 8$", out, re.M), out
    deliveries = re.findall(r"#\d+ (\w+) to (\w+): pending", out)
    assert deliveries == [(t, COUNTERPARTY[s]) for t, s, *_ in expected[:8]], out
    listed = hub.gsem("incidents", "list", "--state", "Closed")
    assert REQUESTER_ID in listed and PROVIDER_ID in listed


def test_rejected_service_request_lists_every_problem(hub_any_db: RunningHub) -> None:
    """A Service_Request without ContractID and with severity 9 gets 422 naming both, and is logged as No."""
    hub = hub_any_db
    status, ack = hub.post("ACME", REJECTED_REQUEST)
    assert status == 422
    assert ack_text(ack, "Acknowledge") == "No"
    assert ack_schema().validate(ack)
    problems = {(e.get("code"), e.get("path")) for e in ack.findall("ERROR")}
    assert problems == {
        ("missing-mandatory", "/SERVICE_INCIDENT/AGREEMENT/ContractID"),
        ("schema-violation", "/SERVICE_INCIDENT/RequesterSeverity"),
    }
    assert hub.scalar("SELECT COUNT(*) FROM incidents") == 0, "a rejection creates no incident"
    assert hub.scalar("SELECT COUNT(*) FROM deliveries") == 0, "and forwards nothing"
    stored = hub.query("SELECT result, http_status, error_codes FROM acknowledgements WHERE ack_id = :a",
                       a=ack_text(ack, "AckID"))
    assert stored == [{"result": "No", "http_status": 422,
                       "error_codes": ",schema-violation,missing-mandatory,"}]
    # What an operator sees: the rejection among the acknowledgements that said No.
    rejections = json.loads(hub.gsem("acks", "--result", "No", "--format", "json"))
    assert [(a["ack_id"], a["partner"], a["transaction"], a["requester_id"], a["http_status"],
             sorted(a["error_codes"])) for a in rejections] == [
        (ack_text(ack, "AckID"), "ACME", "Service_Request", "ACME-INC-BAD", 422,
         ["missing-mandatory", "schema-violation"])]
    assert json.loads(hub.gsem("acks", "--result", "Yes", "--format", "json")) == []
