"""Push delivery through real sockets to partners' CHS servers (SPEC §7), on SQLite.

A real ``gsem serve`` pushes to two test partner servers (``partner_server.py``: their
own CA, requiring the hub's client certificate, deduplicating by ``Gsem-Delivery-Id``),
GLOBEX's behind a fault-injecting proxy (``fault_proxy.py``).  The demo lifecycle of
``tests/fixtures/lifecycle`` is posted with curl; each side must receive the other's
transactions, exactly once and in order, whatever the network did meanwhile, with every
retry inside the configured backoff envelope.  A receiver's ``Acknowledge=No`` must kill
one delivery at once and hold back only that incident, until an operator replays or
discards it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from hub import RunningHub, ack_text
from partner_server import (
    INBOUND_PATH,
    PartnerServer,
    Step,
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

from gsem.pki import fingerprint_sha256

pytestmark = pytest.mark.integration

#: Short enough that a whole fault plan runs in seconds (``--timeout``, ``--retry-*``),
#: long enough for a TLS handshake and an answer on a busy two-core machine.
TIMEOUT = 1.5
RETRY_BASE = 0.25
RETRY_CAP = 2.5
RETRY_AFTER = 2
POLL = 0.1  # [delivery] poll_interval
#: What a loaded two-core machine may add to any timer (process scheduling, SQLite fsync).
SLACK = 1.0
#: What the proxy does to GLOBEX's connections, one each, once it listens again (see the test).
PROXY_PLAN = ["pass", "reset", "blackhole", "pass", "pass", "delay", "pass", "pass", "close"]


@dataclass
class Rig:
    """A hub (not started yet), a partner server per demo partner, a proxy before GLOBEX's."""

    hub: RunningHub
    globex: PartnerServer  # receives ACME's transactions
    acme: PartnerServer  # receives GLOBEX's transactions
    proxy: FaultProxy


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """The hub and its partners' servers; everything is stopped and checked for tracebacks after."""
    hub = RunningHub.create(tmp_path / "hub", start=False)
    set_delivery_config(hub, poll_interval=POLL)
    globex = PartnerServer.start(tmp_path / "globex-chs", hub_ca=hub.ca_cert)
    acme = PartnerServer.start(tmp_path / "acme-chs", hub_ca=hub.ca_cert)
    proxy = FaultProxy("127.0.0.1", globex.port).start()
    try:
        yield Rig(hub, globex, acme, proxy)
    finally:
        proxy.stop()
        hub.stop()
        globex.stop()
        acme.stop()
    hub.assert_no_traceback()
    globex.assert_no_traceback()
    acme.assert_no_traceback()


def _post_all(hub: RunningHub, steps: list[Step]) -> None:
    for step in steps:
        status, ack = hub.post(step.sender, step.document)
        assert (status, ack_text(ack, "Acknowledge")) == (200, "Yes"), \
            f"{step.requester_id} {step.transaction}: HTTP {status}"


def _ts(value: dt.datetime | str) -> float:
    """A naive-UTC database time as Unix seconds (comparable with the servers' time.time())."""
    if isinstance(value, str):  # SQLite hands raw queries' DATETIME back as text
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC).timestamp()


def _attempts(hub: RunningHub, recipient: str) -> list[dict]:
    return hub.query(
        "SELECT a.delivery_id, a.attempt, a.started_at, a.finished_at, a.outcome, a.http_status, a.error, "
        "a.node FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id "
        "WHERE d.recipient_id = :r ORDER BY a.started_at, a.id", r=recipient)


