"""How many machine instructions one transaction costs the hub, and the floor, counted by callgrind.

Not a test: run it as ``.venv/bin/python bench/instructions.py [--lifecycles A B] [--json FILE]``.

This machine's throughput and CPU time move by tens of percent with what else runs on its
host, so small changes to the engine hide in the noise of timed runs.  An instruction
count does not move: ``valgrind --tool=callgrind`` counts the instructions a process
executes, and the same program on the same input counts the same (to a few parts in ten
thousand here, from the times and ids in the documents and rows).

What is counted is gsem's own work, without network: whole 2 KB lifecycles (the
benchmark's documents, ``bench/run.py``) for 32 incidents at a time, each step of the 32
as one group commit, as ``bench/writer_speed.py`` runs them, but with what
``Exchange.receive`` does before the database (``prepare_inbound``) counted too:

- **hub**: ``prepare_inbound`` (parse, prune, the schema, the matrix precheck, what is
  prepared for the store), then ``decide_and_store`` of the 32 in one
  ``gsem.db.pool.run_batch`` and its durable commit, on a fresh SQLite file with the
  hub's settings;
- **floor**: what the floor servers do per transaction (``bench/bare_server.py --kind
  floor``): parse with the XSD, the digest, the floor's four statements, one commit per 32.

Each is run twice under callgrind, *A* and then *B* lifecycles of the same prepared
documents; the difference of the two counts, divided by the transactions between them,
is the count per transaction, with start-up and preparation taken out.  Then where the
hub's instructions go, by library and by function (``callgrind_annotate``).  TLS, HTTP and
the reactor are not in it: they are the bare server's, measured by ``bench/run.py``.
It takes a few minutes: valgrind runs Python about fifty times slower.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Runnable from a checkout without installing: the package sits next to bench/.
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

#: Incidents whose same step shares one group commit (the hub's batches are up to 32).
PARALLEL = 32
STEPS = 9  # documents in one lifecycle (tests/fixtures/lifecycle)
WORKS = ("hub", "floor")
#: Libraries by what they are, for the breakdown; the first pattern a path matches names it.
LIBRARIES = (
    ("Python interpreter", re.compile(r"libpython|Python-3\.\d+\.\d+/|/python3\.\d+$|_json|_datetime|_struct")),
    ("lxml and libxml2", re.compile(r"lxml/|libxml2|libxslt|libexslt")),
    ("SQLite", re.compile(r"sqlite3")),
    ("C library (malloc, memcpy, locks)", re.compile(r"libc\.so|libm\.so|ld-linux|^\./(malloc|stdio-common|libio|string|nptl)/")),
    ("OpenSSL (SHA-256)", re.compile(r"libcrypto|_hashlib|_ssl|cryptography/")),
)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the child: the work itself, run under callgrind ------------------------------------

def documents(lifecycles: int) -> list[list[tuple[str, bytes]]]:
    """Per step of *lifecycles* × 32 lifecycles, the batch's (partner, body)."""
    import run as bench

    steps = bench.lifecycle_templates(2048)
    batches = []
    for lifecycle in range(lifecycles):
        for step in steps:
            partner = "REQ01" if step["role"] == "R" else "PRV01"
            batches.append([(partner, bench.fill(step["body"], f"R-i-{lifecycle}-{n}", f"P-i-{lifecycle}-{n}"))
                            for n in range(PARALLEL)])
    return batches


def run_hub(data_dir: Path, batches: list[list[tuple[str, bytes]]]) -> int:
    """The hub's work for *batches*; how many transactions were not accepted."""
    from writer_speed import writer_call

    from gsem.config import load_config
    from gsem.db.connector import Database
    from gsem.db.pool import run_batch
    from gsem.pki import fingerprint_sha256
    from gsem.validation import DocumentValidator
    from gsem.xmlsafe import ParseLimits

    config = load_config(data_dir)
    limits = config.limits
    validator = DocumentValidator(ParseLimits(limits.max_body_bytes, limits.max_depth, limits.max_elements))
    certs = data_dir / "certs" / "partners"
    fingerprints = {p: fingerprint_sha256((certs / f"{p}-cert.pem").read_bytes()) for p in ("REQ01", "PRV01")}
    database = Database(config.database_url)
    refused = 0
    for batch in batches:
        # writer_call runs prepare_inbound as it makes the call: here, inside the count.
        calls = [writer_call(validator, partner, fingerprints[partner], body) for partner, body in batch]
        for ok, outcome in run_batch(database.engine, calls):
            if not ok or outcome.log_fields.get("result") != "Yes":
                refused += 1
    database.engine.dispose()
    return refused


