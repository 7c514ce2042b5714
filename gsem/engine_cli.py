"""``gsem init`` and ``gsem serve``: a data directory, and the hub serving from it."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gsem.collector import Collector, settle_wanted
from gsem.config import CONFIG_NAME, Config, load_config, render_config
from gsem.errors import GsemError

__all__ = ["register", "DEMO_PARTNERS", "DEMO_CONTRACT"]

#: The demo's partners: ACME raises calls, GLOBEX fixes them (SPEC examples/).
DEMO_PARTNERS = (("ACME", "ACME Water Retail"), ("GLOBEX", "Globex Market Gateway"))
DEMO_CONTRACT = "C-100"


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``init`` and ``serve``."""
    init = commands.add_parser(
        "init",
        help="create a data directory: configuration, database, development certificates",
        description="Create DIR with gsem.toml, a migrated SQLite database and a development PKI "
        "(a CA, the hub's certificate and, with --demo, a client certificate per demo partner). "
        "Private keys stay in DIR/certs and must never be committed.",
    )
    init.add_argument("dir", type=Path, help="the data directory to create")
    init.add_argument("--demo", action="store_true",
                      help="also register partners ACME (requester) and GLOBEX (provider) and an "
                      f"agreement for contract {DEMO_CONTRACT}")
    init.add_argument("--port", type=int, default=8443, help="the port to serve on (default 8443)")
    init.add_argument("--database-url", default="sqlite:///gsem.db",
                      help="where to store (default: SQLite file gsem.db in DIR)")
    init.set_defaults(func=_init)

    serve = commands.add_parser(
        "serve",
        help="serve the hub from a data directory",
        description="Serve POST /sis/v1/transactions over mutual TLS. Prints one JSON line per "
        "acknowledgement on standard output; diagnostics go to standard error.",
    )
    serve.add_argument("--port", type=int, default=None, help="override the configured port (0: any free port)")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes serving the port, each on its own core ([server] workers; default 1); "
                       "the first starts and supervises the others")
    # How the first process starts the others (gsem.workers); not for operators.
    serve.add_argument("--worker-socket", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-ready", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)


def _init(args: argparse.Namespace) -> int:
    from gsem.db import partners
    from gsem.db.connector import Database
    from gsem.pki import create_dev_pki

    target: Path = args.dir
    if (target / CONFIG_NAME).exists():
        raise GsemError(f"{target} is already a gsem data directory ({CONFIG_NAME} exists)")
    target.mkdir(parents=True, exist_ok=True)
    (target / CONFIG_NAME).write_text(render_config(port=args.port, database_url=args.database_url), "utf-8")
    ids = [pid for pid, _ in DEMO_PARTNERS] if args.demo else []
    pki = create_dev_pki(target / "certs", ids)
    config = load_config(target)
    database = Database(config.database_url)
    try:
        database.upgrade()
        if args.demo:
            def demo(conn):  # noqa: ANN001, ANN202
                for pid, name in DEMO_PARTNERS:
                    partners.add_partner(conn, pid, name)
                    partners.add_cert(conn, pid, pki.partner_cert(pid).read_bytes())
                partners.add_agreement(conn, "ACME", "GLOBEX", DEMO_CONTRACT)

            database.run_sync(demo)
    finally:
        database.engine.dispose()
    print(f"gsem: created {target}")
    print(f"  configuration  {target / CONFIG_NAME}")
    print(f"  database       {config.database_url}")
    print(f"  certificates   {target / 'certs'} (private keys: never commit them)")
    if args.demo:
        print(f"  partners       ACME and GLOBEX, agreement ACME -> GLOBEX for contract {DEMO_CONTRACT}")
    print(f"next: gsem --data-dir {target} serve")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, DeferredList
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from gsem import workers as multi
    from gsem.config import MAX_WORKERS
    from gsem.server import Engine

    config = load_config(args.data_dir)
    settle = settle_wanted()
    if args.worker_socket is not None:
        return _serve_worker(args, config, settle)
    count = config.workers if args.workers is None else args.workers
    if not 1 <= count <= MAX_WORKERS:
        raise GsemError(f"--workers must be 1-{MAX_WORKERS}, not {count}")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    port_number = config.port if args.port is None else args.port
    supervisor = None
    if count > 1:
        try:
            sock = multi.bind_listening_socket(config.host, port_number)
        except OSError as e:
            raise GsemError(f"cannot listen on {config.host}:{port_number}: {e.strerror}") from None
        argv = ["--data-dir", str(config.data_dir), "serve"]
        supervisor = multi.WorkerSupervisor(reactor, sock, count, argv)
        engine = Engine(config, reactor, port=port_number, listen_socket=sock, worker=1)
    else:
        engine = Engine(config, reactor, port=port_number)
    status = {"code": 0}
    collector = Collector()

    async def start() -> None:
        port = await engine.start()
        host = port.getHost()
        if supervisor is not None:
            # Announce only once every worker accepts: a partner's persistent connection
            # stays with the process that accepted it.
            await supervisor.start()
        collector.start(settle=settle)
        workers = f", {count} workers" if count > 1 else ""
        print(f"gsem: serving https://{host.host}:{host.port}/sis/v1/transactions "
              f"(data {config.data_dir}{workers})", file=sys.stderr, flush=True)

    def failed(failure):  # noqa: ANN001, ANN202
        if failure.check(GsemError):
            print(f"gsem: {failure.value}", file=sys.stderr)
        else:
            print(f"gsem: could not start: {failure.getErrorMessage()}", file=sys.stderr)
        status["code"] = 2
        reactor.stop()

    async def stop_all() -> None:
        stopping = [Deferred.fromCoroutine(engine.stop())]
        if supervisor is not None:
            stopping.append(supervisor.stop())
        try:
            await DeferredList(stopping)
        finally:
            collector.stop()  # logs what the garbage collector did

    def take_stop_signals() -> None:
        # Twisted installed its handlers when the reactor started (it needs its SIGCHLD
        # one for the workers); its SIGTERM and SIGINT ones stop the reactor again on a
        # second signal and log ReactorNotRunning. Replace those two. A SIGINT this
        # process was started ignoring (a background job of a script) stays ignored, as
        # Twisted leaves it.
        stop = _stop_once(reactor)
        signal.signal(signal.SIGTERM, stop)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, stop)

    reactor.callWhenRunning(take_stop_signals)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()).addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(stop_all()))
    reactor.run()
    return status["code"]


