"""Idempotency through a real ``gsem serve`` (SPEC §6), on SQLite and PostgreSQL.

A partner that did not get an answer sends the same bytes again, possibly on several
connections at once; the hub must keep the transaction once and answer every copy with
the original acknowledgement.  A key reused for a different body is refused.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hub import RunningHub, ack_codes, ack_text
from lxml import etree

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"
SERVICE_REQUEST = (FIXTURES / "01-service-request.xml").read_bytes()
ENTITLEMENT = (FIXTURES / "02-entitlement.xml").read_bytes()
REQUESTER_ID = "ACME-INC-20931"


def _request(requester_id: str) -> bytes:
    return SERVICE_REQUEST.replace(REQUESTER_ID.encode(), requester_id.encode())


def _post_in_parallel(hub: RunningHub, partner: str, body: bytes, copies: int,
                      **kwargs: object) -> list[tuple[int, etree._Element]]:
    # One curl process per copy, all started together: separate TLS connections that
    # reach the hub at the same moment.
    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(lambda _: hub.post(partner, body, **kwargs), range(copies)))


def _accepted(hub: RunningHub, requester_id: str, transaction: str) -> list[dict]:
    return hub.query(
        "SELECT m.ack_id FROM messages m WHERE m.requester_ref = :r AND m.transaction_name = :t "
        "AND m.accepted = :yes", r=requester_id, t=transaction, yes=True)


def _assert_one_original(results: list[tuple[int, etree._Element]]) -> str:
    statuses = [status for status, _ in results]
    assert statuses == [200] * len(results)
    assert all(ack_text(ack, "Acknowledge") == "Yes" for _, ack in results)
    ack_ids = {ack_text(ack, "AckID") for _, ack in results}
    assert len(ack_ids) == 1, f"every copy is answered with the original AckID, got {ack_ids}"
    duplicates = [ack_text(ack, "Duplicate") for _, ack in results]
    assert sorted(duplicates) == [""] + ["Yes"] * (len(results) - 1), \
        "exactly one answer is the original, the others say <Duplicate>Yes</Duplicate>"
    return ack_ids.pop()


def test_sequential_resends_are_kept_once(hub_any_db: RunningHub) -> None:
    """The same Service_Request sent three times in a row is stored once; the copies get its AckID as duplicates."""
    hub = hub_any_db
    results = [hub.post("ACME", SERVICE_REQUEST) for _ in range(3)]
    ack_id = _assert_one_original(results)
    assert ack_text(results[0][1], "Duplicate") == "", "the first answer is the original"
    assert [ack_text(a, "CurrentState") for _, a in results] == ["Beginning_State"] * 3
    assert [m["ack_id"] for m in _accepted(hub, REQUESTER_ID, "Service_Request")] == [ack_id]
    assert hub.scalar("SELECT COUNT(*) FROM incidents") == 1
    assert hub.scalar("SELECT COUNT(*) FROM deliveries") == 1, "forwarded once"
    # Every copy is kept in the message log (SPEC §6), but only the first is a transaction.
    assert hub.scalar("SELECT COUNT(*) FROM messages WHERE requester_ref = :r", r=REQUESTER_ID) == 3


def test_parallel_resends_are_kept_once(hub_any_db: RunningHub) -> None:
    """Copies of a Service_Request, then of an Entitlement, sent at once on separate connections are each stored once."""
    hub = hub_any_db
    request_ack = _assert_one_original(_post_in_parallel(hub, "ACME", SERVICE_REQUEST, 3))
    # A copy of a transaction on an existing incident that is decided after the original
    # would see the new state and be refused (not-allowed-in-state) unless the hub
    # recognises it as a copy first; more copies make that race likelier to show.
    entitlement_results = _post_in_parallel(hub, "GLOBEX", ENTITLEMENT, 5)
    entitlement_ack = _assert_one_original(entitlement_results)
    assert [ack_text(a, "CurrentState") for _, a in entitlement_results] == ["Entitled"] * 5

    assert [m["ack_id"] for m in _accepted(hub, REQUESTER_ID, "Service_Request")] == [request_ack]
    assert [m["ack_id"] for m in _accepted(hub, REQUESTER_ID, "Entitlement")] == [entitlement_ack]
    incident = hub.query("SELECT state, version FROM incidents")
    assert incident == [{"state": "Entitled", "version": 2}], "one creation and one change"
    assert hub.scalar("SELECT COUNT(*) FROM deliveries") == 2
    assert hub.scalar("SELECT COUNT(*) FROM messages WHERE accepted = :no", no=False) == 2 + 4, \
        "the copies are kept as duplicates, not as transactions"


def test_parallel_burst_of_distinct_and_repeated_documents(hub_any_db: RunningHub) -> None:
    """Eight requests, each sent twice, all at once, make exactly eight incidents with one accepted message each."""
    hub = hub_any_db
    bodies = [_request(f"BURST-{i}") for i in range(8)] * 2
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda body: hub.post("ACME", body), bodies))
    by_requester: dict[str, set[str]] = {}
    for status, ack in results:
        assert (status, ack_text(ack, "Acknowledge")) == (200, "Yes"), ack_codes(ack)
        by_requester.setdefault(ack_text(ack, "RequesterID"), set()).add(ack_text(ack, "AckID"))
    assert all(len(ids) == 1 for ids in by_requester.values()), by_requester
    stored = hub.query("SELECT requester_ref, ack_id FROM messages WHERE accepted = :yes", yes=True)
    assert {row["requester_ref"]: {row["ack_id"]} for row in stored} == by_requester
    assert hub.scalar("SELECT COUNT(*) FROM incidents") == 8


def test_same_key_with_another_body_is_a_conflict(hub_any_db: RunningHub) -> None:
    """An Idempotency-Key reused for a different body gets 422 idempotency-conflict and changes nothing."""
    hub = hub_any_db
    status, first = hub.post("ACME", SERVICE_REQUEST, idempotency_key="acme-key-1")
    assert (status, ack_text(first, "Acknowledge")) == (200, "Yes")
    before = hub.query("SELECT id, state, version, document FROM incidents")

    other = _request("ACME-INC-OTHER")
    status, ack = hub.post("ACME", other, idempotency_key="acme-key-1")
    assert status == 422
    assert ack_text(ack, "Acknowledge") == "No"
    assert ack_codes(ack) == ["idempotency-conflict"]
    assert ack_text(first, "AckID") in ack.findtext("ERROR"), "the refusal names the original acknowledgement"

    assert hub.query("SELECT id, state, version, document FROM incidents") == before
    assert hub.scalar("SELECT COUNT(*) FROM incidents WHERE requester_ref = 'ACME-INC-OTHER'") == 0
    assert hub.scalar("SELECT COUNT(*) FROM deliveries") == 1

    # The same key with the original bytes is still the original acknowledgement.
    status, again = hub.post("ACME", SERVICE_REQUEST, idempotency_key="acme-key-1")
    assert (status, ack_text(again, "AckID"), ack_text(again, "Duplicate")) == (200, ack_text(first, "AckID"), "Yes")
    # Keys belong to the sending partner: GLOBEX may use the same key for its own document.
    status, entitled = hub.post("GLOBEX", ENTITLEMENT, idempotency_key="acme-key-1")
    assert (status, ack_text(entitled, "Acknowledge"), ack_text(entitled, "Duplicate")) == (200, "Yes", "")
