"""The outbox of deliveries on SQLite and PostgreSQL: order, leases, attempts, mailboxes, operators."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from gsem.db import deliveries, model, partners
from gsem.db.connector import Database

NOW = dt.datetime(2026, 11, 22, 12, 0, 0)
LEASE = 30.0


def _at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


@pytest.fixture
def db(migrated_database: Database) -> Database:
    """A migrated database with GLOBEX (push), ACME (pull), SPOOLCO (spool)."""
    run = migrated_database.run_sync
    run(partners.add_partner, "ACME", "Acme", delivery_mode="pull")
    run(partners.add_partner, "GLOBEX", "Globex", delivery_mode="push")
    run(partners.add_partner, "SPOOLCO", "Spool Co", delivery_mode="spool")
    return migrated_database


Outbox = Callable[..., int]


@pytest.fixture
def outbox(db: Database, store_rows) -> Outbox:
    """``outbox(incident_ref, recipient=GLOBEX, transaction=…)``: one accepted message and its delivery.

    Incidents are made on first use of a RequesterID; message ids grow with every call.
    """
    incidents: dict[str, int] = {}

    def add(ref: str, recipient: str = "GLOBEX", transaction: str = "Service_Request",
            due: dt.datetime = NOW) -> int:
        def thd(conn: sa.Connection) -> int:
            if ref not in incidents:
                incidents[ref] = store_rows.incident(conn, requester_ref=ref, when=NOW)
            incident_id = incidents[ref]
            _, message_id = store_rows.ack(conn, transaction=transaction, requester_ref=ref,
                                           created_at=NOW, incident_id=incident_id)
            return conn.execute(model.deliveries.insert().values(
                message_id=message_id, incident_id=incident_id, recipient_id=recipient,
                state="pending", transaction_name=transaction, requester_ref=ref,
                document=f"<SERVICE_INCIDENT>{ref} {transaction}</SERVICE_INCIDENT>".encode(),
                attempts=0, next_attempt_at=due, created_at=NOW, updated_at=NOW,
            )).inserted_primary_key[0]

        return db.run_sync(thd)

    return add


def _claim(db: Database, owner: str = "node-a", at: dt.datetime = NOW, **kwargs) -> list[int]:
    return [d.id for d in db.run_sync(deliveries.claim_due, owner=owner, now=at, lease_seconds=LEASE,
                                      **kwargs)]


def _set_state(db: Database, delivery_id: int, state: str) -> None:
    db.run_sync(lambda conn: conn.execute(
        model.deliveries.update().where(model.deliveries.c.id == delivery_id).values(state=state)))


def _get(db: Database, delivery_id: int) -> deliveries.Delivery:
    return db.run_sync(deliveries.get_delivery, delivery_id).delivery


# -- order and claiming --------------------------------------------------------------------


def test_claim_takes_the_head_of_each_incident_only(db: Database, outbox: Outbox) -> None:
    """Of an incident's pending deliveries only the oldest is due; other incidents flow."""
    first = outbox("REQ-1")
    second = outbox("REQ-1", transaction="Entitlement", recipient="GLOBEX")
    other = outbox("REQ-2")
    claimed = db.run_sync(deliveries.claim_due, owner="node-a", now=NOW, lease_seconds=LEASE)
    assert [d.id for d in claimed] == [first, other]
    assert {(d.lease_owner, d.lease_until) for d in claimed} == {("node-a", _at(LEASE))}
    assert second not in _claim(db, "node-b", _at(LEASE + 1))


@pytest.mark.parametrize(("earlier_state", "later_due"), [
    ("pending", False), ("sent", False), ("dead", False),
    ("acknowledged", True), ("discarded", True), ("replayed", True),
])
def test_a_later_delivery_waits_for_the_earlier_one(db: Database, outbox: Outbox, earlier_state: str,
                                                    later_due: bool) -> None:
    """A later delivery of an incident is held while an earlier one is pending, sent or dead."""
    earlier = outbox("REQ-1")
    later = outbox("REQ-1", transaction="Entitlement")
    _set_state(db, earlier, earlier_state)
    expected = [later] if later_due else ([earlier] if earlier_state == "pending" else [])
    assert _claim(db) == expected


