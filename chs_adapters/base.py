"""What every way of reaching a partner's CHS implements (SPEC §7).

The delivery service hands an adapter one :class:`OutboundDelivery` at a time and gets
back one of three results.  An adapter never retries by itself and never decides what is
permanent beyond what the receiver said: the service owns retries, backoff, ordering and
the circuit breaker.  Receivers deduplicate by :attr:`OutboundDelivery.delivery_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "OutboundDelivery",
    "Acknowledged",
    "Accepted",
    "TransientFailure",
    "PermanentFailure",
    "DeliveryResult",
    "ChsAdapter",
    "DELIVERY_ID_HEADER",
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


@dataclass(frozen=True)
class Acknowledged:
    """The receiver took it and said ``Acknowledge=Yes`` (its ACKNOWLEDGEMENT attached)."""

    receiver_ack: bytes | None = None


@dataclass(frozen=True)
class Accepted:
    """Handed over (e.g. written to a spool); the receiver's acknowledgement comes later."""

    detail: str = ""


@dataclass(frozen=True)
class TransientFailure:
    """Could not hand it over now: refused, reset, timed out, 5xx.  Retried."""

    error: str
    retry_after: float | None = None  # seconds, from the receiver's Retry-After


@dataclass(frozen=True)
class PermanentFailure:
    """The receiver refused it for good: ``Acknowledge=No`` or a 4xx.  Goes dead at once."""

    error: str
    receiver_ack: bytes | None = None


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
