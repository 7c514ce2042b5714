"""Running database calls: a private thread pool, and the SQLite group commit.

Every call of :class:`DBThreadPool` runs off the reactor thread: a call hands a small
``thd(conn)`` function to :meth:`DBThreadPool.run`, which runs it in a pool thread inside
``engine.begin()`` and returns what it returned once the commit succeeded (buildbot
``master/buildbot/db/pool.py`` does the same).  The functions return plain frozen objects,
never SQLAlchemy rows, so nothing lazy crosses back to the reactor thread.

:class:`GroupCommitWriter` is the SQLite writer of a server's transactions: the calls
queued while it was busy run in one transaction and are answered together after the one
commit (one fsync instead of one per call).  It runs the calls on the reactor thread and
only the commit in a thread of its own (see its docstring for why).  A call that raises
undoes its whole batch: the calls before it are answered :class:`BatchUndone` (nothing of
them was kept; their callers run them again), those after it run in the next batch.

Several server processes may write one SQLite file (``[server] workers``).  SQLite lets
only one of them write at a time, and one that finds the file locked sleeps and polls
(its busy handler), which is slow to notice that the lock is free again.  Writers take
:class:`WriterLock` (an ``flock`` on a file next to the database, which the kernel hands
to the next waiter the moment it is released) around each transaction, so the processes
take turns without polling.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

log = Logger()

__all__ = ["BatchUndone", "DBThreadPool", "GroupCommitWriter", "WriterLock", "run_in_transaction", "run_batch",
           "run_until_failure", "BATCH_MAX"]

T = TypeVar("T")

#: At most this many calls share one commit: a call queued behind a batch waits for at
#: most this many others to be decided, never for more to arrive (nothing sleeps).
BATCH_MAX = 32

_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
#: What GroupCommitWriter's thread hands the reactor: a begun transaction, or why not.
_Opened = tuple[sa.Connection | None, sa.RootTransaction | None, Failure | None]


class WriterLock:
    """An exclusive ``flock`` on *path*, shared by every process that writes one database.

    Used as a context manager around one transaction, or through :meth:`acquire` and
    :meth:`release`; ``fcntl.flock`` releases the GIL while it waits.
    Each instance opens the file for itself, and ``flock`` locks belong to an open file,
    so two instances exclude each other even within one process.  The lock file holds
    nothing and may be deleted while no server runs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def acquire(self) -> None:
        """Wait until the lock is ours."""
        fcntl.flock(self._descriptor(), fcntl.LOCK_EX)

    def release(self) -> None:
        """Let the next waiter have it."""
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

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

    As :class:`GroupCommitWriter` runs a batch: when a call raises, the transaction is
    rolled back, that call's outcome is ``(False, failure)`` and each call before it
    ``(False, BatchUndone)`` (nothing of it was kept); the calls after it then run the
    same way in a transaction of their own.  Returns one ``(True, result)`` or ``(False,
    failure)`` per call, in order, and only after the commits.  When a transaction or its
    commit fails, nothing of its calls was kept, and each gets ``(False, failure)`` of
    that error.
    """
    outcomes: list[tuple[bool, Any]] = []
    rest = list(calls)
    while rest:
        try:
            with engine.connect() as conn:
                transaction = conn.begin()
                results, raised = run_until_failure(conn, rest)
                if raised is None:
                    transaction.commit()
                else:
                    transaction.rollback()
        except Exception:
            return outcomes + [(False, Failure())] * len(rest)
        if raised is None:
            return outcomes + [(True, result) for result in results]
        outcomes += _undone_outcomes(len(results), raised)
        rest = rest[len(results) + 1:]
    return outcomes


class BatchUndone(Exception):
    """Another call of the same group commit raised, so its transaction was rolled back
    with this call's changes in it: nothing of this call was kept.  Run it again (from
    scratch: a call may have changed what it was given before it was undone)."""


def run_until_failure(conn: sa.Connection, calls: Sequence[_Call]) -> tuple[list[Any], Failure | None]:
    """Run the *calls* one after another in *conn*'s transaction, without savepoints, until one raises.

    Returns the results of the calls that returned and, when one raised, its failure: the
    transaction then holds that call's changes up to its error, and only a rollback of the
    whole transaction removes them.  The calls after it were not run.

    A SAVEPOINT per call would let one call fail alone, but SQLite then
    copies every page a call changes into its statement journal, and with the SAVEPOINT and
    RELEASE themselves that was 5.7 % of the hub's own instructions per transaction,
    all of it while the other workers wait for the database (docs/decisions.md 34).  Calls
    hardly ever raise, so the group commit pays for a failure when one happens instead.
    """
    results: list[Any] = []
    for fn, args, kwargs in calls:
        try:
            results.append(fn(conn, *args, **kwargs))
        except Exception:
            return results, Failure()
    return results, None


def _undone_outcomes(ran: int, raised: Failure) -> list[tuple[bool, Any]]:
    """The outcomes of a batch's first *ran* calls, undone, and of the call that raised *raised*."""
    undone = Failure(BatchUndone(f"another call of its group commit failed ({raised.type.__name__}); "
                                 "nothing of this call was kept"))
    return [(False, undone)] * ran + [(False, raised)]


