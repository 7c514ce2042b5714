"""What every way of reaching a partner's CHS implements (SPEC §7).

The delivery service hands an adapter one :class:`OutboundDelivery` at a time and gets
back one of three results.  An adapter never retries by itself and never decides what is
permanent beyond what the receiver said: the service owns retries, backoff, ordering and
the circuit breaker.  Receivers deduplicate by :attr:`OutboundDelivery.delivery_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gsem.errors import DocumentRejected
from gsem.xmlsafe import parse_document

__all__ = [
    "OutboundDelivery",
    "Acknowledged",
    "Accepted",
    "TransientFailure",
    "PermanentFailure",
    "DeliveryResult",
    "ChsAdapter",
    "DELIVERY_ID_HEADER",
    "ReceiverAck",
    "MalformedReceiverAck",
    "read_receiver_ack",
]

#: The header (push) carrying the hub's delivery id; receivers deduplicate by it.
DELIVERY_ID_HEADER = "Gsem-Delivery-Id"


@dataclass(frozen=True)
class OutboundDelivery:
    """One document for one receiver, as committed in the outbox."""

    delivery_id: int
    recipient_id: str
    incident_id: int
    transaction_name: str
    requester_ref: str
    document: bytes
    attempt: int  # 1 for the first attempt
    #: The accepted message it forwards: its order among all deliveries (a replay keeps it).
    message_id: int | None = None


@dataclass(frozen=True)
class Acknowledged:
    """The receiver took it and said ``Acknowledge=Yes`` (its ACKNOWLEDGEMENT attached)."""

    receiver_ack: bytes | None = None
    http_status: int | None = None


@dataclass(frozen=True)
class Accepted:
    """Handed over (e.g. written to a spool); the receiver's acknowledgement comes later."""

    detail: str = ""


@dataclass(frozen=True)
class TransientFailure:
    """Could not hand it over now: refused, reset, timed out, 5xx.  Retried."""

    error: str
    retry_after: float | None = None  # seconds, from the receiver's Retry-After
    http_status: int | None = None  # None when no HTTP answer came


@dataclass(frozen=True)
class PermanentFailure:
    """The receiver refused it for good: ``Acknowledge=No`` or a 4xx.  Goes dead at once."""

    error: str
    receiver_ack: bytes | None = None
    http_status: int | None = None


DeliveryResult = Acknowledged | Accepted | TransientFailure | PermanentFailure


@runtime_checkable
class ChsAdapter(Protocol):
    """A way to hand deliveries to one kind of CHS."""

    async def deliver(self, delivery: OutboundDelivery) -> DeliveryResult:
        """Try to hand *delivery* over once; never raise for a receiver's failure."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


class MalformedReceiverAck(ValueError):
    """What a receiver sent back is not an ACKNOWLEDGEMENT; the message says why."""


@dataclass(frozen=True)
class ReceiverAck:
    """A receiver's ACKNOWLEDGEMENT of a delivery, read with the hardened parser."""

    acknowledged: bool  # Acknowledge=Yes
    errors: tuple[tuple[str, str], ...]  # (code, message) of each ERROR, in order
    document: bytes

    @property
    def error_text(self) -> str | None:
        """The receiver's errors as one line (``code: message; …``), None when it lists none."""
        if not self.errors:
            return None
        return "; ".join(f"{code}: {message}" if message else code for code, message in self.errors)


def read_receiver_ack(data: bytes) -> ReceiverAck:
    """Read a receiver's ACKNOWLEDGEMENT (SPEC §5) or raise :class:`MalformedReceiverAck`.

    Uses :func:`gsem.xmlsafe.parse_document`: receivers are partners, and what they send
    back is as untrusted as what they post.
    """
    try:
        root = parse_document(data).getroot()
    except DocumentRejected as e:
        raise MalformedReceiverAck(str(e)) from None
    if root.tag != "ACKNOWLEDGEMENT":
        raise MalformedReceiverAck(f"the document is a {root.tag}, not an ACKNOWLEDGEMENT")
    answer = (root.findtext("Acknowledge") or "").strip()
    if answer not in ("Yes", "No"):
        raise MalformedReceiverAck(f"Acknowledge must be Yes or No, not {answer!r}")
    errors = tuple(((e.get("code") or "unspecified").strip(), " ".join((e.text or "").split()))
                   for e in root.findall("ERROR"))
    return ReceiverAck(acknowledged=answer == "Yes", errors=errors, document=bytes(data))
