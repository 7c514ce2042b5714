"""Who may do what to an incident (SPEC §2), through a real ``gsem serve`` with curl.

Besides the demo's ACME (requester) and GLOBEX (provider), a third partner INITECH is
registered the way an operator does it (``gsem partners add``, ``gsem partners certs
add``, ``gsem agreements add INITECH GLOBEX C-300``).  A partner may only act on its own
incidents, in its own role; a refusal says why (``not-authorized``, ``unknown-incident``,
``ambiguous-incident``) and changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub import CURL, ClientIdentity, RunningHub, ack_codes, ack_text

from gsem import pki

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"
FIXTURE_REQUESTER_ID = b"ACME-INC-20931"
FIXTURE_PROVIDER_ID = b"GX-55012"


def document(name: str, requester_id: str, *, provider_id: str | None = None, contract: str | None = None) -> bytes:
    """A lifecycle fixture rewritten for another incident."""
    body = (FIXTURES / name).read_bytes().replace(FIXTURE_REQUESTER_ID, requester_id.encode())
    if provider_id is not None:
        body = body.replace(FIXTURE_PROVIDER_ID, provider_id.encode())
    if contract is not None:
        body = body.replace(b"<ContractID>C-100;CN=C-100</ContractID>", f"<ContractID>{contract}</ContractID>".encode())
    return body


def query(requester_id: str, provider_id: str | None = None) -> bytes:
    """A Query_Incident, with a ProviderID when given."""
    provider = f"<ProviderID>{provider_id}</ProviderID>" if provider_id else ""
    return (f"<SERVICE_INCIDENT><TransactionName>Query_Incident</TransactionName>"
            f"<RequesterID>{requester_id}</RequesterID>{provider}</SERVICE_INCIDENT>").encode()


def _initech_identity(hub: RunningHub) -> ClientIdentity:
    return ClientIdentity(hub.data_dir / "initech-cert.pem", hub.data_dir / "initech-key.pem")


@pytest.fixture(scope="module")
def initech(auth_hub: RunningHub) -> ClientIdentity:
    """INITECH's client certificate and key."""
    return _initech_identity(auth_hub)


@pytest.fixture(scope="module")
def auth_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A demo hub plus INITECH: a requester with an agreement with GLOBEX under contract C-300."""
    if CURL is None:
        pytest.skip("curl is not installed")
    hub = RunningHub.create(tmp_path_factory.mktemp("auth") / "hub")
    try:
        hub.gsem("partners", "add", "INITECH", "--name", "Initech Helpdesk")
        cert, key = pki.make_client_cert(pki.load_cert(hub.ca_cert), pki.load_key(hub.ca_key), "INITECH")
        initech = _initech_identity(hub)
        pki.write_cert(initech.cert, cert)
        pki.write_key(initech.key, key)
        hub.gsem("partners", "certs", "add", "INITECH", str(initech.cert))
        hub.gsem("agreements", "add", "INITECH", "GLOBEX", "C-300")
        deadline = time.monotonic() + 5  # the server picks the certificate up within a second
        while hub.curl(initech, query("NOTHING")).http_status == 0:
            assert time.monotonic() < deadline, "INITECH's certificate was never accepted"
            time.sleep(0.1)
        yield hub
    finally:
        hub.stop()
    hub.assert_no_traceback()


def accepted(hub: RunningHub, partner: str | ClientIdentity, body: bytes) -> str:
    """Post a document that must be accepted; returns the state after it."""
    status, ack = hub.post(partner, body)
    assert (status, ack_text(ack, "Acknowledge"), ack_codes(ack)) == (200, "Yes", []), \
        [e.text for e in ack.findall("ERROR")]
    return ack_text(ack, "CurrentState")


def snapshot(hub: RunningHub, requester_id: str) -> dict:
    """Everything stored about the incidents with this RequesterID that a refusal must not change."""
    return {
        "incidents": hub.query("SELECT id, requester_id, provider_id, provider_ref, state, version, document "
                               "FROM incidents WHERE requester_ref = :r ORDER BY id", r=requester_id),
        "accepted": hub.query("SELECT ack_id FROM messages WHERE requester_ref = :r AND accepted = :yes ORDER BY id",
                              r=requester_id, yes=True),
        "deliveries": hub.query("SELECT d.id FROM deliveries d JOIN incidents i ON i.id = d.incident_id "
                                "WHERE i.requester_ref = :r ORDER BY d.id", r=requester_id),
    }


def history(hub: RunningHub, requester: str, requester_id: str) -> str:
    """The accepted transactions as ``gsem incidents show`` lists them."""
    out = hub.gsem("incidents", "show", "--requester", requester, "--requester-id", requester_id)
    start = out.index("history:")
    end = out.find("\n\n", start)
    return out[start:end if end != -1 else None]


def assert_refused(hub: RunningHub, partner: str | ClientIdentity, body: bytes, status: int, code: str) -> None:
    """The document is refused with *status* and exactly the error *code*, revealing no incident."""
    got, ack = hub.post(partner, body)
    assert (got, ack_text(ack, "Acknowledge"), ack_codes(ack)) == (status, "No", [code]), \
        [e.text for e in ack.findall("ERROR")]
    assert ack.find("SERVICE_INCIDENT") is None


def test_spoofed_transactions_change_nothing(auth_hub: RunningHub, initech: ClientIdentity) -> None:
    """GLOBEX sending ACME's Confirm_Close, and INITECH sending an Accept_Problem, get 403 and change nothing."""
    hub = auth_hub
    rid = "ACME-AUTH-1"
    for name, sender in [("01-service-request.xml", "ACME"), ("02-entitlement.xml", "GLOBEX"),
                         ("03-problem-submittal.xml", "ACME"), ("04-accept-problem.xml", "GLOBEX"),
                         ("07-problem-resolution.xml", "GLOBEX")]:
        state = accepted(hub, sender, document(name, rid))
    assert state == "Closed_Pending_Confirmation", "Confirm_Close would be allowed now, for the requester"
    before = snapshot(hub, rid)
    shown_before = history(hub, "ACME", rid)

    # The provider may not close on the requester's behalf …
    assert_refused(hub, "GLOBEX", document("08-confirm-close.xml", rid), 403, "not-authorized")
    # … and a partner with no part in the incident may not touch it at all, with or without ProviderID.
    assert_refused(hub, initech, document("04-accept-problem.xml", rid), 403, "not-authorized")
    assert_refused(hub, initech, document("08-confirm-close.xml", rid), 403, "not-authorized")

    assert snapshot(hub, rid) == before
    assert history(hub, "ACME", rid) == shown_before
    refusals = json.loads(hub.gsem("acks", "--requester-id", rid, "--code", "not-authorized", "--format", "json"))
    assert sorted(a["partner"] for a in refusals) == ["GLOBEX", "INITECH", "INITECH"]
    # The real requester still can.
    assert accepted(hub, "ACME", document("08-confirm-close.xml", rid)) == "Closed"


