"""gsem's benchmark: how many transactions a hub accepts, how fast, and against which limits.

Not a test (nothing here is timed by the test suite): run it as ``make bench`` or::

    .venv/bin/python bench/run.py [--duration 15] [--warmup 3] [--soak SECONDS]

It builds a fresh data directory (``gsem init --demo`` plus 32 requesters ``REQ01``… and
32 providers ``PRV01``…, each with a client certificate from the data directory's CA and an
agreement ``REQnn -> PRVnn`` for contract C-100), then runs these phases, each against a
freshly started server on its own copy of that directory:

``inproc``        the real ``DocumentValidator`` and ``decide_and_store`` through the real
                  ``Database`` on a fresh SQLite file, one transaction after another, no
                  network: the engine's own cost per transaction, and its durable commit.
``loadgen``       the load generator against a minimal Python TLS responder: how fast the
                  generator itself can go (with its CPU per request, measured in each phase).
``bare``          the same load against a bare Twisted server with the hub's mutual-TLS
                  listener that returns a fixed acknowledgement: the HTTP+TLS ceiling.
``floor``         the same load against ``bench/bare_server.py --kind floor``: as many worker
                  processes as the hub, each doing only the least SPEC asks of any hub
                  (XSD validation, the incident read and written, the message with its
                  acknowledgement and the delivery kept, gsem's durable group commit)
                  with no gsem logic in between: what a hub written this way can reach.
``floor-rate``    the floor at the offered rate of ``hub-rate``.
``floor-writer``,
``floor-writer-rate``  the same two with a writer process of the floor's own
                  (``--writer-process``) instead of workers taking turns at the database.
``hub``           the hub, 64 persistent partner connections, 2 KB lifecycles, closed loop.
``hub-rate``      the hub at a fixed offered rate (open loop), for latency at that rate.
``hub-connect``   the hub with a new connection and TLS handshake for every transaction.
``bare-connect``  the bare server the same way: the ceiling for that mode.
``hub-10k``,
``hub-100k``      the hub with 10 KB and 100 KB documents.
``soak``          only with ``--soak SECONDS``: the hub under load while its memory is
                  sampled; flat means the last third is within 5 % of the first third.

Every server and every load generator is its own process.  Results go to
``bench/results/<timestamp>.json`` and ``bench/results/latest.json``, a summary table to
standard output, and the results block of ``docs/benchmarks.md`` (unless ``--no-docs``).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import queue
import random
import re
import shlex
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Runnable from a checkout without installing: the package sits next to bench/.
sys.path.insert(0, str(ROOT))

BENCH = ROOT / "bench"
LIFECYCLE = ROOT / "tests" / "fixtures" / "lifecycle"
#: Who sends each fixture document, in order (tests/fixtures/lifecycle/README.md).
LIFECYCLE_ROLES = ("R", "P", "R", "P", "P", "R", "P", "R", "R")
FIXTURE_REQUESTER_ID = "ACME-INC-20931"
FIXTURE_PROVIDER_ID = "GX-55012"
CONTRACT = "C-100"
PAIRS = 32
SIZES = {"2k": 2048, "10k": 10 * 1024, "100k": 100 * 1024}
#: Text4000 elements hold at most 4000 characters; stay under it.
TEXT_CHUNK = 3900
MIB = 1024 * 1024

TARGET_TPS = 2000
TARGET_P99_MS = 25.0
TARGET_RATIO = 0.60
TARGET_SOAK_SECONDS = 600
SOAK_FLAT_TOLERANCE = 0.05

DOCS_START = "<!-- bench:results:start -->"
DOCS_END = "<!-- bench:results:end -->"


def say(message: str) -> None:
    """A progress line."""
    print(message, flush=True)


# -- documents ---------------------------------------------------------------------------------


def _padding_attachment(size: int, seed: int) -> str:
    # base64 of pseudo-random bytes, like a compressed log file: incompressible and valid.
    raw_len = max(3, (size // 4) * 3)
    data = random.Random(seed).randbytes(raw_len)
    return base64.b64encode(data).decode("ascii")


def _pad(document: str, name: str, target: int, seed: int) -> str:
    """*document* grown to about *target* bytes with content its transaction accepts.

    An ATTACHMENT (base64) where the transaction's matrix has one, otherwise extra ACTIVITY
    entries whose ActionLog and ParameterList carry text (at most 4000 characters each).
    """
    from transactions import registry

    allowed = set().union(*(spec.top_level_elements for spec in registry.specs_named(name)))
    closing = "</SERVICE_INCIDENT>"
    head = document.rstrip()
    assert head.endswith(closing), name
    head = head[: -len(closing)]
    need = target - len((head + closing + "\n").encode("utf-8"))
    if need <= 0:
        return head + closing + "\n"
    if "ATTACHMENT" in allowed:
        shell = ("  <ATTACHMENT>\n    <AttachmentName>bench-padding.bin</AttachmentName>\n"
                 "    <Format>application/octet-stream</Format>\n"
                 "    <AttachmentObject>{}</AttachmentObject>\n  </ATTACHMENT>\n")
        payload = _padding_attachment(need - len(shell.format("")), seed)
        return head + shell.format(payload) + closing + "\n"
    words = random.Random(seed)
    vocabulary = ("gateway", "settlement", "upload", "header", "retry", "queue", "timeout",
                  "certificate", "market", "file", "rejected", "duplicate", "batch", "night")
    entries = []
    shell = ("  <ACTIVITY>\n    <LocalDate>2026-11-22 09:00:00</LocalDate>\n"
             "    <ActionLog>{}</ActionLog>\n    <ParameterList>{}</ParameterList>\n  </ACTIVITY>\n")
    while need > len(shell.format("", "")) + 2:
        room = need - len(shell.format("", ""))
        log_len = min(TEXT_CHUNK, max(1, room // 2))
        param_len = min(TEXT_CHUNK, max(1, room - log_len))

        def text(length: int) -> str:
            out = []
            total = 0
            while total < length:
                w = words.choice(vocabulary)
                out.append(w)
                total += len(w) + 1
            return " ".join(out)[:length].strip() or "x"

        entry = shell.format(text(log_len), text(param_len))
        entries.append(entry)
        need -= len(entry.encode("utf-8"))
    return head + "".join(entries) + closing + "\n"


def lifecycle_templates(target: int) -> list[dict[str, Any]]:
    """The nine lifecycle documents, padded to about *target* bytes, with id placeholders.

    ``@RID@`` stands for the RequesterID and ``@PID@`` for the ProviderID; the load
    generator fills in ids unique to the run and the incident.
    """
    from lxml import etree

    from gsem.contract import Role
    from gsem.validation import validate_document

    files = sorted(LIFECYCLE.glob("0*.xml"))
    if len(files) != len(LIFECYCLE_ROLES):
        raise SystemExit(f"bench: expected {len(LIFECYCLE_ROLES)} lifecycle documents in {LIFECYCLE}")
    steps = []
    for index, (path, role) in enumerate(zip(files, LIFECYCLE_ROLES, strict=True)):
        text = path.read_text("utf-8")
        name = etree.fromstring(text.encode()).findtext("TransactionName")
        text = text.replace(FIXTURE_REQUESTER_ID, "@RID@").replace(FIXTURE_PROVIDER_ID, "@PID@")
        padded = _pad(text, name, target, seed=index)
        # Check the padded document is clean (no error, no warning) before timing anything.
        sample = padded.replace("@RID@", "R" + "0" * 40).replace("@PID@", "P" + "0" * 40).encode()
        inspection, spec = validate_document(sample, role=Role.REQUESTER if role == "R" else Role.PROVIDER,
                                             check_states=False)
        if inspection.errors or inspection.warnings or spec is None:
            problems = [f"{p.code.code} {p.path}: {p.message}" for p in inspection.errors + inspection.warnings]
            raise SystemExit(f"bench: padded {path.name} ({target} bytes) is not clean: {problems}")
        steps.append({"name": name, "role": role, "body": padded})
    return steps


def fill(body: str, rid: str, pid: str) -> bytes:
    """A template with its ids filled in."""
    return body.replace("@RID@", rid).replace("@PID@", pid).encode("utf-8")


# -- the data directory ------------------------------------------------------------------------


def gsem_command() -> list[str]:
    """The ``gsem`` program of the checkout this file is in (what ``.venv/bin/gsem`` runs).

    Run as ``python -c`` from the checkout's root, so that the engine measured is the one
    next to ``bench/`` whatever is installed in the environment.
    """
    return [sys.executable, "-c", "import sys; from gsem.cli import main; sys.exit(main())"]


def partner_ids() -> list[tuple[str, str]]:
    """``(requester, provider)`` ids of every pair."""
    return [(f"REQ{i:02d}", f"PRV{i:02d}") for i in range(1, PAIRS + 1)]


def prepare_data_dir(target: Path) -> None:
    """``gsem init --demo``, then the benchmark's partners, certificates and agreements."""
    from gsem.config import load_config
    from gsem.db import partners
    from gsem.db.connector import Database
    from gsem.pki import load_cert, load_key, make_client_cert, write_cert, write_key

    subprocess.run([*gsem_command(), "init", str(target), "--demo"], check=True, stdout=subprocess.DEVNULL,
                   cwd=ROOT)
    certs = target / "certs"
    ca_cert = load_cert(certs / "ca-cert.pem")
    ca_key = load_key(certs / "ca-key.pem")
    pems: dict[str, bytes] = {}
    for pair in partner_ids():
        for pid in pair:
            cert, key = make_client_cert(ca_cert, ca_key, pid)
            write_cert(certs / "partners" / f"{pid}-cert.pem", cert)
            write_key(certs / "partners" / f"{pid}-key.pem", key)
            pems[pid] = (certs / "partners" / f"{pid}-cert.pem").read_bytes()

    def register(conn: Any) -> None:
        for requester, provider in partner_ids():
            partners.add_partner(conn, requester, f"Benchmark requester {requester}")
            partners.add_partner(conn, provider, f"Benchmark provider {provider}")
            partners.add_cert(conn, requester, pems[requester])
            partners.add_cert(conn, provider, pems[provider])
            partners.add_agreement(conn, requester, provider, CONTRACT)

    database = Database(load_config(target).database_url)
    try:
        database.run_sync(register)
    finally:
        database.engine.dispose()


