"""Read-side queries on incidents for operators: lists, one incident's full history.

The write path (deciding and recording transactions) is :mod:`gsem.exchange`; nothing
here changes the store.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from gsem.db import model
from gsem.db.acks import parse_error_codes
from gsem.db.deliveries import (
    LATEST_DELIVERY_COLUMNS,
    latest_delivery_fields,
    latest_delivery_of,
    receiver_result,
)
from gsem.errors import GsemError
from gsem.incident import assemble

__all__ = [
    "ENTRIES_OF",
    "IncidentSummary",
    "HistoryEntry",
    "DeliveryEntry",
    "IncidentDetail",
    "UnknownIncident",
    "list_incidents",
    "get_incident",
]


class UnknownIncident(GsemError):
    """No incident matches what the operator asked for."""


@dataclass(frozen=True)
class IncidentSummary:
    """An incident's identity and current state; times are naive UTC."""

    id: int
    requester_id: str
    provider_id: str
    requester_ref: str  # RequesterID
    provider_ref: str | None  # ProviderID
    state: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class HistoryEntry:
    """One message about the incident and what it did (or, rejected, why not)."""

    message_id: int
    received_at: dt.datetime
    partner_id: str  # the sender
    transaction_name: str | None
    accepted: bool
    state_before: str | None
    state_after: str | None
    ack_id: str
    http_status: int | None
    error_codes: tuple[str, ...]
    # the three acknowledgements (SPEC §7): the hub's is ``accepted`` (and ``ack_id``);
    # then the latest delivery of the message to the other party, and the receiver's answer
    delivery_id: int | None = None
    recipient_id: str | None = None
    delivery_state: str | None = None
    delivered_at: dt.datetime | None = None
    receiver_result: str | None = None  # Yes | No | None (not yet, or no delivery)


@dataclass(frozen=True)
class DeliveryEntry:
    """The forwarding of one accepted transaction to the other party (SPEC §7)."""

    id: int
    message_id: int
    transaction_name: str | None
    recipient_id: str
    state: str  # see gsem.db.deliveries.STATES
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    receiver_acknowledged: bool  # the receiver's ACKNOWLEDGEMENT (Yes or No) is kept
    created_at: dt.datetime
    updated_at: dt.datetime
    delivered_at: dt.datetime | None = None
    acknowledged_at: dt.datetime | None = None
    receiver_result: str | None = None  # Yes | No | None (not yet)
    replay_of: int | None = None


@dataclass(frozen=True)
class IncidentDetail:
    """An incident, its current document and everything that happened to it, in order."""

    incident: IncidentSummary
    document: bytes  # the merged SERVICE_INCIDENT, UTF-8 XML
    history: tuple[HistoryEntry, ...]  # accepted messages, oldest first
    rejections: tuple[HistoryEntry, ...]  # rejected messages about it, oldest first
    deliveries: tuple[DeliveryEntry, ...]  # oldest first


