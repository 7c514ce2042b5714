"""Pull and spool delivery with a real ``gsem serve`` (SPEC §7), on SQLite.

The test plays both partners' CHS: GLOBEX polls its mailbox on the hub's mutual-TLS
listener (``GET /sis/v1/mailbox/next``, ``POST /sis/v1/mailbox/{id}/ack``) with its own
client certificate, ACME reads files from its spool outbox in name order and writes
acknowledgement files.  The demo lifecycle must reach each side once, in order, as the
hub forwards it, and the three acknowledgements must be visible to operators.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub import RunningHub, ack_text
from partner_server import (
    Reception,
    acknowledgement_of,
    assert_received_in_order,
    attempt_lines,
    delivery_rows,
    expected_for,
    hub_deliveries,
    lifecycle,
    set_delivery,
    set_delivery_config,
    wait_until,
)

pytestmark = pytest.mark.integration

VISIBILITY_TIMEOUT = 2


@dataclass(frozen=True)
class MailboxAnswer:
    """What one mailbox request got."""

    status: int
    delivery_id: str | None
    body: bytes


class Mailbox:
    """A pull partner's side: one keep-alive HTTPS connection with its client certificate."""

    def __init__(self, hub: RunningHub, partner: str) -> None:
        identity = hub.identity(partner)
        self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(hub.ca_cert))
        self.context.load_cert_chain(str(identity.cert), str(identity.key))
        self.hub = hub
        self.connection: http.client.HTTPSConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None) -> MailboxAnswer:
        if self.connection is None:
            self.connection = http.client.HTTPSConnection(self.hub.host, self.hub.port, context=self.context,
                                                          timeout=10)
        headers = {"Content-Type": "application/xml"} if body is not None else {}
        try:
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        return MailboxAnswer(response.status, response.getheader("Gsem-Delivery-Id"), data)

    def next(self) -> MailboxAnswer:
        """``GET /sis/v1/mailbox/next``."""
        return self._request("GET", "/sis/v1/mailbox/next")

    def ack(self, delivery_id: str, document: bytes, *, ok: bool = True) -> MailboxAnswer:
        """``POST /sis/v1/mailbox/ID/ack`` with our ACKNOWLEDGEMENT of *document*."""
        return self._request("POST", f"/sis/v1/mailbox/{delivery_id}/ack",
                             acknowledgement_of(document, ok=ok, ack_id=f"GLOBEX-ACK-{delivery_id}"))

    def close(self) -> None:
        """Drop the connection."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class SpoolReader:
    """A spool partner's side: takes outbox files in name order, writes ack files atomically."""

    def __init__(self, outbox: Path, acks: Path) -> None:
        self.outbox = outbox
        self.acks = acks
        self.seen: list[str] = []  # file names, in the order taken

    def take(self) -> list[tuple[str, bytes]]:
        """The new documents (delivery id, bytes), oldest name first; each file is removed once taken."""
        if not self.outbox.exists():
            return []
        taken = []
        for name in sorted(os.listdir(self.outbox)):
            if name.startswith(".") or not name.endswith(".xml"):
                continue  # a file still being written
            path = self.outbox / name
            data = path.read_bytes()
            path.unlink()
            assert name not in self.seen, f"{name} was written again after it was taken"
            self.seen.append(name)
            taken.append((str(int(name[:-4].split("-")[1])), data))
        return taken

    def acknowledge(self, delivery_id: str, document: bytes) -> None:
        """Write ``ACKS/<delivery>.xml`` under a dot-name and rename it (never half a file)."""
        self.acks.mkdir(parents=True, exist_ok=True)
        tmp = self.acks / f".{delivery_id}.xml.tmp"
        tmp.write_bytes(acknowledgement_of(document, ack_id=f"ACME-ACK-{delivery_id}"))
        os.replace(tmp, self.acks / f"{delivery_id}.xml")


def test_pull_and_spool_deliver_the_lifecycle_in_order_with_every_acknowledgement_visible(tmp_path: Path) -> None:
    """GLOBEX pulling its mailbox and ACME reading its spool get the lifecycle once each, in order; an unacknowledged pull comes back after the visibility timeout."""
    hub = RunningHub.create(tmp_path / "hub", start=False)
    try:
        set_delivery_config(hub, poll_interval=0.1)
        outbox, acks = tmp_path / "acme-spool" / "outbox", tmp_path / "acme-spool" / "acks"
        outbox.mkdir(parents=True)
        acks.mkdir()
        set_delivery(hub, "GLOBEX", "--mode", "pull", "--visibility-timeout", VISIBILITY_TIMEOUT)
        set_delivery(hub, "ACME", "--mode", "spool", "--outbox", outbox, "--acks", acks)
        hub.start()
        _run(hub, outbox, acks)
    finally:
        hub.stop()
    hub.assert_no_traceback()


