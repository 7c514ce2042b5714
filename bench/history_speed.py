"""What a transaction costs the SQLite writer as its incident's history grows.

Not a test: run it as ``.venv/bin/python bench/history_speed.py [--loops N]``.

ACTIVITY, SOLUTION and ATTACHMENT entries are appended to an incident (SPEC §4.2), so a
long-lived incident keeps growing.  This plays, for 16 incidents at a time, the first
four steps of the benchmark's 2 KB lifecycle (``bench/run.py``: Service_Request to
Accept_Problem), then Request_Problem_Information and Provide_Problem_Information
*N* times over (each appends entries), each step of the 16 as one group commit
(``gsem.db.pool.run_batch`` of ``decide_and_store``, prepared as ``bench/writer_speed.py``
prepares them).
Each document gets a comment of its own, so that a repeated step is not a duplicate.

It prints the writer's CPU time per transaction early in the history and at its end,
and their ratio: about 1 when a transaction's cost does not depend on how long its
incident's history is.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: the package sits next to bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from writer_speed import writer_call  # noqa: E402

from gsem.config import load_config  # noqa: E402
from gsem.db import model  # noqa: E402
from gsem.db.connector import Database  # noqa: E402
from gsem.db.pool import run_batch  # noqa: E402
from gsem.validation import DocumentValidator  # noqa: E402

#: Incidents whose same step shares one group commit.
PARALLEL = 16
#: The lifecycle's steps up to Accept_Problem, then the two that can follow each other for ever.
OPENING, LOOP = (0, 1, 2, 3), (4, 5)
#: Transactions averaged at each end of the history.
WINDOW = 20


def _batch(validator: DocumentValidator, step: dict[str, Any], number: int) -> list[Any]:
    calls = []
    for n in range(PARALLEL):
        partner = "REQ01" if step["role"] == "R" else "PRV01"
        body = bench.fill(step["body"], f"R-h-{n}", f"P-h-{n}")
        body = body.replace(b"</SERVICE_INCIDENT>", b"<!-- %d --></SERVICE_INCIDENT>" % number)
        calls.append(writer_call(validator, partner, "f" * 64, body))
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=60,
                        help="times Request/Provide_Problem_Information are played after the opening (default 60)")
    args = parser.parse_args(argv)
    if args.loops * len(LOOP) < 2 * WINDOW:
        parser.error(f"--loops must be at least {WINDOW}")
    work = Path(tempfile.mkdtemp(prefix="gsem-history-"))
    try:
        steps = [*OPENING, *LOOP * args.loops]
        print(f"history_speed: {PARALLEL} incidents, {len(steps)} transactions each ...", flush=True)
        bench.prepare_data_dir(work / "data")
        config = load_config(work / "data")
        validator = DocumentValidator()
        templates = bench.lifecycle_templates(2048)
        database = Database(config.database_url)
        costs: list[float] = []
        for number, step in enumerate(steps):
            calls = _batch(validator, templates[step], number)
            cpu = time.thread_time()
            outcomes = run_batch(database.engine, calls)
            costs.append((time.thread_time() - cpu) / PARALLEL * 1e6)
            for ok, outcome in outcomes:
                if not ok or outcome.log_fields.get("result") != "Yes":
                    print(f"!! step {number} ({templates[step]['name']}) was not accepted: {outcome}")
                    return 1
            if (number + 1) % 20 == 0:
                print(f"  {number + 1:4d} transactions per incident: {costs[-1]:6,.0f} µs CPU per transaction",
                      flush=True)
        with database.engine.connect() as conn:
            size = conn.execute(sa.select(sa.func.avg(sa.func.length(model.incidents.c.document)))).scalar_one()
        database.engine.dispose()
        early = statistics.mean(costs[len(OPENING):len(OPENING) + WINDOW])
        late = statistics.mean(costs[-WINDOW:])
        print(f"writer CPU per transaction: {early:,.0f} µs for transactions {len(OPENING) + 1}-"
              f"{len(OPENING) + WINDOW} of an incident, {late:,.0f} µs for the last {WINDOW} of {len(steps)}: "
              f"ratio {late / early:.2f}; the incident's stored document {size:,.0f} bytes at the end")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
