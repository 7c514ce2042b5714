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
    body and answers the acknowledgement with the hub's own ``gsem.web.answer`` (with its
    Content-Length).  No parsing, no validation, no database, no acknowledgement log.
``floor`` (the least a hub must do, with no gsem logic in between)
    The ``twisted`` server, with ``--workers`` processes sharing its port as ``gsem serve``
    runs them, doing for every request only what SPEC asks of any hub and as directly
    as Python allows: parse the body and validate it against ``service_incident.xsd``
    (lxml, libxml2), read the incident by RequesterID and write it back (state and
    document), keep the message with its digest and acknowledgement, and queue its
    delivery: three rows and a lookup, as raw ``sqlite3`` statements, in gsem's own
    SQLite group commit (``Database.run_batched``: WAL, ``synchronous=FULL``, the writer
    lock between processes), then answer an acknowledgement with its own id.  No field
    matrix, state machine, incident merge, forwarded document, acknowledgement log or
    idempotency replay: what it reaches bounds what any hub written this way can.
``minimal`` (to show the load generator's own ceiling)
    A single-threaded ``selectors`` loop over Python ``ssl`` sockets: client
    certificates required and verified against the same CA, no CRL, no partner lookup,
    no HTTP library; ``Content-Length`` bodies only.  As cheap a responder as Python gets.
"""

from __future__ import annotations

import argparse
import errno
import marshal
import os
import selectors
import signal
import socket
import ssl
import struct
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def _trust_lookup(database_url: str):  # noqa: ANN202
    """The hub's partner lookup (gsem.server.Engine._lookup's checks) on a snapshot of the partner table."""
    from gsem.db import partners
    from gsem.db.connector import Database

    database = Database(database_url)
    try:
        trust = database.run_sync(partners.trust_snapshot)
    finally:
        database.engine.dispose()

    def lookup(fingerprint: str) -> str | None:
        entry = trust.get(fingerprint)
        return entry.partner_id if entry is not None and entry.accepts(datetime.now(UTC)) else None

    return lookup


# -- twisted --------------------------------------------------------------------------------


def serve_twisted(data_dir: Path, port: int) -> int:
    """The hub's TLS listener and web layer around a fixed acknowledgement."""
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    from gsem.tls import partner_of

    config = load_config(data_dir)
    _log_as_gsem_serve()
    body = fixed_ack()
    send = _answerer()

    class FixedAcknowledgement(Resource):
        isLeaf = True

        def render_POST(self, request):  # noqa: N802, ANN001, ANN201
            if partner_of(request.channel.transport) is None:
                request.setResponseCode(403)
                return b""
            request.content.seek(0)
            request.content.read()
            send(body, request)
            return NOT_DONE_YET

    _serve(config, FixedAcknowledgement(), "twisted", port=port)
    return 0