def test_push_through_faults_delivers_every_message_once_in_order_within_the_backoff_envelope(rig: Rig) -> None:
    """Refused, reset, silent, slow, 500 and 503+Retry-After answers delay the lifecycle but each side gets it once, in order, retried inside the envelope."""
    hub, globex, acme, proxy = rig.hub, rig.globex, rig.acme, rig.proxy
    set_delivery(hub, "GLOBEX", "--mode", "push", "--url", proxy.url(INBOUND_PATH), "--ca", globex.ca_cert,
                 "--timeout", TIMEOUT, "--max-attempts", 30, "--retry-base", RETRY_BASE, "--retry-cap", RETRY_CAP)
    set_delivery(hub, "ACME", "--mode", "push", "--url", acme.url, "--ca", acme.ca_cert,
                 "--timeout", 5, "--retry-base", RETRY_BASE, "--retry-cap", RETRY_CAP)
    # One request per connection, so that the proxy sees every attempt as a connection.
    # The plan, at most four failures in a row (the circuit breaker opens at five):
    #   01: refused (socket closed) 1-4 times, then through               -> request 1: Yes
    #   03: reset mid-request, never answered, then through               -> request 2: 503
    #       Retry-After 2, then                                            -> request 3: Yes
    #   06: delayed past the timeout, then                                 -> request 4: 500,
    #       then                                                          -> request 5: Yes
    #   08: reset before a byte is read, then through                     -> request 6: Yes
    globex.configure(close_connections=True,
                     faults=[{}, {"status": 503, "retry_after": RETRY_AFTER}, {}, {"status": 500}])
    acme.fail_next({"status": 500})  # ACME's first delivery (keep-alive, no proxy) is retried too
    proxy.refuse()
    hub.start()

    steps = lifecycle()
    _post_all(hub, steps)
    # Listen again after the first refusal: the next refusals come quickly (full jitter
    # can make a retry almost immediate), and a fifth in a row would open the breaker.
    wait_until(lambda: _attempts(hub, "GLOBEX"), timeout=15, what="a refused attempt to GLOBEX", interval=0.02)
    proxy.script(PROXY_PLAN)
    proxy.set_mode("pass", delay=TIMEOUT + 0.5)

    globex_wanted = expected_for("GLOBEX", steps)
    acme_wanted = expected_for("ACME", steps)
    globex.wait_for_messages(len(globex_wanted), timeout=60)
    acme.wait_for_messages(len(acme_wanted), timeout=30)
    wait_until(lambda: all(d["state"] == "acknowledged" for d in delivery_rows(hub)), timeout=15,
               what="every delivery acknowledged")
    rows = hub_deliveries(hub)

    # Exactly once and in order, as the hub forwards them, from the hub's certificate.
    assert_received_in_order(globex.messages(), globex_wanted)
    assert_received_in_order(acme.messages(), acme_wanted)
    hub_fingerprint = fingerprint_sha256(hub.certs_dir.joinpath("hub-cert.pem").read_bytes())
    for server in (globex, acme):
        receptions = server.receptions()
        assert [r.outcome for r in receptions if r.outcome not in ("accepted", "fault")] == [], \
            [(r.delivery_id, r.outcome) for r in receptions]
        assert {r.peer_fingerprint for r in receptions} == {hub_fingerprint}

    # The operator's view: eight deliveries, acknowledged, with the receiver's own ack.
    assert len(rows) == len(globex_wanted) + len(acme_wanted)
    received = {r.delivery_id: r for s in (globex, acme) for r in s.messages()}
    for row in rows:
        assert str(row["id"]) in received
        assert row["receiver_ack"] == "Yes", row
    table = hub.gsem("deliveries", "list")
    assert table.count("acknowledged") == len(rows), table

    # Every attempt the hub made to GLOBEX, from its own records: refused ones never
    # reached the proxy; every other one is exactly one proxy connection.
    attempts = _attempts(hub, "GLOBEX")
    connections = proxy.log()
    refused = [a for a in attempts if a["outcome"] == "transient" and "refused" in (a["error"] or "")]
    assert refused, attempts
    assert len(attempts) == len(refused) + len(connections), (attempts, connections)
    assert [c.mode for c in connections] == [*PROXY_PLAN, "pass"], connections
    # The reset came after the TLS handshake (the partner had answered it) and before the
    # request was through (the same document took more bytes when it went through).
    reset, same_document = connections[1], connections[3]
    assert reset.ended == "reset" and reset.bytes_down > 0 and reset.bytes_up < same_document.bytes_up, \
        (reset, same_document)

    # The backoff envelope as the network saw it: no gap between two attempts longer than
    # one attempt's timeout plus the cap (and the poll interval), none after the 503
    # shorter than its Retry-After.
    seen = sorted([_ts(a["started_at"]) for a in refused] + [c.at for c in connections])
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    summary = [(a["delivery_id"], a["attempt"], a["outcome"], a["http_status"], a["error"], a["started_at"])
               for a in attempts]
    assert max(gaps) <= TIMEOUT + RETRY_CAP + POLL + SLACK, (gaps, summary, connections)
    (told,) = [r for r in globex.receptions() if r.retry_after is not None]
    after = [c.at for c in connections if c.at > told.at]
    assert after and after[0] - told.at >= RETRY_AFTER, (told.at, after[:1])

    # The same per delivery, from the hub's records: attempt n+1 starts within the
    # full-jitter ceiling min(cap, base * 2**(n-1)) after attempt n ended.
    by_delivery: dict[int, list[dict]] = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append(a)
    for delivery_id, tries in by_delivery.items():
        tries.sort(key=lambda a: a["attempt"])
        assert [a["outcome"] for a in tries[:-1]] == ["transient"] * (len(tries) - 1)
        assert tries[-1]["outcome"] == "acknowledged"
        for n, (prev, nxt) in enumerate(zip(tries, tries[1:], strict=False), start=1):
            wait = _ts(nxt["started_at"]) - _ts(prev["finished_at"])
            ceiling = min(RETRY_CAP, RETRY_BASE * 2 ** (n - 1))
            floor = RETRY_AFTER if prev["http_status"] == 503 else 0.0
            assert floor - 0.01 <= wait <= max(ceiling, floor) + POLL + SLACK, \
                f"delivery {delivery_id}: attempt {n + 1} came {wait:.3f} s after attempt {n} ({prev['error']})"
            assert _ts(prev["finished_at"]) - _ts(prev["started_at"]) <= TIMEOUT + SLACK
    assert sorted(a["http_status"] for a in attempts if a["http_status"]) == [200] * 4 + [500, 503]

    # One JSON line per attempt on the hub's standard output, matching its records.
    lines = attempt_lines(hub)
    all_attempts = _attempts(hub, "GLOBEX") + _attempts(hub, "ACME")
    assert sorted((x["delivery_id"], x["attempt"], x["outcome"]) for x in lines) == \
        sorted((a["delivery_id"], a["attempt"], a["outcome"]) for a in all_attempts)
    assert {x["recipient"] for x in lines} == {"ACME", "GLOBEX"}

    # What an operator sees of the delivery that got the 503: every attempt, the receiver's ack.
    (slow,) = [d for d, tries in by_delivery.items() if any(a["http_status"] == 503 for a in tries)]
    shown = hub.gsem("deliveries", "show", str(slow))
    assert "503" in shown and "acknowledged" in shown, shown
    assert received[str(slow)].transaction in shown