class DBThreadPool:
    """A thread pool of fixed size dedicated to one engine.

    SQLite gets one thread (one writer, no lock contention inside the process);
    PostgreSQL gets a few.  The reactor is only used to hand results back to its thread.
    """

    def __init__(self, engine: sa.Engine, *, threads: int, name: str,
                 reactor: IReactorFromThreads | None = None,
                 writer_lock: WriterLock | None = None) -> None:
        self.engine = engine
        # Only meaningful with one thread: the lock is per process, not per thread.
        assert writer_lock is None or threads == 1, "a writer lock needs a pool of one thread"
        self._writer_lock = writer_lock
        self._reactor = reactor
        self._threadpool = ThreadPool(minthreads=threads, maxthreads=threads, name=name)

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


@dataclass
class WriterStats:
    """What a :class:`GroupCommitWriter` did, for the summary it logs when it stops."""

    transactions: int = 0  # calls run
    commits: int = 0
    undone: int = 0  # batches rolled back because one of their calls raised
    held: float = 0.0  # seconds the writer lock was this process's
    waited: float = 0.0  # seconds waiting for it (other workers, or the CLI, writing)
    committing: float = 0.0  # seconds in COMMIT, mostly the disk's fsync
    #: Of the seconds held: from taking the lock until the reactor began the batch ...
    reaching: float = 0.0
    #: ... and running the batches' calls on the reactor (the rest is BEGIN and COMMIT)
    running: float = 0.0
    first: float | None = None  # time.monotonic() when the lock was first taken ...
    last: float = 0.0  # ... and last released

    def summary(self) -> str:
        """One line for the log: throughput of the lock, and where its time went."""
        up = max(self.last - (self.first or self.last), 1e-9)
        per_commit = self.transactions / self.commits if self.commits else 0.0
        per_tx = self._per_tx(self.held)
        commit_ms = self.committing / self.commits * 1000 if self.commits else 0.0
        return (f"database writer: {self.transactions:,} transactions in {self.commits:,} "
                f"commit{'' if self.commits == 1 else 's'} ({per_commit:.1f} per commit) "
                f"in {up:.1f} s from the first to the last; the write lock held {self.held:.1f} s "
                f"({self.held / up:.0%}, {per_tx:.2f} ms per transaction), waited for it {self.waited:.1f} s; "
                f"a commit took {commit_ms:.1f} ms on average; of the lock's time per transaction, "
                f"{self._per_tx(self.running):.2f} ms running it, {self._per_tx(self.committing):.2f} ms "
                f"committing and {self._per_tx(self.reaching):.2f} ms until the reactor began its batch"
                + (f"; {self.undone:,} batch{'' if self.undone == 1 else 'es'} rolled back for a call that raised"
                   if self.undone else ""))

    def _per_tx(self, seconds: float) -> float:
        return seconds / self.transactions * 1000 if self.transactions else 0.0


