"""How long gsem takes to validate one ~2 KB Service_Request on one core, and where the time goes.

Not a test: run it as ``.venv/bin/python bench/validate_speed.py [-n ITERATIONS]``.

Each stage adds work to the one before, so the differences show what each costs:

1. lxml parse: ``etree.fromstring`` with a parser set up like gsem's (the floor);
2. lxml parse + schema: that plus libxml2's ``XMLSchema.validate`` (the STYLE.md hot path);
3. gsem hardened parse: ``gsem.xmlsafe.parse_document`` (size, encoding, DOCTYPE, entity,
   element-count and depth checks around the parse);
4. gsem validate_document: the whole contract (parse, prune, cardinalities, schema,
   matrix, rules, state) as ``gsem validate`` runs it;
5. gsem inspect + precheck: validation as the hub runs it for every inbound document
   before its database transaction (the same work but the state check);
6. hub before the store: everything ``Exchange.receive`` does before the database
   transaction, per document, over the nine documents of ``tests/fixtures/lifecycle``;
7. acknowledgement log line: ``AckLog.write`` of one accepted transaction's line, to
   ``/dev/null``;
8. HTTP answer: ``gsem.web.answer`` of an acknowledgement to a POST that Twisted's web
   server parsed from an in-memory transport (only the answer is timed; TLS is not in it).

``--stages 6,7`` runs only some of them.

On a shared machine, ``--cpu`` pins to a core other than the first and ``--clock thread``
times the CPU this thread used rather than the wall clock, which other processes on the
same core inflate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

# Runnable from a checkout without installing: the package sits next to bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lxml import etree  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import NOT_DONE_YET, Request  # noqa: E402

from gsem.ack import Acknowledgement  # noqa: E402
from gsem.acklog import AckLog  # noqa: E402
from gsem.contract import Role  # noqa: E402
from gsem.exchange import Inbound, Outcome, prepare_inbound  # noqa: E402
from gsem.schema import incident_schema  # noqa: E402
from gsem.validation import DocumentValidator, validate_document  # noqa: E402
from gsem.web import answer, listener_site  # noqa: E402
from gsem.xmlsafe import parse_document  # noqa: E402

DOCUMENT = b"""\
<?xml version="1.0" encoding="UTF-8"?>
<SERVICE_INCIDENT>
  <TransactionName>Service_Request</TransactionName>
  <RequesterID>ACME-INC-20931</RequesterID>
  <RequesterSeverity>2</RequesterSeverity>
  <Comment>Settlement file for 21 Nov rejected by the market gateway</Comment>
  <ACTIVITY>
    <LocalDate>2026-11-22 08:02:11,2026-11-22 09:02:11</LocalDate>
    <ActionLog>Raised by the ACME service desk</ActionLog>
  </ACTIVITY>
  <AGREEMENT>
    <ContractID>C-100;CN=C-100</ContractID>
    <AgreementType>Premium 24x7;SN=GW-4471;LN=SD-88120</AgreementType>
  </AGREEMENT>
  <SERVICE_REQUESTER>
    <PERSON>
      <FirstName>Priya</FirstName>
      <LastName>Natarajan</LastName>
      <LOCATION><LocationType>Primary_Voice</LocationType><LocationID>+44 20 7946 0321</LocationID></LOCATION>
      <LOCATION><LocationType>Email</LocationType><LocationID>p.natarajan@acme.example</LocationID></LOCATION>
    </PERSON>
    <ORGANIZATION><Name>ACME Water Retail</Name></ORGANIZATION>
    <ADDRESS>
      <AddressType>Primary</AddressType><Address1>1 Quay Street</Address1>
      <City>Bristol</City><PostalCode>BS1 4DJ</PostalCode><Country>GB</Country>
    </ADDRESS>
  </SERVICE_REQUESTER>
  <PROBLEM>
    <STATEMENT><StatementRole>Title</StatementRole><Text>Settlement file rejected with code E117</Text></STATEMENT>
    <STATEMENT><StatementRole>Symptom</StatementRole><Text>Upload of SETTLE-20261121.csv returns E117 (duplicate header)</Text></STATEMENT>
    <STATEMENT><StatementRole>Changes</StatementRole><Text>Gateway upgraded to 4.2 on 20 Nov</Text></STATEMENT>
    <PRODUCT><Vendor>Globex</Vendor><ProductName>Market Gateway</ProductName><Version>4.2</Version></PRODUCT>
  </PROBLEM>
  <ATTACHMENT>
    <AttachmentName>upload.log</AttachmentName>
    <Format>text/plain</Format>
    <AttachmentObject>MjAyNi0xMS0yMSAyMzo1OTowMSBFMTE3IGR1cGxpY2F0ZSBoZWFkZXIK</AttachmentObject>
  </ATTACHMENT>
