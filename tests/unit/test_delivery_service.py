"""The delivery service: order, retries, dead letters, the circuit breaker, leases, spool acks.

The service runs against the real store (an SQLite file; PostgreSQL too when
``GSEM_TEST_PG_URL`` is set) and real adapters (the in-memory receiver, the spool).
Time is a ``Clock`` the test advances; the store's calls run in the test's thread
(:class:`InlineDatabase`), so one ``run_once`` is one complete round with no real time.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chs_adapters.base import OutboundDelivery
from chs_adapters.memory import InMemoryAdapter, receiver_ack_document
from gsem.config import load_config, render_config
from gsem.db import deliveries, model, partners
from gsem.db.connector import Database
from gsem.delivery.service import DeliveryService
from gsem.errors import ConfigError

#: The clock's start: a fixed moment, so that stored times are easy to reason about.
T0 = dt.datetime(2026, 11, 22, 9, 0, 0)
OWNER = "node-a"


class InlineDatabase:
    """The real store, each call run at once in the calling thread (``Database.run_sync``).

    ``Database.run`` hands results back through the global reactor; unit tests have none,
    so the same transactions run synchronously and the Clock alone decides what is due.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(conn, …)`` in one transaction, now."""
        return self.database.run_sync(fn, *args, **kwargs)


def _seconds(when: dt.datetime) -> float:
    return when.replace(tzinfo=dt.UTC).timestamp()


def _resolve(d: Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the coroutine waited for something the test did not provide"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class World:
    """A store with partners ACME (requester) and GLOBEX (provider), and a service for GLOBEX."""

    def __init__(self, database: Database, tmp_path: Path) -> None:
        self.database = database
        self.db = InlineDatabase(database)
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.clock.advance(_seconds(T0))
        self.log = io.StringIO()
        self.instance = f"globex-{uuid.uuid4().hex}"
        self.memory = InMemoryAdapter.named(self.instance)
        self.run(lambda conn: (partners.add_partner(conn, "ACME", "Acme"),
                               partners.add_partner(conn, "GLOBEX", "Globex")))
        self.set_delivery()
        self.service = self.new_service()
        self._incidents = 0

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.database.run_sync(fn, *args, **kwargs)

    def set_delivery(self, mode: str = "adapter", **config: Any) -> None:
        if mode == "adapter" and "adapter" not in config:
            config = {"adapter": "memory", "options": {"instance": self.instance}, **config}
        self.run(partners.set_delivery, "GLOBEX", mode=mode, config=config)

    def new_service(self, owner: str = OWNER, **kwargs: Any) -> DeliveryService:
        return DeliveryService(self.db, self.clock, owner=owner, hub_cert=self.tmp_path / "hub-cert.pem",
                               hub_key=self.tmp_path / "hub-key.pem", log_stream=self.log,
                               rng=random.Random(7), data_dir=self.tmp_path, **kwargs)

    @property
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), dt.UTC).replace(tzinfo=None)

    def incident(self) -> int:
        self._incidents += 1
        ref = f"REQ-{self._incidents}"

        def add(conn: sa.Connection) -> int:
            return conn.execute(model.incidents.insert().values(
                requester_id="ACME", provider_id="GLOBEX", requester_ref=ref, state="Beginning_State",
                document=b"<SERVICE_INCIDENT/>", problem_with_request=False, version=1,
                created_at=T0, updated_at=T0)).inserted_primary_key[0]

        return self.run(add)

    def delivery(self, incident_id: int, *, transaction: str = "Service_Request",
                 created_at: dt.datetime | None = None) -> int:
        """An accepted message of *incident_id* and its delivery to GLOBEX, due now."""
        when = created_at or self.now

        def add(conn: sa.Connection) -> int:
            message_id = conn.execute(model.messages.insert().values(
                partner_id="ACME", cert_fingerprint="0" * 64, received_at=when, body=b"<SERVICE_INCIDENT/>",
                digest="0" * 64, idempotency_key=uuid.uuid4().hex, transaction_name=transaction,
                requester_ref="REQ", incident_id=incident_id, accepted=True, ack_id=uuid.uuid4().hex[:26],
                timings="{}")).inserted_primary_key[0]
            document = (f"<SERVICE_INCIDENT><TransactionName>{transaction}</TransactionName>"
                        f"<Seq>{message_id}</Seq></SERVICE_INCIDENT>").encode()
            return conn.execute(model.deliveries.insert().values(
                message_id=message_id, incident_id=incident_id, recipient_id="GLOBEX", state="pending",
                document=document, attempts=0, next_attempt_at=when, created_at=when, updated_at=when,
                transaction_name=transaction, requester_ref="REQ")).inserted_primary_key[0]

        return self.run(add)

    def get(self, delivery_id: int) -> deliveries.Delivery:
        return self.run(deliveries.get_delivery, delivery_id).delivery

    def attempts(self, delivery_id: int) -> list[deliveries.Attempt]:
        return self.run(deliveries.get_delivery, delivery_id).attempts

    def round(self, service: DeliveryService | None = None) -> int:
        """One round of the service; how many deliveries it claimed."""
        return _resolve(Deferred.fromCoroutine((service or self.service).run_once()))

    def advance_to(self, when: dt.datetime) -> None:
        self.clock.advance(max(0.0, _seconds(when) - self.clock.seconds()))

    def attempted(self) -> list[int]:
        """Delivery ids in the order the receiver saw attempts."""
        return [d.delivery_id for d in self.memory.attempts]

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture
def world(migrated_database: Database, tmp_path: Path) -> Iterator[World]:
    """The store, two partners, GLOBEX on the in-memory adapter, and a service on a Clock."""
    yield World(migrated_database, tmp_path)


# -- order --------------------------------------------------------------------------------


def test_an_incident_goes_out_in_order_while_others_flow(world: World) -> None:
    """The second message of an incident waits for the first's acknowledgement; another incident does not."""
    a, b = world.incident(), world.incident()
    a1, a2 = world.delivery(a), world.delivery(a, transaction="Entitlement")
    b1 = world.delivery(b)
    world.memory.fail_transiently(1, delivery_id=a1)

    world.round()
    assert world.attempted() == [a1, b1]
    assert world.get(b1).state == "acknowledged"
    assert world.get(a2).attempts == 0

    for _ in range(3):  # a1 not due yet: nothing of incident a moves
        world.round()
    assert world.attempted() == [a1, b1]

    world.advance_to(world.get(a1).next_attempt_at)
    world.round()
    world.round()
    assert world.attempted() == [a1, b1, a1, a2]
    assert [r.delivery_id for r in world.memory.received] == [b1, a1, a2]
    assert {world.get(i).state for i in (a1, a2, b1)} == {"acknowledged"}