def _log_as_gsem_serve() -> None:
    """Log as ``gsem serve`` does: Twisted's text observer on standard error."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)


def _answerer() -> Any:
    """``send(ack, request)``: answer 200 with *ack* as the hub answers (``gsem.web.answer``, with its Content-Length)."""
    from gsem.exchange import Outcome
    from gsem.web import answer

    def send(ack: bytes, request: Any) -> None:
        answer(request, Outcome(200, ack))

    return send


def _serve(config: Any, resource: Any, kind: str, *, port: int = 0, adopt: socket.socket | None = None,
           announce: bool = True) -> None:
    """Serve *resource* behind the hub's own TLS listener and web layer until SIGTERM.

    The web layer is ``gsem.web.listener_site`` (no access-log line, no form parsing) and
    partners are checked as the hub checks them, so that the difference to the hub is
    gsem's own work and nothing else.  With *adopt*, the socket shared by the workers is
    served; with *announce*, the address is printed for bench/run.py.
    """
    from twisted.internet import reactor

    from gsem.tls import PartnerTrustStore, listen_tls
    from gsem.web import listener_site

    limits = config.limits
    site = listener_site(resource, max_body_bytes=limits.max_body_bytes, idle_timeout=limits.idle_timeout,
                         reactor=reactor)
    store = PartnerTrustStore(config.ca_paths, config.crl_paths, config.server_cert, config.server_key,
                              _trust_lookup(config.database_url), clock=reactor)

    async def start() -> None:
        listening = await listen_tls(reactor, port, config.host, site, store,
                                     handshake_timeout=limits.handshake_timeout, adopt=adopt)
        if announce:
            host = listening.getHost()
            print(f"bare: serving https://{host.host}:{host.port}/sis/v1/transactions ({kind})",
                  file=sys.stderr, flush=True)

    _run_until_sigterm(reactor, start)


def _run_until_sigterm(reactor: Any, start: Any) -> None:
    """Run *reactor*, calling the coroutine function *start* first, until SIGTERM; a failed start stops it."""
    from twisted.internet.defer import Deferred

    def failed(failure):  # noqa: ANN001, ANN202
        print(f"bare: could not start: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()).addErrback(failed))
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()


# -- floor --------------------------------------------------------------------------------

_FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (id INTEGER PRIMARY KEY, requester_ref TEXT NOT NULL, state TEXT NOT NULL,
    document BLOB NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ix_incidents_ref ON incidents (requester_ref);
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, partner_id TEXT NOT NULL, received_at REAL NOT NULL,
    body BLOB NOT NULL, digest TEXT NOT NULL, incident_id INTEGER, ack_id TEXT NOT NULL, ack BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS ix_messages_key ON messages (partner_id, digest);
CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL,
    incident_id INTEGER NOT NULL, state TEXT NOT NULL, document BLOB NOT NULL, next_attempt_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ix_deliveries_due ON deliveries (state, next_attempt_at);
"""


def floor_database(path: Path) -> Any:
    """An sqlite3 connection (``isolation_level=None``) to the floor's database at *path*,
    made with its tables if it is new, with the settings of gsem's connections: 8 KiB
    pages (for a new file), WAL, ``synchronous=FULL``, the statement journal in memory."""
    import sqlite3

    from gsem.db.connector import SQLITE_PAGE_SIZE

    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA temp_store = MEMORY")
    db.executescript(_FLOOR_SCHEMA)
    return db


def serve_floor(data_dir: Path, port: int, workers: int, writer_process: bool = False) -> int:
    """The least per-request work SPEC asks of a hub, in *workers* processes sharing one port.

    With *writer_process*, one more process owns the database and commits every worker's
    transactions together; the workers hand it theirs over a Unix socket each.
    """
    from gsem.workers import bind_listening_socket, die_with_parent

    config = load_config(data_dir)
    db_path = data_dir / "floor.db"
    floor_database(db_path).close()
    sock = bind_listening_socket(config.host, port)
    parent = os.getpid()
    children = []
    pipes = [socket.socketpair() for _ in range(workers)] if writer_process else []
    # Each worker's end of its socket to the writer process (None: no writer process).
    ends = [ours for _, ours in pipes] or [None] * workers
    if writer_process:
        pid = os.fork()
        if pid == 0:
            die_with_parent(parent)
            os._exit(_floor_writer(db_path, [theirs for theirs, _ in pipes]))
        children.append(pid)
    # Fork before anything imports Twisted's reactor: each process makes its own.
    for index in range(1, workers):
        pid = os.fork()
        if pid == 0:
            die_with_parent(parent)
            os._exit(_floor_worker(data_dir, db_path, sock, index, ends[index]))
        children.append(pid)
    try:
        return _floor_worker(data_dir, db_path, sock, 0, ends[0])
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        for pid in children:
            os.waitpid(pid, 0)


