"""Several processes serving one hub port (``[server] workers``, ``gsem serve --workers``).

A Python process works on one core: TLS, HTTP, parsing, the schema, deciding and storing
all need its one interpreter lock.  With ``workers`` above 1, ``gsem serve`` binds the listening socket itself, serves
it as worker 1, and starts workers 2…N as child processes that inherit the socket and
accept connections from it too; the kernel hands each new connection to one of them.

Every worker writes the same database: on SQLite they take turns through the writer lock
(:class:`gsem.db.pool.WriterLock`), on PostgreSQL they commit in parallel as several nodes
do.  Only worker 1 forwards deliveries (it owns the node's leases); every worker answers
transactions and serves the mailbox.

Worker 1 supervises the others: one that exits when it was not asked to is started again
a second later; SIGTERM stops the others, then worker 1.  A worker dies with worker 1
(Linux ``PR_SET_PDEATHSIG``): a hub killed with SIGKILL leaves no process holding its port
or its database.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["bind_listening_socket", "die_with_parent", "report_ready", "WorkerSupervisor", "RESTART_DELAY", "STOP_TIMEOUT"]

log = Logger()
#: Seconds before a worker that exited unexpectedly is started again.
RESTART_DELAY = 1.0
#: Seconds a stopping worker gets to finish before it is killed.
STOP_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1
#: Connections the kernel queues for the workers to accept.
BACKLOG = 1024


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on *host*:*port* (0: any free port) that children may inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warn("worker: PR_SET_PDEATHSIG failed (errno {errno}); this worker outlives a killed hub",
                 errno=ctypes.get_errno())
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent is gone already: nothing may serve its port any more


def worker_command(argv: Sequence[str], sock: socket.socket, ready_fd: int, index: int) -> list[str]:
    """The command line of worker *index*: this ``gsem serve`` and the inherited socket."""
    return [sys.executable, "-c", "import sys; from gsem.cli import main; sys.exit(main())", *argv,
            "--worker-socket", str(sock.fileno()), "--worker-ready", str(ready_fd), "--worker", str(index),
            "--parent-pid", str(os.getpid())]


def report_ready(ready_fd: int) -> None:
    """In a worker: tell the first process that this one accepts connections now."""
    try:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    except OSError:
        pass  # the first process is gone; die_with_parent ends this one


class _Worker(ProcessProtocol):
    def __init__(self, index: int, ended: Callable[[_Worker, Failure], None]) -> None:
        self.index = index
        self._ended = ended
        #: fires when the worker listens (or when it ended before it could)
        self.ready: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803 - Twisted's names
        if b"ready" in data and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        if not self.ready.called:
            self.ready.callback(None)
        self._ended(self, reason)
        self.done.callback(None)


class WorkerSupervisor:
    """Starts workers 2…*count* of this hub, restarts those that die, stops them all.

    *argv* is this process's command line after the program (``--data-dir D serve …``);
    each worker gets it with the shared socket's descriptor, its number and this process's
    pid appended.
    """

    def __init__(self, reactor: Any, sock: socket.socket, count: int, argv: Sequence[str]) -> None:
        self.reactor = reactor
        self.sock = sock
        self.count = count
        self.argv = list(argv)
        self.workers: dict[int, _Worker] = {}
        self._stopping = False
        self._restarts: dict[int, Any] = {}

    def start(self) -> Deferred[Any]:
        """Start every worker after the first; fires once each listens (or has ended)."""
        for index in range(2, self.count + 1):
            self._spawn(index)
        return DeferredList([w.ready for w in self.workers.values()])

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        worker = _Worker(index, self._worker_ended)
        fd = self.sock.fileno()
        ready_fd = max(fd, 2) + 1
        # Standard output and error are shared (one acknowledgement log, one diagnostic
        # stream); standard input is not; the listening socket keeps its number, and the
        # worker says on a pipe of its own when it listens.
        self.reactor.spawnProcess(worker, sys.executable, worker_command(self.argv, self.sock, ready_fd, index),
                                  env=dict(os.environ), childFDs={1: 1, 2: 2, fd: fd, ready_fd: "r"})
        self.workers[index] = worker

    def _worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        status = "exited" if reason.check(ProcessDone) else f"ended: {reason.getErrorMessage()}"
        log.warn("worker {index} (pid {pid}) {status}; starting it again in {delay:.0f} s",
                 index=worker.index, pid=worker.pid, status=status, delay=RESTART_DELAY)
        self._restarts[worker.index] = self.reactor.callLater(RESTART_DELAY, self._spawn, worker.index)

    def stop(self) -> Deferred[Any]:
        """SIGTERM every worker; SIGKILL those still running after :data:`STOP_TIMEOUT`."""
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        running = list(self.workers.values())
        for worker in running:
            _signal(worker, signal.SIGTERM)

        def kill_stragglers() -> None:
            for worker in running:
                if not worker.done.called:
                    log.warn("worker {index} (pid {pid}) did not stop in {timeout:.0f} s; killing it",
                             index=worker.index, pid=worker.pid, timeout=STOP_TIMEOUT)
                    _signal(worker, signal.SIGKILL)

        timer = self.reactor.callLater(STOP_TIMEOUT, kill_stragglers)
        done = DeferredList([w.done for w in running])

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(finished)


def _signal(worker: _Worker, signum: int) -> None:
    try:
        worker.transport.signalProcess(signum)
    except Exception:  # noqa: BLE001 - already gone (ProcessExitedAlready), nothing to stop
        pass
