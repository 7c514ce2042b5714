"""The HTTP side of the listener: ``POST /sis/v1/transactions`` (SPEC §5, §8).

Bodies over the limit are refused as they arrive, never buffered whole: a
``Content-Length`` over the limit is refused before a byte of the body is read, and a
chunked body is cut off at the limit.  Either way the transport stops reading, the
refusal is recorded, and a ``too-large`` acknowledgement is sent before closing.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gsem.errors import AckCode, Problem
from gsem.exchange import Exchange, Inbound, Outcome
from gsem.mailbox import MailboxResource
from gsem.tls import PartnerIdentity, partner_of

__all__ = ["InboundTransactionResource", "LimitedRequest", "answer", "build_site", "listener_site", "ACK_CONTENT_TYPE"]

log = Logger()
ACK_CONTENT_TYPE = b"application/xml; charset=utf-8"


class _CountingSink(io.BytesIO):
    """Keeps a body up to the limit; reports when the limit is crossed."""

    def __init__(self, limit: int, over: Callable[[], None]) -> None:
        super().__init__()
        self.limit = limit
        self.over = over
        self.refused = False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.refused:
            return len(data)
        if self.tell() + len(data) > self.limit:
            self.refused = True
            self.over()
            return len(data)
        return super().write(data)


class LimitedRequest(Request):
    """A request whose body may not exceed ``site.max_body_bytes``."""

    started: float = 0.0
    refused_early = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - Twisted's name
        self.started = time.perf_counter()
        limit = self.channel.site.max_body_bytes
        if length is not None and length > limit:
            self.content = _CountingSink(0, lambda: None)
            self.content.refused = True
            self._refuse_early(f"the body is {length} bytes; the limit is {limit}")
            return
        self.content = _CountingSink(limit, lambda: self._refuse_early(f"the body is over the limit of {limit} bytes"))

    def _refuse_early(self, message: str) -> None:
        if self.refused_early:
            return
        self.refused_early = True
        transport = self.channel.transport
        transport.pauseProducing()  # stop reading the body
        identity = partner_of(transport)
        site = self.channel.site
        problem = Problem(AckCode.TOO_LARGE, message)
        if identity is None:
            self._write_raw(413, b"")
            return
        inbound = Inbound(partner_id=identity.partner_id, fingerprint=identity.fingerprint, body=b"",
                          received_at=datetime.now(UTC).replace(tzinfo=None))
        d = Deferred.fromCoroutine(site.exchange.refuse(inbound, problem))
        d.addCallbacks(lambda outcome: self._write_raw(outcome.http_status, outcome.document),
                       lambda f: (log.failure("recording a refusal", f), self._write_raw(413, b""))[-1])

    def _write_raw(self, status: int, body: bytes) -> None:
        # The request is not complete, so Twisted's response machinery cannot be used;
        # answer on the wire and close (RFC 9110 §15.5.14 allows closing after a 413).
        reason = http.RESPONSES.get(status, b"Error")
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, reason, ACK_CONTENT_TYPE, len(body)))
        transport = self.channel.transport
        transport.write(head + body)
        transport.loseConnection()


class InboundTransactionResource(Resource):
    """``POST /sis/v1/transactions``: one document in, its ACKNOWLEDGEMENT out."""

    isLeaf = True

    def __init__(self, exchange: Exchange, strict_of: Callable[[str], bool]) -> None:
        super().__init__()
        self.exchange = exchange
        self.strict_of = strict_of

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setResponseCode(405)
        request.setHeader(b"Allow", b"POST")
        return b"POST one SERVICE_INCIDENT document here.\n"

    def render_POST(self, request: Request) -> int | bytes:  # noqa: N802
        if getattr(request, "refused_early", False):
            return NOT_DONE_YET  # the refusal is already on its way
        identity: PartnerIdentity | None = partner_of(request.channel.transport)
        if identity is None:  # the handshake refuses these; never serve one without it
            request.setResponseCode(403)
            return b""
        body = request.content.getvalue()
        started = getattr(request, "started", 0.0) or time.perf_counter()
        key = request.getHeader(b"Idempotency-Key")
        inbound = Inbound(
            partner_id=identity.partner_id,
            fingerprint=identity.fingerprint,
            body=body,
            received_at=datetime.now(UTC).replace(tzinfo=None),
            idempotency_key=key.decode("utf-8", "replace")[:200] if key else None,
            strict=self.strict_of(identity.partner_id),
            read_ms=(time.perf_counter() - started) * 1000,
        )
        Deferred.fromCoroutine(self.exchange.receive(inbound)).addCallbacks(
            _respond, _failed, callbackArgs=(request,), errbackArgs=(request, inbound))
        return NOT_DONE_YET


def _respond(outcome: Outcome, request: Request) -> None:
    # Request.connectionLost drops the channel: the partner went away, and the
    # acknowledgement stays in the log.  (Checked here rather than through
    # notifyFinish(), which costs every request a Deferred for this rare case.)
    if request.channel is None:
        return
    answer(request, outcome)


def _failed(failure: Failure, request: Request, inbound: Inbound) -> None:
    # A bug, not a rejection: log it, and tell the partner only that nothing was kept.
    log.failure("receiving a transaction from {partner}", failure, partner=inbound.partner_id)
    _respond(Exchange._unavailable(inbound, "the hub failed to process the transaction"), request)


def answer(request: Request, outcome: Outcome) -> None:
    """Send *outcome*'s acknowledgement as the response to *request*.

    With its Content-Length: without one Twisted sends the body chunked, and ends it
    with a chunk of its own, one more write (one more TLS record) per answer.
    """
    request.setResponseCode(outcome.http_status)
    request.setHeader(b"Content-Type", ACK_CONTENT_TYPE)
    request.setHeader(b"Content-Length", b"%d" % len(outcome.document))
    if outcome.http_status == 503:
        request.setHeader(b"Retry-After", b"1")
    request.write(outcome.document)
    request.finish()


class _Site(Site):
    """Twisted's ``Site`` without its access log.

    gsem's acknowledgement log (one JSON line per answer, ``gsem.acklog``) already says
    who sent what and what came back; a second, Common Log Format line per request cost
    the reactor thread a formatted timestamp, a string and a write for nothing new.
    """

    def log(self, request: Request) -> None:
        pass


class _NotFound(Resource):
    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"Not found. Transactions are posted to /sis/v1/transactions.\n"

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: N802
        return self


def build_site(exchange: Exchange, *, strict_of: Callable[[str], bool], max_body_bytes: int,
               idle_timeout: float, reactor: Any = None) -> Site:
    """The whole web tree of the listener."""
    root = _NotFound()
    sis = Resource()
    v1 = Resource()
    root.putChild(b"sis", sis)
    sis.putChild(b"v1", v1)
    v1.putChild(b"transactions", InboundTransactionResource(exchange, strict_of))
    # Pull partners fetch and acknowledge their deliveries on the same listener (SPEC §7).
    v1.putChild(b"mailbox", MailboxResource(exchange.database, clock=reactor, log=exchange.ack_log))
    site = listener_site(root, max_body_bytes=max_body_bytes, idle_timeout=idle_timeout, reactor=reactor)
    site.exchange = exchange  # type: ignore[attr-defined]
    return site


def listener_site(root: Resource, *, max_body_bytes: int, idle_timeout: float, reactor: Any = None) -> Site:
    """The Twisted web layer of the listener around *root* (``bench/bare_server.py`` uses it too).

    No access-log line (the acknowledgement log is the log), no HTML form parsing (no
    resource reads form fields, and parsing a POST's Content-Type for them goes through
    the email package: 150–230 µs, about 7 % of a transaction's CPU), bodies limited to
    *max_body_bytes* by :class:`LimitedRequest`, no tracebacks to the client.
    """
    site = _Site(root, timeout=idle_timeout, reactor=reactor, parsePOSTFormSubmission=False)
    site.requestFactory = LimitedRequest
    site.max_body_bytes = max_body_bytes  # type: ignore[attr-defined]
    site.displayTracebacks = False
    site.noisy = False
    return site
