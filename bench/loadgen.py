"""gsem's load generator: partners' systems posting whole incident lifecycles over mutual TLS.

Not a test and not a library: ``bench/run.py`` starts several of these processes and
talks to each over its standard input and output.  It is usable by hand too::

    .venv/bin/python bench/loadgen.py SPEC.json

One process plays the partners of the *pairs* in its spec (a requester and its provider
each), one TLS client certificate per partner, and drives one of three modes:

``closed``
    Every partner keeps one persistent HTTP/1.1 connection and sends its next
    transaction as soon as the previous acknowledgement has arrived.  Latency is send to
    complete response.
``open``
    Transactions are due at a fixed rate whatever the hub does (open loop).  A due
    transaction waits for an idle connection if all are busy, and its latency is counted
    from when it was *due*, not when it could be sent, so a slow hub cannot hide its
    latency by slowing the generator down (Gil Tene's "coordinated omission").
``connect``
    Like ``closed``, but every transaction opens a new TCP connection and does a full
    TLS handshake first (the hub never resumes sessions).  Latency includes the handshake.

The workload is the nine documents of one incident's lifecycle (``tests/fixtures/lifecycle``),
padded to a target size by ``bench/run.py``: the requester sends steps 1, 3, 6, 8 and 9,
the provider steps 2, 4, 5 and 7, each only after the previous step's acknowledgement.
Each pair keeps up to ``max_open_lifecycles`` incidents going at once, so both of its
connections stay busy.  Every incident gets a RequesterID unique to the run, so every
transaction should be accepted: anything but ``200`` with ``Acknowledge=Yes`` counts as
an error and ends that incident.

It is written for low CPU per request (one ``selectors`` loop over non-blocking
``ssl`` sockets, no asyncio), and measures its own CPU time so that the harness can show
that it is not the bottleneck.

Protocol on standard output, one line each: ``READY {json}`` once every persistent
connection has finished its handshake; then it waits for ``GO <unix time>`` on standard
input (the start of the warm-up, the same instant for every process); ``PROGRESS {json}``
every few seconds; ``RESULT {json}`` at the end.  Latencies (milliseconds, as C doubles)
of the transactions completed inside the measuring window go to ``latency_file``.
"""

from __future__ import annotations

import array
import errno
import json
import os
import re
import selectors
import socket
import ssl
import sys
import time
from collections import deque
from typing import Any

IDLE, CONNECTING, HANDSHAKE, SENDING, RECEIVING, DOWN = range(6)
REQUESTER, PROVIDER = "R", "P"
PROGRESS_SECONDS = 5.0
#: How many error responses are kept whole enough to show what went wrong.
ERROR_SAMPLES = 5
_ERROR_CODE = re.compile(rb'<ERROR code="([^"]+)"')
_ACK_YES = b"<Acknowledge>Yes</Acknowledge>"
_PLACEHOLDER = re.compile(rb"(@RID@|@PID@)")


class ProtocolError(Exception):
    """The server's answer was not an HTTP/1.1 response we can read."""


class Lifecycle:
    """One incident on its way through the nine steps."""

    __slots__ = ("rid", "pid", "step")

    def __init__(self, rid: bytes, pid: bytes) -> None:
        self.rid = rid
        self.pid = pid
        self.step = 0


class Pair:
    """A requester and its provider, and the incidents they have open together."""

    __slots__ = ("index", "ready", "open", "seq", "slots")

    def __init__(self, index: int) -> None:
        self.index = index
        self.ready: dict[str, deque[Lifecycle]] = {REQUESTER: deque(), PROVIDER: deque()}
        self.open = 0
        self.seq = 0
        self.slots: dict[str, Slot] = {}