class GroupCommitWriter:
    """The SQLite group commit of a server's transactions, run on the reactor thread.

    A call is queued.  At the reactor's next turn (so that what was read in one turn shares
    a batch) the writer's thread takes the :class:`WriterLock` and begins a transaction,
    waiting as long as another process writes while the reactor goes on serving.  The
    reactor thread then runs up to :attr:`batch_max` queued calls in that transaction (when
    it next turns, or as soon as another call is queued if that comes first), one after
    another (:func:`run_until_failure`), and hands the COMMIT, which waits for the disk,
    back to the thread, which releases the lock after it; the batch is answered on the
    reactor thread after that commit.  Calls queued meanwhile form the next batch.

    A call that raises undoes its batch: the transaction is rolled back at once, the call
    gets its exception, the calls before it :class:`BatchUndone` (nothing of them was
    kept), and the calls after it, not yet run, go back to the head of the queue for the
    next batch.  A failed BEGIN or COMMIT reaches every call of the batch, and then nothing
    of any of them was kept.

    Why not a database thread: each time a database thread came back from SQLite it waited
    for the interpreter lock while the reactor thread ran TLS or libxml2 work, and with
    several workers it waited while holding the database the other workers queue for.
    Measured, a transaction held the database 1.75 ms for 1.1 ms of CPU, and the hand-offs
    to the thread and back cost CPU of their own.  Here no other thread of the process wants
    the interpreter while the calls run.  The price: the reactor does nothing else while a
    batch's calls run (about 1 ms each).
    """

    def __init__(self, engine: sa.Engine, lock: WriterLock, *, reactor: Any = None,
                 batch_max: int = BATCH_MAX) -> None:
        self.engine = engine
        self.batch_max = batch_max
        self._lock = lock
        self._reactor = reactor
        self._thread = ThreadPool(minthreads=1, maxthreads=1, name="gsem-commit")
        self._queue: deque[tuple[_Call, Deferred[Any]]] = deque()
        # Reactor thread only: a turn is scheduled, waiting for the lock, running or committing.
        self._busy = False
        # Whether the lock is ours; set by whichever thread took it, cleared after the commit.
        self._holding = False
        # Batches committed (or failed) in the thread, waiting to be answered on the reactor.
        self._finished: deque[tuple[list[Deferred[Any]], list[tuple[bool, Any]]]] = deque()
        self._finished_lock = threading.Lock()
        # A transaction begun by the thread for the next batch (guarded by _finished_lock).
        self._opened: _Opened | None = None
        self._stopping = False
        self.stats = WriterStats()
        self._acquired_at = 0.0

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called and :meth:`stop` not yet."""
        return bool(self._thread.started) and not self._stopping

    def start(self) -> None:
        """Start the commit thread; calling it twice is harmless."""
        if self._reactor is None:
            from twisted.internet import reactor as global_reactor

            self._reactor = global_reactor
        self._stopping = False
        self.stats = WriterStats()
        if not self._thread.started:
            self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Queue ``fn(conn, *args, **kwargs)``; fires with its result after the commit that holds it."""
        if not self.running:
            raise RuntimeError("the database writer is not started; call start() first")
        answer: Deferred[T] = Deferred()
        self._queue.append(((fn, args, kwargs), answer))
        if not self._busy:
            self._busy = True
            self._reactor.callLater(0, self._turn)
        elif self._opened is not None:
            # The lock is ours and the transaction begun, but the reactor has not come to
            # _granted yet: it may be reading and validating a whole poll's worth of
            # requests first, tens of milliseconds in which the other workers wait for the
            # lock.  Run the batch now, this call with it; _granted then finds nothing.
            self._granted()
        return answer

    def _turn(self) -> None:
        if self._stopping:
            return  # stop() runs what is queued
        if self._queue:
            self._thread.callInThread(self._open)
        else:
            self._busy = False

    def _open(self) -> None:
        """In the thread: take the writer lock and begin, then run the batch on the reactor.

        Both waits happen here, for another worker's group commit and for SQLite's write
        lock when a process that does not take the writer lock (the command line) holds
        it, so the reactor serves meanwhile.
        """
        asked = time.monotonic()
        self._lock.acquire()
        self._took_lock(asked)
        conn: sa.Connection | None = None
        try:
            conn = self.engine.connect()
            opened: _Opened = (conn, conn.begin(), None)
        except Exception:
            failure = Failure()
            if conn is not None:
                conn.invalidate()
                conn.close()
            opened = (None, None, failure)
        with self._finished_lock:
            self._opened = opened
        self._reactor.callFromThread(self._granted)

    def _granted(self) -> None:
        """On the reactor thread, with the locks: run one batch's calls, then commit in the thread."""
        with self._finished_lock:
            opened, self._opened = self._opened, None
        if opened is None:
            return  # stop() took it
        conn, transaction, failure = opened
        began = time.monotonic()
        self.stats.reaching += began - self._acquired_at
        batch = [self._queue.popleft() for _ in range(min(self.batch_max, len(self._queue)))]
        deferreds = [d for _, d in batch]
        self.stats.transactions += len(batch)
        if conn is not None and transaction is not None:
            try:
                results, raised = run_until_failure(conn, [call for call, _ in batch])
                self.stats.running += time.monotonic() - began
            except BaseException:
                conn.invalidate()  # closed, which rolls back whatever was written
                conn.close()
                self._release()
                raise
            if raised is None:
                outcomes = [(True, result) for result in results]
                self._thread.callInThread(self._commit, conn, transaction, deferreds, outcomes)
                return
            self._undo(conn, transaction, batch, len(results), raised)
            return
        self._release()
        self._finish(deferreds, [(False, failure)] * len(batch))
        self._answer_finished()

    def _undo(self, conn: sa.Connection, transaction: sa.RootTransaction, batch: list[tuple[_Call, Deferred[Any]]],
              failed: int, raised: Failure) -> None:
        """On the reactor thread: call *failed* of *batch* raised *raised*; roll the batch back.

        A rollback does not wait for the disk, so it is done here, under the lock.
        """
        try:
            transaction.rollback()
        except Exception:
            conn.invalidate()  # closed, which surely rolls it back
        finally:
            conn.close()
            self._release()
        self.stats.undone += 1
        # Not run yet: first in line for the next batch, in their order (and counted then).
        self._queue.extendleft(reversed(batch[failed + 1:]))
        self.stats.transactions -= len(batch) - failed - 1
        self._finish([d for _, d in batch[:failed + 1]], _undone_outcomes(failed, raised))
        self._answer_finished()

    def _commit(self, conn: sa.Connection, transaction: sa.RootTransaction, deferreds: list[Deferred[Any]],
                outcomes: list[tuple[bool, Any]]) -> None:
        """In the thread: the one commit of a batch, then the lock goes to the next writer."""
        committing = time.monotonic()
        try:
            transaction.commit()
        except Exception:
            failure = Failure()
            outcomes = [(False, failure)] * len(deferreds)
            # Not back to the pool: after a failed COMMIT the SQLite connection may still
            # be inside the transaction, and closing it is what surely rolls that back.
            conn.invalidate()
        finally:
            conn.close()
            self._release()
            self.stats.committing += time.monotonic() - committing
            self.stats.commits += 1
        self._finish(deferreds, outcomes)
        self._reactor.callFromThread(self._answer_finished)

    def _took_lock(self, asked: float) -> None:
        """The writer lock is ours now, asked for at *asked*: count the wait."""
        self._acquired_at = time.monotonic()
        self.stats.waited += self._acquired_at - asked
        if self.stats.first is None:
            self.stats.first = self._acquired_at
        self._holding = True

    def _release(self) -> None:
        self.stats.last = time.monotonic()
        self.stats.held += self.stats.last - self._acquired_at
        self._holding = False
        self._lock.release()

    def _finish(self, deferreds: list[Deferred[Any]], outcomes: list[tuple[bool, Any]]) -> None:
        with self._finished_lock:
            self._finished.append((deferreds, outcomes))

    def _answer_finished(self) -> None:
        """On the reactor thread: answer the batches done, then start the next one."""
        with self._finished_lock:
            finished = list(self._finished)
            self._finished.clear()
        for deferreds, outcomes in finished:
            _answer(deferreds, outcomes)
        if self._stopping:
            return
        # Answers may queue calls again (a transaction retried after a lost race).
        if self._queue:
            self._reactor.callLater(0, self._turn)
        else:
            self._busy = False

    def stop(self) -> None:
        """Finish: commit and answer what is queued, in the calling thread; calling it twice is harmless."""
        if self._stopping:
            return
        self._stopping = True
        if self._thread.started:
            # A wait for the lock ends with the lock ours; a commit under way finishes.
            self._thread.stop()
        self._answer_finished()
        with self._finished_lock:
            opened, self._opened = self._opened, None
        if opened is not None and opened[0] is not None:
            opened[0].close()  # begun, nothing written yet: rolled back
        if self._queue and not self._holding:
            asked = time.monotonic()
            self._lock.acquire()
            self._took_lock(asked)
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.batch_max, len(self._queue)))]
            _answer([d for _, d in batch], run_batch(self.engine, [call for call, _ in batch]))
            self.stats.transactions += len(batch)
            self.stats.commits += 1
        if self._holding:
            self._release()
        self._busy = False
        self._lock.close()
        if self.stats.commits:
            log.info("{summary}", summary=self.stats.summary())


def _answer(deferreds: list[Deferred[Any]], outcomes: list[tuple[bool, Any]]) -> None:
    for deferred, (ok, value) in zip(deferreds, outcomes, strict=True):
        if ok:
            deferred.callback(value)
        else:
            deferred.errback(value)
