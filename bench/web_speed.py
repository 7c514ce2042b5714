"""What one request costs the listener's web layer, without TLS, sockets or the database.

Not a test: run it as ``.venv/bin/python bench/web_speed.py [-n REQUESTS] [--rounds R]``.

Twisted's HTTP server (``gsem.web.listener_site``) reads whole ``POST`` requests from an
in-memory transport of one persistent connection, as it would from a partner's TLS
connection, and writes its answers back to it:

``bare``
    a resource that answers a fixed acknowledgement with ``gsem.web.answer``: the HTTP
    layer, as ``bench/bare_server.py`` serves it.
``hub``
    the hub's own tree (``gsem.web.build_site``) and ``InboundTransactionResource`` with a
    real ``Exchange``, ``DocumentValidator`` and acknowledgement log (to ``/dev/null``);
    the body is a tiny document the validator refuses at once, and the database is a
    stand-in whose ``run_batched`` returns a fixed outcome at once.  So the figure is
    the glue: request, ``render_POST``, ``Exchange.receive``, the log line and the
    answer, plus a near-empty validation.

The connection's TLS identity is attached the way ``gsem.tls.partner_of`` finds it; no
handshake is made.  Times are this thread's CPU time per request, the median and the
best of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: the package sits next to bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import NOT_DONE_YET, Request  # noqa: E402

from gsem.acklog import AckLog  # noqa: E402
from gsem.exchange import Exchange, Outcome  # noqa: E402
from gsem.tls import PartnerIdentity, _PartnerTLSProtocol  # noqa: E402
from gsem.validation import DocumentValidator  # noqa: E402
from gsem.web import answer, build_site, listener_site  # noqa: E402

BODY = b"<?xml version='1.0'?><SERVICE_INCIDENT/>"
REQUEST = (b"POST /sis/v1/transactions HTTP/1.1\r\nHost: hub.example\r\n"
           b"Content-Type: application/xml; charset=utf-8\r\nIdempotency-Key: bench-0001\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
ACK = Outcome(200, b"<?xml version='1.0' encoding='UTF-8'?>\n<ACKNOWLEDGEMENT>" + b"x" * 900 + b"</ACKNOWLEDGEMENT>\n",
              {"result": "Yes", "ack_id": "01JD3Z0000000000000000BENCH"})


class _InstantStore:
    """Stands for the database: every transaction 'commits' at once with the same outcome."""

    async def run_batched(self, fn: Any, *args: Any, **kwargs: Any) -> Outcome:
        return ACK

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Outcome:
        return ACK


class _FixedAcknowledgement(Resource):
    isLeaf = True

    def render_POST(self, request: Request) -> Any:  # noqa: N802
        request.content.seek(0)
        request.content.read()
        answer(request, ACK)
        return NOT_DONE_YET


def _identified_transport() -> StringTransport:
    # What the handshake leaves behind: a TLS connection carrying the partner's identity.
    tls = _PartnerTLSProtocol.__new__(_PartnerTLSProtocol)
    tls.partner = PartnerIdentity("REQ01", "ab" * 32)
    transport = StringTransport()
    transport.transport = tls  # type: ignore[attr-defined]
    return transport


def _site(kind: str, reactor: Any, ack_stream: Any) -> Any:
    if kind == "bare":
        return listener_site(_FixedAcknowledgement(), max_body_bytes=1 << 20, idle_timeout=60, reactor=reactor)
    exchange = Exchange(_InstantStore(), DocumentValidator(), AckLog(ack_stream, {"worker": 0}))
    return build_site(exchange, strict_of=lambda _: False, max_body_bytes=1 << 20, idle_timeout=60, reactor=reactor)


def measure(kind: str, requests: int, rounds: int) -> list[float]:
    """Microseconds of CPU per request, one figure per round."""
    reactor = MemoryReactorClock()
    with open(os.devnull, "w") as ack_stream:
        site = _site(kind, reactor, ack_stream)
        channel = site.buildProtocol(None)
        transport = _identified_transport()
        channel.makeConnection(transport)
        channel.dataReceived(REQUEST)
        first = transport.value()
        if not first.startswith(b"HTTP/1.1 200 ") or not first.endswith(ACK.document):
            raise SystemExit(f"{kind}: unexpected answer {first[:200]!r}")
        transport.clear()
        figures = []
        for _ in range(rounds):
            started = time.thread_time()
            for _ in range(requests):
                channel.dataReceived(REQUEST)
                transport.clear()
            figures.append((time.thread_time() - started) / requests * 1e6)
        channel.connectionLost(None)
    return figures


def main() -> int:
    """Print the CPU per request of each kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--kinds", default="bare,hub")
    args = parser.parse_args()
    for kind in args.kinds.split(","):
        figures = measure(kind, args.requests, args.rounds)
        print(f"{kind:5} {statistics.median(figures):7.1f} µs/request median, {min(figures):7.1f} best "
              f"({args.rounds} × {args.requests})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
