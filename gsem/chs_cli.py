"""``gsem chs``: the reference CHS client on the command line (docs/chs-client.md).

``send`` a transaction (a file, or built from options), ``pull`` the mailbox, ``receive``
pushed documents, and show the ``incidents`` as this partner sees them.  Connection
settings come from options (``--hub --cert --key --ca``) or from a hub's demo data
directory (``--data-dir DIR --partner ID``); each run is a short-lived Twisted reactor.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import textwrap
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gsem.cli import report_error
from gsem.errors import ConfigError, GsemError

__all__ = ["register", "DEFAULT_STATE"]

#: The local incident store used when ``--state`` is not given.
DEFAULT_STATE = "gsem-chs.sqlite"
_STATE_ENV = "GSEM_CHS_STATE"


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``chs`` and its sub-commands."""
    chs = commands.add_parser(
        "chs",
        help="the reference CHS client: send transactions, pull or receive deliveries",
        description="A partner's side of the exchange: send SIS transactions to a gsem hub over "
        "mutual TLS, pull the partner's mailbox or receive pushed documents, and keep a local "
        "view of the partner's incidents. See docs/chs-client.md.",
        epilog="Run 'gsem chs COMMAND --help' for a command's options.",
    )
    sub = chs.add_subparsers(dest="chs_command", metavar="COMMAND")
    sub.required = True

    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group(
        "connection to the hub",
        "Either --hub, --cert, --key and --ca, or --partner with a hub's demo data directory "
        "(--data-dir here or before 'chs'), which provides certs/partners/ID-cert.pem, "
        "ID-key.pem, certs/ca-cert.pem and, from gsem.toml, the URL. Options given override it.")
    group.add_argument("--hub", metavar="URL", help="the hub, https://HOST:PORT (a URL ending in "
                       "/sis/v1/transactions is fine too)")
    group.add_argument("--partner", metavar="ID", help="take certificates for partner ID from the data directory")
    group.add_argument("--data-dir", dest="chs_data_dir", type=Path, metavar="DIR",
                       help="a hub data directory made by 'gsem init --demo'")
    group.add_argument("--cert", type=Path, metavar="FILE", help="our client certificate (PEM)")
    group.add_argument("--key", type=Path, metavar="FILE", help="its private key (PEM)")
    group.add_argument("--ca", type=Path, metavar="FILE", help="the CA the hub's server certificate must chain to (PEM)")
    group.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds per attempt (default 30)")
    group.add_argument("--retries", type=int, default=3, metavar="N",
                       help="attempts after the first when the hub cannot be reached or answers 503 "
                       "(default 3; every attempt carries the same Idempotency-Key)")

    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state", type=Path, default=None, metavar="FILE",
                       help=f"the local incident store, an SQLite file (default: ${_STATE_ENV}, "
                       f"else ./{DEFAULT_STATE})")

    send = sub.add_parser(
        "send", parents=[connection, state],
        help="send one transaction and print the hub's acknowledgement",
        description=textwrap.fill(
            "Send one SERVICE_INCIDENT: a file (FILE, or - for standard input) or one built "
            "from --transaction and the field options, checked locally first. Prints the hub's "
            "ACKNOWLEDGEMENT on standard output and a summary on standard error. Exit status: "
            "0 Acknowledge=Yes, 1 Acknowledge=No, 2 anything else (bad options, hub unreachable).", 78),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  gsem --data-dir demo chs send --partner ACME 01-service-request.xml\n"
        "  gsem chs send --data-dir demo --partner ACME --hub https://127.0.0.1:8443 \\\n"
        "      --transaction Service_Request --requester-id INC-1 --contract-id C-100 \\\n"
        "      --last-name Natarajan --phone '+44 20 7946 0321' --comment 'Gateway down'\n"
        "  gsem chs send --partner GLOBEX --transaction Entitlement --requester-id INC-1 \\\n"
        "      --provider-id GX-1 --entitled Yes --priority 2 --response-time '2026-11-22 10:00' \\\n"
        "      --last-name Okafor --phone '+1 555 0100'",
    )
    send.add_argument("file", nargs="?", metavar="FILE", help="a SERVICE_INCIDENT document to send as it is")
    send.add_argument("--idempotency-key", metavar="KEY",
                      help="sent as Idempotency-Key (default: none, the hub keys by the body's digest)")
    send.add_argument("--dry-run", action="store_true",
                      help="with --transaction: print the document built and exit without sending")
    fields = send.add_argument_group(
        "building a transaction",
        "Only the elements the transaction's matrix uses may be given ('gsem contract' shows them); "
        "the document is checked locally before it is sent.")
    fields.add_argument("--transaction", metavar="NAME", help="e.g. Service_Request, Entitlement, Confirm_Close")
    fields.add_argument("--role", choices=("requester", "provider"),
                        help="for Provide_Problem_Information/Query_Incident: which side sends it")
    fields.add_argument("--requester-id", metavar="ID")
    fields.add_argument("--provider-id", metavar="ID")
    fields.add_argument("--comment")
    fields.add_argument("--action-log", metavar="TEXT", help="ACTIVITY/ActionLog (default: the transaction's name)")
    fields.add_argument("--local-date", metavar="DATE", help="ACTIVITY/LocalDate, 'YYYY-MM-DD hh:mm[:ss]' UTC "
                        "(default: now)")
    fields.add_argument("--severity", type=int, choices=range(1, 6), metavar="1-5", help="RequesterSeverity")
    fields.add_argument("--priority", type=int, choices=range(1, 6), metavar="1-5", help="ProviderPriority")
    fields.add_argument("--response-time", metavar="DATE", help="ResponseTime, 'YYYY-MM-DD hh:mm[:ss]' UTC")
    fields.add_argument("--entitled", choices=("Yes", "No"))
    fields.add_argument("--contract-id", metavar="ID", help="AGREEMENT/ContractID")
    fields.add_argument("--agreement-type", metavar="TEXT", help="AGREEMENT/AgreementType")
    fields.add_argument("--first-name", help="the contact (SERVICE_REQUESTER or SERVICE_PROVIDER)")
    fields.add_argument("--last-name")
    fields.add_argument("--phone", help="the contact's Primary_Voice number")
    fields.add_argument("--email")
    fields.add_argument("--problem-title", metavar="TEXT", help="PROBLEM STATEMENT with role Title")
    fields.add_argument("--statement", action="append", default=[], metavar="[ROLE=]TEXT",
                        help="a PROBLEM STATEMENT (role Description by default); repeatable")
    fields.add_argument("--solution-title", metavar="TEXT")
    fields.add_argument("--solution-abstract", metavar="TEXT")
    fields.add_argument("--solution-statement", action="append", default=[], metavar="[ROLE=]TEXT",
                        help="a SOLUTION STATEMENT (role Fix by default); repeatable")
    fields.add_argument("--attach", action="append", default=[], metavar="FILE[=FORMAT]",
                        help="attach a file (format guessed from its name); repeatable")
    send.set_defaults(func=_send)

    pull = sub.add_parser(
        "pull", parents=[connection, state],
        help="take documents from our mailbox on the hub and acknowledge them",
        description="Poll the hub's pull mailbox (GET /sis/v1/mailbox/next), take each document "
        "(checked, recorded in the local store, deduplicated by delivery id) and acknowledge it. "
        "Prints one line per document; stops on Ctrl-C with a summary, or with --once when the "
        "mailbox is empty. Exit status 0, or 1 when a document could not be acknowledged.",
    )
    pull.add_argument("--once", action="store_true", help="empty the mailbox once and exit")
    pull.add_argument("--interval", type=float, default=5.0, metavar="S",
                      help="seconds between polls (default 5)")
    pull.set_defaults(func=_pull)

    receive = sub.add_parser(
        "receive", parents=[state],
        help="serve HTTPS for the hub's push deliveries",
        description="Listen for documents the hub pushes (SPEC §7 push mode): mutual TLS with our "
        "server certificate, accepting only client certificates issued by the hub's CA. Each "
        "document is checked, recorded (deduplicated by its Gsem-Delivery-Id) and acknowledged. "
        "One line per document; Ctrl-C stops with a summary.",
    )
    receive.add_argument("--port", type=int, required=True, metavar="N", help="port to listen on (0: any free port)")
    receive.add_argument("--interface", default="127.0.0.1", metavar="ADDRESS", help="address to listen on (default 127.0.0.1)")
    receive.add_argument("--server-cert", type=Path, required=True, metavar="FILE", help="our server certificate (PEM)")
    receive.add_argument("--server-key", type=Path, required=True, metavar="FILE", help="its private key (PEM)")
    receive.add_argument("--hub-ca", type=Path, required=True, metavar="FILE",
                         help="the CA that issued the hub's client certificate (PEM)")
    receive.add_argument("--hub-fingerprint", metavar="SHA256",
                         help="accept only the client certificate with this SHA-256 fingerprint")
    receive.set_defaults(func=_receive)

    incidents = sub.add_parser(
        "incidents", parents=[state],
        help="show our incidents as the local store sees them",
        description="List the incidents of the local store (state, provider id, last transaction), "
        "or one incident's history of transactions sent and received.",
    )
    incidents.add_argument("requester_id", nargs="?", metavar="REQUESTER_ID", help="show this incident's history")
    incidents.add_argument("--format", choices=("table", "json"), default="table")
    incidents.set_defaults(func=_incidents)


