"""What one transaction costs the SQLite writer: the work done while the store is held.

Not a test: run it as ``.venv/bin/python bench/writer_speed.py [--rounds N] [--profile]``.

With several workers (``gsem serve --workers``) on SQLite, the workers take turns holding
the database, so the time a transaction spends there bounds the whole hub.  This runs
exactly that part, without network or threads: whole 2 KB lifecycles (the benchmark's
documents, ``bench/run.py``) for 32 incidents at a time, each step of the 32 as one group
commit (``gsem.db.pool.run_batch`` of ``decide_and_store``, as the hub's writer runs a
batch), on a fresh SQLite file with the hub's settings.  What ``Exchange.receive`` does
before the database (``prepare_inbound``: inspect, the forwarded document's template,
the matrix precheck, ``Prepared.of``) is done first, untimed.

It prints the writer's CPU time and wall time per transaction, and (on Linux) the write
and read system calls it made per transaction, which callgrind's count
(``bench/instructions.py``) leaves out and which do not move with the host; ``--profile``
adds cProfile's top functions (which roughly doubles the times), and ``--statements``
the wall time of each of the hot path's SQL statements (``gsem.exchange._Hot``) per
call and per transaction: what SQLite and the call into it cost, row by row.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: the package sits next to bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402

from gsem import exchange  # noqa: E402
from gsem.config import load_config  # noqa: E402
from gsem.db.connector import Database  # noqa: E402
from gsem.db.pool import run_batch  # noqa: E402
from gsem.exchange import Inbound, decide_and_store, prepare_inbound  # noqa: E402
from gsem.pki import fingerprint_sha256  # noqa: E402
from gsem.validation import DocumentValidator  # noqa: E402
from gsem.xmlsafe import ParseLimits  # noqa: E402

#: Incidents whose same step shares one group commit (the hub's batches are up to 32).
PARALLEL = 32


def prepare_batches(data_dir: Path, rounds: int) -> tuple[Database, list[list[Any]]]:
    """The database and, per step of *rounds* × 32 lifecycles, one batch of calls."""
    config = load_config(data_dir)
    limits = config.limits
    validator = DocumentValidator(ParseLimits(limits.max_body_bytes, limits.max_depth, limits.max_elements))
    certs = data_dir / "certs" / "partners"
    fingerprints = {p: fingerprint_sha256((certs / f"{p}-cert.pem").read_bytes()) for p in ("REQ01", "PRV01")}
    steps = bench.lifecycle_templates(2048)
    batches = []
    for lifecycle in range(rounds):
        for step in steps:
            calls = []
            for n in range(PARALLEL):
                partner = "REQ01" if step["role"] == "R" else "PRV01"
                body = bench.fill(step["body"], f"R-w-{lifecycle}-{n}", f"P-w-{lifecycle}-{n}")
                calls.append(writer_call(validator, partner, fingerprints[partner], body))
            batches.append(calls)
    return Database(config.database_url), batches


def writer_call(validator: DocumentValidator, partner: str, fingerprint: str, body: bytes) -> Any:
    """*body* from *partner* as one call of a ``run_batch``: prepared as ``Exchange.receive``
    prepares it before the database (``prepare_inbound``, untimed), then ``decide_and_store``."""
    inbound = Inbound(partner_id=partner, fingerprint=fingerprint, body=body,
                      received_at=datetime.now(UTC).replace(tzinfo=None))
    inspection, forward, prepared = prepare_inbound(validator, inbound)
    return (lambda conn: decide_and_store(conn, inbound, inspection, validator, {}, forward, prepared), (), {})


class StatementTimes:
    """While active, the wall time and the calls of each hot-path statement (``_Hot._run``)."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[Any] = collections.Counter()
        self.calls: collections.Counter[Any] = collections.Counter()
        self._run = exchange._Hot._run

    def __enter__(self) -> StatementTimes:
        run, seconds, calls = self._run, self.seconds, self.calls

        def timed(hot: Any, store: Any, params: dict[str, Any]) -> Any:
            started = time.perf_counter()
            try:
                return run(hot, store, params)
            finally:
                seconds[hot] += time.perf_counter() - started
                calls[hot] += 1

        exchange._Hot._run = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        exchange._Hot._run = self._run  # type: ignore[method-assign]

    def report(self, transactions: int) -> str:
        lines = [f"{'µs per tx':>10} {'µs a call':>10} {'calls per tx':>13}  statement"]
        for hot, seconds in self.seconds.most_common():
            # The SQL as run (compiled for the parameters given), else the statement's own.
            sql = " ".join((next(iter(hot._compiled.values()))[0] if hot._compiled else str(hot.statement)).split())
            lines.append(f"{seconds / transactions * 1e6:10.1f} {seconds / self.calls[hot] * 1e6:10.1f} "
                         f"{self.calls[hot] / transactions:13.2f}  {sql[:70]}")
        total = sum(self.seconds.values())
        lines.append(f"{total / transactions * 1e6:10.1f} {'':10} {sum(self.calls.values()) / transactions:13.2f}  "
                     "in all (BEGIN and COMMIT not included)")
        return "\n".join(lines)


