"""The outbox of deliveries to the counterparty: claiming, attempts, mailboxes, operators (SPEC §7).

Every function takes a connection inside a transaction (run it through
:meth:`gsem.db.connector.Database.run` or ``run_sync``) and returns frozen objects.

A delivery is one accepted transaction on its way to the other party of its incident.
Its states:

``pending``
    waiting for its turn or its next attempt (a pull delivery stays ``pending`` while it is
    handed out, under a lease, until the receiver acknowledges it);
``sent``
    handed over by spool; the receiver's acknowledgement is awaited;
``acknowledged``
    the receiver said ``Acknowledge=Yes``;
``dead``
    the receiver said ``Acknowledge=No`` or refused for good, or retries ran out;
``discarded`` / ``replayed``
    an operator's decision, audited in ``delivery_audit``.

**Order.**  Per incident, deliveries go out first in, first out by ``message_id``: a
delivery is due only when no delivery of the same incident with a smaller message id is
in one of :data:`BLOCKING_STATES`.  A dead one therefore holds its incident's later
deliveries until an operator replays or discards it; a replay keeps the original's message
id, so it keeps its place.  Other incidents keep flowing.

**Leases.**  A hub node claims due deliveries with :func:`claim_due`, which leases them to
the node for a while; on PostgreSQL the claim locks rows with ``FOR UPDATE … SKIP LOCKED``
so that nodes sharing the database never claim the same delivery.  A node reports each
attempt with :func:`record_attempt`, which changes nothing when the node no longer holds
the lease.  A pull partner's mailbox leases its oldest due delivery to the owner
:data:`MAILBOX_OWNER` for the visibility timeout: unacknowledged, it is handed out again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from gsem.db import model
from gsem.errors import GsemError

__all__ = [
    "STATES",
    "BLOCKING_STATES",
    "OUTCOMES",
    "MAILBOX_OWNER",
    "Delivery",
    "Attempt",
    "AuditEntry",
    "DeliveryDetail",
    "DeliveryStoreError",
    "UnknownDelivery",
    "DeliveryNotOutstanding",
    "DeliveryStateError",
    "claim_due",
    "release_leases",
    "record_attempt",
    "postpone",
    "mailbox_next",
    "mailbox_ack",
    "receiver_acknowledged",
    "list_deliveries",
    "get_delivery",
    "replay",
    "discard",
    "count_by_state",
    "receiver_result",
]

#: Every state a delivery can be in.
STATES = ("pending", "sent", "acknowledged", "dead", "discarded", "replayed")
#: A delivery in one of these states holds back its incident's later deliveries.
BLOCKING_STATES = ("pending", "sent", "dead")
#: What an attempt came to (``delivery_attempts.outcome``).
OUTCOMES = ("acknowledged", "accepted", "transient", "permanent")
#: The lease owner of deliveries handed out by a pull mailbox.
MAILBOX_OWNER = "mailbox"

_REPLAYABLE = ("dead", "discarded")
# "sent" too: a spool delivery whose acknowledgement never comes would otherwise hold
# its incident for ever.
_DISCARDABLE = ("dead", "pending", "sent")


# -- errors ------------------------------------------------------------------------------


class DeliveryStoreError(GsemError):
    """Something asked of the outbox cannot be done."""


class UnknownDelivery(DeliveryStoreError):
    """No delivery has this id (or it is not for this recipient)."""


class DeliveryNotOutstanding(DeliveryStoreError):
    """The delivery is not waiting for the receiver's acknowledgement."""


class DeliveryStateError(DeliveryStoreError):
    """An operator asked to replay or discard a delivery whose state does not allow it."""