# -- shared ------------------------------------------------------------------------------


def _state_path(args: argparse.Namespace) -> Path:
    return args.state or Path(os.environ.get(_STATE_ENV) or DEFAULT_STATE)


def _connection(args: argparse.Namespace) -> tuple[str, Path, Path, Path]:
    """(URL, cert, key, CA) from the options and, with --partner, the data directory."""
    problems: list[str] = []
    url, cert, key, ca = args.hub, args.cert, args.key, args.ca
    if args.partner:
        from gsem.config import load_config

        data_dir: Path = args.chs_data_dir or args.data_dir
        certs = data_dir / "certs"
        cert = cert or certs / "partners" / f"{args.partner}-cert.pem"
        key = key or certs / "partners" / f"{args.partner}-key.pem"
        ca = ca or certs / "ca-cert.pem"
        if url is None:
            try:
                config = load_config(data_dir)
            except ConfigError as e:
                problems.extend(e.problems)
            else:
                if config.port == 0:
                    problems.append(f"{data_dir}: the hub serves on any free port (port 0); give --hub URL")
                else:
                    url = f"https://{config.host}:{config.port}"
    for value, option in ((url, "--hub"), (cert, "--cert"), (key, "--key"), (ca, "--ca")):
        if value is None:
            problems.append(f"{option} is needed (or --partner ID with a hub data directory)")
    for path in (cert, key, ca):
        if path is not None and not Path(path).is_file():
            problems.append(f"{path}: no such file")
    if problems:
        raise ConfigError(problems)
    return url, Path(cert), Path(key), Path(ca)