</SERVICE_INCIDENT>
"""


LIFECYCLE = sorted((Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lifecycle").glob("*.xml"))
#: Who sends each lifecycle document (tests/fixtures/lifecycle/README.md).
SENDERS = ("ACME", "GLOBEX", "ACME", "GLOBEX", "GLOBEX", "ACME", "GLOBEX", "ACME", "ACME")


def _lifecycle_inbounds() -> list[Inbound]:
    received = datetime(2026, 11, 22, 8, 3, 42)
    return [Inbound(partner_id=partner, fingerprint="f" * 64, body=path.read_bytes(), received_at=received)
            for path, partner in zip(LIFECYCLE, SENDERS, strict=True)]


def _before_store(validator: DocumentValidator, inbound: Inbound) -> object:
    """What ``Exchange.receive`` does with *inbound* before its database transaction."""
    timings = {"read_ms": round(inbound.read_ms, 3)}
    started = time.perf_counter()
    prepared = prepare_inbound(validator, inbound)
    timings["validate_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return prepared


def _ack_log_line(log: AckLog, inbound: Inbound) -> None:
    outcome = Outcome(200, b"", {
        "result": "Yes", "transaction": "Entitlement", "requester_id": "ACME-INC-20931", "provider_id": "GX-55012",
        "state": "Entitled", "errors": [], "ack_id": "01JD0000000000000000000000"})
    log.write(inbound, outcome, {"read_ms": 0.012, "validate_ms": 0.21, "decide_ms": 0.15, "total_ms": 1.234})


class _Held(Resource):
    """Keeps each POST open, as InboundTransactionResource does until its transaction commits."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render_POST(self, request: Request) -> object:  # noqa: N802 - Twisted's name
        self.held.append(request)
        return NOT_DONE_YET