# -- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One row of the outbox; times are naive UTC."""

    id: int
    message_id: int
    incident_id: int
    recipient_id: str
    state: str
    document: bytes  # what the receiver gets
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    receiver_ack: bytes | None  # the receiver's ACKNOWLEDGEMENT, when it sent one
    created_at: dt.datetime
    updated_at: dt.datetime
    transaction_name: str | None
    requester_ref: str | None  # RequesterID
    lease_owner: str | None
    lease_until: dt.datetime | None
    delivered_at: dt.datetime | None  # handed over to the receiver
    acknowledged_at: dt.datetime | None  # the receiver acknowledged it
    replay_of: int | None  # the dead delivery this one replays

    @property
    def receiver_result(self) -> str | None:
        """The receiver's answer: ``"Yes"``, ``"No"``, or ``None`` while there is none."""
        return receiver_result(self.state, self.receiver_ack is not None)


@dataclass(frozen=True)
class Attempt:
    """One attempt to hand a delivery over (or a receiver's acknowledgement of it)."""

    id: int
    delivery_id: int
    attempt: int  # 1 for the first
    node: str  # the hub node, or "mailbox"
    started_at: dt.datetime
    finished_at: dt.datetime
    outcome: str  # acknowledged | accepted | transient | permanent
    http_status: int | None
    error: str | None
    receiver_ack: bytes | None


@dataclass(frozen=True)
class AuditEntry:
    """An operator's replay or discard of a delivery."""

    id: int
    delivery_id: int
    action: str  # replay | discard
    actor: str
    reason: str
    at: dt.datetime
    new_delivery_id: int | None  # the replay, for action "replay"


@dataclass(frozen=True)
class DeliveryDetail:
    """A delivery with its attempts and audit trail (oldest first) and the links of replays."""

    delivery: Delivery
    attempts: list[Attempt]
    audit: list[AuditEntry]
    replays: list[int]  # ids of the deliveries that replay this one
    origin: AuditEntry | None = field(default=None)  # the audited replay that created this one


def receiver_result(state: str, has_receiver_ack: bool) -> str | None:
    """What the receiver answered, from a delivery's state: ``"Yes"``, ``"No"`` or ``None``.

    ``acknowledged`` is a Yes.  A delivery that went dead, and was perhaps then discarded
    or replayed, with the receiver's acknowledgement kept is a No.
    """
    if state == "acknowledged":
        return "Yes"
    if has_receiver_ack and state in ("dead", "discarded", "replayed"):
        return "No"
    return None


#: Another name for ``deliveries``, to find the latest delivery of a message.
_OTHER = model.deliveries.alias("other_delivery")

#: What the operators' views show of a message's latest delivery (see :func:`latest_delivery_of`).
LATEST_DELIVERY_COLUMNS = (
    model.deliveries.c.id.label("delivery_id"),
    model.deliveries.c.recipient_id,
    model.deliveries.c.state.label("delivery_state"),
    model.deliveries.c.delivered_at,
    model.deliveries.c.receiver_ack.is_not(None).label("has_receiver_ack"),
)


def latest_delivery_of(incident_id: Any, message_id: Any) -> sa.ColumnElement[bool]:
    """The ON clause that outer-joins ``deliveries`` to a message's latest delivery.

    The latest one, because a replay makes a new delivery of the same message.  By
    incident and message, so that the ``(incident_id, message_id)`` index answers it.
    """
    latest = (
        sa.select(sa.func.max(_OTHER.c.id))
        .where(_OTHER.c.incident_id == incident_id, _OTHER.c.message_id == message_id)
        .scalar_subquery()
    )
    return model.deliveries.c.id == latest


def latest_delivery_fields(row: Any) -> dict[str, Any]:
    """The fields of a row selected with :data:`LATEST_DELIVERY_COLUMNS`, for a view's dataclass."""
    return {
        "delivery_id": row.delivery_id,
        "recipient_id": row.recipient_id,
        "delivery_state": row.delivery_state,
        "delivered_at": row.delivered_at,
        "receiver_result": (None if row.delivery_state is None
                            else receiver_result(row.delivery_state, bool(row.has_receiver_ack))),
    }


# -- helpers -----------------------------------------------------------------------------


def _naive(when: dt.datetime) -> dt.datetime:
    # The store keeps naive UTC; an aware value is converted, a naive one taken as UTC.
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def _blob(value: object) -> bytes | None:
    # psycopg may hand back memoryview for bytea; callers get bytes.
    return None if value is None else bytes(value)  # type: ignore[call-overload]


