"""A TCP proxy that breaks the path to a partner on demand, and logs every connection.

:class:`FaultProxy` listens on 127.0.0.1 (a free port) and forwards to the partner's
server.  It runs an asyncio loop in its own thread, so the test process needs no
reactor, and the behaviour can be switched while the hub delivers:

``pass``       forward both ways;
``refuse``     the listening socket is closed: connections are refused by the kernel
               (these attempts never reach the proxy; :meth:`FaultProxy.refuse`);
``close``      accept, then reset the connection at once (RST, nothing read);
``delay``      accept, wait *delay* seconds, then forward;
``reset``      forward, and reset both sides once the client has sent *reset_after*
               bytes after the partner's first answer (its TLS hello): past the
               handshake, in the middle of the HTTP request;
``blackhole``  accept and read everything, never answer, never close.

:meth:`FaultProxy.script` queues modes for the next connections (one each), after which
the default mode applies again.  Every accepted connection is logged with its time
(``time.time()``, comparable with the partner server's log and the hub's records), the
mode applied, the bytes that went each way and how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultProxy", "ProxyConnection", "MODES"]

MODES = ("pass", "refuse", "close", "delay", "reset", "blackhole")


@dataclass
class ProxyConnection:
    """One connection the proxy accepted."""

    number: int
    at: float  # time.time() of the accept
    mode: str
    bytes_up: int = 0  # client -> partner
    bytes_down: int = 0  # partner -> client
    ended_at: float | None = None
    ended: str = ""  # how: client-closed, upstream-closed, reset, closed-at-once, cancelled

    @property
    def failed(self) -> bool:
        """Whether the proxy broke this connection (as opposed to passing it)."""
        return self.mode != "pass"


@dataclass
class _Mode:
    name: str = "pass"
    delay: float = 0.0
    reset_after: int = 1000
    queue: list[str] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Start with :meth:`start`; switch with :meth:`set_mode`, :meth:`script`, :meth:`refuse`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections: list[ProxyConnection] = []
        self._mode = _Mode()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- control (from the test's thread) -----------------------------------------------

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> FaultProxy:
        """Listen on a free port of 127.0.0.1."""
        self._thread.start()
        self._call(self._listen())
        return self

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """An https URL through the proxy (the partner's server checks the path)."""
        return f"https://127.0.0.1:{self.port}{path}"

    def set_mode(self, mode: str, *, delay: float | None = None, reset_after: int | None = None) -> None:
        """The behaviour for every following connection (re-listens after ``refuse``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "refuse":
            self.refuse()
            return
        with self._lock:
            self._mode.name = mode
            if delay is not None:
                self._mode.delay = delay
            if reset_after is not None:
                self._mode.reset_after = reset_after
        self._call(self._listen())

    def script(self, modes: Iterable[str]) -> None:
        """Apply *modes* to the next connections, one each, then the current mode again."""
        modes = list(modes)
        for mode in modes:
            if mode not in MODES or mode == "refuse":
                raise ValueError(f"a scripted mode must be one of {MODES[:1] + MODES[2:]}, not {mode!r}")
        with self._lock:
            self._mode.queue.extend(modes)

    @property
    def scripted_left(self) -> int:
        """How many scripted modes are still to be applied."""
        with self._lock:
            return len(self._mode.queue)

    def refuse(self) -> None:
        """Close the listening socket: new connections are refused until the next :meth:`set_mode`."""
        self._call(self._close_listener())

    def drop_connections(self) -> None:
        """Reset every open connection (a kept-alive one would otherwise dodge the next fault)."""
        self._call(self._drop())

    def log(self) -> list[ProxyConnection]:
        """A copy of the connection log."""
        with self._lock:
            return [ProxyConnection(**vars(c)) for c in self.connections]

    def stop(self) -> None:
        """Close everything and stop the loop's thread."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- the loop's side -------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _drop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _shutdown(self) -> None:
        await self._close_listener()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            mode = self._mode.queue.pop(0) if self._mode.queue else self._mode.name
            delay, reset_after = self._mode.delay, self._mode.reset_after
            record = ProxyConnection(len(self.connections) + 1, time.time(), mode)
            self.connections.append(record)
        try:
            await self._serve(record, reader, writer, delay, reset_after)
        except OSError as e:  # the client reset it (a hub that gave up on a silent partner)
            record.ended = record.ended or f"error: {e.strerror or e}"
            writer.transport.abort()
        except asyncio.CancelledError:
            record.ended = record.ended or "cancelled"
            _reset(writer)
        finally:
            record.ended_at = time.time()
            self._tasks.discard(task)

    async def _serve(self, record: ProxyConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     delay: float, reset_after: int) -> None:
        if record.mode == "close":
            record.ended = "closed-at-once"
            _reset(writer)
            return
        if record.mode == "blackhole":
            while data := await reader.read(65536):
                record.bytes_up += len(data)
            record.ended = "client-closed"
            writer.close()
            return
        if record.mode == "delay":
            await asyncio.sleep(delay)
            if reader.at_eof():
                record.ended = "client-closed"
                writer.close()
                return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            record.ended = "upstream-refused"
            _reset(writer)
            return
        limit = reset_after if record.mode == "reset" else None
        # Bytes the client sent once the partner had answered its TLS hello: the rest of
        # the handshake, then the HTTP request.  Counting from there puts the reset after
        # the handshake whatever the size of the client's hello (post-quantum key shares
        # make it 1.5 KB), and inside the request.
        after_hello = 0

        async def upstream() -> str:
            nonlocal after_hello
            while data := await reader.read(65536):
                if limit is not None and record.bytes_down > 0:
                    if after_hello + len(data) >= limit:
                        data = data[: max(0, limit - after_hello)]
                        up_writer.write(data)
                        record.bytes_up += len(data)
                        await up_writer.drain()
                        return "reset"
                    after_hello += len(data)
                up_writer.write(data)
                record.bytes_up += len(data)
                await up_writer.drain()
            return "client-closed"

        async def downstream() -> str:
            while data := await up_reader.read(65536):
                writer.write(data)
                record.bytes_down += len(data)
                await writer.drain()
            return "upstream-closed"

        tasks = {asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())}
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            _reset(up_writer)
            raise
        for t in pending:
            t.cancel()
        outcomes = set()
        for t in done:
            try:
                outcomes.add(t.result())
            except (OSError, asyncio.IncompleteReadError):
                outcomes.add("error")
        if "reset" in outcomes:
            record.ended = "reset"
            _reset(writer)
            _reset(up_writer)
            return
        record.ended = sorted(outcomes)[0]
        # Pass the close on to the other side, the way a TCP proxy would.
        for w in (writer, up_writer):
            with contextlib.suppress(OSError):
                w.close()