def _run(hub: RunningHub, outbox: Path, acks: Path) -> None:
    steps = lifecycle()
    for step in steps:
        status, ack = hub.post(step.sender, step.document)
        assert (status, ack_text(ack, "Acknowledge")) == (200, "Yes"), step

    mailbox = Mailbox(hub, "GLOBEX")
    spool = SpoolReader(outbox, acks)
    to_globex: list[Reception] = []
    to_acme: list[Reception] = []

    # GLOBEX takes the first message and does not acknowledge it: nothing else comes (the
    # incident's later messages wait for it), then it comes back, same id, same bytes.
    asked: list[float] = []

    def fetch() -> MailboxAnswer | None:
        asked.append(time.time())
        answer = mailbox.next()
        return answer if answer.status == 200 else None

    first = wait_until(fetch, timeout=10, what="GLOBEX's first message in its mailbox")
    handed_out = asked[-1]  # the hub leased it at this time or later
    assert first.delivery_id is not None
    assert mailbox.next().status == 204
    again = wait_until(fetch, timeout=VISIBILITY_TIMEOUT + 10, what="the unacknowledged message to come back",
                       interval=0.2)
    assert time.time() - handed_out >= VISIBILITY_TIMEOUT
    assert (again.delivery_id, again.body) == (first.delivery_id, first.body)
    assert Mailbox(hub, "ACME").next().status == 409  # ACME receives by spool, not from a mailbox

    # Both CHSs at work until everything is through.
    wanted_globex, wanted_acme = expected_for("GLOBEX", steps), expected_for("ACME", steps)
    pending = again
    deadline = time.monotonic() + 60
    while len(to_globex) < len(wanted_globex) or len(to_acme) < len(wanted_acme):
        assert time.monotonic() < deadline, (to_globex, to_acme)
        if pending is None:
            answer = mailbox.next()
            pending = answer if answer.status == 200 else None
            assert answer.status in (200, 204), answer
        if pending is not None:
            to_globex.append(Reception.of_document(len(to_globex) + 1, pending.delivery_id, pending.body))
            acked = mailbox.ack(pending.delivery_id, pending.body)
            assert acked.status == 200, acked
            pending = None
        for delivery_id, document in spool.take():
            to_acme.append(Reception.of_document(len(to_acme) + 1, delivery_id, document))
            spool.acknowledge(delivery_id, document)
        time.sleep(0.05)
    mailbox.close()

    assert_received_in_order(to_globex, wanted_globex)
    assert_received_in_order(to_acme, wanted_acme)
    assert mailbox.next().status == 204
    assert spool.take() == []

    # The receivers' acknowledgements are recorded: the ack files are processed, every
    # delivery acknowledged, and operators see all three acknowledgements.
    wait_until(lambda: all(d["state"] == "acknowledged" for d in delivery_rows(hub)), timeout=15,
               what="every delivery acknowledged")
    assert sorted(os.listdir(acks / "processed")) == sorted(f"{r.delivery_id}.xml" for r in to_acme)
    assert os.listdir(acks / "rejected") == []
    rows = hub_deliveries(hub)
    assert {(r["recipient"], r["state"], r["receiver_ack"]) for r in rows} == \
        {("GLOBEX", "acknowledged", "Yes"), ("ACME", "acknowledged", "Yes")}
    first_row = next(r for r in rows if str(r["id"]) == first.delivery_id)
    assert first_row["attempts"] >= 2, first_row  # handed out twice

    records = json.loads(hub.gsem("acks", "--format", "json"))
    forwarded = [r for r in records if r["transaction"] != "Query_Incident"]
    assert len(forwarded) == len(wanted_globex) + len(wanted_acme)
    assert {(r["result"], r["delivery_state"], r["receiver_ack"]) for r in forwarded} == \
        {("Yes", "acknowledged", "Yes")}
    assert {str(r["delivery_id"]) for r in forwarded} == {r.delivery_id for r in to_globex + to_acme}
    (query,) = [r for r in records if r["transaction"] == "Query_Incident"]
    assert query["delivery_id"] is None  # a Query_Incident is answered, never forwarded

    shown = hub.gsem("incidents", "show", "--requester", "ACME", "--requester-id", "ACME-INC-20931")
    assert shown.count("receiver Yes") == len(wanted_globex) + len(wanted_acme), shown
    assert "not forwarded" in shown  # the Query_Incident
    detail = hub.gsem("deliveries", "show", first.delivery_id)
    assert "mailbox" in detail and "GLOBEX-ACK-" in detail, detail

    # SPEC §8: one JSON line per delivery attempt on standard output (the spool's writes;
    # the mailbox's are checked below).
    spool_ids = {int(r.delivery_id) for r in to_acme}
    spool_lines = [x for x in attempt_lines(hub) if x["delivery_id"] in spool_ids]
    assert sorted(x["delivery_id"] for x in spool_lines) == sorted(spool_ids)


def test_mailbox_hand_outs_and_acknowledgements_are_logged(tmp_path: Path) -> None:
    """Each mailbox hand-out and acknowledgement, recorded as a delivery attempt, also gets its JSON line on standard output."""
    hub = RunningHub.create(tmp_path / "hub", start=False)
    try:
        set_delivery(hub, "GLOBEX", "--mode", "pull")
        hub.start()
        step = lifecycle(steps=1)[0]
        assert hub.post(step.sender, step.document)[0] == 200
        mailbox = Mailbox(hub, "GLOBEX")
        answer = wait_until(lambda: (a := mailbox.next()).status == 200 and a, timeout=10, what="the message")
        assert mailbox.ack(answer.delivery_id, answer.body).status == 200
        mailbox.close()
        rows = hub.query("SELECT delivery_id, outcome FROM delivery_attempts WHERE node = 'mailbox'")
        assert [r["outcome"] for r in rows] == ["accepted", "acknowledged"]
        records = [json.loads(line) for line in hub.stdout_lines() if line.startswith("{")]
        about_it = [r for r in records if r.get("delivery_id") == int(answer.delivery_id)]
        assert [(r["event"], r.get("outcome"), r.get("acknowledged")) for r in about_it] == [
            ("delivery_attempt", "accepted", None), ("receiver_acknowledgement", None, True)], records
    finally:
        hub.stop()
    hub.assert_no_traceback()