# -- processes ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> dict[str, float]:
    """CPU seconds (user+system, every thread) and memory of a process, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after "(comm) ": state is [0]; utime, stime are fields 14 and 15 of stat(5).
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    memory = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                memory[key] = int(value.split()[0]) * 1024
    return {"cpu": cpu, "hwm": memory.get("VmHWM", 0), "rss": memory.get("VmRSS", 0)}


def process_tree(pid: int) -> list[int]:
    """*pid* and its descendants (a hub with several workers is a parent and its children)."""
    found = [pid]
    for parent in found:
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    found.extend(int(child) for child in f.read().split())
            except OSError:
                continue
    return found


def tree_stat(pid: int) -> dict[str, float]:
    """:func:`proc_stat` summed over *pid* and its descendants (memory: the sum of peaks)."""
    total = {"cpu": 0.0, "hwm": 0, "rss": 0, "processes": 0}
    for member in process_tree(pid):
        try:
            stat = proc_stat(member)
        except (OSError, ValueError, IndexError):
            continue
        for key in ("cpu", "hwm", "rss"):
            total[key] += stat[key]
        total["processes"] += 1
    if not total["processes"]:
        raise OSError(f"process {pid} is gone")
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def set_affinity(cpus: list[int] | None) -> Any:
    """A preexec function pinning a child to *cpus* (or None)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, set(cpus))


#: bench/bare_server.py's arguments for each baseline server kind.
BARE_KINDS = {
    "twisted": ["--kind", "twisted"],
    "minimal": ["--kind", "minimal"],
    "floor": ["--kind", "floor"],
    "floor-writer": ["--kind", "floor", "--writer-process"],
}
#: The floor servers, by the name of their closed-loop phase (``-rate`` for the open loop).
FLOOR_KINDS = ("floor", "floor-writer")
#: The kinds of server that run with the hub's number of worker processes.
WORKER_KINDS = ("hub", *FLOOR_KINDS)


#: The line each hub worker's SQLite writer logs when it stops (gsem.db.pool.WriterStats.summary).
WRITER_SUMMARY = re.compile(
    r"database writer: ([\d,]+) transactions in ([\d,]+) commits? \([\d.]+ per commit\) in ([\d.]+) s from the first to the last; "
    r"the write lock held ([\d.]+) s .*?waited for it ([\d.]+) s; a commit took ([\d.]+) ms"
    r"(?: on average; of the lock's time per transaction, ([\d.]+) ms running it, ([\d.]+) ms committing "
    r"and ([\d.]+) ms until the reactor began its batch)?")


def writer_figures(lines: list[str]) -> dict[str, float] | None:
    """The hub's writer summaries, summed over its workers, from their first write to their last.

    The workers hold the lock in turn, so the seconds they held it add up to how long the
    database was busy; the share of the time that is says whether it is the limit.
    """
    found = [m.groups() for m in map(WRITER_SUMMARY.search, lines) if m]
    if not found:
        return None
    tx = sum(int(f[0].replace(",", "")) for f in found)
    commits = sum(int(f[1].replace(",", "")) for f in found)
    up = max(float(f[2]) for f in found)
    held = sum(float(f[3]) for f in found)
    committing = sum(int(f[1].replace(",", "")) * float(f[5]) / 1000 for f in found)
    figures = {"transactions": tx, "commits": commits, "per_commit": round(tx / max(commits, 1), 1),
               "lock_busy": round(held / up, 3), "held_ms_per_tx": round(held / max(tx, 1) * 1000, 3),
               "waited_s": round(sum(float(f[4]) for f in found), 1),
               "commit_ms": round(committing / max(commits, 1) * 1000, 2)}
    if all(f[6] is not None for f in found):
        # Where the held time went, per transaction, each worker weighted by its transactions.
        for name, index in (("running_ms_per_tx", 6), ("committing_ms_per_tx", 7), ("reaching_ms_per_tx", 8)):
            figures[name] = round(sum(int(f[0].replace(",", "")) * float(f[index]) for f in found) / max(tx, 1), 3)
    return figures


def writer_text(w: dict[str, Any]) -> str:
    """What :func:`writer_figures` found, in words: how busy the database was, and with what."""
    split = (f" ({w['running_ms_per_tx']:.2f} running it, {w['committing_ms_per_tx']:.2f} committing, "
             f"{w['reaching_ms_per_tx']:.2f} until the reactor began its batch)" if "running_ms_per_tx" in w else "")
    return (f"the database held {w['lock_busy']:.0%} of the time, {w['held_ms_per_tx']:.2f} ms per transaction"
            f"{split}, {w['per_commit']:.1f} transactions per commit, a commit {w['commit_ms']:.1f} ms")


#: The line each hub process logs about its garbage collector when it stops (gsem.collector).
COLLECTOR_SUMMARY = re.compile(
    r"garbage collector: [\d,]+ collections? \(([\d,]+) young, ([\d,]+) middle, ([\d,]+) full\) took ([\d.]+) s "
    r"in all, the longest ([\d.]+) ms; (?:([\d,]+) objects of start-up frozen|nothing frozen)")


def collector_figures(lines: list[str]) -> dict[str, Any] | None:
    """The hub's garbage collector summaries, summed over its processes (the longest: the longest of any)."""
    found = [m.groups() for m in map(COLLECTOR_SUMMARY.search, lines) if m]
    if not found:
        return None

    def total(index: int) -> int:
        return sum(int(f[index].replace(",", "")) for f in found)

    return {"young": total(0), "middle": total(1), "full": total(2),
            "seconds": round(sum(float(f[3]) for f in found), 3),
            "longest_ms": max(float(f[4]) for f in found),
            "settled": all(f[5] is not None for f in found)}