# -- retries ------------------------------------------------------------------------------


def test_a_transient_failure_is_retried_later_with_backoff(world: World) -> None:
    """Refused twice: each retry waits (growing), and the third attempt is acknowledged."""
    world.set_delivery(retry={"base": 10, "cap": 1000})
    d = world.delivery(world.incident())
    world.memory.fail_transiently(2, error="connection refused")

    world.round()
    first = world.get(d)
    assert (first.state, first.attempts, first.last_error) == ("pending", 1, "connection refused")
    assert world.now <= first.next_attempt_at <= world.now + dt.timedelta(seconds=10)

    world.clock.advance(max(0.0, (first.next_attempt_at - world.now).total_seconds() - 0.5))
    world.round()  # not due yet
    assert world.get(d).attempts == 1

    world.advance_to(first.next_attempt_at)
    world.round()
    second = world.get(d)
    assert second.attempts == 2
    assert world.now <= second.next_attempt_at <= world.now + dt.timedelta(seconds=20)

    world.advance_to(second.next_attempt_at)
    world.round()
    done = world.get(d)
    assert (done.state, done.attempts) == ("acknowledged", 3)
    assert [a.outcome for a in world.attempts(d)] == ["transient", "transient", "acknowledged"]


def test_retry_after_is_honoured(world: World) -> None:
    """A receiver asking to wait 120 s is not tried again sooner."""
    d = world.delivery(world.incident())
    world.memory.fail_transiently(1, error="HTTP 503", retry_after=120)
    world.round()
    assert world.get(d).next_attempt_at >= T0 + dt.timedelta(seconds=120)


