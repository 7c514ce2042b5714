"""The pull mailbox: a partner fetches its deliveries and acknowledges them (SPEC §7, pull).

On the same mutual-TLS listener as ``POST /sis/v1/transactions``; the partner is the one
the TLS handshake identified (:func:`gsem.tls.partner_of`), so a partner only ever sees
and acknowledges its own deliveries.

``GET /sis/v1/mailbox/next``
    200 with the oldest deliverable document (per incident first in, first out), headers
    ``Gsem-Delivery-Id`` and ``Content-Type: application/xml``; 204 when there is none.
    A document handed out and not acknowledged within the partner's
    ``visibility_timeout`` (default 60 s) is handed out again, under the same id.

``POST /sis/v1/mailbox/{delivery-id}/ack``
    The partner's ACKNOWLEDGEMENT of that delivery: ``Acknowledge=Yes`` completes it,
    ``No`` makes it dead with the partner's errors kept.  200 when recorded (a Yes sent
    again is 200 again); 400 for a body that is not an ACKNOWLEDGEMENT; 404 for a
    delivery that is not this partner's; 409 for one not waiting for an acknowledgement.

A partner whose delivery mode is not pull gets 409 saying so.  Every error is a short
plain-text reason; never a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from chs_adapters.base import DELIVERY_ID_HEADER, MalformedReceiverAck, read_receiver_ack
from gsem.db import deliveries, partners
from gsem.tls import partner_of

__all__ = ["MailboxResource", "DEFAULT_VISIBILITY_TIMEOUT"]

log = Logger()

#: Seconds a handed-out document stays invisible unless the partner's settings say otherwise.
DEFAULT_VISIBILITY_TIMEOUT = 60.0
_TEXT = b"text/plain; charset=utf-8"


class _Answer(Exception):
    """Stop and answer *status* with a plain-text *reason*."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _pull_settings(conn: Any, partner_id: str) -> partners.DeliverySettings:
    settings = partners.delivery_settings(conn).get(partner_id)
    if settings is None:
        raise _Answer(403, f"{partner_id} is not a registered partner")
    if settings.mode != "pull":
        raise _Answer(409, f"{partner_id} receives its deliveries by {settings.mode}, not from the mailbox; "
                           "ask the hub's operators to switch it to pull")
    return settings