def run_floor(data_dir: Path, batches: list[list[tuple[str, bytes]]]) -> int:
    """The floor servers' work for *batches* (``bare_server._floor_store``, one commit a batch)."""
    import itertools

    from bare_server import fixed_ack, floor_commit, floor_database
    from lxml import etree

    from gsem.schema import incident_schema

    db = floor_database(data_dir / "floor.db")
    parser = etree.XMLParser(schema=incident_schema(), resolve_entities=False, no_network=True)
    template = fixed_ack()
    ack_ids = (f"01FLOORI{n:018d}".encode() for n in itertools.count())
    refused = 0
    for batch in batches:
        stores = []
        for partner, body in batch:
            # What a floor worker does before handing the transaction to its writer.
            root = etree.fromstring(body, parser)
            stores.append((partner, root.findtext("RequesterID") or "", root.findtext("TransactionName") or "",
                           body, hashlib.sha256(body).hexdigest(), next(ack_ids)))
        refused += floor_commit(db, template, stores).count(None)
    db.close()
    return refused


def child(work: str, lifecycles: int, prepared_for: int, template: Path) -> int:
    """Run *work* for *lifecycles* of the documents made for *prepared_for* lifecycles, on a
    copy of the data directory *template*."""
    tmp = Path(tempfile.mkdtemp(prefix="gsem-instructions-"))
    try:
        shutil.copytree(template, tmp / "data")
        batches = documents(prepared_for)
        refused = (run_hub if work == "hub" else run_floor)(tmp / "data", batches[:lifecycles * STEPS])
        if refused:
            print(f"instructions: {refused} of the {work}'s transactions were not accepted", file=sys.stderr)
            return 1
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the parent: callgrind, twice per work, and the arithmetic ---------------------------

def counted(work: str, lifecycles: int, prepared_for: int, template: Path, out: Path) -> int:
    """Instructions of one child run under callgrind (its profile is written to *out*)."""
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
               "--child", work, "--data-dir", str(template), "--lifecycles", str(lifecycles), str(prepared_for)]
    # The same hash seed each time: set and dict iteration orders, hence the paths taken, repeat.
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(HERE.parent)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"instructions: the {work} run under valgrind failed (exit {done.returncode}):\n"
                         + "\n".join(done.stderr.splitlines()[-15:]))
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"instructions: no totals line in {out}")


_ANNOTATED = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[(.*)\])?\s*$")


def by_function(profile: Path) -> dict[tuple[str, str], int]:
    """``callgrind_annotate``'s own instructions of every function in *profile*: (function, object)."""
    # --auto=no: no source files annotated after the functions (their lines look alike,
    # and for a module compiled from C next to its sources they would be read as functions).
    done = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", str(profile)],
                          capture_output=True, text=True, check=True)
    found: dict[tuple[str, str], int] = {}
    for line in done.stdout.splitlines():
        m = _ANNOTATED.match(line)
        if m and "PROGRAM TOTALS" not in m.group(2):
            source, _, function = m.group(2).rpartition(":")
            # callgrind_annotate leaves out the object of some functions inlined from
            # headers; their source file then says where they belong.
            key = (function or source, m.group(3) or source or "?")
            found[key] = found.get(key, 0) + int(m.group(1).replace(",", ""))
    return found


def library_of(path: str) -> str:
    for name, pattern in LIBRARIES:
        if pattern.search(path):
            return name
    return "other"