def _delivery(row: sa.Row) -> Delivery:
    values = dict(row._mapping)
    values["document"] = _blob(values["document"])
    values["receiver_ack"] = _blob(values["receiver_ack"])
    return Delivery(**values)


def _attempt(row: sa.Row) -> Attempt:
    values = dict(row._mapping)
    values["receiver_ack"] = _blob(values["receiver_ack"])
    return Attempt(**values)


def _audit(row: sa.Row) -> AuditEntry:
    return AuditEntry(**row._mapping)


def _fetch(conn: Connection, delivery_id: int) -> Delivery | None:
    d = model.deliveries
    row = conn.execute(sa.select(d).where(d.c.id == delivery_id)).first()
    return None if row is None else _delivery(row)


def _is_head() -> sa.ColumnElement[bool]:
    """The condition "no earlier delivery of the same incident is still in the way"."""
    d = model.deliveries
    earlier = d.alias("earlier")
    return ~sa.exists().where(
        earlier.c.incident_id == d.c.incident_id,
        earlier.c.message_id < d.c.message_id,
        earlier.c.state.in_(BLOCKING_STATES),
    )


def _lease_free(now: dt.datetime) -> sa.ColumnElement[bool]:
    d = model.deliveries
    return sa.or_(d.c.lease_until.is_(None), d.c.lease_until < now)


def _lock_skipping(conn: Connection, query: sa.Select) -> sa.Select:
    # Several hub nodes may share a PostgreSQL database: lock what we pick and let the
    # others pick something else instead of waiting (STYLE "Database under Twisted").
    # SQLite needs nothing: BEGIN IMMEDIATE already serialises writers.
    if conn.dialect.name == "postgresql":
        return query.with_for_update(of=model.deliveries, skip_locked=True)
    return query


def _unique(ids: Iterable[int]) -> list[int]:
    seen: dict[int, None] = {}
    for delivery_id in ids:
        seen.setdefault(int(delivery_id), None)
    return list(seen)


def _locked_rows(conn: Connection, ids: Sequence[int]) -> dict[int, Delivery]:
    d = model.deliveries
    query = sa.select(d).where(d.c.id.in_(ids))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    found = {row.id: _delivery(row) for row in conn.execute(query)}
    missing = [i for i in ids if i not in found]
    if missing:
        names = ", ".join(str(i) for i in missing)
        raise UnknownDelivery(
            f"no delivery {names}; nothing was changed (see 'gsem deliveries list')"
        )
    return found


def _insert_attempt(conn: Connection, delivery_id: int, *, attempt: int, node: str,
                    started_at: dt.datetime, finished_at: dt.datetime, outcome: str,
                    http_status: int | None = None, error: str | None = None,
                    receiver_ack: bytes | None = None) -> None:
    conn.execute(model.delivery_attempts.insert().values(
        delivery_id=delivery_id, attempt=attempt, node=node[:100], started_at=_naive(started_at),
        finished_at=_naive(finished_at), outcome=outcome, http_status=http_status, error=error,
        receiver_ack=receiver_ack,
    ))


# -- a node's work queue -------------------------------------------------------------------


_ANY_PARTNER_BY_MODE = (
    sa.select(model.partners.c.id)
    .where(model.partners.c.delivery_mode.in_(sa.bindparam("modes", expanding=True)))
    .limit(1)
)


