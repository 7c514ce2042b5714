"""Baseline servers for gsem's benchmark: what answering costs without gsem's work.

Not a test: ``bench/run.py`` starts these as separate processes.  By hand::

    .venv/bin/python bench/bare_server.py --data-dir DIR [--kind twisted|minimal] [--port 0]

Both print ``bare: serving https://HOST:PORT/sis/v1/transactions`` on standard error
once they listen, answer every ``POST`` with the same fixed ``Acknowledge=Yes``
acknowledgement (the size of a real one), and stop on SIGTERM.

``twisted`` (the HTTP+TLS ceiling)
    The hub's own listener with nothing behind it: Twisted's reactor, gsem's
    ``PartnerTrustStore`` and ``listen_tls`` (the same mutual-TLS setup, certificates,
    CRL check and partner lookup during the handshake, here from a snapshot of the data
    directory's partner table), Twisted web set up as the hub's
    (``gsem.web.listener_site``: ``LimitedRequest``, no access-log line, no form
    parsing), the same log observer as ``gsem serve``, and a resource that reads the
    body and writes the acknowledgement the way the hub's does (``request.write`` then
    ``finish``, so chunked).  No parsing, no validation, no
    database, no acknowledgement log.
``minimal`` (to show the load generator's own ceiling)
    A single-threaded ``selectors`` loop over Python ``ssl`` sockets: client
    certificates required and verified against the same CA, no CRL, no partner lookup,
    no HTTP library; ``Content-Length`` bodies only.  As cheap a responder as Python gets.
"""

from __future__ import annotations

import argparse
import errno
import selectors
import signal
import socket
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path

# Runnable from a checkout without installing: the package sits next to bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gsem.ack import Acknowledgement  # noqa: E402
from gsem.config import load_config  # noqa: E402


def fixed_ack() -> bytes:
    """An acknowledgement shaped like the hub's answer to a Service_Request."""
    ack = Acknowledgement(
        ack_id="01JD3Z0000000000000000BARE", received_at=datetime.now(UTC), digest="0" * 64,
        transaction_name="Service_Request", requester_ref="BENCH-BARE-SERVER-0000000",
        provider_ref=None, current_state="Beginning_State")
    return ack.to_bytes()


# -- twisted --------------------------------------------------------------------------------


def serve_twisted(data_dir: Path, port: int) -> int:
    """The hub's TLS listener and web layer around a fixed acknowledgement."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    from gsem.db import partners
    from gsem.db.connector import Database
    from gsem.tls import PartnerTrustStore, listen_tls, partner_of
    from gsem.web import ACK_CONTENT_TYPE, listener_site

    config = load_config(data_dir)
    # Log as `gsem serve` does, with the hub's own web layer (gsem.web.listener_site: no
    # access-log line, no form parsing), so that the difference to the hub is gsem's own
    # work and nothing else.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    database = Database(config.database_url)
    try:
        trust = database.run_sync(partners.trust_snapshot)
    finally:
        database.engine.dispose()
    body = fixed_ack()

    def lookup(fingerprint: str) -> str | None:
        # The same checks as gsem.server.Engine._lookup, on a snapshot taken at start.
        entry = trust.get(fingerprint)
        if entry is None or not entry.partner_enabled or entry.retired_at is not None:
            return None
        now = datetime.now(UTC).replace(tzinfo=None)
        if not entry.valid_from <= now <= entry.valid_until:
            return None
        return entry.partner_id

    class FixedAcknowledgement(Resource):
        isLeaf = True

        def render_POST(self, request):  # noqa: N802, ANN001, ANN201
            if partner_of(request.channel.transport) is None:
                request.setResponseCode(403)
                return b""
            request.content.seek(0)
            request.content.read()
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", ACK_CONTENT_TYPE)
            request.write(body)
            request.finish()
            return NOT_DONE_YET

    limits = config.limits
    site = listener_site(FixedAcknowledgement(), max_body_bytes=limits.max_body_bytes,
                         idle_timeout=limits.idle_timeout, reactor=reactor)
    store = PartnerTrustStore(config.ca_paths, config.crl_paths, config.server_cert, config.server_key,
                              lookup, clock=reactor)

    async def start() -> None:
        listening = await listen_tls(reactor, port, config.host, site, store,
                                     handshake_timeout=limits.handshake_timeout)
        host = listening.getHost()
        print(f"bare: serving https://{host.host}:{host.port}/sis/v1/transactions (twisted)",
              file=sys.stderr, flush=True)

    def failed(failure):  # noqa: ANN001, ANN202
        print(f"bare: could not start: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()).addErrback(failed))
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()
    return 0


# -- minimal --------------------------------------------------------------------------------


class _Connection:
    __slots__ = ("sock", "handshaken", "inbuf", "out", "events")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.handshaken = False
        self.inbuf = bytearray()
        self.out = b""
        self.events = selectors.EVENT_READ


def serve_minimal(data_dir: Path, port: int) -> int:
    """A selectors loop over ssl sockets answering every request with a fixed acknowledgement."""
    config = load_config(data_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.server_cert, config.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    for ca in config.ca_paths:
        ctx.load_verify_locations(str(ca))
    body = fixed_ack()
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/xml; charset=utf-8\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((config.host, port))
    listener.listen(512)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    host, bound = listener.getsockname()[:2]
    print(f"bare: serving https://{host}:{bound}/sis/v1/transactions (minimal)", file=sys.stderr, flush=True)

    def drop(conn: _Connection) -> None:
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def want(conn: _Connection, events: int) -> None:
        if events != conn.events:
            sel.modify(conn.sock, events, conn)
            conn.events = events

    def flush(conn: _Connection) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except ssl.SSLWantWriteError:
                want(conn, selectors.EVENT_WRITE)
                return
            conn.out = conn.out[sent:]
        want(conn, selectors.EVENT_READ)

    def serve(conn: _Connection) -> None:
        # Answer every complete request in the buffer (a client may pipeline).
        while True:
            buf = conn.inbuf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                return
            del buf[:end + 4 + length]
            conn.out += response
            flush(conn)

    def on_ready(conn: _Connection) -> None:
        try:
            if not conn.handshaken:
                try:
                    conn.sock.do_handshake()
                except ssl.SSLWantReadError:
                    want(conn, selectors.EVENT_READ)
                    return
                except ssl.SSLWantWriteError:
                    want(conn, selectors.EVENT_WRITE)
                    return
                conn.handshaken = True
            if conn.out:
                flush(conn)
                if conn.out:
                    return
            while True:
                try:
                    data = conn.sock.recv(262144)
                except ssl.SSLWantReadError:
                    break
                if not data:
                    drop(conn)
                    return
                conn.inbuf += data
                if not conn.sock.pending():
                    break
            serve(conn)
        except (OSError, ssl.SSLError, ValueError):
            drop(conn)

    while running[0]:
        for key, _mask in sel.select(0.5):
            if key.data is None:
                for _ in range(64):
                    try:
                        raw, _addr = listener.accept()
                    except OSError as e:
                        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                            break
                        raise
                    raw.setblocking(False)
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                    conn = _Connection(sock)
                    sel.register(sock, selectors.EVENT_READ, conn)
                    on_ready(conn)
            else:
                on_ready(key.data)
    return 0


def main() -> int:
    """Parse the arguments and serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="a gsem data directory (certificates and partners are read from it)")
    parser.add_argument("--kind", choices=("twisted", "minimal"), default="twisted")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    args = parser.parse_args()
    if args.kind == "twisted":
        return serve_twisted(args.data_dir, args.port)
    return serve_minimal(args.data_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