def collector_text(c: dict[str, Any]) -> str:
    """What :func:`collector_figures` found, in words."""
    how = "settled" if c["settled"] else "CPython's defaults (GSEM_GC=default)"
    return (f"garbage collector ({how}): {c['young']:,} young, {c['middle']:,} middle and {c['full']:,} full "
            f"collections, {c['seconds']:.3f} s in all, the longest {c['longest_ms']:.1f} ms")


class Server:
    """A hub or baseline server process, its port and its logs."""

    def __init__(self, kind: str, data_dir: Path, cpus: list[int] | None, log_dir: Path, workers: int = 1) -> None:
        self.kind = kind
        self.data_dir = data_dir
        if kind == "hub":
            command = [*gsem_command(), "--data-dir", str(data_dir), "serve", "--port", "0",
                       "--workers", str(workers)]
            ready = re.compile(r"gsem: serving https://([^:/]+):(\d+)/")
        else:
            command = [sys.executable, str(BENCH / "bare_server.py"), "--data-dir", str(data_dir),
                       *BARE_KINDS[kind], "--port", "0", "--workers", str(workers)]
            ready = re.compile(r"bare: serving https://([^:/]+):(\d+)/")
        self.command = command
        self.acks = 0
        self.acks_yes = 0
        self.stderr_tail: list[str] = []
        self.writer_lines: list[str] = []
        self.collector_lines: list[str] = []
        self.log_counts = {"warn": 0, "error": 0}
        self.stderr_log = open(log_dir / f"{kind}-stderr.log", "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, preexec_fn=set_affinity(cpus), cwd=ROOT)
        self.pid = self.proc.pid
        port: queue.Queue[tuple[str, int] | None] = queue.Queue()
        threading.Thread(target=self._read_stderr, args=(ready, port), daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            found = port.get(timeout=60)
        except queue.Empty:
            found = None
        if found is None:
            self.stop()
            tail = "".join(self.stderr_tail[-20:])
            raise SystemExit(f"bench: {kind} server did not start ({shlex.join(command)}):\n{tail}")
        self.host, self.port = found

    def _read_stderr(self, ready: re.Pattern[str], port: queue.Queue) -> None:
        announced = False
        for raw in self.proc.stderr:  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace")
            self.stderr_log.write(line)
            self.stderr_tail = (self.stderr_tail + [line])[-50:]
            if "database writer: " in line:
                self.writer_lines.append(line)
            if "garbage collector: " in line:
                self.collector_lines.append(line)
            if "#warn]" in line:
                self.log_counts["warn"] += 1
            if "#error]" in line or "#critical]" in line or "Traceback" in line:
                self.log_counts["error"] += 1
            if not announced:
                m = ready.search(line)
                if m:
                    announced = True
                    port.put((m.group(1), int(m.group(2))))
        if not announced:
            port.put(None)

    def _read_stdout(self) -> None:
        # The hub writes one JSON line per acknowledgement; count them as a cross-check of
        # what the load generators saw (and so that the pipe never fills up).
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.acks += 1
            if b'"result":"Yes"' in line:
                self.acks_yes += 1

    def stat(self) -> dict[str, float]:
        """CPU and memory of the server's processes now (the last seen, once it has exited)."""
        try:
            self._last_stat = tree_stat(self.pid)
        except (OSError, ValueError, IndexError):
            pass
        return getattr(self, "_last_stat", {"cpu": 0.0, "hwm": 0, "rss": 0})

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 20 s (our own child only)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        time.sleep(0.2)  # let the reader threads see the end of the pipes
        self.stderr_log.close()


# -- statistics ----------------------------------------------------------------------------------


def percentile(ordered: list[float] | array, q: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean in milliseconds."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    return {"p50": percentile(ordered, 50), "p95": percentile(ordered, 95), "p99": percentile(ordered, 99),
            "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- one load phase --------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every phase shares."""

    work: Path
    template_dir: Path
    templates: dict[str, Path]
    warmup: float
    duration: float
    procs: int
    server_cpus: list[int] | None
    loadgen_cpus: list[int] | None
    run_tag: str
    max_open: int = 4
    workers: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


class Worker:
    """One load generator process and the lines it sends back."""

    def __init__(self, spec_path: Path, cpus: list[int] | None, log: Path) -> None:
        self.lines: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.log = open(log, "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "loadgen.py"), str(spec_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     preexec_fn=set_affinity(cpus), cwd=ROOT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:  # type: ignore[union-attr]
            kind, _, payload = raw.decode("utf-8", "replace").strip().partition(" ")
            try:
                self.lines.put((kind, json.loads(payload) if payload else {}))
            except json.JSONDecodeError:
                self.lines.put(("JUNK", {"line": raw[:200].decode("utf-8", "replace")}))
        self.lines.put(("EOF", {}))

    def go(self, when: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"GO {when}\n".encode())
        self.proc.stdin.flush()

    def stop(self) -> None:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its pid
            self.proc.wait(timeout=10)
        self.log.close()


def run_load(settings: Settings, name: str, server: Server, *, mode: str, size: str,
             duration: float | None = None, rate: float | None = None,
             rss_every: float | None = None) -> dict[str, Any]:
    """Drive *server* with the load generators; return the phase's figures."""
    duration = settings.duration if duration is None else duration
    warmup = settings.warmup
    phase_dir = settings.work / name
    phase_dir.mkdir(exist_ok=True)
    procs = settings.procs
    pairs = partner_ids()
    partners_dir = settings.template_dir / "certs" / "partners"
    workers: list[Worker] = []
    drain = 30.0 if size == "100k" else 15.0
    for w in range(procs):
        mine = [p for i, p in enumerate(pairs) if i % procs == w]
        spec = {
            "worker": w, "mode": mode, "run_tag": f"{settings.run_tag}{name.replace('-', '')}",
            "host": server.host, "port": server.port, "server_name": server.host,
            "ca": str(settings.template_dir / "certs" / "ca-cert.pem"),
            "templates": str(settings.templates[size]),
            "pairs": [{"requester": {"id": r, "cert": str(partners_dir / f"{r}-cert.pem"),
                                     "key": str(partners_dir / f"{r}-key.pem")},
                       "provider": {"id": p, "cert": str(partners_dir / f"{p}-cert.pem"),
                                    "key": str(partners_dir / f"{p}-key.pem")}} for r, p in mine],
            "warmup": warmup, "duration": duration, "drain": drain,
            "max_open_lifecycles": settings.max_open,
            "latency_file": str(phase_dir / f"latency-{w}.bin"),
        }
        if rate is not None:
            spec["rate"] = rate / procs
            spec["phase"] = w / procs
        spec_path = phase_dir / f"spec-{w}.json"
        spec_path.write_text(json.dumps(spec, indent=1), "utf-8")
        workers.append(Worker(spec_path, settings.loadgen_cpus, phase_dir / f"loadgen-{w}.log"))
    try:
        ready = 0
        deadline = time.monotonic() + 60
        while ready < procs:
            for worker in workers:
                try:
                    kind, payload = worker.lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if kind == "READY":
                    ready += 1
                elif kind in ("EOF", "JUNK"):
                    raise SystemExit(f"bench: a load generator of {name} failed before starting; "
                                     f"see {worker.log.name}")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: load generators of {name} not ready within 60 s")
        go = time.time() + 0.5
        for worker in workers:
            worker.go(go)
        window_start = go + warmup
        window_end = window_start + duration
        stats_start = stats_end = None
        machine_start = machine_end = None
        rss_samples: list[tuple[float, int]] = []
        next_rss = window_start
        progress: dict[int, dict[str, Any]] = {}
        results: dict[int, dict[str, Any]] = {}
        next_print = go + 5.0
        last_ok, last_t = 0, go
        hard_deadline = window_end + drain + 60
        server_exit: int | None = None
        while len(results) < procs:
            now = time.time()
            if stats_start is None and now >= window_start:
                stats_start, machine_start = server.stat(), machine_cpu()
            if stats_end is None and now >= window_end:
                stats_end, machine_end = server.stat(), machine_cpu()
            if rss_every and window_start <= now <= window_end and now >= next_rss:
                sample = server.stat()
                rss_samples.append((round(now - window_start, 2), sample["rss"], sample["cpu"], server.acks_yes))
                next_rss += rss_every
            for worker in workers:
                while True:
                    try:
                        kind, payload = worker.lines.get_nowait()
                    except queue.Empty:
                        break
                    if kind == "PROGRESS":
                        progress[payload["worker"]] = payload
                    elif kind == "RESULT":
                        results[payload["worker"]] = payload
                    elif kind == "EOF" and workers.index(worker) not in results:
                        raise SystemExit(f"bench: a load generator of {name} died; see {worker.log.name}")
            # Print once every generator has reported this tick (they report every 5 s from
            # GO), or 2 s late if one has not.
            reported = len(progress) == procs and all(p["t"] >= next_print - go - 0.5 for p in progress.values())
            if progress and now >= next_print and (reported or now >= next_print + 2.0):
                next_print += 5.0
                ok = sum(p["ok"] for p in progress.values())
                errors = sum(p["errors"] for p in progress.values())
                inflight = sum(p["inflight"] for p in progress.values())
                elapsed = now - go
                stage = "warm-up" if now < window_start else ("measuring" if now < window_end else "draining")
                rate_now = (ok - last_ok) / max(1e-6, now - last_t)
                last_ok, last_t = ok, now
                extra = f"  backlog {sum(p['backlog'] for p in progress.values())}" if mode == "open" else ""
                if rss_samples:
                    extra += f"  server RSS {rss_samples[-1][1] / MIB:.1f} MiB"
                say(f"  [{name}] {elapsed:5.0f} s {stage:<9}  ok {ok:>8,}  errors {errors:>4}  "
                    f"in flight {inflight:>3}  ~{rate_now:,.0f} tx/s{extra}")
            if server_exit is None and server.proc.poll() is not None:
                server_exit = server.proc.returncode
                say(f"  !! the {server.kind} server exited with status {server_exit} during {name}; "
                    f"see {server.stderr_log.name}")
            if now > hard_deadline:
                raise SystemExit(f"bench: {name} did not finish in time")
            time.sleep(0.05)
        if stats_end is None:
            stats_end, machine_end = server.stat(), machine_cpu()
        if stats_start is None:
            stats_start, machine_start = stats_end, machine_end
        final = server.stat()
    finally:
        for worker in workers:
            worker.stop()
    latencies: list[float] = []
    handshakes: list[float] = []
    for w in range(procs):
        for target, suffix in ((latencies, ""), (handshakes, ".handshake")):
            values = array("d")
            path = phase_dir / f"latency-{w}.bin{suffix}"
            with open(path, "rb") as f:
                values.frombytes(f.read())
            target.extend(values)
    parts = [results[w] for w in range(procs)]
    window_done = sum(p["window_done"] for p in parts)
    ok = sum(p["ok"] for p in parts)
    errors = sum(p["errors"] for p in parts)
    server_cpu = stats_end["cpu"] - stats_start["cpu"]
    loadgen_cpu = sum(p["window_cpu_seconds"] for p in parts)
    busy = machine_end[0] - machine_start[0]
    total = machine_end[1] - machine_start[1]
    error_kinds: dict[str, int] = {}
    for p in parts:
        for kind, count in p["error_kinds"].items():
            error_kinds[kind] = error_kinds.get(kind, 0) + count
    result: dict[str, Any] = {
        "server": server.kind, "mode": mode, "size": size, "document_bytes": SIZE_BYTES[size],
        "connections": sum(p["connections"] for p in parts),
        "loadgen_processes": procs, "warmup_s": warmup, "duration_s": duration,
        "offered_tps": rate, "tps": round(window_done / duration, 1), "transactions": window_done,
        "latency_ms": {k: _r(v) for k, v in latency_summary(latencies).items()},
        "ok": ok, "errors": errors, "error_kinds": error_kinds,
        "error_samples": [s for p in parts for s in p["error_samples"]][:5],
        "duplicates": sum(p["duplicates"] for p in parts),
        "unfinished": sum(p["unfinished"] for p in parts),
        "reconnects": sum(p["reconnects"] for p in parts),
        "lifecycles_completed": sum(p["lifecycles_done"] for p in parts),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_s_per_1000": _r(server_cpu / window_done * 1000, 3) if window_done else None,
        "server_cores_busy": round(server_cpu / duration, 2),
        "server_vmhwm_mib": round(final["hwm"] / MIB, 1),
        "server_rss_end_mib": round(final["rss"] / MIB, 1),
        "loadgen_cpu_s": round(loadgen_cpu, 2),
        "loadgen_cpu_us_per_tx": _r(loadgen_cpu / window_done * 1e6, 1) if window_done else None,
        "loadgen_ceiling_tps_per_core": round(window_done / loadgen_cpu) if loadgen_cpu else None,
        "machine_cpu_busy_pct": round(100.0 * busy / total, 1) if total else None,
        # What the rest of the machine did meanwhile (other people's processes on a shared
        # box): the machine's busy cores minus the server's and the load generators'.
        "other_cores_busy": round(busy / total * (os.cpu_count() or 1) - server_cpu / duration
                                  - loadgen_cpu / duration, 2) if total else None,
        "tls": parts[0].get("tls"),
        "notes": {k: v for p in parts for k, v in p["notes"].items()},
    }
    if mode == "connect":
        result["handshake_ms"] = {k: _r(v) for k, v in latency_summary(handshakes).items()}
    if mode == "open":
        result["open_loop"] = {"due_never_sent": sum(p["open_loop"]["due_never_sent"] for p in parts),
                               "max_backlog": sum(p["open_loop"]["max_backlog"] for p in parts)}
    if server_exit is not None:
        result["server_exited"] = server_exit
    if rss_samples:
        result["rss_samples"] = [(t, round(v / MIB, 2)) for t, v, _, _ in rss_samples]
        result["drift"] = soak_drift(rss_samples)
    result["_server_counts"] = {"acks_logged": server.acks, "acks_yes_logged": server.acks_yes}
    return result


SIZE_BYTES = dict(SIZES)


def run_phase(settings: Settings, name: str, kind: str, workers: int | None = None, **load: Any) -> dict[str, Any]:
    """Start a server of *kind* on a fresh copy of the data directory, load it, stop it.

    A hub runs with ``settings.workers`` worker processes unless *workers* says otherwise.
    """
    data_dir = settings.work / f"data-{name}"
    shutil.copytree(settings.template_dir, data_dir)
    describe = {"closed": "persistent connections, closed loop",
                "open": f"open loop at {load.get('rate')} tx/s offered",
                "connect": "a new TLS connection per transaction"}[load["mode"]]
    hub_workers = (settings.workers if workers is None else workers) if kind in WORKER_KINDS else 1
    server_name = f"{kind} ({hub_workers} workers)" if kind in WORKER_KINDS else f"{kind} server"
    say(f"- {name}: {server_name}, {load['size']} documents, {describe}, "
        f"{settings.warmup:g} s warm-up + {load.get('duration') or settings.duration:g} s")
    phase_dir = settings.work / name
    phase_dir.mkdir(exist_ok=True)
    server = Server(kind, data_dir, settings.server_cpus, phase_dir, workers=hub_workers)
    try:
        result = run_load(settings, name, server, **load)
        # SQLite's log, before the server's last connection folds it back in: a log that
        # only grows means checkpoints no longer complete (and its index, mapped into
        # every worker, grows the hub's memory with it).
        wal = data_dir / ("floor.db-wal" if kind.startswith("floor") else "gsem.db-wal")
        result["wal_mib_at_end"] = round(wal.stat().st_size / MIB, 1) if wal.exists() else 0.0
    finally:
        server.stop()
    result["hub_workers"] = hub_workers if kind in WORKER_KINDS else None
    counts = result.pop("_server_counts")
    result["server_log"] = {"warnings": server.log_counts["warn"], "errors": server.log_counts["error"]}
    if kind in WORKER_KINDS:
        result["writer"] = writer_figures(server.writer_lines)  # None without gsem's writer (floor-writer)
    if kind == "hub":
        result["collector"] = collector_figures(server.collector_lines)
        result["hub_acks_logged"] = counts["acks_logged"]
        result["hub_acks_yes_logged"] = counts["acks_yes_logged"]
        if counts["acks_yes_logged"] != result["ok"]:
            result["notes"]["hub logged a different number of Yes acknowledgements"] = counts["acks_yes_logged"]
    if not settings.extra.get("keep"):
        shutil.rmtree(data_dir, ignore_errors=True)
    lat = result["latency_ms"]
    say(f"  => {result['tps']:,.1f} tx/s, p50 {fmt(lat['p50'])} ms, p99 {fmt(lat['p99'])} ms, "
        f"errors {result['errors']}, server CPU {fmt(result['server_cpu_s_per_1000'])} s/1000 tx "
        f"({result['server_cores_busy']:.2f} cores), peak {result['server_vmhwm_mib']:.0f} MiB, "
        f"load generator {fmt(result['loadgen_cpu_us_per_tx'], 0)} µs CPU/tx")
    if result.get("writer"):
        say(f"  writer (warm-up included): {writer_text(result['writer'])}; "
            f"the SQLite log {result['wal_mib_at_end']:,.1f} MiB at the end")
    if result.get("collector"):
        say(f"  {collector_text(result['collector'])} (warm-up included)")
    if result["errors"]:
        say(f"  !! {result['errors']} transactions were not accepted: {result['error_kinds']}")
    return result


# -- the in-process measurement --------------------------------------------------------------------


def measure_inprocess(settings: Settings, seconds: float, size: str = "2k") -> dict[str, Any]:
    """Parse + schema + matrix + durable commit per transaction, in this process, no network."""
    from datetime import datetime as dt

    from gsem.config import load_config
    from gsem.db.connector import Database
    from gsem.exchange import Inbound, decide_and_store, prepare_inbound
    from gsem.pki import fingerprint_sha256
    from gsem.validation import DocumentValidator
    from gsem.xmlsafe import ParseLimits

    say(f"- inproc: DocumentValidator + decide_and_store through Database.run_sync, {size} lifecycles, "
        f"sequential, ~{seconds:g} s")
    data_dir = settings.work / "data-inproc"
    shutil.copytree(settings.template_dir, data_dir)
    config = load_config(data_dir)
    database = Database(config.database_url)
    limits = config.limits
    validator = DocumentValidator(ParseLimits(limits.max_body_bytes, limits.max_depth, limits.max_elements))
    steps = json.loads(settings.templates[size].read_text("utf-8"))["steps"]
    partners_dir = data_dir / "certs" / "partners"
    fingerprints = {pid: fingerprint_sha256((partners_dir / f"{pid}-cert.pem").read_bytes())
                    for pid in ("REQ01", "PRV01")}
    inspect_wall: list[float] = []
    store_wall: list[float] = []
    store_cpu: list[float] = []
    errors: dict[str, int] = {}
    count = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    lifecycle = 0
    # Warm up caches and the engine's lazy imports on one lifecycle, untimed.
    timed = False
    while True:
        elapsed = time.perf_counter() - started
        if timed and elapsed >= seconds or lifecycle >= 5000:
            break
        lifecycle += 1
        rid, pid = f"R{settings.run_tag}inproc-{lifecycle}", f"P{settings.run_tag}inproc-{lifecycle}"
        for step in steps:
            partner = "REQ01" if step["role"] == "R" else "PRV01"
            body = fill(step["body"], rid, pid)
            inbound = Inbound(partner_id=partner, fingerprint=fingerprints[partner], body=body,
                              received_at=dt.now(UTC).replace(tzinfo=None))
            t0 = time.perf_counter()
            # What Exchange.receive does before the database: validate, prepare, precheck.
            inspection, forward, prepared = prepare_inbound(validator, inbound)
            t1 = time.perf_counter()
            c1 = time.thread_time()
            timings: dict[str, float] = {}
            outcome = database.run_sync(
                lambda conn, i=inspection, b=inbound, t=timings, f=forward, p=prepared: decide_and_store(
                    conn, b, i, validator, t, f, p))
            t2 = time.perf_counter()
            c2 = time.thread_time()
            if outcome.log_fields.get("result") != "Yes":
                key = f"{step['name']}: {[e['code'] for e in outcome.log_fields.get('errors', [])]}"
                errors[key] = errors.get(key, 0) + 1
            if timed:
                inspect_wall.append(t1 - t0)
                store_wall.append(t2 - t1)
                store_cpu.append(c2 - c1)
                count += 1
        if not timed:
            timed = True
            started = time.perf_counter()
            cpu_started = time.process_time()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    database.engine.dispose()
    floor = commit_floor(settings.work / "commit-floor.db")
    if not settings.extra.get("keep"):
        shutil.rmtree(data_dir, ignore_errors=True)

    def us(values: list[float]) -> dict[str, float | None]:
        summary = latency_summary([v * 1e6 for v in values])
        return {k: _r(v, 1) for k, v in summary.items()}

    total_us = wall / count * 1e6 if count else None
    result = {
        "size": size, "transactions": count, "lifecycles": lifecycle - 1, "seconds": round(wall, 2),
        "tps": round(count / wall, 1) if wall else None,
        "us_per_tx": _r(total_us, 1),
        "cpu_us_per_tx": _r(cpu / count * 1e6, 1) if count else None,
        "inspect_us": us(inspect_wall),
        "decide_and_commit_us": us(store_wall),
        "decide_and_commit_cpu_us": us(store_cpu),
        "commit_floor_us": floor,
        "errors": errors,
    }
    say(f"  => {result['tps']:,.1f} tx/s ({fmt(total_us, 0)} µs per transaction: validate+prepare "
        f"{fmt(result['inspect_us']['mean'], 0)} µs, decide+store+commit "
        f"{fmt(result['decide_and_commit_us']['mean'], 0)} µs of which CPU "
        f"{fmt(result['decide_and_commit_cpu_us']['mean'], 0)} µs); a bare durable commit takes "
        f"{fmt(floor['mean'], 0)} µs")
    if errors:
        say(f"  !! not accepted in-process: {errors}")
    return result


def commit_floor(path: Path, commits: int = 200) -> dict[str, float | None]:
    """The time of a one-row commit with gsem's SQLite settings (WAL, synchronous=FULL)."""
    import sqlalchemy as sa

    from gsem.db.connector import Database

    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    database = Database(f"sqlite:///{path}")
    database.run_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE floor (body BLOB)"))
    row = os.urandom(2048)
    times = []
    cpu = 0.0
    for _ in range(commits):
        t0 = time.perf_counter()
        c0 = time.thread_time()
        database.run_sync(lambda conn: conn.execute(sa.text("INSERT INTO floor VALUES (:b)"), {"b": row}))
        cpu += time.thread_time() - c0
        times.append((time.perf_counter() - t0) * 1e6)
    database.engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    result = {k: _r(v, 1) for k, v in latency_summary(times).items()}
    result["cpu_mean"] = _r(cpu / commits * 1e6, 1)
    return result


# -- the machine -----------------------------------------------------------------------------------


def machine_info(work: Path) -> dict[str, Any]:
    """What the figures were measured on."""
    import lxml.etree
    import OpenSSL
    import twisted

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = "unknown"
    try:
        best = ""
        target = str(work.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount, kind = parts[1], parts[2]
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, fs = mount, f"{kind} ({parts[0]} on {mount})"
    except OSError:
        pass
    return {
        "cpu_model": model, "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_total / 1024 ** 3, 1), "kernel": platform.release(),
        "python": platform.python_version(), "openssl_client": ssl.OPENSSL_VERSION,
        "openssl_server": OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode(),
        "twisted": twisted.__version__, "lxml": ".".join(map(str, lxml.etree.LXML_VERSION)),
        "sqlite": sqlite3.sqlite_version, "work_dir_filesystem": fs, "hostname": platform.node(),
    }


def engine_revision() -> dict[str, Any]:
    """The commit measured, and whether engine files had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    # Porcelain lines are "XY PATH": the status letters may start with a space.
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "gsem", "transactions", "schemas").splitlines()
             if len(line) > 3]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_engine_files": dirty}


# -- reporting -------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table; an em dash when there is none."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


PHASE_LABELS = {
    "loadgen": "load generator vs minimal TLS responder",
    "bare": "bare Twisted mTLS server (ceiling)",
    "floor": "floor: XSD validation + 3 rows + group commit, nothing else",
    "floor-rate": "floor, fixed rate",
    "floor-writer": "floor with a writer process of its own",
    "floor-writer-rate": "floor with a writer process, fixed rate",
    "hub": "hub, 2 KB, 64 connections",
    "hub-1w": "hub with one worker, 2 KB, 64 connections",
    "hub-rate": "hub, 2 KB, fixed rate",
    "hub-rate-half": "hub, 2 KB, half its closed-loop rate",
    "hub-connect": "hub, 2 KB, new connection per tx",
    "bare-connect": "bare server, new connection per tx",
    "hub-10k": "hub, 10 KB, 64 connections",
    "hub-100k": "hub, 100 KB, 64 connections",
    "soak": "hub soak",
}


def _throughput_target(phase: dict[str, Any]) -> tuple[str, bool]:
    return f"{phase['tps']:,.1f} tx/s, {phase['errors']} errors", phase["tps"] >= TARGET_TPS and phase["errors"] == 0


def _latency_target(phase: dict[str, Any]) -> tuple[str, bool]:
    p99 = phase["latency_ms"]["p99"]
    kept_up = phase["tps"] >= 0.98 * phase["offered_tps"]
    measured = (f"p99 {fmt(p99)} ms, {phase['tps']:,.1f} tx/s completed"
                + ("" if kept_up else " (did not keep up with the offered rate)"))
    return measured, p99 is not None and p99 < TARGET_P99_MS and kept_up and phase["errors"] == 0


def _ratio_target(phase: dict[str, Any], bare: dict[str, Any]) -> tuple[str, bool]:
    ratio = phase["tps"] / bare["tps"]
    return f"{ratio:.1%} ({phase['tps']:,.1f} / {bare['tps']:,.1f} tx/s)", ratio >= TARGET_RATIO


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: the figure measured and whether it is met.

    Where the run has the floor servers' phases, each target also says what they reached
    on the same criterion (``floor``: workers taking turns at the database, as the hub's
    do; ``floor-writer``: a writer process of its own): a target that both miss is out
    of reach for a hub built this way on this machine, whatever gsem's own work costs.
    """
    phases = report["phases"]
    targets = []
    hub = phases.get("hub")
    bare = phases.get("bare")
    # The hub's distance to the floor: to the faster of the two closed-loop floors.
    closed_loop = [(phases[kind]["tps"], kind) for kind in FLOOR_KINDS if phases.get(kind, {}).get("tps")]
    best_floor = max(closed_loop)[1] if closed_loop else None

    def target(name: str, measured: tuple[str, bool], floors: dict[str, tuple[str, bool]]) -> None:
        entry: dict[str, Any] = {"target": name, "measured": measured[0], "met": measured[1]}
        if floors:
            entry["floor"] = "; ".join(f"{kind}: {text}" for kind, (text, _) in floors.items())
            entry["floor_met"] = any(met for _, met in floors.values())
        targets.append(entry)

    def at_floors(evaluate: Any, suffix: str = "", **match: Any) -> dict[str, tuple[str, bool]]:
        found = {}
        for kind in FLOOR_KINDS:
            phase = phases.get(kind + suffix)
            if phase and all(phase.get(k) == v for k, v in match.items()):
                found[kind] = evaluate(phase)
        return found

    if hub:
        target(f">= {TARGET_TPS:,} accepted tx/s, 64 connections, 2 KB", _throughput_target(hub),
               at_floors(_throughput_target))
    rate = phases.get("hub-rate")
    if rate:
        target(f"p99 < {TARGET_P99_MS:g} ms at {rate['offered_tps']:,.0f} tx/s offered", _latency_target(rate),
               at_floors(_latency_target, "-rate", offered_tps=rate["offered_tps"]))
    if hub and bare and bare["tps"]:
        ratio = hub["tps"] / bare["tps"]
        report["hub_to_ceiling_ratio"] = round(ratio, 3)
        if hub["server_cpu_s_per_1000"] and bare["server_cpu_s_per_1000"]:
            # Less sensitive to other load on the machine than throughput: the share of the
            # hub's CPU per transaction that the HTTP+TLS layer alone costs.
            report["hub_to_ceiling_cpu_ratio"] = round(bare["server_cpu_s_per_1000"] / hub["server_cpu_s_per_1000"], 3)
        if best_floor:
            floor = phases[best_floor]
            report["floor_phase"] = best_floor
            report["hub_to_floor_ratio"] = round(hub["tps"] / floor["tps"], 3)
            report["floor_to_ceiling_ratio"] = round(floor["tps"] / bare["tps"], 3)
        target(f"hub >= {TARGET_RATIO:.0%} of the bare TLS ceiling", _ratio_target(hub, bare),
               at_floors(lambda phase: _ratio_target(phase, bare)))
    soak = phases.get("soak")
    if soak:
        verdict = soak["memory"]
        long_enough = soak["duration_s"] >= TARGET_SOAK_SECONDS
        measured = (f"RSS {verdict['first_third_mib']:.1f} -> {verdict['last_third_mib']:.1f} MiB "
                    f"({verdict['growth_pct']:+.1f} %) over {soak['duration_s']:g} s")
        if not long_enough:
            measured += f" (shorter than the {TARGET_SOAK_SECONDS} s the target asks for)"
        targets.append({"target": f"memory flat over a {TARGET_SOAK_SECONDS // 60}-minute soak",
                        "measured": measured, "met": verdict["flat"] and long_enough})
    else:
        targets.append({"target": f"memory flat over a {TARGET_SOAK_SECONDS // 60}-minute soak",
                        "measured": f"not run (make bench SOAK={TARGET_SOAK_SECONDS})", "met": None})
    return targets


def soak_verdict(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Flat when the mean RSS of the last third is within 5 % of the first third's."""
    values = [v for _, v in samples]
    third = max(1, len(values) // 3)
    first = sum(values[:third]) / third
    last = sum(values[-third:]) / third
    growth = (last - first) / first if first else 0.0
    # Least-squares slope, for a feel of the trend.
    n = len(samples)
    slope = 0.0
    if n >= 2:
        mean_t = sum(t for t, _ in samples) / n
        mean_v = sum(values) / n
        var = sum((t - mean_t) ** 2 for t, _ in samples)
        slope = sum((t - mean_t) * (v - mean_v) for t, v in samples) / var * 60 if var else 0.0
    return {"samples": n, "first_third_mib": round(first, 2), "last_third_mib": round(last, 2),
            "growth_pct": round(growth * 100, 2), "slope_mib_per_min": round(slope, 3),
            "max_mib": round(max(values), 2) if values else None,
            "flat": growth <= SOAK_FLAT_TOLERANCE}


def soak_drift(samples: list[tuple[float, int, float, int]]) -> dict[str, Any]:
    """Throughput and server CPU per transaction in the first and the last third of a soak.

    A hub whose work per transaction grows with what it has stored (a table scan, a
    growing index) shows it here before it shows in memory.
    """
    third = len(samples) // 3
    if third < 1:
        return {}

    def span(a: tuple[float, int, float, int], b: tuple[float, int, float, int]) -> dict[str, float | None]:
        seconds, tx, cpu = b[0] - a[0], b[3] - a[3], b[2] - a[2]
        return {"tps": round(tx / seconds, 1) if seconds else None,
                "server_cpu_s_per_1000": round(cpu / tx * 1000, 3) if tx else None}

    return {"first_third": span(samples[0], samples[third]), "last_third": span(samples[-third - 1], samples[-1])}


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """The table rows shared by the terminal summary and the Markdown file."""
    rows = []
    for name, phase in report["phases"].items():
        if name == "inproc":
            continue
        lat = phase["latency_ms"]
        label = PHASE_LABELS.get(name, name)
        if phase.get("hub_workers") and name != "hub-1w":
            label += f", {phase['hub_workers']} worker{'s' if phase['hub_workers'] > 1 else ''}"
        if phase.get("offered_tps"):
            label += f" ({phase['offered_tps']:,.0f} tx/s offered)"
        rows.append([name, label, fmt(phase["tps"], 1), fmt(lat["p50"]), fmt(lat["p95"]), fmt(lat["p99"]),
                     fmt(phase["server_cpu_s_per_1000"], 3), fmt(phase["server_vmhwm_mib"], 0),
                     fmt(phase["loadgen_cpu_us_per_tx"], 0), fmt(phase.get("other_cores_busy"), 2),
                     str(phase["errors"])])
    return rows


HEADERS = ["phase", "what", "tx/s", "p50 ms", "p95 ms", "p99 ms", "server CPU s/1000 tx",
           "server peak MiB", "loadgen CPU µs/tx", "other cores busy", "errors"]


def print_summary(report: dict[str, Any]) -> None:
    """The readable table at the end of a run."""
    rows = summary_rows(report)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)] if rows else []
    say("")
    say("Results " + report["started"] + f" (engine {report['engine']['commit']})")
    if rows:
        say("  ".join(h.ljust(widths[i]) if i < 2 else h.rjust(widths[i]) for i, h in enumerate(HEADERS)))
        for row in rows:
            say("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row)))
    inproc = report["phases"].get("inproc")
    if inproc:
        say(f"in-process (no network, sequential): {fmt(inproc['tps'], 1)} tx/s; per transaction "
            f"validate+prepare {fmt(inproc['inspect_us']['mean'], 0)} µs, decide+store+commit "
            f"{fmt(inproc['decide_and_commit_us']['mean'], 0)} µs (CPU "
            f"{fmt(inproc['decide_and_commit_cpu_us']['mean'], 0)} µs); one-row durable commit "
            f"{fmt(inproc['commit_floor_us']['mean'], 0)} µs")
    for name in ("loadgen", "hub"):
        phase = report["phases"].get(name)
        if phase and phase.get("loadgen_ceiling_tps_per_core"):
            say(f"load generator in '{name}': {fmt(phase['loadgen_cpu_us_per_tx'], 0)} µs CPU per "
                f"transaction = {phase['loadgen_ceiling_tps_per_core']:,} tx/s per core it gets; "
                f"machine {fmt(phase['machine_cpu_busy_pct'], 0)} % busy")
    if "hub_to_ceiling_ratio" in report:
        say(f"hub / bare TLS ceiling: {report['hub_to_ceiling_ratio']:.1%} by throughput"
            + (f", {report['hub_to_ceiling_cpu_ratio']:.1%} by server CPU per transaction"
               if "hub_to_ceiling_cpu_ratio" in report else ""))
    if "hub_to_floor_ratio" in report:
        name = report.get("floor_phase", "floor")
        say(f"hub / the faster floor server ({name}): {report['hub_to_floor_ratio']:.1%} by throughput; "
            f"{name} / bare TLS ceiling: {report['floor_to_ceiling_ratio']:.1%}")
    soak = report["phases"].get("soak")
    if soak:
        m = soak["memory"]
        say(f"soak: RSS first third {m['first_third_mib']} MiB, last third {m['last_third_mib']} MiB "
            f"({m['growth_pct']:+.2f} %, {m['slope_mib_per_min']:+.3f} MiB/min): "
            f"{'flat' if m['flat'] else 'NOT flat'}")
        drift = soak.get("drift") or {}
        if drift:
            a, b = drift["first_third"], drift["last_third"]
            say(f"soak: first third {fmt(a['tps'], 1)} tx/s at {fmt(a['server_cpu_s_per_1000'], 3)} s CPU/1000 tx, "
                f"last third {fmt(b['tps'], 1)} tx/s at {fmt(b['server_cpu_s_per_1000'], 3)} s CPU/1000 tx")
    say("Targets:")
    for t in report["targets"]:
        status = "not run" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        say(f"  [{status}] {t['target']}: {t['measured']}")
        if "floor" in t:
            say(f"      the floor servers: {t['floor']}: "
                + ("met" if t["floor_met"] else "not met either in this run (out of reach only if the floors "
                                                 "miss it on the fastest host measured too: docs/decisions.md 29)"))


def markdown_block(report: dict[str, Any]) -> str:
    """The results block of docs/benchmarks.md."""
    m = report["machine"]
    lines = [
        DOCS_START,
        f"Run {report['started']} on engine commit `{report['engine']['commit']}`"
        + (f" (with uncommitted changes in {', '.join(report['engine']['uncommitted_engine_files'])})"
           if report["engine"]["uncommitted_engine_files"] else "") + ".",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['openssl_server']}, Twisted {m['twisted']}, SQLite {m['sqlite']}; "
        f"data directory on {m['work_dir_filesystem']}.",
        "",
        "| " + " | ".join(HEADERS[1:]) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 2)) + "|",
    ]
    for row in summary_rows(report):
        lines.append("| " + " | ".join(row[1:]) + " |")
    inproc = report["phases"].get("inproc")
    if inproc:
        lines += [
            "",
            f"In-process, no network, one transaction after another ({inproc['size']} lifecycles): "
            f"**{fmt(inproc['tps'], 1)} tx/s**, {fmt(inproc['us_per_tx'], 0)} µs per transaction: "
            f"validate + prepare {fmt(inproc['inspect_us']['mean'], 0)} µs, decide + store + durable commit "
            f"{fmt(inproc['decide_and_commit_us']['mean'], 0)} µs (of which CPU "
            f"{fmt(inproc['decide_and_commit_cpu_us']['mean'], 0)} µs). A one-row commit with the same "
            f"SQLite settings takes {fmt(inproc['commit_floor_us']['mean'], 0)} µs "
            f"(p99 {fmt(inproc['commit_floor_us']['p99'], 0)} µs, CPU "
            f"{fmt(inproc['commit_floor_us'].get('cpu_mean'), 0)} µs).",
        ]
    lg = report["phases"].get("loadgen")
    if lg:
        lines += ["", f"Load generator: {fmt(lg['loadgen_cpu_us_per_tx'], 0)} µs CPU per transaction "
                      f"against the minimal responder, i.e. about {lg['loadgen_ceiling_tps_per_core']:,} tx/s "
                      "per core it gets."]
    for name in ("hub", "hub-rate-half"):
        phase = report["phases"].get(name)
        if phase and phase.get("writer"):
            lines += ["", f"The hub's database writer in `{name}` (warm-up included): {writer_text(phase['writer'])}."]
    soak = report["phases"].get("soak")
    if soak and soak.get("collector"):
        lines += ["", f"Over the soak, the hub's {collector_text(soak['collector'])}."]
    if soak and soak.get("drift"):
        a, b = soak["drift"]["first_third"], soak["drift"]["last_third"]
        mem = soak["memory"]
        lines += ["", f"Soak ({soak['duration_s']:g} s): RSS {mem['first_third_mib']} MiB in the first third, "
                      f"{mem['last_third_mib']} MiB in the last ({mem['growth_pct']:+.2f} %, peak {mem['max_mib']} MiB); "
                      f"{fmt(a['tps'], 1)} tx/s at {fmt(a['server_cpu_s_per_1000'], 3)} s CPU per 1,000 tx in the "
                      f"first third, {fmt(b['tps'], 1)} tx/s at {fmt(b['server_cpu_s_per_1000'], 3)} in the last."]
    lines += ["", "| target | measured | met | the floor servers, same run | met by a floor |",
              "|---|---|---|---|---|"]
    for t in report["targets"]:
        status = "not run" if t["met"] is None else ("yes" if t["met"] else "**no**")
        at_floor = ("—", "—") if "floor" not in t else (t["floor"], "yes" if t["floor_met"] else "no")
        lines.append(f"| {t['target']} | {t['measured']} | {status} | {at_floor[0]} | {at_floor[1]} |")
    lines.append(DOCS_END)
    return "\n".join(lines) + "\n"


def update_docs(path: Path, block: str) -> None:
    """Replace the results block of *path* (or append one)."""
    text = path.read_text("utf-8") if path.exists() else "# Benchmarks\n\n"
    if DOCS_START in text and DOCS_END in text:
        before, rest = text.split(DOCS_START, 1)
        after = rest.split(DOCS_END, 1)[1]
        text = before + block.rstrip("\n") + after
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, "utf-8")


# -- main ------------------------------------------------------------------------------------------


def cpu_list(value: str) -> list[int] | None:
    """``0,1`` or ``0-3`` or ``none``."""
    if value in ("", "none"):
        return None
    cpus: list[int] = []
    for part in value.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus.extend(range(int(a), int(b) + 1))
        else:
            cpus.append(int(part))
    return cpus


ALL_PHASES = ("inproc", "loadgen", "bare", "floor", "floor-rate", "floor-writer", "floor-writer-rate", "hub", "hub-1w",
              "hub-rate", "hub-rate-half", "hub-connect", "bare-connect", "hub-10k", "hub-100k")


def main(argv: list[str] | None = None) -> int:
    """Run the phases, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per phase (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each (default 3)")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered tx/s of hub-rate and floor-rate (default 1000)")
    parser.add_argument("--max-open", type=int, default=4,
                        help="incidents each requester/provider pair keeps going at once (default 4)")
    parser.add_argument("--inproc-seconds", type=float, default=8.0)
    parser.add_argument("--phases", default=",".join(ALL_PHASES),
                        help=f"comma-separated subset of {','.join(ALL_PHASES)}")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                        help="also run the hub for SECONDS while sampling its memory (600 for the target)")
    parser.add_argument("--soak-rate", type=float, default=0.0,
                        help="offered tx/s during the soak (default 0: closed loop, as fast as it goes)")
    parser.add_argument("--soak-interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="the hub's worker processes, gsem serve --workers (default: one per CPU, "
                        f"here {os.cpu_count()})")
    parser.add_argument("--server-cpus", type=cpu_list, default=None, help="pin servers, e.g. 0 (default: no pinning)")
    parser.add_argument("--loadgen-cpus", type=cpu_list, default=None, help="pin load generators, e.g. 1")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where data directories go (default: a new directory in the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs results block")
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(ALL_PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.soak:
        phases.append("soak")

    started = datetime.now(UTC)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)  # a new directory given is made, not a traceback
    work = Path(tempfile.mkdtemp(prefix="gsem-bench-", dir=args.work_dir))
    command = "bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    say(f"gsem benchmark: work directory {work}")
    report: dict[str, Any] = {
        "version": 1, "started": started.strftime("%Y-%m-%d %H:%M:%SZ"), "command": command.strip(),
        "machine": machine_info(work), "engine": engine_revision(),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "loadgen_processes": args.procs,
                     "connections": 2 * PAIRS, "pairs": PAIRS, "max_open_lifecycles_per_pair": args.max_open,
                     "rate": args.rate, "hub_workers": args.workers, "server_cpus": args.server_cpus, "loadgen_cpus": args.loadgen_cpus,
                     "sizes": SIZES},
        "phases": {},
    }
    m = report["machine"]
    say(f"machine: {m['cpu_model']}, {m['cpus']} CPUs, Python {m['python']}, {m['openssl_server']}, "
        f"data on {m['work_dir_filesystem']}")
    try:
        say("- preparing a data directory: gsem init --demo, 32 requesters, 32 providers, certificates, agreements")
        template_dir = work / "template"
        prepare_data_dir(template_dir)
        templates = {}
        for size, target in SIZES.items():
            steps = lifecycle_templates(target)
            path = work / f"lifecycle-{size}.json"
            path.write_text(json.dumps({"steps": steps}), "utf-8")
            templates[size] = path
            report["settings"].setdefault("mean_document_bytes", {})[size] = round(
                sum(len(s["body"].encode()) for s in steps) / len(steps))
        settings = Settings(work=work, template_dir=template_dir, templates=templates, warmup=args.warmup,
                            duration=args.duration, procs=args.procs, server_cpus=args.server_cpus,
                            loadgen_cpus=args.loadgen_cpus, run_tag=started.strftime("%H%M%S"),
                            max_open=args.max_open, workers=args.workers, extra={"keep": args.keep})
        plan = {
            "loadgen": ("minimal", dict(mode="closed", size="2k")),
            "bare": ("twisted", dict(mode="closed", size="2k")),
            "floor": ("floor", dict(mode="closed", size="2k")),
            "floor-rate": ("floor", dict(mode="open", size="2k", rate=args.rate)),
            "floor-writer": ("floor-writer", dict(mode="closed", size="2k")),
            "floor-writer-rate": ("floor-writer", dict(mode="open", size="2k", rate=args.rate)),
            "hub": ("hub", dict(mode="closed", size="2k")),
            "hub-1w": ("hub", dict(mode="closed", size="2k", workers=1)),
            "hub-rate": ("hub", dict(mode="open", size="2k", rate=args.rate)),
            "hub-rate-half": ("hub", dict(mode="open", size="2k")),
            "hub-connect": ("hub", dict(mode="connect", size="2k")),
            "bare-connect": ("twisted", dict(mode="connect", size="2k")),
            "hub-10k": ("hub", dict(mode="closed", size="10k")),
            "hub-100k": ("hub", dict(mode="closed", size="100k")),
        }
        for name in phases:
            if name == "inproc":
                report["phases"]["inproc"] = measure_inprocess(settings, args.inproc_seconds)
            elif name == "soak":
                load = dict(mode="open", size="2k", rate=args.soak_rate) if args.soak_rate else dict(
                    mode="closed", size="2k")
                result = run_phase(settings, "soak", "hub", duration=args.soak, rss_every=args.soak_interval,
                                   **load)
                result["memory"] = soak_verdict(result["rss_samples"])
                report["phases"]["soak"] = result
            else:
                kind, load = plan[name]
                if name == "hub-rate-half":
                    hub = report["phases"].get("hub")
                    if not hub or not hub["tps"]:
                        say("- hub-rate-half: skipped (it offers half of what the 'hub' phase reached)")
                        continue
                    load = dict(load, rate=max(1.0, round(hub["tps"] / 2)))
                report["phases"][name] = run_phase(settings, name, kind, **load)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    report["targets"] = evaluate_targets(report)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=1) + "\n"
    (args.results_dir / f"{stamp}.json").write_text(text, "utf-8")
    (args.results_dir / "latest.json").write_text(text, "utf-8")
    print_summary(report)
    say(f"results: {args.results_dir / (stamp + '.json')} and latest.json")
    if not args.no_docs:
        update_docs(args.docs, markdown_block(report))
        say(f"updated the results block of {args.docs}")
    total_errors = sum(p.get("errors", 0) if isinstance(p.get("errors"), int) else len(p.get("errors", {}))
                       for p in report["phases"].values())
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