def _client(args: argparse.Namespace, reactor: Any) -> Any:
    from dataclasses import replace

    from gsem.chs.client import DEFAULT_RETRY, HubClient

    url, cert, key, ca = _connection(args)
    retry = replace(DEFAULT_RETRY, max_attempts=max(args.retries, 0) + 1)
    return HubClient(url, cert=cert, key=key, ca=ca, reactor=reactor, timeout=args.timeout, retry=retry)


def _say(message: str) -> None:
    print(f"gsem chs: {message}", file=sys.stderr, flush=True)


Command = Callable[[Any, Any], Coroutine[Any, Any, int]]


def _run(command: Command, *, long_running: bool = False) -> int:
    """Run *command(reactor, stopping)* under the global reactor; its exit status.

    *stopping* fires on Ctrl-C/SIGTERM.  A *long_running* command is waited for so it can
    finish cleanly (print its summary); any other is cancelled (exit 130).
    """
    from twisted.internet import reactor
    from twisted.internet.defer import CancelledError, Deferred
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Warnings and errors (e.g. a failed poll) on standard error; not Twisted's chatter.
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False)
    stopping: Deferred = Deferred()
    status = {"code": 2, "finished": False, "shutting_down": False}
    running: dict[str, Deferred] = {}

    async def guarded() -> int:
        try:
            return await command(reactor, stopping)
        except GsemError as e:
            return report_error(e)
        except CancelledError:
            return 130

    def finished(code: Any) -> None:
        status["code"] = code if isinstance(code, int) else 2
        status["finished"] = True
        if not status["shutting_down"]:
            reactor.stop()

    def start() -> None:
        d = Deferred.fromCoroutine(guarded())
        running["d"] = d
        d.addCallback(finished)
        d.addErrback(lambda f: (f.printTraceback(file=sys.stderr), finished(2)))

    def before_shutdown() -> Deferred | None:
        status["shutting_down"] = True
        if status["finished"]:
            return None
        stopping.callback(None)
        if long_running:
            return running["d"]
        running["d"].cancel()
        return None

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    reactor.run()
    return int(status["code"])


# -- send --------------------------------------------------------------------------------