def claim_due(conn: Connection, *, owner: str, now: dt.datetime, lease_seconds: float,
              modes: Sequence[str] = ("push", "spool", "adapter"),
              limit: int = 50) -> list[Delivery]:
    """Lease up to *limit* due deliveries to *owner* and return them (with the new lease).

    Due: ``pending``, its ``next_attempt_at`` reached, no live lease, the recipient's
    delivery mode one of *modes*, and the head of its incident (see the module doc).
    Oldest ``next_attempt_at`` first, then by message id.
    """
    now = _naive(now)
    d = model.deliveries
    p = model.partners
    # Cheap early exit: when no partner receives by one of *modes* (e.g. every partner
    # pulls), nothing can be due, and the query below would still walk every pending
    # delivery, whose number grows with what the pull partners have not fetched yet.
    if conn.execute(_ANY_PARTNER_BY_MODE, {"modes": list(modes)}).first() is None:
        return []
    query = (
        sa.select(d.c.id)
        .join(p, p.c.id == d.c.recipient_id)
        .where(
            d.c.state == "pending",
            d.c.next_attempt_at <= now,
            _lease_free(now),
            p.c.delivery_mode.in_(tuple(modes)),
            _is_head(),
        )
        .order_by(d.c.next_attempt_at, d.c.message_id, d.c.id)
        .limit(limit)
    )
    ids = list(conn.execute(_lock_skipping(conn, query)).scalars())
    if not ids:
        return []
    conn.execute(d.update().where(d.c.id.in_(ids)).values(
        lease_owner=owner[:100], lease_until=now + dt.timedelta(seconds=lease_seconds)))
    rows = conn.execute(
        sa.select(d).where(d.c.id.in_(ids)).order_by(d.c.next_attempt_at, d.c.message_id, d.c.id)
    )
    return [_delivery(row) for row in rows]


def release_leases(conn: Connection, owner: str) -> int:
    """Give back every lease *owner* holds (a node restarting after a crash); how many."""
    d = model.deliveries
    result = conn.execute(d.update().where(d.c.lease_owner == owner)
                          .values(lease_owner=None, lease_until=None))
    return int(result.rowcount or 0)


def record_attempt(conn: Connection, delivery_id: int, *, owner: str, started_at: dt.datetime,
                   finished_at: dt.datetime, outcome: str, error: str | None = None,
                   http_status: int | None = None, receiver_ack: bytes | None = None,
                   next_attempt_at: dt.datetime | None = None,
                   dead: bool = False) -> Delivery | None:
    """Record what an attempt by *owner* came to, and move the delivery on.

    ``acknowledged``: the receiver said Yes (``acknowledged``); ``accepted``: handed over,
    its acknowledgement awaited (``sent``); ``transient``: ``pending`` again until
    *next_attempt_at*, or ``dead`` when *dead* (retries exhausted); ``permanent``:
    ``dead``.  The lease is given back.  Returns the delivery as it now is, or ``None``
    when it is no longer ``pending`` under *owner*'s lease: then nothing is recorded
    (another node or an operator has it now).
    """
    if outcome not in OUTCOMES:
        raise DeliveryStoreError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    if outcome == "transient" and not dead and next_attempt_at is None:
        raise DeliveryStoreError("a transient failure that is not final needs next_attempt_at")
    finished = _naive(finished_at)
    d = model.deliveries
    values: dict[str, object] = dict(attempts=d.c.attempts + 1, lease_owner=None, lease_until=None,
                                     updated_at=finished)
    if outcome == "acknowledged":
        values.update(state="acknowledged", delivered_at=finished, acknowledged_at=finished,
                      receiver_ack=receiver_ack, next_attempt_at=None)
    elif outcome == "accepted":
        values.update(state="sent", delivered_at=finished, next_attempt_at=None)
    elif outcome == "transient" and not dead:
        values.update(state="pending", last_error=error, next_attempt_at=_naive(next_attempt_at))  # type: ignore[arg-type]
    elif outcome == "transient":
        values.update(state="dead", last_error=error or "retries exhausted", next_attempt_at=None)
    else:
        values.update(state="dead", last_error=error or "refused by the receiver",
                      receiver_ack=receiver_ack, next_attempt_at=None)
    result = conn.execute(
        d.update()
        .where(d.c.id == delivery_id, d.c.state == "pending", d.c.lease_owner == owner)
        .values(**values)
    )
    if result.rowcount != 1:
        return None
    delivery = _fetch(conn, delivery_id)
    assert delivery is not None
    _insert_attempt(conn, delivery_id, attempt=delivery.attempts, node=owner, started_at=started_at,
                    finished_at=finished, outcome=outcome, http_status=http_status, error=error,
                    receiver_ack=receiver_ack)
    return delivery


