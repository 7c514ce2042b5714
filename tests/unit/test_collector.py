"""gsem.collector: the serving process's garbage collector, settled and watched."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gsem.collector import YOUNG_THRESHOLD, Collector


@pytest.fixture
def collector() -> Iterator[Collector]:
    before = gc.get_threshold()
    watched = Collector()
    yield watched
    watched.stop()
    assert gc.get_threshold() == before, "stop() puts the thresholds back"
    assert gc.get_freeze_count() == 0, "stop() thaws what start() froze"


def _cycles(count: int) -> None:
    for _ in range(count):
        a: list[object] = []
        a.append(a)


def test_start_freezes_what_start_up_left_and_raises_the_young_threshold(collector: Collector) -> None:
    middle, old = gc.get_threshold()[1:]
    frozen = collector.start()
    assert frozen > 1000  # the interpreter, pytest, lxml, gsem ...
    assert gc.get_freeze_count() > frozen * 0.9  # (a frozen object freed by its count leaves it)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    # What was frozen is out of the collector's sight: a full collection looks at far fewer.
    assert len(gc.get_objects()) < frozen


def test_collections_are_counted_and_timed_from_start(collector: Collector) -> None:
    _cycles(10)
    gc.collect(0)  # before start(): not counted
    collector.start()
    assert collector.summary().startswith("garbage collector: 0 collections (0 young, 0 middle, 0 full)")
    _cycles(10)
    gc.collect(0)
    gc.collect(2)
    assert collector.counts.collections == [1, 0, 1]
    assert 0 < collector.counts.longest <= collector.counts.seconds
    summary = collector.summary()
    assert summary.startswith("garbage collector: 2 collections (1 young, 0 middle, 1 full) took ")
    assert summary.endswith(f"; {collector.frozen:,} objects of start-up frozen, young threshold {YOUNG_THRESHOLD:,}")


def test_without_settling_only_watches(collector: Collector) -> None:
    before = gc.get_threshold()
    assert collector.start(settle=False) == 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    gc.collect(1)
    assert collector.summary().startswith("garbage collector: 1 collection (0 young, 1 middle, 0 full) took ")
    assert collector.summary().endswith(f"; nothing frozen, young threshold {before[0]:,}")


def test_stop_ends_the_watch(collector: Collector) -> None:
    collector.start()
    assert collector.running
    collector.stop()
    assert not collector.running
    gc.collect(0)
    assert collector.counts.collections == [0, 0, 0]
