"""A private thread pool that runs each database call in one transaction.

Every statement runs off the reactor thread: a call hands a small ``thd(conn)`` function to
:meth:`DBThreadPool.run`, which runs it in a pool thread inside ``engine.begin()`` and
returns what it returned once the commit succeeded (buildbot ``master/buildbot/db/pool.py``
does the same).  The functions return plain frozen objects, never SQLAlchemy rows, so
nothing lazy crosses back to the reactor thread.

:meth:`DBThreadPool.run_batched` is the group commit of the SQLite writer: the calls
queued while the writer was busy run in one transaction, each inside its own SAVEPOINT,
and are answered together after the one commit (one fsync instead of one per call).

Several server processes may write one SQLite file (``[server] workers``).  SQLite lets
only one of them write at a time, and one that finds the file locked sleeps and polls
(its busy handler), which is slow to notice that the lock is free again.  A pool built
with a *writer_lock* takes that lock (:class:`WriterLock`, an ``flock`` on a file next to
the database, which the kernel hands to the next waiter the moment it is released) around
each transaction, so the processes take turns without polling.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = ["DBThreadPool", "WriterLock", "run_in_transaction", "run_batch", "BATCH_MAX"]

T = TypeVar("T")

#: At most this many calls share one commit: a call queued behind a batch waits for at
#: most this many others to be decided, never for more to arrive (nothing sleeps).
BATCH_MAX = 32

_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class WriterLock:
    """An exclusive ``flock`` on *path*, shared by every process that writes one database.

    Used as a context manager around one transaction by the single database thread of a
    process; ``fcntl.flock`` releases the GIL while it waits.  The lock file holds nothing
    and may be deleted while no server runs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def __enter__(self) -> WriterLock:
        fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (released by then)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_in_transaction(engine: sa.Engine, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(conn, *args, **kwargs)`` in one transaction; commit, then return its result.

    Any exception, including one raised by the commit itself, rolls the transaction back
    and propagates: the caller learns that nothing was kept.
    """
    with engine.begin() as conn:
        return fn(conn, *args, **kwargs)


def run_batch(engine: sa.Engine, calls: Sequence[_Call]) -> list[tuple[bool, Any]]:
    """Run every ``fn(conn, *args, **kwargs)`` of *calls* in one transaction; commit once.

    Each call runs inside its own SAVEPOINT: when it raises, only its own changes are
    rolled back and its outcome is ``(False, failure)``; the others go on.  Returns one
    ``(True, result)`` or ``(False, failure)`` per call, in order, and only after the
    commit succeeded.  When the transaction or its commit fails, nothing of any call was
    kept, and every call gets ``(False, failure)`` of that error.
    """
    outcomes: list[tuple[bool, Any]] = []
    try:
        with engine.begin() as conn:
            savepoint = _raw_savepoint if conn.dialect.name == "sqlite" else _savepoint
            for fn, args, kwargs in calls:
                try:
                    with savepoint(conn):
                        result = fn(conn, *args, **kwargs)
                except Exception:
                    outcomes.append((False, Failure()))
                else:
                    outcomes.append((True, result))
    except Exception:
        failure = Failure()
        return [(False, failure)] * len(calls)
    return outcomes


def _savepoint(conn: sa.Connection) -> contextlib.AbstractContextManager[Any]:
    return conn.begin_nested()


@contextlib.contextmanager
def _raw_savepoint(conn: sa.Connection) -> Iterator[None]:
    """A SAVEPOINT issued straight on the SQLite connection.

    ``conn.begin_nested()`` compiles, executes and tracks a SAVEPOINT and its RELEASE
    through SQLAlchemy, which cost a quarter of the writer's time per transaction; the
    called functions never nest transactions of their own, so SQLAlchemy need not know.
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute("SAVEPOINT gsem_call")
    try:
        yield
    except BaseException:
        raw.execute("ROLLBACK TO gsem_call")
        raw.execute("RELEASE gsem_call")
        raise
    raw.execute("RELEASE gsem_call")


class DBThreadPool:
    """A thread pool of fixed size dedicated to one engine.

    SQLite gets one thread (one writer, no lock contention inside the process);
    PostgreSQL gets a few.  The reactor is only used to hand results back to its thread.
    """

    def __init__(self, engine: sa.Engine, *, threads: int, name: str,
                 reactor: IReactorFromThreads | None = None, batch_max: int = BATCH_MAX,
                 writer_lock: WriterLock | None = None) -> None:
        self.engine = engine
        # Only meaningful with one thread: the lock is per process, not per thread.
        assert writer_lock is None or threads == 1, "a writer lock needs a pool of one thread"
        self._writer_lock = writer_lock
        self._reactor = reactor
        self._threadpool = ThreadPool(minthreads=threads, maxthreads=threads, name=name)
        self.batch_max = batch_max
        # Calls waiting for run_batched's writer; guarded by _lock, like _draining
        # (whether a drain job is queued or running in the pool).
        self._queue: deque[tuple[_Call, Deferred[Any]]] = deque()
        self._lock = threading.Lock()
        self._draining = False

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called and :meth:`stop` not yet."""
        return bool(self._threadpool.started)

    def start(self) -> None:
        """Start the threads; calling it twice is harmless."""
        if not self._threadpool.started:
            self._threadpool.start()

    def stop(self) -> None:
        """Finish the queued calls and join the threads; calling it twice is harmless."""
        if self._threadpool.started:
            self._threadpool.stop()
        if self._writer_lock is not None:
            self._writer_lock.close()

    def _locked(self) -> contextlib.AbstractContextManager[Any]:
        return self._writer_lock if self._writer_lock is not None else contextlib.nullcontext()

    def _run_locked(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._locked():
            return run_in_transaction(self.engine, fn, *args, **kwargs)

    def _the_reactor(self) -> Any:
        if not self._threadpool.started:
            raise RuntimeError("the database thread pool is not started; call start() first")
        if self._reactor is None:
            # Only the command line and the server's entry point get here without an
            # injected reactor; everything else passes its own.
            from twisted.internet import reactor as global_reactor

            return global_reactor
        return self._reactor

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in a pool thread, in one transaction."""
        reactor = self._the_reactor()
        return await deferToThreadPool(reactor, self._threadpool, self._run_locked, fn, *args, **kwargs)

    async def run_batched(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`run`, but ``fn`` may share its transaction and commit with other calls.

        Meant for a pool of one thread (the SQLite writer).  The calls queued when the
        writer gets to them (at most :attr:`batch_max`) run one after another in one
        transaction, each in its own SAVEPOINT (:func:`run_batch`); the writer never waits
        for more to arrive.  ``fn``'s result comes back only after the commit that holds
        its changes; if ``fn`` raises, only its own changes are undone and the exception
        propagates to its caller alone; if the commit fails, every call of the batch gets
        that exception and nothing of any of them was kept.
        """
        reactor = self._the_reactor()
        answer: Deferred[T] = Deferred()
        with self._lock:
            self._queue.append(((fn, args, kwargs), answer))
            start = not self._draining
            self._draining = True
        if start:
            self._threadpool.callInThread(self._drain, reactor)
        return await answer

    def _drain(self, reactor: Any) -> None:
        """In the pool thread: run one batch of what is queued now, then answer it."""
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(self.batch_max, len(self._queue)))]
            try:
                with self._locked():
                    outcomes = run_batch(self.engine, [call for call, _ in batch])
            except BaseException:
                failure = Failure()
                outcomes = [(False, failure)] * len(batch)
            reactor.callFromThread(_answer, [d for _, d in batch], outcomes)
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                if self._threadpool.joined:
                    continue  # stopping: finish the queue here, no new job is taken
            # Let the calls queued through run() (delivery, trust refresh) have their turn.
            self._threadpool.callInThread(self._drain, reactor)
            return


def _answer(deferreds: list[Deferred[Any]], outcomes: list[tuple[bool, Any]]) -> None:
    for deferred, (ok, value) in zip(deferreds, outcomes, strict=True):
        if ok:
            deferred.callback(value)
        else:
            deferred.errback(value)