def test_claim_skips_deliveries_not_yet_due_and_other_modes(db: Database, outbox: Outbox) -> None:
    """A delivery waits for its next attempt time; pull partners are left to their mailbox."""
    later = outbox("REQ-1", due=_at(60))
    pulled = outbox("REQ-2", recipient="ACME")
    spooled = outbox("REQ-3", recipient="SPOOLCO")
    assert _claim(db) == [spooled]
    assert _claim(db, "node-b", _at(60), modes=("push",)) == [later]
    assert pulled not in _claim(db, "node-c", _at(3600))


def test_a_claimed_delivery_is_leased_until_expiry_or_release(db: Database, outbox: Outbox) -> None:
    """Another node cannot claim a leased delivery until the lease ends or its owner restarts."""
    delivery = outbox("REQ-1")
    assert _claim(db, "node-a") == [delivery]
    assert _claim(db, "node-b", _at(LEASE - 1)) == []
    assert _claim(db, "node-b", _at(LEASE + 1)) == [delivery]
    assert db.run_sync(deliveries.release_leases, "node-b") == 1
    assert db.run_sync(deliveries.release_leases, "node-b") == 0
    assert _get(db, delivery).lease_owner is None
    assert _claim(db, "node-c", _at(LEASE + 2)) == [delivery]


# -- attempts --------------------------------------------------------------------------------


def _attempt(db: Database, delivery_id: int, outcome: str, owner: str = "node-a", **kwargs):
    return db.run_sync(deliveries.record_attempt, delivery_id, owner=owner, started_at=_at(1),
                       finished_at=_at(2), outcome=outcome, **kwargs)


def test_record_attempt_acknowledged_and_accepted(db: Database, outbox: Outbox) -> None:
    """Yes from the receiver acknowledges it; a spool hand-over leaves it sent, awaiting the receiver."""
    acked, spooled = outbox("REQ-1"), outbox("REQ-2", recipient="SPOOLCO")
    assert _claim(db) == [acked, spooled]
    d = _attempt(db, acked, "acknowledged", http_status=200, receiver_ack=b"<ACKNOWLEDGEMENT>Yes</ACKNOWLEDGEMENT>")
    assert (d.state, d.attempts, d.delivered_at, d.acknowledged_at, d.receiver_result) == (
        "acknowledged", 1, _at(2), _at(2), "Yes")
    assert (d.lease_owner, d.lease_until, d.receiver_ack) == (None, None, b"<ACKNOWLEDGEMENT>Yes</ACKNOWLEDGEMENT>")
    d = _attempt(db, spooled, "accepted")
    assert (d.state, d.delivered_at, d.acknowledged_at, d.receiver_result) == ("sent", _at(2), None, None)
    attempts = db.run_sync(deliveries.get_delivery, acked).attempts
    assert [(a.attempt, a.node, a.outcome, a.http_status, a.started_at, a.finished_at) for a in attempts] == [
        (1, "node-a", "acknowledged", 200, _at(1), _at(2))]


def test_record_attempt_failures(db: Database, outbox: Outbox) -> None:
    """A transient failure is retried later, the last one goes dead; a permanent one is dead at once."""
    retried, exhausted, refused = outbox("REQ-1"), outbox("REQ-2"), outbox("REQ-3")
    _claim(db)
    d = _attempt(db, retried, "transient", error="connection refused", next_attempt_at=_at(90))
    assert (d.state, d.attempts, d.last_error, d.next_attempt_at, d.lease_owner) == (
        "pending", 1, "connection refused", _at(90), None)
    d = _attempt(db, exhausted, "transient", error="HTTP 503", http_status=503, dead=True)
    assert (d.state, d.last_error, d.next_attempt_at) == ("dead", "HTTP 503", None)
    d = _attempt(db, refused, "permanent", error="schema-violation: bad Priority", http_status=422,
                 receiver_ack=b"<ACKNOWLEDGEMENT>No</ACKNOWLEDGEMENT>")
    assert (d.state, d.last_error, d.receiver_result) == ("dead", "schema-violation: bad Priority", "No")
    assert _claim(db, "node-b", _at(89)) == []
    assert _claim(db, "node-b", _at(90)) == [retried]
    d = _attempt(db, retried, "transient", owner="node-b", error="timed out", next_attempt_at=_at(200))
    attempts = db.run_sync(deliveries.get_delivery, retried).attempts
    assert [(a.attempt, a.node, a.error) for a in attempts] == [
        (1, "node-a", "connection refused"), (2, "node-b", "timed out")]


