"""A CHS that lives in memory: the verified fake of the adapter contract (STYLE "Tests").

It behaves like a well-behaved receiver: it keeps each document under its delivery id
(a re-delivery of the same id replaces nothing and is not a second business message),
and answers with an ACKNOWLEDGEMENT.  It can be told to fail: transiently a number of
times, or permanently with the receiver's error codes.  The shared adapter tests run the
same checks against it, the spool adapter and the push adapter, so what the delivery
service's tests learn from it holds for the real ones.

Configured for a partner as ``{"adapter": "memory", "options": {"instance": "NAME"}}``;
every load of the same *instance* name gives the same object
(:meth:`InMemoryAdapter.named`), so a test can look at what the partner "received".
``"accept_only": "true"`` makes it answer like a spool (handed over, acknowledged later).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from lxml import etree

from chs_adapters.base import (
    Accepted,
    Acknowledged,
    DeliveryResult,
    OutboundDelivery,
    PermanentFailure,
    TransientFailure,
)

__all__ = ["InMemoryAdapter", "Received", "ADAPTER", "receiver_ack_document"]


def receiver_ack_document(delivery: OutboundDelivery, *, acknowledged: bool,
                          errors: list[tuple[str, str]] | None = None) -> bytes:
    """An ACKNOWLEDGEMENT a receiver would send for *delivery* (SPEC §5)."""
    ack = etree.Element("ACKNOWLEDGEMENT")
    etree.SubElement(ack, "Acknowledge").text = "Yes" if acknowledged else "No"
    etree.SubElement(ack, "AckID").text = f"RCV-{delivery.delivery_id}"
    etree.SubElement(ack, "TransactionName").text = delivery.transaction_name
    etree.SubElement(ack, "RequesterID").text = delivery.requester_ref
    for code, message in errors or []:
        error = etree.SubElement(ack, "ERROR", code=code)
        error.text = message
    return etree.tostring(ack, xml_declaration=True, encoding="UTF-8")


@dataclass(frozen=True)
class Received:
    """One document as the in-memory receiver kept it."""

    delivery_id: int
    incident_id: int
    transaction_name: str
    document: bytes
    times: int  # how often it was handed over (re-deliveries of the same id)


@dataclass
class _Script:
    transient: int = 0
    transient_error: str = "receiver unavailable (scripted)"
    retry_after: float | None = None
    permanent: list[tuple[str, str]] | None = None


class InMemoryAdapter:
    """A receiver in memory that records what it gets and fails when told to.

    *accept_only*: answer :class:`Accepted` (like a spool) instead of acknowledging.
    """

    _instances: ClassVar[dict[str, InMemoryAdapter]] = {}

    def __init__(self, *, accept_only: bool = False) -> None:
        self.accept_only = accept_only
        self._received: OrderedDict[int, Received] = OrderedDict()
        self.attempts: list[OutboundDelivery] = []  # every call of deliver, in order
        self._all = _Script()
        self._per_delivery: dict[int, _Script] = {}
        self._during: Callable[[OutboundDelivery], None] | None = None
        self.closed = False

    # -- configuration ------------------------------------------------------------------

    @classmethod
    def named(cls, instance: str) -> InMemoryAdapter:
        """The one adapter called *instance* in this process (made on first use)."""
        if instance not in cls._instances:
            cls._instances[instance] = cls()
        return cls._instances[instance]

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any = None) -> InMemoryAdapter:
        """The adapter for a partner's settings: ``instance`` names a shared one."""
        instance = options.get("instance")
        adapter = cls.named(str(instance)) if instance is not None else cls()
        if "accept_only" in options:
            adapter.accept_only = str(options["accept_only"]).strip().lower() in ("1", "true", "yes")
        return adapter

    def fail_transiently(self, times: int, *, error: str = "receiver unavailable (scripted)",
                         retry_after: float | None = None, delivery_id: int | None = None) -> None:
        """Answer the next *times* deliveries (or those of *delivery_id*) with a transient failure."""
        script = self._script(delivery_id)
        script.transient, script.transient_error, script.retry_after = times, error, retry_after

    def reject(self, code: str, message: str, *, delivery_id: int | None = None) -> None:
        """Refuse for good (``Acknowledge=No`` with one ERROR) everything, or *delivery_id*."""
        self._script(delivery_id).permanent = [(code, message)]

    def during_delivery(self, callback: Callable[[OutboundDelivery], None] | None) -> None:
        """Run *callback* while a delivery is being handed over (what happens meanwhile).

        An exception it raises comes out of :meth:`deliver`, like a bug in an adapter.
        """
        self._during = callback

    def heal(self) -> None:
        """Forget every scripted failure and callback."""
        self._all = _Script()
        self._per_delivery.clear()
        self._during = None

    def _script(self, delivery_id: int | None) -> _Script:
        if delivery_id is None:
            return self._all
        return self._per_delivery.setdefault(delivery_id, _Script())

    # -- what the receiver saw ----------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        """Each distinct delivery it took, in the order it first took them."""
        return list(self._received.values())

    def documents(self) -> list[bytes]:
        """The documents it took, in order, each once."""
        return [r.document for r in self._received.values()]

    def get(self, delivery_id: int) -> Received | None:
        """What it took under *delivery_id*, if anything."""
        return self._received.get(delivery_id)

    # -- ChsAdapter ---------------------------------------------------------------------

    async def deliver(self, delivery: OutboundDelivery) -> DeliveryResult:
        """Take *delivery* unless a failure is scripted for it."""
        self.attempts.append(delivery)
        if self._during is not None:
            self._during(delivery)
        for script in (self._per_delivery.get(delivery.delivery_id), self._all):
            if script is None:
                continue
            if script.permanent is not None:
                ack = receiver_ack_document(delivery, acknowledged=False, errors=script.permanent)
                text = "; ".join(f"{code}: {message}" for code, message in script.permanent)
                return PermanentFailure(text, receiver_ack=ack)
            if script.transient > 0:
                script.transient -= 1
                return TransientFailure(script.transient_error, retry_after=script.retry_after)
        known = self._received.get(delivery.delivery_id)
        self._received[delivery.delivery_id] = Received(
            delivery.delivery_id, delivery.incident_id, delivery.transaction_name,
            known.document if known is not None else delivery.document,
            known.times + 1 if known is not None else 1)
        if self.accept_only:
            return Accepted("kept in memory")
        return Acknowledged(receiver_ack_document(delivery, acknowledged=True))

    async def close(self) -> None:
        """Nothing to release; remembers that it was closed."""
        self.closed = True


#: What :mod:`chs_adapters.loader` builds for ``{"adapter": "memory"}``.
ADAPTER = InMemoryAdapter