def _split_statement(text: str) -> tuple[str, str] | str:
    role, sep, rest = text.partition("=")
    if sep and role and role.replace("_", "").isalpha() and role[0].isupper():
        return role, rest
    return text


#: The builder's argument names as this command spells them, for its error messages.
_OPTION_OF = {
    "person": "--first-name/--last-name/--phone/--email",
    "problem_title / problem_statements": "--problem-title/--statement",
    "solution": "--solution-title/--solution-abstract/--solution-statement",
    "attachments": "--attach",
    "activity": "--local-date/--action-log",
}


def _built_document(args: argparse.Namespace) -> bytes:
    from gsem.chs.builder import TransactionBuildError, build_transaction

    if not args.requester_id:
        raise ConfigError(["--transaction needs --requester-id"])
    person = None
    if any((args.first_name, args.last_name, args.phone, args.email)):
        person = (args.first_name, args.last_name, args.phone, args.email)
    solution = None
    if args.solution_title or args.solution_abstract or args.solution_statement:
        solution = (args.solution_title or "", args.solution_abstract or "",
                    [_split_statement(s) for s in args.solution_statement])
    attachments = []
    for spec in args.attach:
        name, _, media_type = spec.partition("=")
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise GsemError(f"{path}: cannot read the attachment: {e.strerror or e}") from None
        attachments.append((path.name, media_type or mimetypes.guess_type(path.name)[0]
                            or "application/octet-stream", data))
    activity = None
    if args.action_log or args.local_date:
        activity = (args.local_date, args.action_log or args.transaction)
    try:
        return _build(build_transaction, args, activity, person, solution, attachments)
    except TransactionBuildError as e:
        problems = []
        for problem in e.problems:
            for argument, option in _OPTION_OF.items():
                problem = problem.replace(f"(argument {argument})", f"(option {option})")
            if "(argument " in problem:
                head, _, tail = problem.partition("(argument ")
                problem = f"{head}(option --{tail.replace('_', '-')}"
            problems.append(problem)
        raise GsemError(f"cannot build {e.transaction_name}:" + "".join(f"\n  - {p}" for p in problems)) from None


def _build(build_transaction: Any, args: argparse.Namespace, activity: Any, person: Any, solution: Any,
           attachments: list[Any]) -> bytes:
    return build_transaction(
        args.transaction, requester_id=args.requester_id, provider_id=args.provider_id, comment=args.comment,
        activity=activity, severity=args.severity, priority=args.priority, response_time=args.response_time,
        entitled=args.entitled, contract_id=args.contract_id, agreement_type=args.agreement_type, person=person,
        problem_title=args.problem_title, problem_statements=[_split_statement(s) for s in args.statement],
        solution=solution, attachments=attachments, role=args.role,
    )


def _send(args: argparse.Namespace) -> int:
    building = args.transaction is not None
    if building == (args.file is not None):
        raise ConfigError(["give either FILE or --transaction NAME (with its fields), not both or neither"])
    if building:
        document = _built_document(args)
        if args.dry_run:
            sys.stdout.buffer.write(document)
            return 0
    else:
        if args.dry_run:
            raise ConfigError(["--dry-run needs --transaction"])
        try:
            document = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        except OSError as e:
            raise GsemError(f"{args.file}: cannot read: {e.strerror or e}") from None
    _connection(args)  # report option problems before starting anything

    async def command(reactor: Any, stopping: Any) -> int:
        from gsem.chs.state import LocalIncidents

        client = _client(args, reactor)
        try:
            answer = await client.send(document, idempotency_key=args.idempotency_key)
        finally:
            await client.close()
        with LocalIncidents(_state_path(args)) as store:
            store.record_sent(document, answer)
        sys.stdout.buffer.write(answer.document)
        sys.stdout.flush()
        verdict = "Acknowledge=Yes" if answer.accepted else "Acknowledge=No"
        details = [f"HTTP {answer.http_status}", f"AckID {answer.ack_id or '-'}"]
        if answer.current_state:
            details.append(f"state {answer.current_state}")
        if answer.provider_id:
            details.append(f"ProviderID {answer.provider_id}")
        if answer.duplicate:
            details.append("duplicate: the hub had it already, nothing changed")
        _say(f"{verdict}: {answer.transaction_name or '?'} {answer.requester_id or '?'} ({', '.join(details)})")
        for code, path, message in answer.errors:
            _say(f"  ERROR {code} {path or ''}: {message}")
        return 0 if answer.accepted else 1

    return _run(command)


# -- pull and receive --------------------------------------------------------------------


