"""The operators' view of the acknowledgement log (SPEC §5, §8).

Every message the hub read got exactly one acknowledgement; :func:`list_acks` filters
them by partner, transaction, RequesterID, result, error code and time.  Ack ids are
ULIDs, so ordering by id is ordering by time.

Each row carries the three acknowledgements of its transaction (SPEC §7): the hub's
(``result``), the delivery to the other party (``delivery_state``, ``delivered_at``) and
the receiver's own (``receiver_result``).  The delivery is the latest one of the message:
a replay, when the first delivery was replayed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from gsem.db import model
from gsem.db.deliveries import LATEST_DELIVERY_COLUMNS, latest_delivery_fields, latest_delivery_of

__all__ = ["AckRow", "list_acks", "get_ack", "parse_error_codes"]


@dataclass(frozen=True)
class AckRow:
    """One acknowledgement as operators see it (without the XML document)."""

    ack_id: str
    created_at: dt.datetime  # naive UTC
    partner_id: str
    transaction_name: str | None
    requester_ref: str | None  # RequesterID
    provider_ref: str | None  # ProviderID
    result: str  # Yes | No
    http_status: int
    error_codes: tuple[str, ...]
    state_after: str | None
    message_id: int
    # the delivery of the transaction to the other party; None when there is none
    # (rejected, Query_Incident)
    delivery_id: int | None = None
    recipient_id: str | None = None
    delivery_state: str | None = None  # pending | sent | acknowledged | dead | …
    delivered_at: dt.datetime | None = None
    receiver_result: str | None = None  # the receiver's Acknowledge: Yes | No | None (not yet)


def parse_error_codes(stored: str) -> tuple[str, ...]:
    """``",a,b,"`` (the stored form) as ``("a", "b")``."""
    return tuple(code for code in stored.split(",") if code)


def _ack(row: sa.Row) -> AckRow:
    return AckRow(
        ack_id=row.ack_id,
        created_at=row.created_at,
        partner_id=row.partner_id,
        transaction_name=row.transaction_name,
        requester_ref=row.requester_ref,
        provider_ref=row.provider_ref,
        result=row.result,
        http_status=row.http_status,
        error_codes=parse_error_codes(row.error_codes or ""),
        state_after=row.state_after,
        message_id=row.message_id,
        **latest_delivery_fields(row),
    )


def _naive_utc(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def list_acks(
    conn: Connection,
    *,
    partner: str | None = None,
    transaction: str | None = None,
    requester_ref: str | None = None,
    result: str | None = None,
    error_code: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    after_ack_id: str | None = None,
    limit: int | None = 100,
    oldest_first: bool = False,
) -> list[AckRow]:
    """Acknowledgements matching every given filter, newest first.

    *since* is inclusive and *until* exclusive (naive values are UTC).  *after_ack_id*
    keeps only later acknowledgements (for paging and following).  *oldest_first*
    reverses the order, so that with *limit* it returns the first ones after a point.
    *limit* ``None`` means all.
    """
    t = model.acknowledgements
    query = _with_delivery(sa.select(*(c for c in t.c if c.name != "document")))
    if partner is not None:
        query = query.where(t.c.partner_id == partner)
    if transaction is not None:
        query = query.where(t.c.transaction_name == transaction)
    if requester_ref is not None:
        query = query.where(t.c.requester_ref == requester_ref)
    if result is not None:
        query = query.where(t.c.result == result.capitalize())
    if error_code is not None:
        query = query.where(t.c.error_codes.contains(f",{error_code},", autoescape=True))
    if since is not None:
        query = query.where(t.c.created_at >= _naive_utc(since))
    if until is not None:
        query = query.where(t.c.created_at < _naive_utc(until))
    if after_ack_id is not None:
        query = query.where(t.c.ack_id > after_ack_id)
    query = query.order_by(t.c.ack_id if oldest_first else t.c.ack_id.desc())
    if limit is not None:
        query = query.limit(limit)
    return [_ack(row) for row in conn.execute(query)]


def _with_delivery(query: sa.Select) -> sa.Select:
    """*query* on acknowledgements, joined to the latest delivery of each one's message."""
    t = model.acknowledgements
    m = model.messages
    return query.add_columns(*LATEST_DELIVERY_COLUMNS).select_from(
        t.join(m, m.c.id == t.c.message_id)
        .outerjoin(model.deliveries, latest_delivery_of(m.c.incident_id, t.c.message_id))
    )


def get_ack(conn: Connection, ack_id: str) -> tuple[AckRow, bytes] | None:
    """One acknowledgement and the XML document that was sent, or ``None``."""
    t = model.acknowledgements
    row = conn.execute(_with_delivery(sa.select(t)).where(t.c.ack_id == ack_id)).first()
    return None if row is None else (_ack(row), row.document)