def _floor_store(raw: Any, template: bytes, partner: str, ref: str, state: str, body: bytes, digest: str,
                 ack_id: bytes) -> bytes:
    """One transaction's statements on the sqlite3 connection *raw*; its acknowledgement."""
    now = time.time()
    found = raw.execute("SELECT id FROM incidents WHERE requester_ref = ?", (ref,)).fetchone()
    if found is None:
        incident_id = raw.execute(
            "INSERT INTO incidents (requester_ref, state, document, version, updated_at) VALUES (?, ?, ?, 1, ?)",
            (ref, state, body, now)).lastrowid
    else:
        incident_id = found[0]
        raw.execute("UPDATE incidents SET state = ?, document = ?, version = version + 1, updated_at = ? "
                    "WHERE id = ?", (state, body, now, incident_id))
    ack = template.replace(b"01JD3Z0000000000000000BARE", ack_id)
    message_id = raw.execute(
        "INSERT INTO messages (partner_id, received_at, body, digest, incident_id, ack_id, ack) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (partner, now, body, digest, incident_id, ack_id, ack)).lastrowid
    raw.execute("INSERT INTO deliveries (message_id, incident_id, state, document, next_attempt_at) "
                "VALUES (?, ?, 'pending', ?, ?)", (message_id, incident_id, body, now))
    return ack


def floor_commit(db: Any, template: bytes, batch: list[Any]) -> list[bytes | None]:
    """The writer process's group commit: each of *batch* (``_floor_store``'s arguments
    after the template) in one transaction on the sqlite3 connection *db*
    (``isolation_level=None``); its acknowledgement, or None when its statements failed.

    As gsem's group commit, no SAVEPOINT per call (``gsem.db.pool.run_until_failure``):
    when a call fails, the transaction is rolled back, and (the floor's calls being plain
    statements that can run again) the batch runs again with one SAVEPOINT per call."""
    import sqlite3

    db.execute("BEGIN IMMEDIATE")
    try:
        acks: list[bytes | None] = [_floor_store(db, template, *args) for args in batch]
    except sqlite3.Error:
        db.execute("ROLLBACK")
        return _floor_commit_savepoints(db, template, batch)
    db.execute("COMMIT")
    return acks


def _floor_commit_savepoints(db: Any, template: bytes, batch: list[Any]) -> list[bytes | None]:
    import sqlite3

    db.execute("BEGIN IMMEDIATE")
    acks: list[bytes | None] = []
    for args in batch:
        db.execute("SAVEPOINT call")
        try:
            acks.append(_floor_store(db, template, *args))
        except sqlite3.Error:
            db.execute("ROLLBACK TO call")
            acks.append(None)
        db.execute("RELEASE call")
    db.execute("COMMIT")
    return acks


_FRAME = struct.Struct("!I")


def _frame(message: tuple[Any, ...]) -> bytes:
    """*message* as it goes between a floor worker and its writer process: length, then marshal."""
    payload = marshal.dumps(message)
    return _FRAME.pack(len(payload)) + payload


def _take_frames(buf: bytearray) -> list[tuple[Any, ...]]:
    """The whole messages at the start of *buf*, taken out of it (a partial one stays)."""
    messages = []
    while len(buf) >= _FRAME.size:
        (length,) = _FRAME.unpack_from(buf)
        end = _FRAME.size + length
        if len(buf) < end:
            break
        messages.append(marshal.loads(bytes(buf[_FRAME.size:end])))
        del buf[:end]
    return messages


def _floor_writer(db_path: Path, socks: list[socket.socket]) -> int:
    """The writer process: every worker's transactions that are waiting, in one commit, again and again."""
    db = floor_database(db_path)
    template = fixed_ack()
    sel = selectors.DefaultSelector()
    buffers = {}
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        buffers[sock] = bytearray()
    counts = [0, 0]  # transactions, commits

    def stop(*_: object) -> None:
        print(f"floor writer: {counts[0]:,} transactions in {counts[1]:,} commits "
              f"({counts[0] / max(counts[1], 1):.1f} per commit)", file=sys.stderr, flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        batch = []
        for key, _ in sel.select():
            sock, buf = key.fileobj, buffers[key.fileobj]
            while True:
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    break
                if not data:
                    stop()
                buf += data
            batch.extend((sock, message) for message in _take_frames(buf))
        if not batch:
            continue
        acks = floor_commit(db, template, [args for _, (_, *args) in batch])
        counts[0] += len(batch)
        counts[1] += 1
        replies: dict[socket.socket, list[bytes]] = {}
        for (sock, (request_id, *_)), ack in zip(batch, acks, strict=True):
            replies.setdefault(sock, []).append(_frame((request_id, ack)))
        for sock, frames in replies.items():
            sock.setblocking(True)
            sock.sendall(b"".join(frames))
            sock.setblocking(False)


def _floor_worker(data_dir: Path, db_path: Path, sock: socket.socket, index: int,
                  writer: socket.socket | None = None) -> int:
    import hashlib
    import itertools

    from lxml import etree
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    from gsem.db.connector import Database
    from gsem.schema import incident_schema
    from gsem.tls import partner_of

    config = load_config(data_dir)
    _log_as_gsem_serve()
    parser = etree.XMLParser(schema=incident_schema(), resolve_entities=False, no_network=True)
    template = fixed_ack()
    ack_ids = (f"01FLOOR{index:02d}{n:017d}".encode() for n in itertools.count())
    if writer is None:
        database = Database(f"sqlite:///{db_path}")
        database.start()

        def submit(*args: Any) -> Deferred:
            return Deferred.fromCoroutine(database.run_batched(
                lambda conn: _floor_store(conn.connection.driver_connection, template, *args)))
    else:
        database = None
        submit = _WriterClient.over(reactor, writer).submit

    answer = _answerer()

    def failed(failure, request) -> None:  # noqa: ANN001
        print(f"floor: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        request.setResponseCode(503)
        request.finish()

    class Floor(Resource):
        isLeaf = True

        def render_POST(self, request):  # noqa: N802, ANN001, ANN201
            partner = partner_of(request.channel.transport)
            if partner is None:
                request.setResponseCode(403)
                return b""
            request.content.seek(0)
            body = request.content.read()
            try:
                root = etree.fromstring(body, parser)
            except etree.XMLSyntaxError:
                request.setResponseCode(400)
                return b""
            ref = root.findtext("RequesterID") or ""
            state = root.findtext("TransactionName") or ""
            digest = hashlib.sha256(body).hexdigest()
            done = submit(partner.partner_id, ref, state, body, digest, next(ack_ids))
            done.addCallbacks(answer, failed, callbackArgs=(request,), errbackArgs=(request,))
            return NOT_DONE_YET

    _serve(config, Floor(), "floor", adopt=sock, announce=index == 0)
    if database is not None:
        database.stop()  # its writer logs its summary line, as the hub's do
    return 0


class _WriterClient:
    """A floor worker's end of its Unix socket to the writer process: requests out, acknowledgements back."""

    @classmethod
    def over(cls, reactor: Any, sock: socket.socket) -> _WriterClient:
        from twisted.internet.protocol import Factory, Protocol

        client = cls()

        class Framed(Protocol):
            def connectionMade(self) -> None:  # noqa: N802
                client.transport = self.transport

            def dataReceived(self, data: bytes) -> None:  # noqa: N802
                client.buffer += data
                for request_id, ack in _take_frames(client.buffer):
                    done = client.pending.pop(request_id)
                    if ack is None:
                        done.errback(RuntimeError("the writer refused the transaction"))
                    else:
                        done.callback(ack)

        sock.setblocking(False)
        # Twisted duplicates the descriptor; the protocol's connectionMade hands over the transport.
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, Factory.forProtocol(Framed))
        return client

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: Any = None
        self.pending: dict[int, Any] = {}
        self.next_id = 0

    def submit(self, *args: Any) -> Any:
        from twisted.internet.defer import Deferred

        self.next_id += 1
        done: Deferred = Deferred()
        self.pending[self.next_id] = done
        self.transport.write(_frame((self.next_id, *args)))
        return done


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
    parser.add_argument("--kind", choices=("twisted", "floor", "minimal"), default="twisted")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the floor server (default 2)")
    parser.add_argument("--writer-process", action="store_true",
                        help="floor: one more process owns the database and commits for every worker")
    args = parser.parse_args()
    if args.kind == "twisted":
        return serve_twisted(args.data_dir, args.port)
    if args.kind == "floor":
        return serve_floor(args.data_dir, args.port, args.workers, args.writer_process)
    return serve_minimal(args.data_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