def test_refusal_reveals_nothing_of_another_partners_incident(auth_hub: RunningHub, initech: ClientIdentity) -> None:
    """INITECH querying ACME's incident gets 403 with no state, ProviderID or incident in the answer."""
    hub = auth_hub
    rid = "ACME-AUTH-2"
    accepted(hub, "ACME", document("01-service-request.xml", rid))
    accepted(hub, "GLOBEX", document("02-entitlement.xml", rid, provider_id="GX-SECRET"))
    status, ack = hub.post(initech, query(rid))
    assert (status, ack_codes(ack)) == (403, ["not-authorized"])
    assert ack.find("SERVICE_INCIDENT") is None
    assert ack_text(ack, "CurrentState") == ""
    assert b"GX-SECRET" not in hub.curl(initech, query(rid)).body
    # ACME itself reads it.
    status, ack = hub.post("ACME", query(rid))
    assert (status, ack.findtext("SERVICE_INCIDENT/ProviderID")) == (200, "GX-SECRET")


def test_service_request_needs_an_agreement(auth_hub: RunningHub, initech: ClientIdentity) -> None:
    """A Service_Request under a contract the requester has no agreement for is 403 not-authorized and creates nothing."""
    hub = auth_hub
    # ACME has no contract C-999; INITECH may not use ACME's C-100.
    for partner, rid, contract in [("ACME", "ACME-AUTH-3", "C-999"), (initech, "INITECH-AUTH-3", "C-100;CN=C-100")]:
        status, ack = hub.post(partner, document("01-service-request.xml", rid, contract=contract))
        assert (status, ack_codes(ack)) == (403, ["not-authorized"])
        assert [e.get("path") for e in ack.findall("ERROR")] == ["/SERVICE_INCIDENT/AGREEMENT/ContractID"]
        assert snapshot(hub, rid)["incidents"] == []
    # INITECH's own contract is routed to GLOBEX.
    accepted(hub, initech, document("01-service-request.xml", "INITECH-AUTH-3", contract="C-300"))
    rows = hub.query("SELECT requester_id, provider_id FROM incidents WHERE requester_ref = 'INITECH-AUTH-3'")
    assert rows == [{"requester_id": "INITECH", "provider_id": "GLOBEX"}]