class Slot:
    """One partner's connection: at most one transaction in flight (no pipelining)."""

    __slots__ = ("gen", "pair", "role", "partner", "ctx", "sock", "fd", "state", "events",
                 "out", "out_off", "inbuf", "head", "lifecycle", "t_intended", "t_send",
                 "t_connect", "in_available", "body_len", "step_index")

    def __init__(self, gen: Generator, pair: Pair, role: str, partner: str, ctx: ssl.SSLContext) -> None:
        self.gen = gen
        self.pair = pair
        self.role = role
        self.partner = partner
        self.ctx = ctx
        self.sock: Any = None
        self.fd = -1
        self.state = DOWN
        self.events = 0
        self.out = memoryview(b"")
        self.out_off = 0
        self.inbuf = bytearray()
        self.head: tuple[int, int, int, bool] | None = None
        self.step_index = 0
        self.lifecycle: Lifecycle | None = None
        self.t_intended = 0.0
        self.t_send = 0.0
        self.t_connect = 0.0
        self.in_available = False
        self.body_len = 0

    # -- work ------------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Whether this partner has a transaction it may send now."""
        if self.pair.ready[self.role]:
            return True
        return self.role == REQUESTER and self.pair.open < self.gen.max_open

    def take_work(self) -> Lifecycle:
        """The lifecycle whose next step this partner sends: a waiting one, else a new one."""
        ready = self.pair.ready[self.role]
        if ready:
            return ready.popleft()
        pair = self.pair
        pair.open += 1
        pair.seq += 1
        tag = f"{self.gen.run_tag}-{self.gen.worker}-{pair.index}-{pair.seq}"
        return Lifecycle(("R" + tag).encode(), ("P" + tag).encode())

    # -- sockets -----------------------------------------------------------------------------

    def _want(self, events: int) -> None:
        if events == self.events:
            return
        sel = self.gen.sel
        if self.events == 0:
            sel.register(self.fd, events, self)
        elif events == 0:
            sel.unregister(self.fd)
        else:
            sel.modify(self.fd, events, self)
        self.events = events

    def open(self, now: float) -> None:
        """Start a TCP connect (non-blocking: a full accept queue must not stall the loop)."""
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = raw.connect_ex(self.gen.address)
        if err not in (0, errno.EINPROGRESS):
            raw.close()
            raise OSError(err, os.strerror(err))
        self.sock = raw
        self.fd = raw.fileno()
        self.state = CONNECTING
        self.t_connect = now
        self.events = 0
        self._want(selectors.EVENT_WRITE)

    def close(self) -> None:
        """Drop the connection (no TLS close_notify: nothing waits for it)."""
        if self.sock is not None:
            self._want(0)
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.fd = -1
        self.state = DOWN

    def start(self, now: float, intended: float) -> None:
        """Send the next step of a lifecycle this partner has work for."""
        gen = self.gen
        lifecycle = self.take_work()
        self.lifecycle = lifecycle
        self.step_index = lifecycle.step
        body = gen.build_body(lifecycle)
        self.body_len = len(body)
        self.out = memoryview(gen.head_for(len(body)) + body)
        self.out_off = 0
        self.inbuf = bytearray()
        self.head = None
        self.t_intended = intended
        self.t_send = now
        gen.inflight += 1
        gen.sent += 1
        if gen.mode == "connect" or self.state == DOWN:
            if self.state != DOWN:
                self.close()
            if gen.mode != "connect":
                gen.reconnects += 1
            try:
                self.open(now)
            except OSError as e:
                self.fail(now, f"connect: {e}")
            return
        self.state = SENDING
        self.pump_send(now)

    def on_event(self, mask: int, now: float) -> None:
        """Advance this connection's state machine after the selector said it is ready."""
        try:
            state = self.state
            if state == CONNECTING:
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                self.sock = self.ctx.wrap_socket(self.sock, server_hostname=self.gen.server_name,
                                                 do_handshake_on_connect=False)
                self.state = HANDSHAKE
                self.pump_handshake(now)
            elif state == HANDSHAKE:
                self.pump_handshake(now)
            elif state == SENDING:
                self.pump_send(now)
            elif state == RECEIVING:
                self.pump_recv(now)
            elif state == IDLE:
                # A persistent connection with nothing in flight: the server may close it.
                try:
                    data = self.sock.recv(65536)
                except ssl.SSLWantReadError:
                    return
                if not data:
                    self.close()
                    self.gen.note("server closed an idle connection")
                else:
                    self.close()
                    self.gen.note("unexpected bytes on an idle connection")
        except (OSError, ssl.SSLError, ProtocolError, ValueError) as e:
            if self.lifecycle is not None and self.state != IDLE:
                self.fail(now, f"{type(e).__name__}: {e}")
            else:
                self.close()
                self.gen.note(f"{type(e).__name__}: {e}")

    def pump_handshake(self, now: float) -> None:
        """Drive the TLS handshake as far as the socket allows."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(selectors.EVENT_WRITE)
            return
        gen = self.gen
        if gen.tls_info is None:
            gen.tls_info = {"version": self.sock.version(), "cipher": self.sock.cipher()[0]}
        if gen.in_window(now) and self.lifecycle is not None:
            gen.handshakes.append((now - self.t_connect) * 1000.0)
        if self.lifecycle is None:
            self.state = IDLE
            self._want(selectors.EVENT_READ)
            gen.connected += 1
            return
        self.state = SENDING
        self.pump_send(now)

    def pump_send(self, now: float) -> None:
        """Write as much of the request as the socket takes."""
        out = self.out
        total = len(out)
        sock = self.sock
        while self.out_off < total:
            try:
                self.out_off += sock.send(out[self.out_off:])
            except ssl.SSLWantWriteError:
                self._want(selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._want(selectors.EVENT_READ)
                return
        self.state = RECEIVING
        self._want(selectors.EVENT_READ)

    def pump_recv(self, now: float) -> None:
        """Read what has arrived; complete the transaction when the response is whole."""
        sock = self.sock
        while True:
            try:
                data = sock.recv(262144)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                data = b""
            if not data:
                raise ProtocolError("the server closed the connection before answering")
            self.inbuf += data
            done = self.parse()
            if done is not None:
                self.complete(now, *done)
                return
            # OpenSSL (without read-ahead) holds at most the rest of the current record;
            # if it holds nothing, the kernel has the rest and the selector will say so.
            if not sock.pending():
                return

    def parse(self) -> tuple[int, bytes] | None:
        """``(status, body)`` once the whole response is in the buffer, else None."""
        buf = self.inbuf
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ProtocolError("response header over 64 KiB")
                return None
            lines = bytes(buf[:end]).split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            status = int(parts[1])
            length = -1
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if length < 0 and not chunked:
                raise ProtocolError("response without Content-Length or chunked encoding")
            self.head = (status, end + 4, length, chunked)
        status, start, length, chunked = self.head
        if chunked:
            return self._parse_chunked(status, start)
        if len(buf) < start + length:
            return None
        if len(buf) > start + length:
            raise ProtocolError("bytes after the response (nothing was pipelined)")
        return status, bytes(buf[start:])

    def _parse_chunked(self, status: int, position: int) -> tuple[int, bytes] | None:
        buf = self.inbuf
        pieces = []
        while True:
            line_end = buf.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(buf[position:line_end]).split(b";", 1)[0], 16)
            start = line_end + 2
            if size == 0:
                # No trailers are expected: the last chunk is "0\r\n\r\n".
                if len(buf) < start + 2:
                    return None
                if len(buf) > start + 2:
                    raise ProtocolError("bytes after the response (nothing was pipelined)")
                return status, b"".join(pieces)
            if len(buf) < start + size + 2:
                return None
            pieces.append(bytes(buf[start:start + size]))
            position = start + size + 2

    def complete(self, now: float, status: int, body: bytes) -> None:
        """The acknowledgement has arrived: record it, advance the lifecycle."""
        gen = self.gen
        gen.inflight -= 1
        lifecycle = self.lifecycle
        assert lifecycle is not None
        self.lifecycle = None
        if gen.mode == "connect":
            self.close()
        else:
            self.state = IDLE
            self._want(selectors.EVENT_READ)
        ok = status == 200 and _ACK_YES in body[:400]
        if gen.in_window(now):
            gen.window_done += 1
            gen.latencies.append((now - self.t_intended) * 1000.0)
            gen.window_bytes_out += self.body_len
            gen.window_bytes_in += len(body)
        if ok:
            if b"<Duplicate>" in body[:1000]:
                gen.duplicates += 1
            gen.ok += 1
            self.advance(lifecycle)
        else:
            codes = sorted({m.decode() for m in _ERROR_CODE.findall(body[:20000])}) or [str(status)]
            self.record_error(f"HTTP {status} {','.join(codes)}", body)
            self.end_lifecycle()
        self.become_available()

    def fail(self, now: float, reason: str) -> None:
        """The transaction in flight is lost (connection error, timeout)."""
        gen = self.gen
        gen.inflight -= 1
        self.lifecycle = None
        self.close()
        self.record_error(reason, b"")
        self.end_lifecycle()
        self.become_available()

    def record_error(self, kind: str, body: bytes) -> None:
        gen = self.gen
        gen.errors += 1
        gen.error_kinds[kind] = gen.error_kinds.get(kind, 0) + 1
        if len(gen.error_samples) < ERROR_SAMPLES:
            gen.error_samples.append({"partner": self.partner, "kind": kind,
                                      "step": gen.steps[self.step_index]["name"],
                                      "body": body[:600].decode("utf-8", "replace")})

    def advance(self, lifecycle: Lifecycle) -> None:
        gen = self.gen
        lifecycle.step += 1
        if lifecycle.step >= len(gen.steps):
            gen.lifecycles_done += 1
            self.pair.open -= 1
            self._wake(self.pair.slots[REQUESTER])
            return
        role = gen.steps[lifecycle.step]["role"]
        self.pair.ready[role].append(lifecycle)
        self._wake(self.pair.slots[role])

    def end_lifecycle(self) -> None:
        self.pair.open -= 1
        self._wake(self.pair.slots[REQUESTER])

    def become_available(self) -> None:
        self._wake(self)

    @staticmethod
    def _wake(slot: Slot) -> None:
        if slot.lifecycle is None and not slot.in_available and slot.has_work():
            slot.in_available = True
            slot.gen.available.append(slot)


class Generator:
    """One process's share of the partners, and the loop that drives them."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.worker = spec["worker"]
        self.mode = spec["mode"]
        if self.mode not in ("closed", "open", "connect"):
            raise SystemExit(f"loadgen: unknown mode {self.mode!r}")
        self.run_tag = spec["run_tag"]
        self.address = (spec["host"], spec["port"])
        self.server_name = spec.get("server_name", spec["host"])
        self.max_open = spec.get("max_open_lifecycles", 4)
        self.request_timeout = spec.get("request_timeout", 30.0)
        self.path = spec.get("path", "/sis/v1/transactions")
        with open(spec["templates"], encoding="utf-8") as f:
            self.steps = json.load(f)["steps"]
        for step in self.steps:
            step["parts"] = _PLACEHOLDER.split(step["body"].encode("utf-8"))
        connection = b"Connection: close\r\n" if self.mode == "connect" else b""
        self._head = (f"POST {self.path} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
                      "Content-Type: application/xml\r\n").encode() + connection + b"Content-Length: %d\r\n\r\n"
        self.sel = selectors.DefaultSelector()
        self.available: deque[Slot] = deque()
        self.pairs: list[Pair] = []
        self.slots: list[Slot] = []
        contexts: dict[str, ssl.SSLContext] = {}
        for index, entry in enumerate(spec["pairs"]):
            pair = Pair(index)
            for role, key in ((REQUESTER, "requester"), (PROVIDER, "provider")):
                partner = entry[key]
                ctx = contexts.get(partner["id"])
                if ctx is None:
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    ctx.load_verify_locations(spec["ca"])
                    ctx.load_cert_chain(partner["cert"], partner["key"])
                    contexts[partner["id"]] = ctx
                slot = Slot(self, pair, role, partner["id"], ctx)
                pair.slots[role] = slot
                self.slots.append(slot)
            self.pairs.append(pair)
        # Counters.
        self.inflight = 0
        self.sent = 0
        self.ok = 0
        self.errors = 0
        self.duplicates = 0
        self.reconnects = 0
        self.connected = 0
        self.lifecycles_done = 0
        self.error_kinds: dict[str, int] = {}
        self.error_samples: list[dict[str, Any]] = []
        self.notes: dict[str, int] = {}
        self.window_done = 0
        self.window_bytes_out = 0
        self.window_bytes_in = 0
        self.latencies = array.array("d")
        self.handshakes = array.array("d")
        self.tls_info: dict[str, Any] | None = None
        self.window_start = float("inf")
        self.window_end = float("inf")

    def note(self, what: str) -> None:
        """Count something odd that is not a failed transaction."""
        self.notes[what] = self.notes.get(what, 0) + 1

    def head_for(self, length: int) -> bytes:
        """The request head for a body of *length* bytes."""
        return self._head % length

    def build_body(self, lifecycle: Lifecycle) -> bytes:
        """The document of *lifecycle*'s next step, with its incident's ids filled in."""
        step = self.steps[lifecycle.step]
        parts = step["parts"]
        out = []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                out.append(part)
            else:
                out.append(lifecycle.rid if part == b"@RID@" else lifecycle.pid)
        return b"".join(out)

    def in_window(self, now: float) -> bool:
        """Whether *now* is inside the measuring window (after warm-up, before the end)."""
        return self.window_start <= now < self.window_end

    # -- phases --------------------------------------------------------------------------------

    def connect_all(self, deadline: float) -> None:
        """Open every persistent connection and finish its handshake before the start."""
        now = time.monotonic()
        for slot in self.slots:
            slot.open(now)
        while self.connected < len(self.slots):
            now = time.monotonic()
            if now > deadline:
                raise SystemExit(f"loadgen: only {self.connected} of {len(self.slots)} connections "
                                 "finished their TLS handshake in time")
            for key, mask in self.sel.select(0.5):
                slot = key.data
                slot.on_event(mask, time.monotonic())
                if slot.state == DOWN:
                    raise SystemExit(f"loadgen: connection of {slot.partner} failed: {self.notes}")

    def run(self, start: float) -> dict[str, Any]:
        """Drive the load from *start* (monotonic) through warm-up, window and drain."""
        spec = self.spec
        warmup, duration = spec["warmup"], spec["duration"]
        drain = spec.get("drain", 15.0)
        self.window_start = start + warmup
        self.window_end = self.window_start + duration
        hard_end = self.window_end + drain
        open_loop = self.mode == "open"
        interval = 1.0 / spec["rate"] if open_loop else 0.0
        # Stagger the processes' ticks so that they do not all fire together.
        next_tick = start + interval * spec.get("phase", 0.0)
        backlog: deque[float] = deque()
        unsent = 0
        max_backlog_seen = 0
        for slot in self.slots:
            slot.become_available()
        while True:
            now = time.monotonic()
            if now >= start:
                break
            time.sleep(min(start - now, 0.05))
        cpu_window_start = cpu_window_end = None
        next_progress = start + PROGRESS_SECONDS
        next_timeout_check = start + 1.0
        sel = self.sel
        available = self.available
        stopping = False
        while True:
            now = time.monotonic()
            if cpu_window_start is None and now >= self.window_start:
                cpu_window_start = time.process_time()
            if not stopping and now >= self.window_end:
                stopping = True
                cpu_window_end = time.process_time()
                # Transactions that were due in the window but never got a connection:
                # their latency is at least this long, and leaving them out would hide
                # exactly the delays an open loop is there to show.
                for due in backlog:
                    if due >= self.window_start:
                        self.latencies.append((self.window_end - due) * 1000.0)
                        unsent += 1
                backlog.clear()
            if stopping and (self.inflight == 0 or now >= hard_end):
                break
            if not stopping:
                if open_loop:
                    # Bounded by the run's duration: at most rate x (warm-up + duration) entries.
                    while next_tick <= now:
                        backlog.append(next_tick)
                        next_tick += interval
                    if len(backlog) > max_backlog_seen:
                        max_backlog_seen = len(backlog)
                    while backlog and available:
                        slot = available.popleft()
                        slot.in_available = False
                        if slot.lifecycle is None and slot.has_work():
                            slot.start(now, backlog.popleft())
                else:
                    while available:
                        slot = available.popleft()
                        slot.in_available = False
                        if slot.lifecycle is None and slot.has_work():
                            slot.start(now, now)
            if now >= next_progress:
                next_progress += PROGRESS_SECONDS
                emit("PROGRESS", {"worker": self.worker, "t": round(now - start, 1), "ok": self.ok,
                                  "errors": self.errors, "inflight": self.inflight,
                                  "backlog": len(backlog)})
            if now >= next_timeout_check:
                next_timeout_check = now + 1.0
                for slot in self.slots:
                    if slot.lifecycle is not None and now - slot.t_send > self.request_timeout:
                        slot.fail(now, f"no response within {self.request_timeout:g} s")
            if open_loop and not stopping:
                timeout = max(0.0, min(next_tick - now, 0.05)) if available else 0.05
            elif available and not stopping:
                timeout = 0.0
            else:
                timeout = 0.05
            for key, mask in sel.select(timeout):
                key.data.on_event(mask, time.monotonic())
        if cpu_window_end is None:
            cpu_window_end = time.process_time()
        if cpu_window_start is None:
            cpu_window_start = cpu_window_end
        unfinished = self.inflight
        for slot in self.slots:
            slot.close()
        with open(spec["latency_file"], "wb") as f:
            self.latencies.tofile(f)
        with open(spec["latency_file"] + ".handshake", "wb") as f:
            self.handshakes.tofile(f)
        return {
            "worker": self.worker, "mode": self.mode, "connections": len(self.slots),
            "sent": self.sent, "ok": self.ok, "errors": self.errors, "duplicates": self.duplicates,
            "unfinished": unfinished, "reconnects": self.reconnects,
            "lifecycles_done": self.lifecycles_done,
            "window_done": self.window_done, "window_seconds": duration,
            "window_bytes_out": self.window_bytes_out, "window_bytes_in": self.window_bytes_in,
            "window_cpu_seconds": round(cpu_window_end - cpu_window_start, 4),
            "total_cpu_seconds": round(time.process_time(), 4),
            "open_loop": {"rate": spec.get("rate"), "due_never_sent": unsent,
                          "max_backlog": max_backlog_seen} if open_loop else None,
            "error_kinds": self.error_kinds, "error_samples": self.error_samples,
            "notes": self.notes, "tls": self.tls_info,
        }


def emit(kind: str, payload: dict[str, Any]) -> None:
    """One protocol line to the harness."""
    sys.stdout.write(f"{kind} {json.dumps(payload, separators=(',', ':'))}\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """Read the spec, connect, wait for GO, run, report."""
    if len(argv) != 2:
        print("usage: loadgen.py SPEC.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    cpus = spec.get("cpus")
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    gen = Generator(spec)
    if gen.mode != "connect":
        gen.connect_all(time.monotonic() + spec.get("connect_timeout", 30.0))
    emit("READY", {"worker": gen.worker, "connections": gen.connected, "tls": gen.tls_info})
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != "GO":
        print(f"loadgen: expected 'GO <time>', got {line!r}", file=sys.stderr)
        return 2
    start = time.monotonic() + (float(line[1]) - time.time())
    emit("RESULT", gen.run(start))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