def test_an_attempt_after_losing_the_lease_changes_nothing(db: Database, outbox: Outbox) -> None:
    """A node whose lease expired and went to another node cannot record its late attempt."""
    delivery = outbox("REQ-1")
    _claim(db, "node-a")
    _claim(db, "node-b", _at(LEASE + 1))
    assert _attempt(db, delivery, "acknowledged", owner="node-a") is None
    d = _get(db, delivery)
    assert (d.state, d.attempts, d.lease_owner) == ("pending", 0, "node-b")
    assert db.run_sync(deliveries.get_delivery, delivery).attempts == []
    assert _attempt(db, delivery, "acknowledged", owner="node-b").state == "acknowledged"
    assert _attempt(db, delivery, "acknowledged", owner="node-b") is None


def test_postpone_gives_the_lease_back_without_an_attempt(db: Database, outbox: Outbox) -> None:
    """A postponed delivery is due again at the given time, its attempt count unchanged."""
    delivery = outbox("REQ-1")
    _claim(db, "node-a")
    db.run_sync(deliveries.postpone, delivery, owner="node-a", until=_at(60))
    d = _get(db, delivery)
    assert (d.attempts, d.lease_owner, d.next_attempt_at) == (0, None, _at(60))
    assert _claim(db, "node-b", _at(59)) == []
    assert _claim(db, "node-b", _at(60)) == [delivery]
    db.run_sync(deliveries.postpone, delivery, owner="node-a", until=_at(999))  # not its lease now
    assert _get(db, delivery).lease_owner == "node-b"


# -- pull mailbox and receivers' acknowledgements -----------------------------------------------


def _next(db: Database, at: dt.datetime = NOW, recipient: str = "ACME") -> int | None:
    d = db.run_sync(deliveries.mailbox_next, recipient, now=at, visibility_timeout=60)
    return None if d is None else d.id


def _mailbox_ack(db: Database, delivery_id: int, yes: bool = True, recipient: str = "ACME", **kw):
    return db.run_sync(deliveries.mailbox_ack, recipient, delivery_id, now=_at(5),
                       receiver_ack=b"<ACKNOWLEDGEMENT/>", acknowledged=yes, **kw)


def test_mailbox_hands_out_in_order_and_again_after_the_visibility_timeout(db: Database, outbox: Outbox) -> None:
    """The mailbox gives the oldest due message; unacknowledged, it comes back after the timeout."""
    first = outbox("REQ-1", recipient="ACME")
    second = outbox("REQ-1", recipient="ACME", transaction="Entitlement")
    other = outbox("REQ-2", recipient="ACME")
    outbox("REQ-3", recipient="GLOBEX")
    assert _next(db) == first
    assert _next(db) == other  # REQ-1's next waits for the first to be acknowledged
    assert _next(db, _at(59)) is None
    handed = db.run_sync(deliveries.mailbox_next, "ACME", now=_at(61), visibility_timeout=60)
    assert (handed.id, handed.attempts, handed.state, handed.delivered_at) == (first, 2, "pending", _at(61))
    assert [(a.attempt, a.outcome, a.node) for a in db.run_sync(deliveries.get_delivery, first).attempts] == [
        (1, "accepted", "mailbox"), (2, "accepted", "mailbox")]
    acked = _mailbox_ack(db, first)
    assert (acked.state, acked.acknowledged_at, acked.receiver_result, acked.lease_owner) == (
        "acknowledged", _at(5), "Yes", None)
    assert _next(db, _at(62)) == second
    assert _next(db, _at(62), recipient="GLOBEX") is None


def test_mailbox_ack_refusals_and_repeats(db: Database, outbox: Outbox) -> None:
    """Acks for another partner's or unknown deliveries, or ones not handed out, are refused; Yes twice is fine."""
    delivery = outbox("REQ-1", recipient="ACME")
    later = outbox("REQ-1", recipient="ACME", transaction="Entitlement")
    with pytest.raises(deliveries.DeliveryNotOutstanding, match="has not been handed out yet"):
        _mailbox_ack(db, delivery)
    assert _next(db) == delivery
    with pytest.raises(deliveries.UnknownDelivery, match=f"GLOBEX has no delivery {delivery}"):
        _mailbox_ack(db, delivery, recipient="GLOBEX")
    with pytest.raises(deliveries.UnknownDelivery, match="ACME has no delivery 999"):
        _mailbox_ack(db, 999)
    first = _mailbox_ack(db, delivery)
    assert _mailbox_ack(db, delivery) == first
    with pytest.raises(deliveries.DeliveryNotOutstanding, match=f"delivery {delivery} is acknowledged"):
        _mailbox_ack(db, delivery, yes=False)
    assert [a.outcome for a in db.run_sync(deliveries.get_delivery, delivery).attempts] == [
        "accepted", "acknowledged"]
    assert _next(db) == later