def _stop_once(reactor: Any) -> Callable[..., None]:
    """A signal handler that stops *reactor* on the first signal and ignores the others."""
    stopping: list[bool] = []

    def stop(*_: object) -> None:
        if not stopping:
            stopping.append(True)
            reactor.callFromThread(reactor.stop)

    return stop


def _serve_worker(args: argparse.Namespace, config: Config, settle: bool) -> int:
    """Worker 2…N of ``gsem serve --workers N``: serve the inherited socket (gsem.workers)."""
    import socket

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from gsem.server import Engine
    from gsem.workers import die_with_parent, report_ready

    die_with_parent(args.parent_pid)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    sock = socket.socket(fileno=args.worker_socket)
    engine = Engine(config, reactor, listen_socket=sock, worker=args.worker, deliver=False)
    status = {"code": 0}
    collector = Collector()

    def failed(failure):  # noqa: ANN001, ANN202
        print(f"gsem: worker {args.worker} could not start: {failure.getErrorMessage()}", file=sys.stderr)
        status["code"] = 2
        reactor.stop()

    async def start() -> None:
        await engine.start()
        collector.start(settle=settle)
        report_ready(args.worker_ready)

    async def stop() -> None:
        try:
            await engine.stop()
        finally:
            collector.stop()  # logs what the garbage collector did

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()).addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(stop()))
    # Once: a signal to the whole process group (systemd stopping the unit) and the
    # first process's SIGTERM may both arrive; Twisted's own handlers would stop the
    # stopped reactor again and log ReactorNotRunning tracebacks.
    # Ctrl-C in a terminal reaches every process of the group: the first process stops
    # the workers itself (SIGTERM), and a worker that stopped first would look to it like
    # one that died.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_once(reactor))
    reactor.run(installSignalHandlers=False)  # a worker starts no processes: no SIGCHLD
    return status["code"]