def test_retries_exhausted_make_the_delivery_dead(world: World) -> None:
    """After the partner's max_attempts transient failures the delivery is dead, with the last error."""
    world.set_delivery(retry={"base": 1, "cap": 1, "max_attempts": 3})
    d = world.delivery(world.incident())
    world.memory.fail_transiently(10, error="connection reset")
    for _ in range(3):
        world.round()
        if world.get(d).next_attempt_at:
            world.advance_to(world.get(d).next_attempt_at)
    dead = world.get(d)
    assert (dead.state, dead.attempts) == ("dead", 3)
    assert "connection reset" in dead.last_error and "gave up after 3 attempts" in dead.last_error
    world.clock.advance(3600)
    world.round()
    assert len(world.memory.attempts) == 3


def test_a_delivery_older_than_max_age_dies_at_its_next_failure(world: World) -> None:
    """A delivery created two days ago that fails again is dead at once (default max age 24 h)."""
    d = world.delivery(world.incident(), created_at=T0 - dt.timedelta(days=2))
    world.memory.fail_transiently(1)
    world.round()
    assert world.get(d).state == "dead"


# -- permanent failures -------------------------------------------------------------------


def test_a_refusal_is_dead_at_once_and_holds_only_its_incident(world: World) -> None:
    """Acknowledge=No: dead after one attempt with the receiver's errors; its incident waits, others flow."""
    a, b = world.incident(), world.incident()
    a1, a2 = world.delivery(a), world.delivery(a, transaction="Entitlement")
    world.memory.reject("schema-violation", "Severity is not a number", delivery_id=a1)
    world.round()
    b1 = world.delivery(b)
    for _ in range(3):
        world.clock.advance(60)
        world.round()

    dead = world.get(a1)
    assert (dead.state, dead.attempts) == ("dead", 1)
    assert dead.last_error == "schema-violation: Severity is not a number"
    assert b"<Acknowledge>No</Acknowledge>" in dead.receiver_ack
    assert world.get(a2).state == "pending" and world.get(a2).attempts == 0
    assert world.get(b1).state == "acknowledged"
    assert world.attempted() == [a1, b1]


# -- circuit breaker ----------------------------------------------------------------------


def test_the_circuit_breaker_pauses_a_failing_partner_then_probes(world: World) -> None:
    """Five failures open the circuit: no attempts for 30 s, then one probe; success lets all flow."""
    world.set_delivery(retry={"base": 1, "cap": 1})
    ids = [world.delivery(world.incident()) for _ in range(8)]
    world.memory.fail_transiently(1000)

    world.round()
    assert len(world.memory.attempts) == 5  # the sixth found the circuit open
    assert {world.get(i).attempts for i in ids[5:]} == {0}

    for _ in range(5):  # within the cool-down nothing is attempted
        world.clock.advance(5)
        world.round()
    assert len(world.memory.attempts) == 5

    world.clock.advance(6)  # 31 s after opening: one probe
    world.round()
    assert len(world.memory.attempts) == 6
    world.round()
    assert len(world.memory.attempts) == 6  # the failed probe reopened it

    world.clock.advance(59)
    world.round()
    assert len(world.memory.attempts) == 6  # the cool-down doubled to 60 s

    world.memory.heal()
    world.clock.advance(2)
    world.round()  # the probe is acknowledged, which closes the circuit for the rest
    assert len(world.memory.attempts) == 6 + len(ids)
    assert {world.get(i).state for i in ids} == {"acknowledged"}