def test_mailbox_ack_no_is_dead_and_holds_the_incident(db: Database, outbox: Outbox) -> None:
    """A receiver's No kills the delivery with its reason and keeps the incident's next one back."""
    delivery = outbox("REQ-1", recipient="ACME")
    outbox("REQ-1", recipient="ACME", transaction="Entitlement")
    _next(db)
    d = _mailbox_ack(db, delivery, yes=False, error="rule-violation: no PROBLEM")
    assert (d.state, d.last_error, d.receiver_result, d.receiver_ack) == (
        "dead", "rule-violation: no PROBLEM", "No", b"<ACKNOWLEDGEMENT/>")
    assert _next(db, _at(3600)) is None
    attempts = db.run_sync(deliveries.get_delivery, delivery).attempts
    assert [(a.outcome, a.error) for a in attempts][-1] == ("permanent", "rule-violation: no PROBLEM")


def test_receiver_acknowledged_settles_a_sent_delivery(db: Database, outbox: Outbox) -> None:
    """A spool receiver's Yes acknowledges a sent delivery; for anything not sent it changes nothing."""
    yes, no = outbox("REQ-1", recipient="SPOOLCO"), outbox("REQ-2", recipient="SPOOLCO")
    assert db.run_sync(deliveries.receiver_acknowledged, yes, now=_at(3), receiver_ack=b"<A/>",
                       acknowledged=True) is None
    _claim(db)
    _attempt(db, yes, "accepted")
    _attempt(db, no, "accepted")
    d = db.run_sync(deliveries.receiver_acknowledged, yes, now=_at(9), receiver_ack=b"<A/>", acknowledged=True)
    assert (d.state, d.delivered_at, d.acknowledged_at, d.receiver_result) == ("acknowledged", _at(2), _at(9), "Yes")
    d = db.run_sync(deliveries.receiver_acknowledged, no, now=_at(9), receiver_ack=b"<N/>", acknowledged=False,
                    error="unknown-incident")
    assert (d.state, d.last_error, d.receiver_result) == ("dead", "unknown-incident", "No")
    assert db.run_sync(deliveries.receiver_acknowledged, yes, now=_at(10), receiver_ack=b"<A/>",
                       acknowledged=True) is None


# -- operators -----------------------------------------------------------------------------------


def _kill(db: Database, delivery_id: int) -> None:
    _claim(db, "killer", _at(0))
    assert _attempt(db, delivery_id, "permanent", owner="killer", error="refused").state == "dead"


def test_replay_keeps_the_incident_order_and_is_audited(db: Database, outbox: Outbox) -> None:
    """A replay is delivered in the dead one's place, before the incident's later deliveries."""
    dead = outbox("REQ-1")
    later = outbox("REQ-1", transaction="Entitlement")
    _kill(db, dead)
    assert _claim(db, "node-a", _at(10)) == []
    [new] = db.run_sync(deliveries.replay, [dead], actor="alice", reason="receiver fixed its schema",
                        now=_at(20))
    old = db.run_sync(deliveries.get_delivery, dead)
    assert old.delivery.state == "replayed" and old.replays == [new]
    assert [(a.action, a.actor, a.reason, a.at, a.new_delivery_id) for a in old.audit] == [
        ("replay", "alice", "receiver fixed its schema", _at(20), new)]
    fresh = db.run_sync(deliveries.get_delivery, new)
    d = fresh.delivery
    assert (d.state, d.attempts, d.replay_of, d.message_id, d.next_attempt_at, d.document) == (
        "pending", 0, dead, old.delivery.message_id, _at(20), old.delivery.document)
    assert fresh.origin is not None and fresh.origin.actor == "alice" and fresh.attempts == []
    assert _claim(db, "node-a", _at(20)) == [new]
    _attempt(db, new, "acknowledged")
    assert _claim(db, "node-a", _at(21)) == [later]


