"""bench/run.py's verdicts on the issue's targets, from a report's phases (no servers started)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gsem.db.pool import WriterStats


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "run.py"
    spec = importlib.util.spec_from_file_location("gsem_bench_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def _phase(tps: float, p99: float = 50.0, offered: float | None = None) -> dict[str, Any]:
    return {"tps": tps, "errors": 0, "offered_tps": offered, "latency_ms": {"p99": p99},
            "server_cpu_s_per_1000": 1.0}


def _targets(bench: ModuleType, **phases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    report = {"phases": {name.replace("_", "-"): phase for name, phase in phases.items()}}
    return {t["target"].split()[1] if t["target"].startswith(">=") else t["target"].split()[0]: t
            for t in bench.evaluate_targets(report)}


def test_a_target_both_floors_miss_is_reported_out_of_reach(bench: ModuleType) -> None:
    found = _targets(bench, bare=_phase(3000), hub=_phase(900), hub_rate=_phase(850, 3000, 1000),
                     floor=_phase(1500), floor_rate=_phase(1000, 80, 1000),
                     floor_writer=_phase(1450), floor_writer_rate=_phase(1000, 62, 1000))
    throughput, latency, ratio = found["2,000"], found["p99"], found["hub"]
    assert (throughput["met"], throughput["floor_met"]) == (False, False)
    assert throughput["floor"] == "floor: 1,500.0 tx/s, 0 errors; floor-writer: 1,450.0 tx/s, 0 errors"
    assert (latency["met"], latency["floor_met"]) == (False, False)
    assert "floor-writer: p99 62.00 ms" in latency["floor"]
    assert (ratio["met"], ratio["floor_met"]) == (False, False)
    assert ratio["floor"].startswith("floor: 50.0% (1,500.0 / 3,000.0 tx/s)")


def test_a_target_one_floor_meets_is_not_out_of_reach(bench: ModuleType) -> None:
    found = _targets(bench, bare=_phase(3000), hub=_phase(900), hub_rate=_phase(850, 3000, 1000),
                     floor=_phase(2100), floor_rate=_phase(1000, 80, 1000),
                     floor_writer_rate=_phase(1000, 20, 1000))
    assert found["2,000"]["floor_met"] is True
    assert found["hub"]["floor_met"] is True  # 2,100 of 3,000 is 70 %
    assert found["p99"]["floor_met"] is True  # the writer process's floor met it


def test_the_hub_is_compared_with_the_faster_floor(bench: ModuleType) -> None:
    """hub / floor and floor / ceiling use whichever floor reached more in the run, and name it."""
    report = {"phases": {"bare": _phase(3000), "hub": _phase(600), "floor": _phase(1500),
                         "floor-writer": _phase(2000)}}
    bench.evaluate_targets(report)
    assert (report["floor_phase"], report["hub_to_floor_ratio"], report["floor_to_ceiling_ratio"]) == \
        ("floor-writer", 0.3, 0.667)
    report = {"phases": {"bare": _phase(3000), "hub": _phase(600), "floor": _phase(1200)}}
    bench.evaluate_targets(report)
    assert (report["floor_phase"], report["hub_to_floor_ratio"]) == ("floor", 0.5)


def test_a_floor_at_another_offered_rate_says_nothing_of_the_latency_target(bench: ModuleType) -> None:
    found = _targets(bench, hub=_phase(900), hub_rate=_phase(850, 3000, 1000), floor_rate=_phase(500, 10, 500))
    assert "floor" not in found["p99"]
    assert "floor" not in found["2,000"]  # no closed-loop floor phase ran


def test_the_benchmark_reads_the_summary_the_writer_logs(bench: ModuleType) -> None:
    """bench/run.py's *writer* line comes from the workers' log lines: the two must stay in step."""
    stats = WriterStats(transactions=1000, commits=40, held=9.5, waited=8.0, committing=0.26, reaching=0.5,
                        running=6.0, first=100.0, last=110.0)
    line = f"2026-11-22T22:08:46+0000 [gsem.db.pool#info] {stats.summary()}\n"
    assert bench.writer_figures([line, "an unrelated line\n"]) == {
        "transactions": 1000, "commits": 40, "per_commit": 25.0, "lock_busy": 0.95, "held_ms_per_tx": 9.5,
        "waited_s": 8.0, "commit_ms": 6.5, "running_ms_per_tx": 6.0, "committing_ms_per_tx": 0.26,
        "reaching_ms_per_tx": 0.5}


def test_the_split_of_the_held_time_is_weighted_by_each_workers_transactions(bench: ModuleType) -> None:
    """Two workers' summaries: where the lock's time went is per transaction of the whole hub."""
    busy = WriterStats(transactions=300, commits=10, held=3.0, committing=0.3, reaching=0.3, running=2.1,
                       first=100.0, last=110.0)
    idle = WriterStats(transactions=100, commits=10, held=0.6, committing=0.1, reaching=0.1, running=0.3,
                       first=100.0, last=110.0)
    figures = bench.writer_figures([busy.summary(), idle.summary()])
    assert (figures["running_ms_per_tx"], figures["committing_ms_per_tx"], figures["reaching_ms_per_tx"]) == \
        (6.0, 1.0, 1.0)
    assert figures["held_ms_per_tx"] == 9.0 and figures["lock_busy"] == 0.36


def test_a_summary_without_the_split_still_reads(bench: ModuleType) -> None:
    """Logs of servers from before the split (or another writer) give the figures they have."""
    line = ("database writer: 10 transactions in 1 commit (10.0 per commit) in 2.0 s from the first to the last; "
            "the write lock held 1.0 s (50%, 100.00 ms per transaction), waited for it 0.0 s; "
            "a commit took 5.0 ms on average")
    figures = bench.writer_figures([line])
    assert figures["held_ms_per_tx"] == 100.0 and "running_ms_per_tx" not in figures


def test_the_results_block_says_what_held_the_hubs_database(bench: ModuleType) -> None:
    """The committed results block carries the writer's split, not only the console."""
    report = json.loads((Path(bench.__file__).parent / "results" / "latest.json").read_text("utf-8"))
    report["phases"]["hub"]["writer"] = {
        "lock_busy": 0.96, "held_ms_per_tx": 0.89, "per_commit": 19.8, "commit_ms": 5.9,
        "running_ms_per_tx": 0.55, "committing_ms_per_tx": 0.3, "reaching_ms_per_tx": 0.06}
    block = bench.markdown_block(report)
    assert ("The hub's database writer in `hub` (warm-up included): the database held 96% of the time, "
            "0.89 ms per transaction (0.55 running it, 0.30 committing, 0.06 until the reactor began its batch), "
            "19.8 transactions per commit, a commit 5.9 ms.") in block