class MailboxResource(Resource):
    """``/sis/v1/mailbox/``: ``GET next`` and ``POST {delivery-id}/ack`` for pull partners."""

    isLeaf = True

    def __init__(self, database: Any, *, clock: Any = None, log: Any = None) -> None:
        super().__init__()
        self.database = database
        #: where the JSON line of each hand-out and acknowledgement goes (an AckLog)
        self.log = log
        self._seconds: Callable[[], float] = clock.seconds if clock is not None else time.time

    def _log_attempt(self, delivery: deliveries.Delivery, now: datetime, event: str, **fields: Any) -> None:
        # SPEC §8: one JSON line per delivery attempt; a hand-out is the pull mode's attempt
        # and the partner's acknowledgement settles it, as with the other modes.
        if self.log is None:
            return
        self.log.emit({
            "event": event,
            "time": now.isoformat(timespec="milliseconds") + "Z",
            "node": deliveries.MAILBOX_OWNER,
            "delivery_id": delivery.id,
            "recipient": delivery.recipient_id,
            "mode": "pull",
            "incident_id": delivery.incident_id,
            "transaction": delivery.transaction_name,
            "requester_id": delivery.requester_ref,
            "attempt": delivery.attempts,
            "state": delivery.state,
            **fields,
        })

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._seconds(), UTC).replace(tzinfo=None)

    def render(self, request: Request) -> bytes | int:
        """Route by path and method; answer from a coroutine."""
        path = [segment.decode("ascii", "replace") for segment in request.postpath]
        while path and path[-1] == "":
            path.pop()
        method = request.method
        if path == ["next"]:
            if method != b"GET":
                return self._plain(request, 405, "use GET to fetch the next document", allow=b"GET")
            work = self._next
        elif len(path) == 2 and path[1] == "ack":
            if method != b"POST":
                return self._plain(request, 405, "POST your ACKNOWLEDGEMENT here", allow=b"POST")
            work = self._ack
        else:
            return self._plain(request, 404, "the mailbox has GET /sis/v1/mailbox/next and "
                                             "POST /sis/v1/mailbox/{delivery-id}/ack")
        identity = partner_of(request.channel.transport)
        if identity is None:  # the handshake refuses these; never serve one without it
            return self._plain(request, 403, "no partner certificate")
        gone = [False]
        request.notifyFinish().addErrback(lambda _: gone.__setitem__(0, True))

        def answered(_: object) -> None:
            if not gone[0]:
                request.finish()

        def failed(failure: Failure) -> None:
            if gone[0]:
                return
            if failure.check(_Answer):
                body = self._plain(request, failure.value.status, failure.value.reason)
            else:
                log.failure("mailbox of {partner}", failure, partner=identity.partner_id)
                request.setHeader(b"Retry-After", b"1")
                body = self._plain(request, 503, "the hub could not serve the mailbox just now; try again")
            request.write(body)
            request.finish()

        d = Deferred.fromCoroutine(work(request, identity.partner_id, path))
        d.addCallbacks(answered, failed)
        return NOT_DONE_YET

    @staticmethod
    def _plain(request: Request, status: int, reason: str, *, allow: bytes | None = None) -> bytes:
        """Set *status* and a plain-text *reason*; returns the body to send."""
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _TEXT)
        if allow is not None:
            request.setHeader(b"Allow", allow)
        return (reason + "\n").encode("utf-8")

    async def _next(self, request: Request, partner_id: str, path: list[str]) -> None:
        now = self._now()

        def thd(conn: Any) -> deliveries.Delivery | None:
            settings = _pull_settings(conn, partner_id)
            timeout = float(settings.config.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
            return deliveries.mailbox_next(conn, partner_id, now=now, visibility_timeout=timeout)

        delivery = await self.database.run(thd)
        if delivery is None:
            request.setResponseCode(204)
            return
        self._log_attempt(delivery, now, "delivery_attempt", outcome="accepted", error=None,
                          lease_until=delivery.lease_until.isoformat(timespec="seconds") + "Z"
                          if delivery.lease_until else None)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/xml")
        request.setHeader(DELIVERY_ID_HEADER.encode("ascii"), str(delivery.id).encode("ascii"))
        request.setHeader(b"Content-Length", str(len(delivery.document)).encode("ascii"))
        request.write(delivery.document)

    async def _ack(self, request: Request, partner_id: str, path: list[str]) -> None:
        if not path[0].isdigit() or len(path[0]) > 18:
            raise _Answer(404, f"{path[0]!r} is not a delivery id")
        delivery_id = int(path[0])
        request.content.seek(0)
        body = request.content.read()
        try:
            ack = read_receiver_ack(body)
        except MalformedReceiverAck as e:
            raise _Answer(400, f"not an ACKNOWLEDGEMENT: {e}") from None
        now = self._now()

        def thd(conn: Any) -> deliveries.Delivery:
            _pull_settings(conn, partner_id)
            try:
                return deliveries.mailbox_ack(conn, partner_id, delivery_id, now=now, receiver_ack=ack.document,
                                              acknowledged=ack.acknowledged,
                                              error=None if ack.acknowledged else ack.error_text or "Acknowledge=No")
            except deliveries.UnknownDelivery:
                raise _Answer(404, f"{partner_id} has no delivery {delivery_id}") from None
            except deliveries.DeliveryNotOutstanding as e:
                raise _Answer(409, str(e)) from None

        settled = await self.database.run(thd)
        self._log_attempt(settled, now, "receiver_acknowledgement", acknowledged=ack.acknowledged,
                          error=None if ack.acknowledged else settled.last_error)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", _TEXT)
        said = "acknowledged" if settled.state == "acknowledged" else f"{settled.state}: {settled.last_error}"
        request.write(f"delivery {delivery_id} {said}\n".encode())