def test_a_partners_own_circuit_breaker_settings_apply(world: World) -> None:
    """With pause_after 2 and pause 10 s, two failures pause GLOBEX for 10 s, not five for 30 s."""
    world.set_delivery(retry={"base": 1, "cap": 1, "pause_after": 2, "pause": 10, "max_pause": 10})
    [world.delivery(world.incident()) for _ in range(4)]
    world.memory.fail_transiently(1000)

    world.round()
    assert len(world.memory.attempts) == 2  # the third found the circuit open
    world.clock.advance(9)
    world.round()
    assert len(world.memory.attempts) == 2
    world.clock.advance(2)  # 11 s after opening: one probe
    world.round()
    assert len(world.memory.attempts) == 3
    world.clock.advance(11)  # the failed probe paused it again, for at most max_pause
    world.round()
    assert len(world.memory.attempts) == 4


# -- leases -------------------------------------------------------------------------------


def test_a_lost_lease_is_harmless(world: World) -> None:
    """When another node took the delivery meanwhile, this node's result changes nothing."""
    d = world.delivery(world.incident())

    def another_node_takes_it(delivery: OutboundDelivery) -> None:
        world.run(deliveries.release_leases, OWNER)
        world.run(deliveries.claim_due, owner="node-b", now=world.now, lease_seconds=60)

    world.memory.during_delivery(another_node_takes_it)
    world.round()
    held = world.get(d)
    assert (held.state, held.attempts, held.lease_owner) == ("pending", 0, "node-b")
    assert world.attempts(d) == []
    assert world.log_lines()[-1]["lease_lost"] is True


def test_a_restarted_node_releases_its_own_leases_not_others(world: World) -> None:
    """Deliveries a crashed node had claimed go out at once after its restart; another node's wait."""
    mine, theirs = world.delivery(world.incident()), world.delivery(world.incident())
    world.run(deliveries.claim_due, owner=OWNER, now=world.now, lease_seconds=60, limit=1)
    world.run(deliveries.claim_due, owner="node-b", now=world.now, lease_seconds=60, limit=1)
    assert world.get(mine).lease_owner == OWNER

    restarted = world.new_service()
    released = _resolve(Deferred.fromCoroutine(restarted.release_own_leases()))
    world.round(restarted)
    assert released == 1
    assert world.attempted() == [mine]
    assert world.get(theirs).lease_owner == "node-b"


# -- robustness and the log -----------------------------------------------------------------


def test_an_adapter_bug_is_a_transient_failure_and_the_loop_goes_on(world: World) -> None:
    """An exception inside an adapter is recorded as a transient failure; later rounds still deliver."""
    d = world.delivery(world.incident())

    def bug(delivery: OutboundDelivery) -> None:
        raise RuntimeError("adapter bug")

    world.memory.during_delivery(bug)
    world.round()
    failed = world.get(d)
    assert failed.state == "pending" and "RuntimeError: adapter bug" in failed.last_error
    world.memory.heal()
    world.advance_to(failed.next_attempt_at)
    world.round()
    assert world.get(d).state == "acknowledged"


def test_one_json_line_per_attempt(world: World) -> None:
    """Operators get one JSON line per attempt with who, what, how it went and what is next."""
    incident = world.incident()
    d = world.delivery(incident)
    world.memory.fail_transiently(1, error="HTTP 503")
    world.round()
    world.advance_to(world.get(d).next_attempt_at)
    world.round()
    first, second = world.log_lines()
    assert first["event"] == "delivery_attempt"
    assert {k: first[k] for k in ("delivery_id", "recipient", "incident_id", "transaction", "attempt",
                                   "outcome", "error", "node")} == {
        "delivery_id": d, "recipient": "GLOBEX", "incident_id": incident, "transaction": "Service_Request",
        "attempt": 1, "outcome": "transient", "error": "HTTP 503", "node": OWNER}
    assert first["next_attempt_at"].endswith("Z") and "duration_ms" in first and "http_status" in first
    assert (second["attempt"], second["outcome"], second["state"], second["next_attempt_at"]) == (
        2, "acknowledged", "acknowledged", None)