def test_collector_summaries_of_the_hub_processes_add_up(bench: ModuleType) -> None:
    """What gsem.collector logs, read back: counts and seconds summed, the longest of any."""
    from gsem.collector import Collector

    settled, watched = Collector(), Collector()
    settled.frozen, settled.threshold = 98_556, 2_000
    settled.counts.collections, settled.counts.seconds, settled.counts.longest = [3, 1, 0], 0.004, 0.0021
    watched.threshold = 700
    watched.counts.collections, watched.counts.seconds, watched.counts.longest = [410, 37, 3], 0.3, 0.0626
    figures = bench.collector_figures([f"2026-11-23T07:52:58+0000 [gsem.collector#info] {settled.summary()}\n",
                                       "unrelated line\n", watched.summary()])
    assert figures == {"young": 413, "middle": 38, "full": 3, "seconds": 0.304, "longest_ms": 62.6,
                       "settled": False}
    assert bench.collector_figures([settled.summary()])["settled"] is True
    assert bench.collector_figures(["database writer: 1 transaction"]) is None


def test_the_results_block_says_what_the_collector_did_over_the_soak(bench: ModuleType) -> None:
    report = json.loads((Path(bench.__file__).parent / "results" / "latest.json").read_text("utf-8"))
    report["phases"].setdefault("soak", {})["collector"] = {
        "young": 52, "middle": 5, "full": 0, "seconds": 0.061, "longest_ms": 2.4, "settled": True}
    assert ("Over the soak, the hub's garbage collector (settled): 52 young, 5 middle and 0 full collections, "
            "0.061 s in all, the longest 2.4 ms.") in bench.markdown_block(report)
