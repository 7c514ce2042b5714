"""A private thread pool that runs each database call in one transaction.

Every statement runs off the reactor thread: a call hands a small ``thd(conn)`` function to
:meth:`DBThreadPool.run`, which runs it in a pool thread inside ``engine.begin()`` and
returns what it returned once the commit succeeded (buildbot ``master/buildbot/db/pool.py``
does the same).  The functions return plain frozen objects, never SQLAlchemy rows, so
nothing lazy crosses back to the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["DBThreadPool", "run_in_transaction"]

T = TypeVar("T")


def run_in_transaction(engine: sa.Engine, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(conn, *args, **kwargs)`` in one transaction; commit, then return its result.

    Any exception, including one raised by the commit itself, rolls the transaction back
    and propagates: the caller learns that nothing was kept.
    """
    with engine.begin() as conn:
        return fn(conn, *args, **kwargs)


class DBThreadPool:
    """A thread pool of fixed size dedicated to one engine.

    SQLite gets one thread (one writer, no lock contention inside the process);
    PostgreSQL gets a few.  The reactor is only used to hand results back to its thread.
    """

    def __init__(self, engine: sa.Engine, *, threads: int, name: str,
                 reactor: IReactorFromThreads | None = None) -> None:
        self.engine = engine
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

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in a pool thread, in one transaction."""
        if not self._threadpool.started:
            raise RuntimeError("the database thread pool is not started; call start() first")
        reactor = self._reactor
        if reactor is None:
            # Only the command line and the server's entry point get here without an
            # injected reactor; everything else passes its own.
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor  # type: ignore[assignment]
        return await deferToThreadPool(
            reactor, self._threadpool, run_in_transaction, self.engine, fn, *args, **kwargs
        )