def test_the_running_loop_delivers_on_the_clock(world: World) -> None:
    """Started, the service delivers at once and picks up new deliveries every poll interval."""
    first = world.delivery(world.incident())
    world.service.start()
    assert world.get(first).state == "acknowledged"
    second = world.delivery(world.incident())
    world.clock.advance(0.2)
    assert world.get(second).state == "acknowledged"
    _resolve(Deferred.fromCoroutine(world.service.stop()))
    third = world.delivery(world.incident())
    world.clock.advance(10)
    assert world.get(third).state == "pending"


def test_a_misconfigured_adapter_fails_deliveries_visibly(world: World) -> None:
    """An adapter that cannot be loaded leaves the reason on the delivery for operators."""
    world.set_delivery(adapter="no_such_adapter")
    d = world.delivery(world.incident())
    world.round()
    failed = world.get(d)
    assert failed.state == "pending" and "chs_adapters.no_such_adapter" in failed.last_error


# -- spool: acknowledgements come later ------------------------------------------------------


def test_spool_acknowledgements_are_picked_up_and_release_the_next_message(world: World) -> None:
    """Written to the outbox = sent; the receiver's ack file completes it and lets the next one out."""
    outbox, acks = world.tmp_path / "outbox", world.tmp_path / "acks"
    world.set_delivery("spool", outbox=str(outbox), acks=str(acks))
    incident = world.incident()
    d1, d2 = world.delivery(incident), world.delivery(incident, transaction="Entitlement")

    world.round()
    assert world.get(d1).state == "sent"
    assert len(list(outbox.glob("*.xml"))) == 1
    world.round()
    assert len(list(outbox.glob("*.xml"))) == 1  # d2 waits for d1's acknowledgement

    def ack_file(delivery_id: int, acknowledged: bool, errors: list[tuple[str, str]] | None = None) -> bytes:
        outbound = OutboundDelivery(delivery_id, "GLOBEX", incident, "Service_Request", "REQ", b"", 1)
        return receiver_ack_document(outbound, acknowledged=acknowledged, errors=errors)

    (acks / f"{d1}.xml").write_bytes(ack_file(d1, True))
    world.round()
    assert world.get(d1).state == "acknowledged"
    assert (acks / "processed" / f"{d1}.xml").exists()
    assert world.get(d2).state == "sent"

    (acks / f"{d2}-rejected.xml").write_bytes(ack_file(d2, False, [("rule-violation", "no such contract")]))
    (acks / "99999.xml").write_bytes(ack_file(99999, True))
    world.round()
    dead = world.get(d2)
    assert (dead.state, dead.last_error) == ("dead", "rule-violation: no such contract")
    assert (acks / "rejected" / "99999.xml").exists()
    receipts = [line for line in world.log_lines() if line["event"] == "receiver_acknowledgement"]
    assert [(r["delivery_id"], r["acknowledged"]) for r in receipts] == [(d1, True), (d2, False)]


# -- configuration --------------------------------------------------------------------------


def test_delivery_settings_default_and_a_stable_node_id(tmp_path: Path) -> None:
    """A new data directory delivers by default; its node id stays the same across loads."""
    (tmp_path / "gsem.toml").write_text(render_config(), "utf-8")
    first, second = load_config(tmp_path), load_config(tmp_path)
    assert (first.delivery.enabled, first.delivery.poll_interval, first.delivery.lease_seconds,
            first.delivery.concurrency) == (True, 0.2, 60.0, 16)
    assert first.delivery.node_id and first.delivery.node_id == second.delivery.node_id
    other = tmp_path / "other"
    other.mkdir()
    (other / "gsem.toml").write_text(render_config(), "utf-8")
    assert load_config(other).delivery.node_id != first.delivery.node_id


def test_bad_delivery_settings_are_all_reported(tmp_path: Path) -> None:
    """Every wrong [delivery] setting is named in one error."""
    text = render_config().replace("concurrency = 16", "concurrency = 0").replace(
        "enabled = true", 'enabled = "yes"\nspeed = 3')
    (tmp_path / "gsem.toml").write_text(text, "utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    message = str(raised.value)
    assert "concurrency" in message and "enabled" in message and "speed" in message