def _summary(row: sa.Row) -> IncidentSummary:
    return IncidentSummary(
        id=row.id,
        requester_id=row.requester_id,
        provider_id=row.provider_id,
        requester_ref=row.requester_ref,
        provider_ref=row.provider_ref,
        state=row.state,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


#: An incident's appended entries (``incident_id``), in the order they came: what
#: :func:`gsem.incident.assemble` puts back into its document.
ENTRIES_OF = (
    sa.select(model.incident_entries.c.after_children, model.incident_entries.c.xml)
    .where(model.incident_entries.c.incident_id == sa.bindparam("incident_id"))
    .order_by(model.incident_entries.c.id)
)

_SUMMARY_COLUMNS = tuple(c for c in model.incidents.c if c.name != "document")


def list_incidents(conn: Connection, *, partner: str | None = None, state: str | None = None,
                   requester_ref: str | None = None, limit: int | None = 100) -> list[IncidentSummary]:
    """Incidents, most recently changed first.

    *partner* matches either party; *state* and *requester_ref* match exactly.
    """
    t = model.incidents
    query = sa.select(*_SUMMARY_COLUMNS).order_by(t.c.updated_at.desc(), t.c.id.desc())
    if partner is not None:
        query = query.where(sa.or_(t.c.requester_id == partner, t.c.provider_id == partner))
    if state is not None:
        query = query.where(t.c.state == state)
    if requester_ref is not None:
        query = query.where(t.c.requester_ref == requester_ref)
    if limit is not None:
        query = query.limit(limit)
    return [_summary(row) for row in conn.execute(query)]


def get_incident(conn: Connection, incident: int | tuple[str, str]) -> IncidentDetail:
    """One incident by its id, or by ``(requester partner, RequesterID)``, with its history."""
    t = model.incidents
    if isinstance(incident, tuple):
        requester_id, requester_ref = incident
        row = conn.execute(
            sa.select(t).where(t.c.requester_id == requester_id, t.c.requester_ref == requester_ref)
        ).first()
        if row is None:
            raise UnknownIncident(
                f"no incident with RequesterID {requester_ref!r} from requester {requester_id}"
            )
    else:
        row = conn.execute(sa.select(t).where(t.c.id == incident)).first()
        if row is None:
            raise UnknownIncident(f"no incident {incident}; see 'gsem incidents list'")

    m = model.messages
    a = model.acknowledgements
    messages = conn.execute(
        sa.select(m.c.id, m.c.received_at, m.c.partner_id, m.c.transaction_name, m.c.accepted,
                  m.c.state_before, m.c.state_after, m.c.ack_id, a.c.http_status, a.c.error_codes,
                  *LATEST_DELIVERY_COLUMNS)
        .select_from(m)
        .outerjoin(a, a.c.message_id == m.c.id)
        .outerjoin(model.deliveries, latest_delivery_of(row.id, m.c.id))
        .where(m.c.incident_id == row.id)
        .order_by(m.c.received_at, m.c.id)
    ).all()
    entries = [
        HistoryEntry(
            message_id=msg.id,
            received_at=msg.received_at,
            partner_id=msg.partner_id,
            transaction_name=msg.transaction_name,
            accepted=bool(msg.accepted),
            state_before=msg.state_before,
            state_after=msg.state_after,
            ack_id=msg.ack_id,
            http_status=msg.http_status,
            error_codes=parse_error_codes(msg.error_codes or ""),
            **latest_delivery_fields(msg),
        )
        for msg in messages
    ]

    d = model.deliveries
    deliveries = conn.execute(
        sa.select(d.c.id, d.c.message_id, m.c.transaction_name, d.c.recipient_id, d.c.state,
                  d.c.attempts, d.c.next_attempt_at, d.c.last_error,
                  d.c.receiver_ack.is_not(None).label("receiver_acknowledged"),
                  d.c.created_at, d.c.updated_at, d.c.delivered_at, d.c.acknowledged_at,
                  d.c.replay_of)
        .join(m, m.c.id == d.c.message_id)
        .where(d.c.incident_id == row.id)
        .order_by(d.c.id)
    ).all()
    return IncidentDetail(
        incident=_summary(row),
        # ENTRIES_OF's rows are (after_children, xml): entries as assemble takes them.
        document=assemble(bytes(row.document), conn.execute(ENTRIES_OF, {"incident_id": row.id}).all()),
        history=tuple(e for e in entries if e.accepted),
        rejections=tuple(e for e in entries if not e.accepted),
        deliveries=tuple(
            DeliveryEntry(
                id=dv.id,
                message_id=dv.message_id,
                transaction_name=dv.transaction_name,
                recipient_id=dv.recipient_id,
                state=dv.state,
                attempts=dv.attempts,
                next_attempt_at=dv.next_attempt_at,
                last_error=dv.last_error,
                receiver_acknowledged=bool(dv.receiver_acknowledged),
                created_at=dv.created_at,
                updated_at=dv.updated_at,
                delivered_at=dv.delivered_at,
                acknowledged_at=dv.acknowledged_at,
                receiver_result=receiver_result(dv.state, bool(dv.receiver_acknowledged)),
                replay_of=dv.replay_of,
            )
            for dv in deliveries
        ),
    )