class _Tally:
    """Counts receipts and prints one line per receipt."""

    def __init__(self) -> None:
        self.taken = self.duplicates = self.refused = self.failed = 0

    def __call__(self, receipt: Any) -> None:
        print(receipt.line(), flush=True)
        if receipt.ack is None or receipt.failure is not None:
            self.failed += 1
        elif receipt.duplicate:
            self.duplicates += 1
        elif receipt.acknowledged:
            self.taken += 1
        else:
            self.refused += 1

    def summary(self) -> str:
        return (f"{self.taken} taken, {self.duplicates} seen before (acknowledged again), "
                f"{self.refused} refused (Acknowledge=No), {self.failed} not acknowledged")


def _pull(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise ConfigError(["--interval must be positive"])
    _connection(args)

    async def command(reactor: Any, stopping: Any) -> int:
        from gsem.chs.receiver import PullLoop
        from gsem.chs.state import LocalIncidents

        tally = _Tally()
        client = _client(args, reactor)
        store = LocalIncidents(_state_path(args))
        loop = PullLoop(client, store, clock=reactor, interval=args.interval, on_receipt=tally)
        try:
            if args.once:
                await loop.poll_once()
            else:
                _say(f"polling {client.base_url} every {args.interval:g} s (state {store.path}); Ctrl-C stops")
                loop.start()
                await stopping
                loop.stop()
        finally:
            await client.close()
            store.close()
        _say(tally.summary())
        return 1 if tally.failed else 0

    return _run(command, long_running=not args.once)


def _receive(args: argparse.Namespace) -> int:
    async def command(reactor: Any, stopping: Any) -> int:
        from gsem.chs.receiver import PushReceiver
        from gsem.chs.state import LocalIncidents

        tally = _Tally()
        store = LocalIncidents(_state_path(args))
        try:
            receiver = PushReceiver(store, port=args.port, server_cert=args.server_cert,
                                    server_key=args.server_key, hub_ca=args.hub_ca, reactor=reactor,
                                    interface=args.interface, hub_fingerprint=args.hub_fingerprint,
                                    on_receipt=tally)
            try:
                port = await receiver.start()
            except OSError as e:
                raise GsemError(f"cannot listen on {args.interface}:{args.port}: {e}") from None
            host = port.getHost()
            _say(f"receiving pushed documents on https://{host.host}:{host.port}/ "
                 f"(state {store.path}); Ctrl-C stops")
            await stopping
            await receiver.stop()
        finally:
            store.close()
        _say(tally.summary())
        return 0

    return _run(command, long_running=True)


# -- incidents ---------------------------------------------------------------------------


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def _incidents(args: argparse.Namespace) -> int:
    from gsem.chs.state import LocalIncidents

    path = _state_path(args)
    if not path.exists():
        raise GsemError(f"{path}: no local incident store yet (it is made by 'gsem chs send', "
                        "'pull' or 'receive'; see --state)")
    with LocalIncidents(path) as store:
        if args.requester_id is None:
            incidents = store.incidents()
            if args.format == "json":
                print(json.dumps([asdict(i) for i in incidents], indent=2))
            elif not incidents:
                print("no incidents")
            else:
                print(_table([[i.requester_id, i.provider_id or "-", i.role or "-", i.state or "-",
                               i.last_transaction or "-", i.updated_at] for i in incidents],
                             ["REQUESTER_ID", "PROVIDER_ID", "OUR_ROLE", "STATE", "LAST_TRANSACTION", "UPDATED"]))
            return 0
        incident = store.get(args.requester_id)
        history = store.history(args.requester_id)
        if incident is None and not history:
            raise GsemError(f"no incident {args.requester_id!r} in {path}")
        if args.format == "json":
            print(json.dumps({"incident": asdict(incident) if incident else None,
                              "history": [asdict(h) for h in history]}, indent=2))
            return 0
        if incident is not None:
            print(f"{incident.requester_id}: {incident.state or '-'} (ProviderID {incident.provider_id or '-'}, "
                  f"we are the {incident.role or '?'})")
        print(_table([[h.at, h.direction, h.transaction_name or "?", "Yes" if h.acknowledged else "No",
                       h.state or "-", str(h.delivery_id or h.ack_id or "-"), h.note or ""] for h in history],
                     ["AT", "DIRECTION", "TRANSACTION", "ACK", "STATE", "DELIVERY/ACK_ID", "NOTE"]))
    return 0