def _answer_stage(iterations: int, clock: Callable[[], int], inbound: Inbound) -> list[float]:
    """Time ``answer`` alone, each time on a request the channel has just parsed."""
    held = _Held()
    channel = listener_site(held, max_body_bytes=1 << 20, idle_timeout=60).buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    post = (b"POST /sis/v1/transactions HTTP/1.1\r\nHost: hub\r\nContent-Type: application/xml\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(inbound.body), inbound.body))
    outcome = Outcome(200, _ACK, {})
    timings = []
    for _ in range(iterations):
        channel.dataReceived(post)
        request = held.held.pop()
        start = clock()
        _respond(request, outcome)
        timings.append((clock() - start) / 1000)
        transport.clear()
    channel.connectionLost(None)
    return timings


def _respond(request: Request, outcome: Outcome) -> None:
    answer(request, outcome)


_ACK = Acknowledgement(ack_id="01JD0000000000000000000000", received_at=datetime(2026, 11, 22, 8, 3, 42),
                       digest="0" * 64, transaction_name="Entitlement", requester_ref="ACME-INC-20931",
                       provider_ref="GX-55012", current_state="Entitled").to_bytes()


def _pin_to_one_core(core: int | None) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    core = min(os.sched_getaffinity(0)) if core is None else core
    os.sched_setaffinity(0, {core})
    return f"pinned to CPU {core}"


def _measure(work: Callable[[], object], warmup: int, iterations: int, clock: Callable[[], int]) -> list[float]:
    for _ in range(warmup):
        work()
    timings = []
    for _ in range(iterations):
        start = clock()
        work()
        timings.append((clock() - start) / 1000)
    return timings


def _report(name: str, timings: list[float]) -> None:
    timings = sorted(timings)
    mean = statistics.fmean(timings)
    p50 = timings[len(timings) // 2]
    p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
    print(f"{name:<28} {mean:9.1f} {p50:9.1f} {p99:9.1f} {1e6 / mean:12,.0f}")


def main() -> int:
    """Measure each stage and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-n", "--iterations", type=int, default=5000, help="timed documents per stage"
    )
    parser.add_argument("--warmup", type=int, default=500, help="untimed documents per stage first")
    parser.add_argument("--cpu", type=int, help="the core to pin to (default: the first one allowed)")
    parser.add_argument(
        "--clock", choices=("wall", "thread"), default="wall",
        help="wall: elapsed time (default); thread: this thread's CPU time, for a busy machine",
    )
    parser.add_argument("--stages", help="the stages to run, by number: 6,7 (default: all)")
    args = parser.parse_args()
    clock = time.perf_counter_ns if args.clock == "wall" else time.thread_time_ns

    # Check the document is what we claim before timing anything.
    inspection, spec = validate_document(DOCUMENT, role=Role.REQUESTER, state=None)
    if inspection.errors or inspection.warnings or spec is None:
        print(
            f"the benchmark document is not clean: {inspection.errors + inspection.warnings}",
            file=sys.stderr,
        )
        return 1

    lxml_parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )
    schema = incident_schema()
    validator = DocumentValidator()

    stages: list[tuple[str, Callable[[], object]]] = [
        ("lxml parse", lambda: etree.fromstring(DOCUMENT, lxml_parser)),
        ("lxml parse + schema", lambda: schema.validate(etree.fromstring(DOCUMENT, lxml_parser))),
        ("gsem hardened parse", lambda: parse_document(DOCUMENT)),
        (
            "gsem validate_document",
            lambda: validate_document(
                DOCUMENT, role=Role.REQUESTER, state=None, validator=validator
            ),
        ),
        ("gsem inspect + precheck", lambda: validator.precheck_matrix(validator.inspect(DOCUMENT))),
    ]
    inbounds = _lifecycle_inbounds()
    cycle = iter(range(1 << 62))
    stages.append(("hub before the store", lambda: _before_store(validator, inbounds[next(cycle) % len(inbounds)])))
    null = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole run
    ack_log = AckLog(null, {"worker": 1})
    stages.append(("acknowledgement log line", lambda: _ack_log_line(ack_log, inbounds[1])))
    stages.append(("HTTP answer", lambda: None))  # timed by _answer_stage
    wanted = {int(number) for number in args.stages.split(",")} if args.stages else set(range(1, len(stages) + 1))
    stages = [stage for number, stage in enumerate(stages, 1) if number in wanted]

    print(f"document: {len(DOCUMENT)} bytes, Service_Request; {_pin_to_one_core(args.cpu)}; {args.clock} clock")
    print(
        f"Python {sys.version.split()[0]}, lxml {etree.__version__}, libxml2 "
        f"{'.'.join(map(str, etree.LIBXML_VERSION))}; {args.warmup} warm-up, {args.iterations} timed per stage"
    )
    print()
    print(f"{'stage':<28} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9} {'documents/s':>12}")
    for name, work in stages:
        if name == "HTTP answer":
            _answer_stage(args.warmup, clock, inbounds[1])
            _report(name, _answer_stage(args.iterations, clock, inbounds[1]))
        else:
            _report(name, _measure(work, args.warmup, args.iterations, clock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