def test_replay_and_discard_are_all_or_nothing(db: Database, outbox: Outbox) -> None:
    """One delivery in the wrong state, or unknown, refuses the whole request and changes nothing."""
    dead, acked = outbox("REQ-1"), outbox("REQ-2")
    _kill(db, dead)  # its claim took both
    _attempt(db, acked, "acknowledged", owner="killer")
    with pytest.raises(deliveries.DeliveryStateError,
                       match=f"cannot replay: delivery {acked} is acknowledged .*nothing was changed"):
        db.run_sync(deliveries.replay, [dead, acked], actor="alice", reason="retry", now=_at(5))
    with pytest.raises(deliveries.UnknownDelivery, match="no delivery 999; nothing was changed"):
        db.run_sync(deliveries.discard, [dead, 999], actor="alice", reason="gone", now=_at(5))
    with pytest.raises(deliveries.DeliveryStoreError, match="say why you discard"):
        db.run_sync(deliveries.discard, [dead], actor="alice", reason="  ", now=_at(5))
    detail = db.run_sync(deliveries.get_delivery, dead)
    assert detail.delivery.state == "dead" and detail.audit == [] and detail.replays == []
    assert len(db.run_sync(deliveries.list_deliveries)) == 2


def test_discard_releases_the_incident(db: Database, outbox: Outbox) -> None:
    """A discarded dead delivery no longer holds its incident; pending and sent ones can be discarded too."""
    dead = outbox("REQ-1")
    later = outbox("REQ-1", transaction="Entitlement")
    waiting = outbox("REQ-2", due=_at(3600))
    spooled = outbox("REQ-3", recipient="SPOOLCO")
    _kill(db, dead)
    _attempt(db, spooled, "accepted", owner="killer")
    db.run_sync(deliveries.discard, [dead, waiting], actor="bob", reason="incident closed by phone", now=_at(30))
    assert [_get(db, i).state for i in (dead, waiting)] == ["discarded", "discarded"]
    audit = db.run_sync(deliveries.get_delivery, dead).audit
    assert [(a.action, a.actor, a.reason, a.new_delivery_id) for a in audit] == [
        ("discard", "bob", "incident closed by phone", None)]
    assert _claim(db, "node-a", _at(31)) == [later]
    # A spool delivery whose acknowledgement never comes must not hold its incident for ever.
    db.run_sync(deliveries.discard, [spooled], actor="bob", reason="ack lost", now=_at(40))
    assert _get(db, spooled).state == "discarded"
    with pytest.raises(deliveries.DeliveryStateError, match=f"delivery {later} is pending"):
        db.run_sync(deliveries.replay, [later], actor="bob", reason="x", now=_at(45))
    [again] = db.run_sync(deliveries.replay, [dead], actor="bob", reason="wrong one", now=_at(50))
    assert _get(db, again).state == "pending"


def test_list_and_count_deliveries(db: Database, outbox: Outbox) -> None:
    """Deliveries are listed newest first and filtered by state, recipient and incident."""
    a, b, c = outbox("REQ-1"), outbox("REQ-2", recipient="ACME"), outbox("REQ-2", recipient="ACME")
    _kill(db, a)
    run = db.run_sync
    assert [d.id for d in run(deliveries.list_deliveries)] == [c, b, a]
    assert [d.id for d in run(deliveries.list_deliveries, state="dead")] == [a]
    assert [d.id for d in run(deliveries.list_deliveries, recipient="ACME", limit=1)] == [c]
    assert [d.id for d in run(deliveries.list_deliveries, incident_id=_get(db, b).incident_id)] == [c, b]
    assert run(deliveries.count_by_state) == {"pending": 2, "sent": 0, "acknowledged": 0, "dead": 1,
                                             "discarded": 0, "replayed": 0}
    with pytest.raises(deliveries.DeliveryStoreError, match="no delivery state 'lost'"):
        run(deliveries.list_deliveries, state="lost")
    with pytest.raises(deliveries.UnknownDelivery, match="no delivery 999"):
        run(deliveries.get_delivery, 999)


# -- partners' delivery settings ---------------------------------------------------------------