class _OtherWriter:
    """A second connection to the database that commits a row of its own on demand, as the
    other worker of a two-worker hub commits between this one's batches."""

    def __init__(self, path: str | None) -> None:
        import sqlite3

        assert path, "--cold needs an SQLite database file"
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS bench_other_writer (n INTEGER)")

    def commit(self) -> None:
        self.db.execute("INSERT INTO bench_other_writer VALUES (1)")

    def close(self) -> None:
        self.db.close()


def process_io() -> dict[str, int]:
    """This process's read and write system calls and bytes so far (Linux's
    ``/proc/self/io``); empty where there is none."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(": ") for line in lines if ": " in line)
    return {name: int(fields[name]) for name in ("syscr", "syscw", "rchar", "wchar")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12,
                        help=f"lifecycles per incident slot; {PARALLEL} slots, 9 steps each (default 12)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top 40 by own time")
    parser.add_argument("--statements", action="store_true",
                        help="also print the wall time of each hot-path SQL statement, per call and per transaction")
    parser.add_argument("--cold", action="store_true",
                        help="another connection commits between batches (untimed), as the other worker of "
                             "gsem serve --workers 2 does: SQLite then empties the writer's page cache before each "
                             "batch, so this measures the batch on a cold cache")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gsem-writer-"))
    try:
        print(f"writer_speed: preparing a data directory and {args.rounds * 9 * PARALLEL:,} transactions ...",
              flush=True)
        bench.prepare_data_dir(work / "data")
        database, batches = prepare_batches(work / "data", args.rounds)
        profile = cProfile.Profile() if args.profile else None
        statements = StatementTimes()
        refused = count = 0
        other = _OtherWriter(database.engine.url.database) if args.cold else None
        cpu = wall = 0.0
        io: collections.Counter[str] = collections.Counter()
        with statements if args.statements else contextlib.nullcontext():
            for calls in batches:
                if other is not None:
                    other.commit()
                io_before = process_io()
                started_cpu, started_wall = time.thread_time(), time.perf_counter()
                if profile:
                    profile.enable()
                for ok, outcome in run_batch(database.engine, calls):
                    count += 1
                    if not ok or outcome.log_fields.get("result") != "Yes":
                        refused += 1
                if profile:
                    profile.disable()
                cpu += time.thread_time() - started_cpu
                wall += time.perf_counter() - started_wall
                io.update({name: value - io_before[name] for name, value in process_io().items()})
        if other is not None:
            other.close()
        database.engine.dispose()
        print(f"{count:,} transactions in {len(batches)} group commits of {PARALLEL}"
              + (", each on a page cache another connection's commit had emptied" if args.cold else "") + ": "
              f"{cpu / count * 1e6:,.0f} µs CPU and {wall / count * 1e6:,.0f} µs wall per transaction"
              + (f"  !! {refused} not accepted" if refused else ""))
        if io:
            # Kernel work callgrind does not count (bench/instructions.py): each of these is a
            # system call made while the database is held.
            print(f"system calls per transaction: {io['syscw'] / count:.1f} writes "
                  f"({io['wchar'] / count / 1024:.1f} KiB), {io['syscr'] / count:.1f} reads "
                  f"({io['rchar'] / count / 1024:.1f} KiB)")
        if args.statements:
            print(statements.report(count))
        if profile:
            pstats.Stats(profile).sort_stats("tottime").print_stats(40)
        return 1 if refused else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
