"""``kill -9`` of the hub while it pushes to slow receivers loses nothing and doubles nothing (SPEC §6, §7).

Both demo partners receive by push from test partner servers that take a while to
answer each document (they keep it when it arrives, then answer: a receiver that commits
before it replies).  Four incidents' lifecycles are posted; the hub is killed with
SIGKILL twice while documents are in flight, and restarted on the same data directory.
Each receiver must end up with every message once as a business message (deduplicated by
``Gsem-Delivery-Id``), per incident in order.  The raw receptions are counted too: a
document in flight at a kill is delivered again after the restart, under the same
delivery id, which is what the receivers' deduplication is for.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub import RunningHub, ack_text
from partner_server import (
    PartnerServer,
    assert_received_in_order,
    delivery_rows,
    expected_for,
    lifecycle,
    set_delivery,
    set_delivery_config,
    wait_until,
)

pytestmark = pytest.mark.integration

ANSWER_DELAY = 0.6  # seconds each receiver takes to answer
INCIDENTS = 4
#: Kill when GLOBEX has accepted this many messages (so that one is in flight right then).
KILL_AFTER = (3, 9)
#: [delivery] lease_seconds stays at its default of 60: a restarted node must give back its
#: own leases at once, not wait for them to expire, so everything arrives well within it.
AFTER_RESTART_TIMEOUT = 40


@pytest.fixture
def partners(tmp_path: Path) -> Iterator[tuple[RunningHub, PartnerServer, PartnerServer]]:
    """A hub (not started) and slow partner servers for GLOBEX and ACME."""
    hub = RunningHub.create(tmp_path / "hub", start=False)
    globex = PartnerServer.start(tmp_path / "globex-chs", hub_ca=hub.ca_cert, delay=ANSWER_DELAY)
    acme = PartnerServer.start(tmp_path / "acme-chs", hub_ca=hub.ca_cert, delay=ANSWER_DELAY)
    try:
        yield hub, globex, acme
    finally:
        hub.stop()
        globex.stop()
        acme.stop()
    hub.assert_no_traceback()
    globex.assert_no_traceback()
    acme.assert_no_traceback()


def test_kill_9_during_push_delivers_every_message_once_in_order(
        partners: tuple[RunningHub, PartnerServer, PartnerServer], record_property: pytest.RecordProperty) -> None:
    """After two SIGKILLs while documents are in flight, each receiver has every message once (by delivery id) and in order per incident."""
    hub, globex, acme = partners
    set_delivery_config(hub, poll_interval=0.1)
    for partner, server in (("GLOBEX", globex), ("ACME", acme)):
        set_delivery(hub, partner, "--mode", "push", "--url", server.url, "--ca", server.ca_cert,
                     "--timeout", 10, "--retry-base", 0.2, "--retry-cap", 1)
    hub.start()

    incidents = {f"CRASH-{n}": lifecycle(f"CRASH-{n}", f"GX-CRASH-{n}") for n in range(1, INCIDENTS + 1)}
    for number in range(len(next(iter(incidents.values())))):
        for steps in incidents.values():
            status, ack = hub.post(steps[number].sender, steps[number].document)
            assert (status, ack_text(ack, "Acknowledge")) == (200, "Yes")
    all_steps = [s for steps in incidents.values() for s in steps]
    to_globex, to_acme = expected_for("GLOBEX", all_steps), expected_for("ACME", all_steps)

    in_flight_at_kills: list[set[str]] = []
    for threshold in KILL_AFTER:
        globex.wait_for_messages(threshold, timeout=60)
        killed_at = time.time()
        hub.kill(signal.SIGKILL)
        # What the receivers had taken but not answered (or only just) when the hub died.
        in_flight_at_kills.append({r.delivery_id for s in (globex, acme) for r in s.receptions()
                                   if killed_at - ANSWER_DELAY - 2.0 <= r.at <= killed_at})
        hub.start()
    restarted = time.monotonic()

    globex.wait_for_messages(len(to_globex), timeout=AFTER_RESTART_TIMEOUT)
    acme.wait_for_messages(len(to_acme), timeout=AFTER_RESTART_TIMEOUT)
    wait_until(lambda: all(d["state"] == "acknowledged" for d in delivery_rows(hub)),
               timeout=max(1.0, AFTER_RESTART_TIMEOUT - (time.monotonic() - restarted)),
               what="every delivery acknowledged")

    # Once each as business messages, in order per incident, under one delivery id each.
    assert_received_in_order(globex.messages(), to_globex)
    assert_received_in_order(acme.messages(), to_acme)
    rows = delivery_rows(hub)
    assert len(rows) == len(to_globex) + len(to_acme)
    business = {r.delivery_id for s in (globex, acme) for r in s.messages()}
    assert business == {str(d["id"]) for d in rows}

    # The raw receptions: the duplicates are the deliveries that were in flight at a kill,
    # re-sent after the restart under the same id (each receiver deduplicated them).
    raw = [r for s in (globex, acme) for r in s.receptions()]
    duplicates = [r.delivery_id for r in raw if r.outcome == "duplicate"]
    record_property("raw_receptions", len(raw))
    record_property("business_messages", len(business))
    record_property("duplicates_deduplicated", len(duplicates))
    print(f"receptions: {len(raw)} raw, {len(business)} business messages, "
          f"{len(duplicates)} duplicates (ids {sorted(duplicates, key=int)})")
    assert {r.outcome for r in raw} <= {"accepted", "duplicate"}
    assert len(raw) == len(business) + len(duplicates)
    assert duplicates, "no document was in flight at either kill: the test did not test the crash"
    suspects = set().union(*in_flight_at_kills)
    assert set(duplicates) <= suspects, (duplicates, in_flight_at_kills)
