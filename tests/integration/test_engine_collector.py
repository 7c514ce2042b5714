"""A serving process settles its garbage collector once started, and says what it did when it stops.

The effect the operator sees is in docs/benchmarks.md (no full collection over the
objects of start-up while transactions wait); here, that ``gsem serve`` does it, says so
on standard error when it stops, and that ``GSEM_GC=default`` keeps CPython's ways.
"""

from __future__ import annotations

import gc
import re
import signal
from pathlib import Path

import pytest
from hub import FIXTURES, RunningHub

from gsem.collector import YOUNG_THRESHOLD

pytestmark = pytest.mark.integration

SERVICE_REQUEST = (FIXTURES / "01-service-request.xml").read_bytes()
_SUMMARY = re.compile(r"\[gsem\.collector#info\] garbage collector: ([\d,]+) collections? "
                      r"\((\d+) young, (\d+) middle, (\d+) full\) took [\d.]+ s in all, the longest [\d.]+ ms; "
                      r"(.*), young threshold ([\d,]+)$", re.MULTILINE)


def _served_and_stopped(hub: RunningHub, requester_id: str) -> str:
    body = SERVICE_REQUEST.replace(b"ACME-INC-20931", requester_id.encode())
    status, _ = hub.post("ACME", body)
    assert status == 200
    assert hub.kill(signal.SIGTERM) == 0
    return hub.stderr_paths[-1].read_text("utf-8", "replace")


def test_serve_settles_the_collector_and_logs_it_on_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = RunningHub.create(tmp_path / "hub")
    try:
        settled = _SUMMARY.findall(_served_and_stopped(hub, "GC-1"))
        assert len(settled) == 1, settled
        frozen, threshold = settled[0][4:]
        assert re.fullmatch(r"[\d,]+ objects of start-up frozen", frozen), frozen
        assert int(frozen.split()[0].replace(",", "")) > 10_000
        assert threshold == f"{YOUNG_THRESHOLD:,}"

        monkeypatch.setenv("GSEM_GC", "default")
        hub.start()
        default = _SUMMARY.findall(_served_and_stopped(hub, "GC-2"))
        # CPython's own threshold, as this interpreter (the same as the hub's) has it.
        assert [found[4:] for found in default] == [("nothing frozen", f"{gc.get_threshold()[0]:,}")]
    finally:
        hub.stop()
    hub.assert_no_traceback()


def test_an_unknown_gsem_gc_value_is_refused_before_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = RunningHub.create(tmp_path / "hub", start=False)
    monkeypatch.setenv("GSEM_GC", "off")
    done = hub.gsem_result("serve", "--port", "0", timeout=30)
    assert done.returncode == 2
    assert done.stderr.decode() == ("gsem: GSEM_GC must be 'settled' (the default) or 'default' (CPython's own "
                                    "collector settings), not 'off'\n")