def postpone(conn: Connection, delivery_id: int, *, owner: str, until: dt.datetime) -> None:
    """Give the lease back without an attempt; the delivery is due again at *until*.

    For a node that claimed a delivery it will not try now (its partner's circuit breaker
    is open).  Nothing happens when *owner* no longer holds it.
    """
    d = model.deliveries
    conn.execute(
        d.update()
        .where(d.c.id == delivery_id, d.c.state == "pending", d.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=None, next_attempt_at=_naive(until))
    )


# -- pull mailboxes and receivers' acknowledgements ----------------------------------------


def mailbox_next(conn: Connection, recipient_id: str, *, now: dt.datetime,
                 visibility_timeout: float) -> Delivery | None:
    """Hand out a pull partner's oldest due delivery, or ``None`` when it has none.

    Due: ``pending``, the head of its incident, and not handed out within the last
    *visibility_timeout* seconds (its lease expired); and the partner's delivery mode is
    ``pull`` (the deliveries of other modes belong to the nodes' workers).  It is leased to
    :data:`MAILBOX_OWNER` until then and counted as an attempt (outcome ``accepted``):
    if the partner does not acknowledge it in time, it is handed out again.
    """
    now = _naive(now)
    d = model.deliveries
    p = model.partners
    query = (
        sa.select(d.c.id)
        .join(p, p.c.id == d.c.recipient_id)
        .where(d.c.recipient_id == recipient_id, p.c.delivery_mode == "pull", d.c.state == "pending",
               _lease_free(now), _is_head())
        .order_by(d.c.message_id, d.c.id)
        .limit(1)
    )
    delivery_id = conn.execute(_lock_skipping(conn, query)).scalar()
    if delivery_id is None:
        return None
    conn.execute(d.update().where(d.c.id == delivery_id).values(
        attempts=d.c.attempts + 1, lease_owner=MAILBOX_OWNER,
        lease_until=now + dt.timedelta(seconds=visibility_timeout), delivered_at=now, updated_at=now))
    delivery = _fetch(conn, delivery_id)
    assert delivery is not None
    _insert_attempt(conn, delivery.id, attempt=delivery.attempts, node=MAILBOX_OWNER, started_at=now,
                    finished_at=now, outcome="accepted")
    return delivery


def _settle(conn: Connection, delivery: Delivery, *, node: str, now: dt.datetime,
            receiver_ack: bytes, acknowledged: bool, error: str | None) -> Delivery:
    d = model.deliveries
    if acknowledged:
        values: dict[str, object] = dict(
            state="acknowledged", delivered_at=delivery.delivered_at or now, acknowledged_at=now)
    else:
        values = dict(state="dead", last_error=error or "the receiver answered Acknowledge=No")
    conn.execute(d.update().where(d.c.id == delivery.id).values(
        receiver_ack=receiver_ack, lease_owner=None, lease_until=None, next_attempt_at=None,
        updated_at=now, **values))
    _insert_attempt(conn, delivery.id, attempt=max(delivery.attempts, 1), node=node, started_at=now,
                    finished_at=now, outcome="acknowledged" if acknowledged else "permanent",
                    error=None if acknowledged else error, receiver_ack=receiver_ack)
    settled = _fetch(conn, delivery.id)
    assert settled is not None
    return settled


