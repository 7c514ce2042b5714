"""``kill -9`` in the middle of a stream of transactions loses nothing and doubles nothing (SPEC §6).

A partner streams numbered Service_Requests (RequesterID CRASH-0001 …) over one
keep-alive connection, as a CHS would.  The test kills the server with SIGKILL at random
moments (seeded, so a failure can be replayed), restarts it on the same data directory
and resends, with the same bytes, every document it holds no acknowledgement for, until
all are acknowledged.  Then the store must hold each transaction exactly once, under
the AckID the partner was given.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from hub import RunningHub, ack_codes, ack_text
from lxml import etree

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"
TEMPLATE = (FIXTURES / "01-service-request.xml").read_bytes()
DOCUMENTS = 300
KILLS = 5
SEED = 20261122


def _request(number: int) -> tuple[str, bytes]:
    requester_id = f"CRASH-{number:04d}"
    return requester_id, TEMPLATE.replace(b"ACME-INC-20931", requester_id.encode())


class _Killer:
    """Sends SIGKILL to one server process after a delay, and remembers when it did."""

    def __init__(self, pid: int, delay: float) -> None:
        self.killed_at: float | None = None
        self._timer = threading.Timer(delay, self._kill, (pid,))
        self._timer.start()

    def _kill(self, pid: int) -> None:
        self.killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)

    def wait(self) -> None:
        self._timer.join()


def test_kill_9_loses_and_duplicates_nothing(hub_any_db: RunningHub) -> None:
    """After five SIGKILLs during a 300-document stream and resends, each document is stored once under the AckID the partner got."""
    hub = hub_any_db
    rng = random.Random(SEED)
    documents = dict(_request(n) for n in range(1, DOCUMENTS + 1))
    pending = list(documents)
    first_answer: dict[str, etree._Element] = {}
    answers: dict[str, list[etree._Element]] = {rid: [] for rid in documents}
    lost_in_flight = 0
    posting_seconds = 0.0
    posts = 0
    kills = 0
    client = hub.client("ACME")

    deadline = time.monotonic() + 90
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} documents still unacknowledged"
        # Each segment between kills gets an equal share of what is left, and its kill is
        # timed from the pace measured so far, so that the kills land inside the stream
        # however fast this hub is (a faster hub once finished the stream before the
        # fifth kill).  A segment that ends first waits for its kill all the same.
        share = -(-len(pending) // (KILLS - kills + 1)) if kills < KILLS else len(pending)
        pace = posts / posting_seconds if posts else 100.0
        killer = _Killer(hub.pid, rng.uniform(0.1, 0.9) * share / pace) if kills < KILLS else None
        started = time.monotonic()
        for requester_id in list(pending)[:share]:
            try:
                status, ack = client.post(documents[requester_id])
            except (OSError, http.client.HTTPException, etree.XMLSyntaxError):
                failed_at = time.monotonic()
                assert killer is not None and killer.killed_at is not None and killer.killed_at <= failed_at, \
                    "the connection failed although the server was not killed"
                lost_in_flight += 1
                break
            posts += 1
            assert (status, ack_text(ack, "Acknowledge"), ack_codes(ack)) == (200, "Yes", []), requester_id
            assert ack_text(ack, "RequesterID") == requester_id
            answers[requester_id].append(ack)
            first_answer.setdefault(requester_id, ack)
            pending.remove(requester_id)
        posting_seconds += time.monotonic() - started
        if killer is not None:
            killer.wait()  # if the stream ended first, the kill still comes: restart after it too
            kills += 1
            hub.kill(signal.SIGKILL)  # reap it
            client.close()
            hub.restart()
    client.close()
    assert kills == KILLS

    # Every document the partner holds an acknowledgement for is stored exactly once,
    # under the AckID of that acknowledgement (a resend after a lost answer gets the
    # original AckID back, marked as a duplicate).
    stored = hub.query("SELECT requester_ref, ack_id FROM messages WHERE accepted = :yes", yes=True)
    assert len(stored) == DOCUMENTS, "one accepted message per document"
    stored_ack = {row["requester_ref"]: row["ack_id"] for row in stored}
    assert set(stored_ack) == set(documents)
    for requester_id, acks in answers.items():
        assert {ack_text(a, "AckID") for a in acks} == {stored_ack[requester_id]}, requester_id
    incidents = hub.query("SELECT requester_ref, state FROM incidents ORDER BY requester_ref")
    assert [(i["requester_ref"], i["state"]) for i in incidents] == [(rid, "Beginning_State") for rid in sorted(documents)]
    assert hub.scalar("SELECT COUNT(*) FROM deliveries") == DOCUMENTS, "each forwarded once"
    # The acknowledgement each partner got is the one the operators' log holds.
    acks_stored = {row["ack_id"] for row in hub.query("SELECT ack_id FROM acknowledgements WHERE result = 'Yes'")}
    assert {ack_text(a, "AckID") for a in first_answer.values()} <= acks_stored

    duplicates = sum(ack_text(a, "Duplicate") == "Yes" for a in first_answer.values())
    print(f"\ncrash: {DOCUMENTS} documents, {kills} kills, {lost_in_flight} answers lost in flight, "
          f"{duplicates} committed before a kill and answered as duplicates on resend, "
          f"{posts / posting_seconds:.0f} posts/s on one keep-alive connection, {hub.runs} server runs")