def test_unknown_requester_id_is_unknown_incident(auth_hub: RunningHub) -> None:
    """A transaction or query for a RequesterID no incident has gets 404 unknown-incident."""
    hub = auth_hub
    assert_refused(hub, "GLOBEX", document("04-accept-problem.xml", "NO-SUCH-INCIDENT"), 404, "unknown-incident")
    assert_refused(hub, "ACME", query("NO-SUCH-INCIDENT"), 404, "unknown-incident")


def test_wrong_provider_id_from_a_party_is_unknown_incident(auth_hub: RunningHub) -> None:
    """A party naming its incident with a ProviderID that is not the incident's gets 404, not 403."""
    hub = auth_hub
    rid = "ACME-AUTH-5"
    accepted(hub, "ACME", document("01-service-request.xml", rid))
    accepted(hub, "GLOBEX", document("02-entitlement.xml", rid, provider_id="GX-5"))
    assert_refused(hub, "ACME", query(rid, "GX-OTHER"), 404, "unknown-incident")
    assert_refused(hub, "GLOBEX", query(rid, "GX-OTHER"), 404, "unknown-incident")


def test_shared_requester_id_needs_provider_id(auth_hub: RunningHub, initech: ClientIdentity) -> None:
    """When ACME and INITECH both use RequesterID SHARED-1 with GLOBEX, GLOBEX must send ProviderID (409 without)."""
    hub = auth_hub
    rid = "SHARED-1"
    accepted(hub, "ACME", document("01-service-request.xml", rid))
    assert accepted(hub, "GLOBEX", document("02-entitlement.xml", rid, provider_id="GX-ACME-1")) == "Entitled"
    accepted(hub, initech, document("01-service-request.xml", rid, contract="C-300"))
    # ACME's incident already has another ProviderID, so this one can only be INITECH's.
    assert accepted(hub, "GLOBEX", document("02-entitlement.xml", rid, provider_id="GX-INITECH-1")) == "Entitled"
    before = snapshot(hub, rid)
    assert len(before["incidents"]) == 2

    # Without ProviderID, GLOBEX's messages match two incidents.
    assert_refused(hub, "GLOBEX", query(rid), 409, "ambiguous-incident")
    status, ack = hub.post("GLOBEX", document("06-provide-problem-information.xml", rid))
    assert (status, ack_codes(ack)) == (409, ["ambiguous-incident"])
    assert [e.get("path") for e in ack.findall("ERROR")] == ["/SERVICE_INCIDENT/ProviderID"]
    assert snapshot(hub, rid) == before

    # With ProviderID it goes through, to the right incident.
    status, ack = hub.post("GLOBEX", query(rid, "GX-INITECH-1"))
    assert status == 200
    assert ack.findtext("SERVICE_INCIDENT/ProviderID") == "GX-INITECH-1"
    assert ack.findtext("SERVICE_INCIDENT/AGREEMENT/ContractID") == "C-300"
    # The requesters are not ambiguous: each has one SHARED-1.
    status, ack = hub.post("ACME", query(rid))
    assert (status, ack.findtext("SERVICE_INCIDENT/ProviderID")) == (200, "GX-ACME-1")
    status, ack = hub.post(initech, query(rid))
    assert (status, ack.findtext("SERVICE_INCIDENT/ProviderID")) == (200, "GX-INITECH-1")


def test_second_incident_the_provider_could_not_tell_apart_is_refused(
    auth_hub: RunningHub, initech: ClientIdentity
) -> None:
    """While GLOBEX has an un-entitled SHARED-2 from ACME, INITECH's SHARED-2 is refused until it gets a ProviderID."""
    hub = auth_hub
    rid = "SHARED-2"
    accepted(hub, "ACME", document("01-service-request.xml", rid))
    status, ack = hub.post(initech, document("01-service-request.xml", rid, contract="C-300"))
    assert (status, ack_codes(ack)) == (409, ["duplicate-incident"])
    assert "not yet given a ProviderID" in ack.findtext("ERROR")
    assert len(snapshot(hub, rid)["incidents"]) == 1
    # Once ACME's incident has its ProviderID, both can be addressed: INITECH may send it again.
    accepted(hub, "GLOBEX", document("02-entitlement.xml", rid, provider_id="GX-ACME-2"))
    accepted(hub, initech, document("01-service-request.xml", rid, contract="C-300"))
    assert accepted(hub, "GLOBEX", document("02-entitlement.xml", rid, provider_id="GX-INITECH-2")) == "Entitled"