# Settings are JSON text and their checks are plain Python: SQLite alone is enough.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("mode", "config"), [
    ("push", {"url": "https://chs.globex.example/sis", "ca": "/etc/gsem/globex-ca.pem", "timeout": 10}),
    ("pull", {"visibility_timeout": 120, "retry": {"max_attempts": 5}}),
    ("spool", {"outbox": "/srv/spool/out", "acks": "/srv/spool/acks",
               "retry": {"base": 2, "cap": 60, "max_attempts": 10, "max_age": 86400}}),
    ("adapter", {"adapter": "memory"}),
    ("adapter", {"adapter": "chs_adapters.rt:RequestTrackerAdapter", "options": {"queue": "SIS"}}),
])
def test_set_delivery_stores_settings(db: Database, mode: str, config: dict) -> None:
    """Valid settings are stored and read back by the delivery service; trust is not reloaded for them."""
    before = db.run_sync(partners.trust_version)
    partner = db.run_sync(partners.set_delivery, "GLOBEX", mode=mode, config=config)
    assert partner.delivery_mode == mode
    settings = db.run_sync(partners.delivery_settings)
    assert (settings["GLOBEX"].mode, settings["GLOBEX"].config, settings["GLOBEX"].enabled) == (mode, config, True)
    assert settings["ACME"].mode == "pull" and settings["ACME"].config == {}
    assert db.run_sync(partners.trust_version) == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("mode", "config", "messages"), [
    ("push", {}, ["push delivery needs the partner's url (--url https://HOST/PATH)"]),
    ("push", {"url": "http://chs.example/sis", "timeout": 0},
     ["url 'http://chs.example/sis' is not an https:// URL", "timeout (--timeout) must be a positive number"]),
    ("spool", {"outbox": "/srv/x"}, ["spool delivery needs the acks directory (--acks DIR)"]),
    ("spool", {"outbox": "/srv/x", "acks": "/srv/x"}, ["outbox and acks must be different directories"]),
    ("adapter", {}, ["adapter delivery needs the adapter (--adapter module:Class"]),
    ("adapter", {"adapter": "not a class"}, ["adapter 'not a class' is neither"]),
    ("pull", {"url": "https://x.example/"}, ["url (--url) is not a setting of pull delivery"]),
    ("pull", {"retry": {"max_attempts": 2.5, "base": 10, "cap": 5, "jitter": 1}},
     ["max_attempts (--max-attempts) must be a whole number", "retry.jitter is not a retry setting",
      "the first retry delay (10 s, --retry-base) is longer than the cap (5 s, --retry-cap)"]),
    ("email", {}, ["delivery mode 'email' is not one of pull, push, spool, adapter"]),
])
def test_set_delivery_reports_every_problem(db: Database, mode: str, config: dict, messages: list[str]) -> None:
    """Incomplete or wrong settings are refused with every problem named, and the old ones kept."""
    with pytest.raises(partners.BadDeliverySettings) as refused:
        db.run_sync(partners.set_delivery, "GLOBEX", mode=mode, config=config)
    text = str(refused.value)
    assert text.startswith("partner GLOBEX: ")
    for message in messages:
        assert message in text
    assert db.run_sync(partners.delivery_settings)["GLOBEX"].mode == "push"
    with pytest.raises(partners.UnknownPartner):
        db.run_sync(partners.set_delivery, "NOPE", mode="pull", config={})


# -- several nodes on PostgreSQL -----------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_concurrent_claims_never_take_the_same_delivery(db: Database, outbox: Outbox) -> None:
    """While one node holds its claim open, another claims the rest at once instead of waiting or doubling."""
    ids = [outbox(f"REQ-{n}") for n in range(6)]
    pulled = [outbox(f"REQ-P{n}", recipient="ACME") for n in range(2)]
    claimed: dict[str, list[int]] = {}
    first_claimed, release = threading.Event(), threading.Event()

    def node_a() -> None:
        with db.engine.begin() as conn:
            claimed["a"] = [d.id for d in deliveries.claim_due(conn, owner="node-a", now=NOW,
                                                              lease_seconds=LEASE, limit=3)]
            claimed["mailbox-a"] = [deliveries.mailbox_next(conn, "ACME", now=NOW, visibility_timeout=60).id]
            first_claimed.set()
            release.wait(10)

    def node_b() -> None:
        with db.engine.begin() as conn:
            claimed["b"] = [d.id for d in deliveries.claim_due(conn, owner="node-b", now=NOW,
                                                              lease_seconds=LEASE)]
            claimed["mailbox-b"] = [deliveries.mailbox_next(conn, "ACME", now=NOW, visibility_timeout=60).id]

    a = threading.Thread(target=node_a)
    a.start()
    try:
        assert first_claimed.wait(10)
        b = threading.Thread(target=node_b)
        b.start()
        b.join(10)
        blocked = b.is_alive()
    finally:
        release.set()
        a.join(10)
    assert not blocked, "the second node waited for the first one's locks"
    assert claimed["a"] == ids[:3] and claimed["b"] == ids[3:]
    assert sorted(claimed["mailbox-a"] + claimed["mailbox-b"]) == pulled
    assert {d.lease_owner for d in db.run_sync(deliveries.list_deliveries)} == {"node-a", "node-b", "mailbox"}
