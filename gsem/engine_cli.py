"""``gsem init`` and ``gsem serve``: a data directory, and the hub serving from it."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from gsem.config import CONFIG_NAME, load_config, render_config
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
    from twisted.internet.defer import Deferred
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from gsem.server import Engine

    config = load_config(args.data_dir)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    engine = Engine(config, reactor, port=args.port)
    status = {"code": 0}

    async def start() -> None:
        port = await engine.start()
        host = port.getHost()
        print(f"gsem: serving https://{host.host}:{host.port}/sis/v1/transactions "
              f"(data {config.data_dir})", file=sys.stderr, flush=True)

    def failed(failure):  # noqa: ANN001, ANN202
        if failure.check(GsemError):
            print(f"gsem: {failure.value}", file=sys.stderr)
        else:
            print(f"gsem: could not start: {failure.getErrorMessage()}", file=sys.stderr)
        status["code"] = 2
        reactor.stop()

    def shutdown() -> Deferred:
        return Deferred.fromCoroutine(engine.stop())

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()).addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()
    return status["code"]