def measure(work: str, first: int, second: int, template: Path, keep: Path) -> dict[str, Any]:
    """*work*'s instructions per transaction, and by library and function."""
    counts = []
    for lifecycles in (first, second):
        started = time.monotonic()
        out = keep / f"callgrind.{work}.{lifecycles}"
        counts.append(counted(work, lifecycles, second, template, out))
        say(f"  {work}, {lifecycles} lifecycles x {PARALLEL}: {counts[-1]:,} instructions "
            f"({time.monotonic() - started:.0f} s)")
    transactions = (second - first) * STEPS * PARALLEL
    a = by_function(keep / f"callgrind.{work}.{first}")
    b = by_function(keep / f"callgrind.{work}.{second}")
    functions = {key: (b.get(key, 0) - a.get(key, 0)) / transactions for key in set(a) | set(b)}
    libraries: collections.Counter[str] = collections.Counter()
    for (_, path), value in functions.items():
        libraries[library_of(path)] += value
    top = sorted(functions.items(), key=lambda kv: -kv[1])[:15]
    per_transaction = (counts[1] - counts[0]) / transactions
    if abs(sum(functions.values()) - per_transaction) > 0.01 * per_transaction:
        say(f"  warning: the functions of {work} add up to {sum(functions.values()):,.0f} instructions per "
            f"transaction, not {per_transaction:,.0f}: the breakdown is not to be trusted")
    return {
        "per_transaction": round(per_transaction),
        "transactions": transactions,
        "counts": counts,
        "by_library": {name: round(value) for name, value in libraries.most_common()},
        "top_functions": [{"function": f, "object": Path(o).name, "per_transaction": round(v)} for (f, o), v in top],
    }


def report(results: dict[str, Any]) -> str:
    hub, floor = results["works"]["hub"], results["works"]["floor"]
    lines = [
        f"Instructions per transaction (callgrind; 2 KB lifecycles, group commits of {PARALLEL}; "
        f"{hub['transactions']:,} transactions between the two runs):",
        f"  hub   (prepare_inbound + decide_and_store + commit): {hub['per_transaction']:>12,}",
        f"  floor (parse with the XSD + 4 statements + commit):  {floor['per_transaction']:>12,}",
        f"  hub / floor: {hub['per_transaction'] / floor['per_transaction']:.2f}",
        "",
        f"  {'by library':36} {'hub':>10} {'share':>6} {'floor':>10}",
    ]
    names = list(dict.fromkeys([*hub["by_library"], *floor["by_library"]]))
    for name in names:
        h, f = hub["by_library"].get(name, 0), floor["by_library"].get(name, 0)
        lines.append(f"  {name:36} {h:>10,} {h / hub['per_transaction'] * 100:5.1f}% {f:>10,}")
    lines += ["", "  the hub's 15 costliest functions (own instructions per transaction):"]
    for entry in hub["top_functions"]:
        lines.append(f"  {entry['per_transaction']:>10,}  {entry['function'][:60]}  [{entry['object']}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Needs valgrind (Debian's package) and its callgrind_annotate.")
    parser.add_argument("--lifecycles", type=int, nargs=2, default=(1, 3), metavar=("A", "B"),
                        help=f"lifecycles (x {PARALLEL} incidents) of the shorter and the longer run "
                             "(default 1 3: 576 transactions between them)")
    parser.add_argument("--works", default=",".join(WORKS), help="which to count, of hub,floor (default both)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", type=Path, help="keep callgrind's profiles in this directory")
    parser.add_argument("--child", choices=WORKS, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    first, second = args.lifecycles
    if args.child:
        return child(args.child, first, second, args.data_dir)
    if not 0 <= first < second:
        parser.error("--lifecycles A B needs 0 <= A < B")
    works = [w for w in args.works.split(",") if w]
    if not works or set(works) - set(WORKS):
        parser.error(f"--works takes some of {','.join(WORKS)}")
    for tool in ("valgrind", "callgrind_annotate"):
        if shutil.which(tool) is None:
            say(f"instructions: {tool} is not installed (Debian: apt-get install valgrind)")
            return 2
    keep = args.keep or Path(tempfile.mkdtemp(prefix="gsem-callgrind-"))
    keep.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"instructions: counting {', '.join(works)} under callgrind, {first} and {second} lifecycles "
        "of 32 incidents each (a few minutes) ...")
    try:
        import run as bench

        # Made once, outside valgrind (keys and certificates for 64 partners): each run copies it.
        template = keep / "data"
        bench.prepare_data_dir(template)
        results: dict[str, Any] = {"lifecycles": [first, second], "works": {}}
        for work in works:
            results["works"][work] = measure(work, first, second, template, keep)
    finally:
        if args.keep is None:
            shutil.rmtree(keep, ignore_errors=True)
    if len(works) == len(WORKS):
        print(report(results))
    else:
        for work in works:
            print(f"{work}: {results['works'][work]['per_transaction']:,} instructions per transaction")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    say(f"instructions: done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