def test_acknowledge_no_kills_one_delivery_and_holds_only_its_incident(rig: Rig) -> None:
    """A receiver's Acknowledge=No makes that delivery dead at once with its errors kept and holds its incident's later messages, no other's, until an audited replay (or discard) releases them in order."""
    hub, globex, acme = rig.hub, rig.globex, rig.acme
    for partner, server in (("GLOBEX", globex), ("ACME", acme)):
        set_delivery(hub, partner, "--mode", "push", "--url", server.url, "--ca", server.ca_cert,
                     "--timeout", 5, "--retry-base", RETRY_BASE, "--retry-cap", RETRY_CAP)
    # GLOBEX refuses every message of two incidents: one will be replayed, one discarded.
    poisoned = {"POISON-2": "replay", "POISON-4": "discard"}
    globex.configure(reject_requester_ids=list(poisoned))
    hub.start()

    incidents = {rid: lifecycle(rid, f"GX-{rid}") for rid in ("POISON-1", "POISON-2", "POISON-3", "POISON-4")}
    for number in range(len(incidents["POISON-1"])):  # step by step, interleaving the incidents
        _post_all(hub, [steps[number] for steps in incidents.values()])
    to_globex = {rid: expected_for("GLOBEX", steps) for rid, steps in incidents.items()}
    to_acme = {rid: expected_for("ACME", steps) for rid, steps in incidents.items()}
    healthy = ("POISON-1", "POISON-3")

    # The other incidents flow, both ways.  Each poisoned one got one answer, No, and
    # nothing after it: per incident a message waits for every earlier one, whoever its
    # receiver (SPEC §7: "the next message of an incident is not delivered until the
    # previous one is acknowledged").
    globex.wait_for_messages(sum(len(to_globex[r]) for r in healthy), timeout=30)
    acme.wait_for_messages(sum(len(to_acme[r]) for r in healthy), timeout=30)
    wait_until(lambda: len([d for d in delivery_rows(hub) if d["state"] == "dead"]) == 2, timeout=10,
               what="two dead deliveries")
    dead = {d["requester_id"]: d for d in json.loads(hub.gsem("deliveries", "dead", "--format", "json"))}
    assert {r: d["transaction"] for r, d in dead.items()} == dict.fromkeys(poisoned, "Service_Request"), dead
    assert {d["receiver_ack"] for d in dead.values()} == {"No"}
    assert_received_in_order(globex.messages(), [s for r in healthy for s in to_globex[r]])
    assert_received_in_order(acme.messages(), [s for r in healthy for s in to_acme[r]])
    pending = [(d["requester_ref"], d["transaction_name"]) for d in delivery_rows(hub) if d["state"] == "pending"]
    assert sorted(pending) == sorted((r, s.transaction) for r in poisoned for s in incidents[r][1:] if s.recipient)
    for rid in poisoned:
        seen = [(r.transaction, r.outcome) for r in globex.receptions() if r.requester_id == rid]
        assert seen == [("Service_Request", "rejected")], \
            f"{rid}: a refused delivery was tried again, or the incident's next message went out: {seen}"
        (only,) = _attempts_of(hub, dead[rid]["id"])
        assert only["outcome"] == "permanent"

    shown = hub.gsem("deliveries", "show", str(dead["POISON-2"]["id"]))
    assert "delivery {}: dead".format(dead["POISON-2"]["id"]) in shown, shown
    assert "refuses Service_Request for POISON-2" in shown and "<Acknowledge>No</Acknowledge>" in shown, shown

    # The operators' decisions release the incidents, in order.
    globex.configure(reject_requester_ids=[])
    reasons = {rid: f"{decision}: GLOBEX fixed its mapping of {rid}" for rid, decision in poisoned.items()}
    for rid, decision in poisoned.items():
        hub.gsem("deliveries", decision, str(dead[rid]["id"]), "--reason", reasons[rid], "--actor", "ops-alice")
    released = {rid: to_globex[rid] if decision == "replay" else to_globex[rid][1:]
                for rid, decision in poisoned.items()}
    to_globex_now = [s for r in healthy for s in to_globex[r]] + [s for r in poisoned for s in released[r]]
    globex.wait_for_messages(len(to_globex_now), timeout=30)
    acme.wait_for_messages(sum(map(len, to_acme.values())), timeout=30)
    assert_received_in_order(globex.messages(), to_globex_now)
    assert_received_in_order(acme.messages(), [s for steps in to_acme.values() for s in steps])
    rows = wait_until(lambda: (r := delivery_rows(hub)) and not [d for d in r if d["state"] == "pending"] and r,
                      timeout=10, what="no pending delivery left")
    assert sorted(d["state"] for d in rows) == sorted(
        ["acknowledged"] * (len(to_globex_now) + sum(map(len, to_acme.values()))) + ["replayed", "discarded"]), rows

    # The audit trail: who, what, why.
    for rid, decision in poisoned.items():
        audit = hub.query("SELECT action, actor, reason, new_delivery_id FROM delivery_audit WHERE delivery_id = :d",
                          d=dead[rid]["id"])
        assert [(a["action"], a["actor"], a["reason"]) for a in audit] == [(decision, "ops-alice", reasons[rid])]
        if decision == "replay":
            (again,) = [r for r in globex.messages() if r.delivery_id == str(audit[0]["new_delivery_id"])]
            assert again.transaction == "Service_Request"
    shown = hub.gsem("deliveries", "show", str(dead["POISON-2"]["id"]))
    assert f"replay by ops-alice -> delivery {_replay_of(hub, dead['POISON-2']['id'])}: {reasons['POISON-2']}" \
        in shown, shown


def _attempts_of(hub: RunningHub, delivery_id: int) -> list[dict]:
    return hub.query("SELECT attempt, outcome, http_status, error FROM delivery_attempts WHERE delivery_id = :d "
                     "ORDER BY attempt", d=delivery_id)


def _replay_of(hub: RunningHub, delivery_id: int) -> int:
    return hub.scalar("SELECT id FROM deliveries WHERE replay_of = :d", d=delivery_id)
