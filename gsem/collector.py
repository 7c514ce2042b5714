"""The cyclic garbage collector of a serving process: settled once it has started, and watched.

Reference counting frees almost every object of a transaction the moment it is answered;
the cyclic collector finds little else (about 50 small cycles a second in a busy
hub).  With CPython's default thresholds it still ran a young collection every 15 or so
transactions, and every few seconds a full one over the 100,000 objects of start-up
(modules, the compiled schemas, SQLAlchemy's tables, Twisted) that kept the process busy
for 50–70 ms, while every transaction it held waited (docs/benchmarks.md).

So once a server has started, :meth:`Collector.start` collects once, freezes what
survived (``gc.freeze``: the collector never looks at those objects again) and raises the
young generation's threshold, so that a young collection runs every hundred or so
transactions and a full one looks at a few thousand objects.  Not higher: a partner that
opens a TLS connection per transaction leaves about 50 objects of cyclic garbage each
time (Twisted's Failures of the closed connection and their frames), and a young
collection's pause grows with the threshold (about 12 ms at 2,000, 45 ms at 20,000).
:meth:`Collector.summary` says what the collector did, for the line a server logs when
it stops.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from gsem.errors import GsemError

__all__ = ["Collector", "YOUNG_THRESHOLD", "settle_wanted"]

log = Logger()

#: Allocations (less deallocations) of tracked objects between two young collections;
#: CPython's default is 700.  The middle and old generations keep their defaults.
YOUNG_THRESHOLD = 2_000
_NAMES = ("young", "middle", "full")
#: The values of ``GSEM_GC``: whether a serving process settles its collector.
_MODES = {"": True, "settled": True, "default": False}


def settle_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether to settle the collector: ``GSEM_GC=default`` keeps CPython's ways; other values are refused."""
    value = environ.get("GSEM_GC", "")
    if value not in _MODES:
        raise GsemError(f"GSEM_GC must be 'settled' (the default) or 'default' (CPython's own collector "
                        f"settings), not {value!r}")
    return _MODES[value]


@dataclass
class _Counts:
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])  # by generation
    seconds: float = 0.0
    longest: float = 0.0


class Collector:
    """Settles and watches this process's garbage collector (``gc`` is process-wide).

    :meth:`start` is for when start-up is over: it settles the collector and begins timing
    every collection; :meth:`stop` logs what the collector did (as the database writer
    logs its summary when it stops) and puts it back as it was.
    """

    def __init__(self) -> None:
        self.frozen = 0
        self.counts = _Counts()
        self._began: float | None = None
        self._generation = 0
        self._previous: tuple[int, int, int] | None = None
        #: The young generation's threshold while it was watched.
        self.threshold = 0

    def start(self, *, settle: bool = True) -> int:
        """From now on, time every collection; first, with *settle*, settle the collector.

        Settling collects, freezes what start-up left and raises the young threshold.
        Returns the objects frozen (0 without *settle*).  The collection that settles is
        not counted: what the summary says is what serving cost.
        """
        if settle:
            gc.collect()
            gc.freeze()
            self.frozen = gc.get_freeze_count()
            if self._previous is None:
                self._previous = gc.get_threshold()
            _, middle, old = self._previous
            gc.set_threshold(YOUNG_THRESHOLD, middle, old)
        self.threshold = gc.get_threshold()[0]
        self.counts = _Counts()
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self.frozen

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called and :meth:`stop` not yet."""
        return self._callback in gc.callbacks

    def stop(self) -> None:
        """Log the summary, stop timing, thaw what :meth:`start` froze and restore the threshold."""
        if self._callback in gc.callbacks:
            log.info("{summary}", summary=self.summary())
            gc.callbacks.remove(self._callback)
        if self._previous is not None:
            gc.unfreeze()
            gc.set_threshold(*self._previous)
            self._previous = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            self._generation = info["generation"]
        elif self._began is not None:
            took = time.perf_counter() - self._began
            self._began = None
            counts = self.counts
            counts.collections[self._generation] += 1
            counts.seconds += took
            counts.longest = max(counts.longest, took)

    def summary(self) -> str:
        """One line for the log: how often the collector ran, for how long, the longest once."""
        counts = self.counts
        total = sum(counts.collections)
        split = ", ".join(f"{n:,} {name}" for n, name in zip(counts.collections, _NAMES, strict=True))
        frozen = f"{self.frozen:,} objects of start-up frozen" if self.frozen else "nothing frozen"
        return (f"garbage collector: {total:,} collection{'' if total == 1 else 's'} ({split}) took "
                f"{counts.seconds:.3f} s in all, the longest {counts.longest * 1000:.1f} ms; {frozen}, "
                f"young threshold {self.threshold:,}")