def _locked_one(conn: Connection, delivery_id: int) -> Delivery | None:
    d = model.deliveries
    query = sa.select(d).where(d.c.id == delivery_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else _delivery(row)


def mailbox_ack(conn: Connection, recipient_id: str, delivery_id: int, *, now: dt.datetime,
                receiver_ack: bytes, acknowledged: bool, error: str | None = None) -> Delivery:
    """A pull partner's ACKNOWLEDGEMENT of a delivery its mailbox handed out.

    Yes: ``acknowledged``; No: ``dead``, with *error* as its last error.  The receiver's
    document is kept either way.  Acknowledging an acknowledged delivery with Yes again
    changes nothing and returns it (the first answer may have been lost on the way back).

    Raises :class:`UnknownDelivery` when *recipient_id* has no delivery *delivery_id*, and
    :class:`DeliveryNotOutstanding` when it is not waiting for an acknowledgement.
    """
    now = _naive(now)
    delivery = _locked_one(conn, delivery_id)
    if delivery is None or delivery.recipient_id != recipient_id:
        raise UnknownDelivery(f"{recipient_id} has no delivery {delivery_id}")
    if delivery.state == "acknowledged" and acknowledged:
        return delivery
    if delivery.state != "pending" or delivery.lease_owner != MAILBOX_OWNER:
        if delivery.state == "pending":
            raise DeliveryNotOutstanding(
                f"delivery {delivery_id} has not been handed out yet; fetch it from the mailbox first")
        raise DeliveryNotOutstanding(
            f"delivery {delivery_id} is {delivery.state}; it is not waiting for an acknowledgement")
    return _settle(conn, delivery, node=MAILBOX_OWNER, now=now, receiver_ack=receiver_ack,
                   acknowledged=acknowledged, error=error)


def receiver_acknowledged(conn: Connection, delivery_id: int, *, now: dt.datetime,
                          receiver_ack: bytes, acknowledged: bool,
                          error: str | None = None) -> Delivery | None:
    """The receiver's ACKNOWLEDGEMENT of a ``sent`` delivery (spool), as :func:`mailbox_ack`.

    Returns ``None``, changing nothing, when the delivery is not ``sent`` (unknown, already
    acknowledged, or discarded by an operator meanwhile).
    """
    now = _naive(now)
    delivery = _locked_one(conn, delivery_id)
    if delivery is None or delivery.state != "sent":
        return None
    return _settle(conn, delivery, node="receiver", now=now, receiver_ack=receiver_ack,
                   acknowledged=acknowledged, error=error)


# -- operators -----------------------------------------------------------------------------


def _check_state(state: str | None) -> None:
    if state is not None and state not in STATES:
        raise DeliveryStoreError(f"no delivery state {state!r}; the states are {', '.join(STATES)}")


def list_deliveries(conn: Connection, *, state: str | None = None, recipient: str | None = None,
                    incident_id: int | None = None, limit: int | None = 100) -> list[Delivery]:
    """Deliveries matching every given filter, newest first; *limit* ``None`` means all."""
    _check_state(state)
    d = model.deliveries
    query = sa.select(d).order_by(d.c.id.desc())
    if state is not None:
        query = query.where(d.c.state == state)
    if recipient is not None:
        query = query.where(d.c.recipient_id == recipient)
    if incident_id is not None:
        query = query.where(d.c.incident_id == incident_id)
    if limit is not None:
        query = query.limit(limit)
    return [_delivery(row) for row in conn.execute(query)]


def get_delivery(conn: Connection, delivery_id: int) -> DeliveryDetail:
    """One delivery with everything about it; :class:`UnknownDelivery` when there is none."""
    delivery = _fetch(conn, delivery_id)
    if delivery is None:
        raise UnknownDelivery(f"no delivery {delivery_id}; see 'gsem deliveries list'")
    a = model.delivery_attempts
    u = model.delivery_audit
    d = model.deliveries
    attempts = [_attempt(row) for row in conn.execute(
        sa.select(a).where(a.c.delivery_id == delivery_id).order_by(a.c.id))]
    audit = [_audit(row) for row in conn.execute(
        sa.select(u).where(u.c.delivery_id == delivery_id).order_by(u.c.id))]
    replays = list(conn.execute(
        sa.select(d.c.id).where(d.c.replay_of == delivery_id).order_by(d.c.id)).scalars())
    origin_row = conn.execute(
        sa.select(u).where(u.c.new_delivery_id == delivery_id).order_by(u.c.id)).first()
    return DeliveryDetail(delivery=delivery, attempts=attempts, audit=audit, replays=replays,
                          origin=None if origin_row is None else _audit(origin_row))


def _check_decision(action: str, ids: Sequence[int], actor: str, reason: str) -> None:
    if not ids:
        raise DeliveryStoreError(f"name at least one delivery to {action}")
    if not reason.strip():
        raise DeliveryStoreError(f"say why you {action} (--reason TEXT); it goes into the audit trail")
    if not actor.strip():
        raise DeliveryStoreError(f"say who you are (--actor NAME) to {action}; it goes into the audit trail")


def _refuse(action: str, allowed: Sequence[str], wrong: list[Delivery]) -> DeliveryStateError:
    which = "; ".join(f"delivery {dv.id} is {dv.state}" for dv in wrong)
    return DeliveryStateError(
        f"cannot {action}: {which} (only {' or '.join(allowed)} deliveries can be "
        f"{'replayed' if action == 'replay' else 'discarded'}); nothing was changed"
    )


def replay(conn: Connection, ids: Iterable[int], *, actor: str, reason: str,
           now: dt.datetime) -> list[int]:
    """Deliver dead (or discarded) deliveries again; returns the new deliveries' ids, in order.

    Each gets a new ``pending`` delivery of the same document with the same message id (so
    it keeps its place in its incident's order), due at once; the old one becomes
    ``replayed`` and the audit trail records who, when and why.  All or nothing: if any is
    unknown or in another state, nothing changes.
    """
    wanted = _unique(ids)
    _check_decision("replay", wanted, actor, reason)
    now = _naive(now)
    found = _locked_rows(conn, wanted)
    wrong = [found[i] for i in wanted if found[i].state not in _REPLAYABLE]
    if wrong:
        raise _refuse("replay", _REPLAYABLE, wrong)
    d = model.deliveries
    new_ids: list[int] = []
    for old in (found[i] for i in wanted):
        new_id = conn.execute(d.insert().values(
            message_id=old.message_id, incident_id=old.incident_id, recipient_id=old.recipient_id,
            state="pending", document=old.document, attempts=0, next_attempt_at=now,
            last_error=None, receiver_ack=None, created_at=now, updated_at=now,
            transaction_name=old.transaction_name, requester_ref=old.requester_ref,
            replay_of=old.id,
        )).inserted_primary_key[0]
        conn.execute(d.update().where(d.c.id == old.id).values(
            state="replayed", lease_owner=None, lease_until=None, next_attempt_at=None, updated_at=now))
        conn.execute(model.delivery_audit.insert().values(
            delivery_id=old.id, action="replay", actor=actor.strip()[:100], reason=reason.strip(),
            at=now, new_delivery_id=new_id))
        new_ids.append(int(new_id))
    return new_ids


def discard(conn: Connection, ids: Iterable[int], *, actor: str, reason: str,
            now: dt.datetime) -> None:
    """Give up on dead, pending or sent deliveries: ``discarded``, audited.  All or nothing.

    The incident's later deliveries are no longer held back by them.
    """
    wanted = _unique(ids)
    _check_decision("discard", wanted, actor, reason)
    now = _naive(now)
    found = _locked_rows(conn, wanted)
    wrong = [found[i] for i in wanted if found[i].state not in _DISCARDABLE]
    if wrong:
        raise _refuse("discard", _DISCARDABLE, wrong)
    d = model.deliveries
    for delivery_id in wanted:
        conn.execute(d.update().where(d.c.id == delivery_id).values(
            state="discarded", lease_owner=None, lease_until=None, next_attempt_at=None, updated_at=now))
        conn.execute(model.delivery_audit.insert().values(
            delivery_id=delivery_id, action="discard", actor=actor.strip()[:100], reason=reason.strip(),
            at=now, new_delivery_id=None))


def count_by_state(conn: Connection, *, recipient: str | None = None) -> dict[str, int]:
    """How many deliveries are in each state (every state present, zero when none)."""
    d = model.deliveries
    query = sa.select(d.c.state, sa.func.count()).group_by(d.c.state)
    if recipient is not None:
        query = query.where(d.c.recipient_id == recipient)
    counts = dict.fromkeys(STATES, 0)
    for state, count in conn.execute(query):
        counts[state] = int(count)
    return counts
