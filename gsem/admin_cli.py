"""Operator commands: the database, partners and certificates, agreements, acks, incidents.

Every command opens the database named by the data directory's ``gsem.toml``, checks
that its schema is current (``gsem db upgrade`` fixes it), runs its queries with
:meth:`gsem.db.connector.Database.run_sync` (no reactor) and prints for people (tables
that fit in 100 columns) or, where it says so, for programs (JSON, CSV).  Times are UTC.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gsem.config import load_config
from gsem.contract import State
from gsem.db import acks as acks_db
from gsem.db import incidents_read
from gsem.db import partners as partners_db
from gsem.db.connector import Database
from gsem.errors import GsemError

__all__ = ["register", "parse_time", "render_table"]

#: How often ``gsem acks --follow`` asks the database for new acknowledgements.
FOLLOW_INTERVAL = 0.5
#: ``--follow`` re-reads this much of the recent past on every poll: acknowledgements are
#: committed in parallel (several threads or nodes), so one with an earlier id may become
#: visible after a later one; a set of ids already shown keeps them from printing twice.
FOLLOW_OVERLAP = dt.timedelta(seconds=30)
#: Tables are laid out for at least this many columns (more if the terminal is wider).
TABLE_WIDTH = 100

_sleep = time.sleep  # replaced in tests, which cannot wait for Ctrl-C


# -- small helpers -----------------------------------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """A time from the command line as naive UTC.

    Accepts ISO dates and times (``2026-11-22``, ``2026-11-22 09:14``,
    ``2026-11-22T09:14:03+01:00``; without an offset it is UTC) and ages relative to
    *now*: ``30s``, ``15m``, ``2h``, ``7d``, ``1w``.
    """
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return (now or _utcnow()) - dt.timedelta(**{_UNITS[unit]: amount})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use YYYY-MM-DD, 'YYYY-MM-DD hh:mm[:ss]' (UTC), "
            "ISO 8601 with an offset, or an age such as 15m, 2h, 7d"
        ) from None
    return partners_db.utc_naive(when)


def _fmt_time(when: dt.datetime | None, *, seconds: bool = True) -> str:
    if when is None:
        return ""
    return when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _fmt_date(when: dt.datetime | None) -> str:
    return "" if when is None else when.strftime("%Y-%m-%d")


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds") + "Z"


def _table_width() -> int:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return max(int(columns), TABLE_WIDTH)
    if sys.stdout.isatty():
        return max(os.get_terminal_size(sys.stdout.fileno()).columns, TABLE_WIDTH)
    return TABLE_WIDTH


@dataclass(frozen=True)
class Column:
    """A table column: its header, and how narrow it may become (``None``: never shrinks)."""

    header: str
    min_width: int | None = None


class TableLayout:
    """Column widths for a table that must fit *width* characters.

    Columns get their natural width (header or widest value); when the total is too wide,
    the widest shrinkable column loses a character at a time, down to its minimum, and
    values that no longer fit end with '…'.
    """

    GAP = "  "
    NARROW_GAP = " "

    def __init__(self, columns: Sequence[Column], rows: Iterable[Sequence[str]], *,
                 width: int, natural: Sequence[int] | None = None) -> None:
        self.columns = list(columns)
        widths = [len(c.header) for c in self.columns]
        if natural is not None:
            widths = [max(w, n) for w, n in zip(widths, natural, strict=True)]
        for row in rows:
            widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
        gaps = len(widths) - 1
        # Two spaces between columns read best; one space when that saves truncating.
        self.gap = self.GAP if sum(widths) + len(self.GAP) * gaps <= width else self.NARROW_GAP
        budget = width - len(self.gap) * gaps
        while sum(widths) > budget:
            candidates = [
                (widths[i] - (c.min_width or widths[i]), i)
                for i, c in enumerate(self.columns)
                if c.min_width is not None and widths[i] > c.min_width
            ]
            if not candidates:
                break
            _, i = max(candidates)
            widths[i] -= 1
        self.widths = widths

    @staticmethod
    def _cell(value: str, width: int) -> str:
        if len(value) > width:
            value = value[: max(width - 1, 0)] + "…"
        return value.ljust(width)

    def line(self, values: Sequence[str]) -> str:
        """One row (or the header) laid out, trailing blanks removed."""
        return self.gap.join(self._cell(v, w) for v, w in zip(values, self.widths, strict=True)).rstrip()

    def header(self) -> str:
        """The header line."""
        return self.line([c.header for c in self.columns])


def render_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *,
                 width: int | None = None) -> str:
    """A whole table as text (header and rows), fitted to *width* (default: the terminal, ≥100)."""
    layout = TableLayout(columns, rows, width=width or _table_width())
    return "\n".join([layout.header(), *(layout.line(r) for r in rows)])


@contextmanager
def _database(args: argparse.Namespace, *, check: bool = True) -> Iterator[Database]:
    config = load_config(args.data_dir)
    database = Database(config.database_url)
    try:
        if check:
            database.check_current(data_dir=args.data_dir)
        yield database
    finally:
        database.stop()


def _data_dir_parent() -> argparse.ArgumentParser:
    # Lets operators write the option after the sub-command too ("gsem acks --data-dir X").
    # SUPPRESS: when absent here, the value given before the sub-command (or its default)
    # stays.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                        help="the engine's data directory (default: $GSEM_DATA_DIR, else ./demo)")
    return parent


def _group(commands: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse._SubParsersAction:
    parser = commands.add_parser(name, **kwargs)
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    return sub


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- registration ------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``db``, ``partners``, ``agreements``, ``acks`` and ``incidents``."""
    common = [_data_dir_parent()]

    # gsem db
    db = _group(commands, "db", help="create or upgrade the database schema",
                description="The database schema: create or upgrade it, or show its revision. "
                "The server refuses to start on an out-of-date schema.")
    p = db.add_parser("upgrade", parents=common, help="create the tables or bring them up to date",
                      description="Apply every pending migration, in one transaction. Safe to "
                      "run again: an up-to-date database is left alone.")
    p.set_defaults(func=_db_upgrade)
    p = db.add_parser("current", parents=common, help="show the schema revision",
                      description="Print the database's schema revision and the newest this "
                      "gsem knows. Exits 1 when they differ.")
    p.set_defaults(func=_db_current)

    # gsem partners
    partners = _group(commands, "partners", help="register partners (CHSs) and their certificates",
                      description="Partners are the call-handling systems connected to the hub. "
                      "Each authenticates with client certificates registered here.")
    p = partners.add_parser("add", parents=common, help="register a partner",
                            description="Register a partner. It can connect once it has a "
                            "certificate ('gsem partners certs add').")
    p.add_argument("id", metavar="ID", help="the partner's id, e.g. ACME (letters, digits, . _ -)")
    p.add_argument("--name", required=True, help="its display name")
    p.add_argument("--delivery-mode", choices=partners_db.DELIVERY_MODES, default="pull",
                   help="how it receives messages (default: pull)")
    p.add_argument("--strict", action="store_true",
                   help="reject documents with unknown elements instead of warning")
    p.set_defaults(func=_partners_add)
    p = partners.add_parser("list", parents=common, help="list partners",
                            description="List every partner with its delivery mode and how many "
                            "of its certificates are valid now.")
    p.set_defaults(func=_partners_list)
    p = partners.add_parser("show", parents=common, help="show a partner, its certificates and agreements",
                            description="Show one partner with its certificates (full "
                            "fingerprints, validity, status) and its agreements.")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=_partners_show)
    p = partners.add_parser("disable", parents=common, help="refuse a partner's connections",
                            description="Refuse the partner's TLS connections from now on (the "
                            "running server notices within a second). Its history stays.")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=_partners_disable)
    p = partners.add_parser("enable", parents=common, help="accept a disabled partner again",
                            description="Undo 'gsem partners disable'.")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=_partners_enable)

    certs = partners.add_parser("certs", help="a partner's client certificates",
                                description="Client certificates identify partners by their "
                                "SHA-256 fingerprint. Register the new one before retiring the "
                                "old one to rotate without an outage.")
    certs.set_defaults(func=lambda args: _usage(certs))
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="COMMAND")
    p = certs_sub.add_parser("add", parents=common, help="register a client certificate",
                             description="Register a PEM client certificate for a partner. The "
                             "hub accepts it between --valid-from and --valid-until, by default "
                             "the certificate's own validity. Times are UTC; a date alone means "
                             "00:00 that day.")
    p.add_argument("id", metavar="ID", help="the partner")
    p.add_argument("cert", metavar="CERT.pem", type=Path, help="the certificate, PEM")
    p.add_argument("--valid-from", type=parse_time, metavar="DATE",
                   help="accept it from (default: its notBefore)")
    p.add_argument("--valid-until", type=parse_time, metavar="DATE",
                   help="accept it until (default: its notAfter)")
    p.set_defaults(func=_certs_add)
    p = certs_sub.add_parser("list", parents=common, help="list certificates and their expiry",
                             description="List certificates (of one partner, or all) with the "
                             "window in which the hub accepts them and their status: valid, "
                             "expired, not-yet-valid or retired. Fingerprints are shortened; "
                             "'gsem partners show ID' prints them whole.")
    p.add_argument("id", metavar="ID", nargs="?", help="only this partner's")
    p.set_defaults(func=_certs_list)
    p = certs_sub.add_parser("retire", parents=common, help="stop accepting a certificate",
                             description="Stop accepting a certificate from now on (the running "
                             "server notices within a second). FINGERPRINT is its SHA-256 in "
                             "hex, with or without colons, or a unique prefix of at least 8 "
                             "digits as 'gsem partners certs list' shows.")
    p.add_argument("fingerprint", metavar="FINGERPRINT")
    p.set_defaults(func=_certs_retire)

    # gsem agreements
    agreements = _group(commands, "agreements", help="which requester may pass calls to which provider",
                        description="An agreement lets a requester pass calls to a provider under "
                        "a contract id (AGREEMENT/ContractID). Without one, a Service_Request is "
                        "rejected with not-authorized.")
    p = agreements.add_parser("add", parents=common, help="add an agreement",
                              description="Let REQUESTER pass calls to PROVIDER under CONTRACT_ID "
                              "(the ContractID text before any ';TAG=value').")
    p.add_argument("requester", metavar="REQUESTER")
    p.add_argument("provider", metavar="PROVIDER")
    p.add_argument("contract_id", metavar="CONTRACT_ID")
    p.set_defaults(func=_agreements_add)
    p = agreements.add_parser("list", parents=common, help="list agreements",
                              description="List agreements, all or those a partner is party to.")
    p.add_argument("--partner", metavar="P", help="only agreements P is a party to")
    p.set_defaults(func=_agreements_list)

    # gsem acks
    p = commands.add_parser(
        "acks", parents=common, help="the acknowledgements the hub sent, newest first",
        description="List the acknowledgements the hub sent, newest first, filtered. Times "
        "are UTC: YYYY-MM-DD, 'YYYY-MM-DD hh:mm[:ss]', ISO 8601 with an offset, or an age "
        "such as 15m, 2h, 7d. --follow prints the latest ones oldest first, then every new "
        "one as it is committed, until Ctrl-C (with --format json: one JSON object per line).",
    )
    p.add_argument("--partner", metavar="P", help="sent to partner P")
    p.add_argument("--transaction", metavar="T", help="for transaction T, e.g. Service_Request")
    p.add_argument("--requester-id", metavar="R", help="about RequesterID R")
    p.add_argument("--result", type=str.capitalize, choices=["Yes", "No"], help="accepted or rejected")
    p.add_argument("--code", metavar="CODE", help="carrying error code CODE, e.g. missing-mandatory")
    p.add_argument("--since", type=parse_time, metavar="T", help="at or after T")
    p.add_argument("--until", type=parse_time, metavar="T", help="before T")
    p.add_argument("--limit", type=_positive, default=100, metavar="N",
                   help="at most N (default 100; with --follow, of the existing ones)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table for people (default), json or csv for programs")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new ones until Ctrl-C")
    p.set_defaults(func=_acks)

    # gsem incidents
    incidents = _group(commands, "incidents", help="incidents and their history",
                       description="Incidents between requesters and providers, their state and "
                       "everything that happened to them.")
    p = incidents.add_parser("list", parents=common, help="list incidents, most recently changed first",
                             description="List incidents, most recently changed first.")
    p.add_argument("--partner", metavar="P", help="P is the requester or the provider")
    p.add_argument("--state", choices=[s.value for s in State], metavar="STATE",
                   help="in this state (" + ", ".join(s.value for s in State) + ")")
    p.add_argument("--requester-id", metavar="R", help="with RequesterID R")
    p.add_argument("--limit", type=_positive, default=100, metavar="N", help="at most N (default 100)")
    p.set_defaults(func=_incidents_list)
    p = incidents.add_parser("show", parents=common, help="show an incident and its full history",
                             description="Show one incident and its full history: its parties, state, every accepted "
                             "transaction (with the state before and after), the rejected ones, "
                             "and the deliveries to the other party. Name it by the id 'gsem "
                             "incidents list' shows, or by --requester and --requester-id.")
    p.add_argument("id", metavar="ID", nargs="?", type=int, help="the incident id")
    p.add_argument("--requester", metavar="P", help="the requester partner (with --requester-id)")
    p.add_argument("--requester-id", metavar="R", help="its RequesterID (with --requester)")
    p.add_argument("--document", action="store_true", help="also print the current SERVICE_INCIDENT")
    p.set_defaults(func=_incidents_show, parser=p)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


# -- gsem db -----------------------------------------------------------------------------


def _db_upgrade(args: argparse.Namespace) -> int:
    with _database(args, check=False) as database:
        before = database.current_revision()
        database.upgrade()
        after = database.current_revision()
        where = database.engine.url.render_as_string(hide_password=True)
    if before == after:
        print(f"database {where} is up to date (revision {after})")
    else:
        print(f"database {where} upgraded from {before or 'empty'} to revision {after}")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    with _database(args, check=False) as database:
        current = database.current_revision()
        head = database.head_revision()
    if current == head:
        print(f"revision {current} (up to date)")
        return 0
    print(f"revision {current or 'none (no gsem tables)'}; the newest is {head}: "
          f"run 'gsem db upgrade --data-dir {args.data_dir}'")
    return 1


# -- gsem partners -----------------------------------------------------------------------


def _partners_add(args: argparse.Namespace) -> int:
    with _database(args) as database:
        partner = database.run_sync(partners_db.add_partner, args.id, args.name,
                                    delivery_mode=args.delivery_mode, strict=args.strict)
    strict = ", strict" if partner.strict else ""
    print(f"added partner {partner.id} ({partner.name}), delivery {partner.delivery_mode}{strict}")
    print(f"next: gsem partners certs add {partner.id} CERT.pem")
    return 0


def _partners_list(args: argparse.Namespace) -> int:
    def query(conn: Any) -> tuple[list[partners_db.Partner], list[partners_db.PartnerCert]]:
        return partners_db.list_partners(conn), partners_db.list_certs(conn)

    with _database(args) as database:
        partners, certs = database.run_sync(query)
    if not partners:
        print("no partners yet; add one with 'gsem partners add ID --name NAME'")
        return 0
    now = _utcnow()
    valid: dict[str, int] = {}
    for cert in certs:
        if cert.status(now) == "valid":
            valid[cert.partner_id] = valid.get(cert.partner_id, 0) + 1
    columns = [Column("ID", 6), Column("NAME", 10), Column("ENABLED"), Column("STRICT"),
               Column("DELIVERY"), Column("VALID CERTS"), Column("ADDED")]
    rows = [[p.id, p.name, "yes" if p.enabled else "no", "yes" if p.strict else "no",
             p.delivery_mode, str(valid.get(p.id, 0)), _fmt_date(p.created_at)] for p in partners]
    print(render_table(columns, rows))
    return 0


def _cert_status(cert: partners_db.PartnerCert, now: dt.datetime) -> str:
    status = cert.status(now)
    if status == "retired":
        return f"retired {_fmt_date(cert.retired_at)}"
    return status


def _partners_show(args: argparse.Namespace) -> int:
    with _database(args) as database:
        detail = database.run_sync(partners_db.get_partner, args.id)
    p = detail.partner
    now = _utcnow()
    print(f"partner   {p.id}")
    print(f"name      {p.name}")
    print(f"enabled   {'yes' if p.enabled else 'no (connections refused)'}")
    print(f"strict    {'yes (unknown elements are errors)' if p.strict else 'no'}")
    print(f"delivery  {p.delivery_mode}")
    print(f"added     {_fmt_time(p.created_at)} UTC")
    print()
    if detail.certs:
        print("certificates:")
        for cert in detail.certs:
            print(f"  {cert.fingerprint}  {_cert_status(cert, now)}")
            print(f"      accepted {_fmt_time(cert.valid_from)} to {_fmt_time(cert.valid_until)} UTC")
            print(f"      subject {cert.subject}; issuer {cert.issuer}; serial {cert.serial}")
    else:
        print(f"certificates: none (it cannot connect); add one with 'gsem partners certs add {p.id} CERT.pem'")
    print()
    if detail.agreements:
        print("agreements:")
        for a in detail.agreements:
            print(f"  {a.requester_id} -> {a.provider_id}  contract {a.contract_id}")
    else:
        print("agreements: none")
    return 0


def _partners_disable(args: argparse.Namespace) -> int:
    with _database(args) as database:
        partner = database.run_sync(partners_db.disable_partner, args.id)
    print(f"disabled partner {partner.id}: its connections are refused from now on")
    return 0


def _partners_enable(args: argparse.Namespace) -> int:
    with _database(args) as database:
        partner = database.run_sync(partners_db.enable_partner, args.id)
    print(f"enabled partner {partner.id}")
    return 0


def _certs_add(args: argparse.Namespace) -> int:
    try:
        pem = args.cert.read_bytes()
    except OSError as e:
        raise GsemError(f"cannot read {args.cert}: {e.strerror}") from None
    with _database(args) as database:
        try:
            cert = database.run_sync(partners_db.add_cert, args.id, pem,
                                     valid_from=args.valid_from, valid_until=args.valid_until)
        except partners_db.BadCertificate as e:
            raise partners_db.BadCertificate(f"{args.cert}: {e}") from None
    print(f"registered certificate {cert.fingerprint} for partner {cert.partner_id}")
    print(f"  subject {cert.subject}")
    print(f"  accepted {_fmt_time(cert.valid_from)} to {_fmt_time(cert.valid_until)} UTC")
    status = cert.status()
    if status != "valid":
        print(f"note: the certificate is {status} now", file=sys.stderr)
    return 0


def _certs_list(args: argparse.Namespace) -> int:
    with _database(args) as database:
        certs = database.run_sync(partners_db.list_certs, args.id)
    if not certs:
        print("no certificates" + (f" for {args.id}" if args.id else ""))
        return 0
    now = _utcnow()
    columns = [Column("PARTNER", 7), Column("FINGERPRINT"), Column("VALID FROM"),
               Column("VALID UNTIL"), Column("STATUS"), Column("SUBJECT", 10)]
    rows = [[c.partner_id, c.fingerprint[:16], _fmt_time(c.valid_from, seconds=False),
             _fmt_time(c.valid_until, seconds=False), _cert_status(c, now), c.subject]
            for c in certs]
    print(render_table(columns, rows))
    return 0


def _certs_retire(args: argparse.Namespace) -> int:
    with _database(args) as database:
        cert = database.run_sync(partners_db.retire_cert, args.fingerprint)
    print(f"retired certificate {cert.fingerprint} of partner {cert.partner_id} "
          f"at {_fmt_time(cert.retired_at)} UTC; it is refused from now on")
    return 0


# -- gsem agreements ---------------------------------------------------------------------


def _agreements_add(args: argparse.Namespace) -> int:
    with _database(args) as database:
        a = database.run_sync(partners_db.add_agreement, args.requester, args.provider,
                              args.contract_id)
    print(f"added agreement: {a.requester_id} may pass calls to {a.provider_id} "
          f"under contract {a.contract_id}")
    return 0


def _agreements_list(args: argparse.Namespace) -> int:
    with _database(args) as database:
        agreements = database.run_sync(partners_db.list_agreements, args.partner)
    if not agreements:
        print("no agreements yet; add one with 'gsem agreements add REQUESTER PROVIDER CONTRACT_ID'")
        return 0
    columns = [Column("REQUESTER", 9), Column("PROVIDER", 8), Column("CONTRACT", 10), Column("ADDED")]
    rows = [[a.requester_id, a.provider_id, a.contract_id, _fmt_date(a.created_at)] for a in agreements]
    print(render_table(columns, rows))
    return 0


# -- gsem acks ---------------------------------------------------------------------------

_ACK_COLUMNS = [
    Column("TIME"),
    Column("ACK ID"),
    Column("PARTNER", 6),
    Column("TRANSACTION", 15),
    Column("REQUESTERID", 10),
    Column("OK"),
    Column("HTTP"),
    Column("STATE AFTER", 12),
]
# What a row usually needs, so that --follow lays out its table before any row arrives.
_ACK_NATURAL = [8, 26, 6, 27, 14, 3, 4, 27]
_ACK_FIELDS = ["time", "ack_id", "partner", "transaction", "requester_id", "result",
               "http_status", "error_codes", "state_after", "provider_id"]


def _ack_cells(a: acks_db.AckRow) -> list[str]:
    return [a.created_at.strftime("%H:%M:%S"), a.ack_id, a.partner_id, a.transaction_name or "-",
            a.requester_ref or "-", a.result, str(a.http_status), a.state_after or "-"]


def _ack_record(a: acks_db.AckRow) -> dict[str, Any]:
    return {"time": _iso(a.created_at), "ack_id": a.ack_id, "partner": a.partner_id,
            "transaction": a.transaction_name, "requester_id": a.requester_ref,
            "result": a.result, "http_status": a.http_status, "error_codes": list(a.error_codes),
            "state_after": a.state_after, "provider_id": a.provider_ref}


class _AckPrinter:
    """Prints acknowledgements in one format, a batch at a time (so --follow can stream).

    The table fits 100 columns: the date is a line of its own whenever it changes, and a
    rejection's error codes follow on an indented line below its row.
    """

    def __init__(self, fmt: str, out: IO[str], *, streaming: bool) -> None:
        self.fmt = fmt
        self.out = out
        self.streaming = streaming
        self._started = False
        self._layout: TableLayout | None = None
        self._date: dt.date | None = None
        self._csv = csv.writer(out, lineterminator="\n")

    def batch(self, rows: list[acks_db.AckRow]) -> None:
        """Print *rows* in the order given."""
        if self.fmt == "json":
            if self.streaming:
                for a in rows:
                    self.out.write(json.dumps(_ack_record(a)) + "\n")
            else:
                json.dump([_ack_record(a) for a in rows], self.out, indent=2)
                self.out.write("\n")
        elif self.fmt == "csv":
            if not self._started:
                self._csv.writerow(_ACK_FIELDS)
            for a in rows:
                record = _ack_record(a)
                record["error_codes"] = " ".join(a.error_codes)
                self._csv.writerow(["" if record[f] is None else record[f] for f in _ACK_FIELDS])
        else:
            self._table(rows)
        self._started = True
        self.out.flush()

    def _table(self, rows: list[acks_db.AckRow]) -> None:
        cells = [_ack_cells(a) for a in rows]
        if self._layout is None:
            self._layout = TableLayout(_ACK_COLUMNS, cells, width=_table_width(),
                                       natural=_ACK_NATURAL if self.streaming else None)
            if not cells and not self.streaming:
                self.out.write("no acknowledgements match\n")
                return
            self.out.write(self._layout.header() + "\n")
        for a, row in zip(rows, cells, strict=True):
            if a.created_at.date() != self._date:
                self._date = a.created_at.date()
                self.out.write(f"{self._date:%Y-%m-%d} (UTC)\n")
            self.out.write(self._layout.line(row) + "\n")
            if a.error_codes:
                indent = self._layout.widths[0] + len(self._layout.gap)
                self.out.write(" " * indent + "errors: " + ", ".join(a.error_codes) + "\n")


def _acks(args: argparse.Namespace) -> int:
    filters = dict(partner=args.partner, transaction=args.transaction,
                   requester_ref=args.requester_id, result=args.result, error_code=args.code,
                   since=args.since, until=args.until)
    out = sys.stdout
    with _database(args) as database:
        if not args.follow:
            rows = database.run_sync(acks_db.list_acks, **filters, limit=args.limit)
            _AckPrinter(args.format, out, streaming=False).batch(rows)
            return 0
        return _follow_acks(database, filters, args.limit, _AckPrinter(args.format, out, streaming=True))


def _follow_acks(database: Database, filters: dict[str, Any], limit: int,
                 printer: _AckPrinter) -> int:
    latest = database.run_sync(acks_db.list_acks, **filters, limit=limit)
    latest.reverse()
    printer.batch(latest)
    # Ids already printed (or older than what was printed), with their times, so that the
    # overlapping re-reads below never print one twice.
    seen: dict[str, dt.datetime] = {}
    horizon: dt.datetime | None = None
    if latest:
        horizon = max(a.created_at for a in latest)
        window = {**filters, "since": _later(filters["since"], horizon - FOLLOW_OVERLAP)}
        for a in database.run_sync(acks_db.list_acks, **window, limit=None):
            seen[a.ack_id] = a.created_at
    try:
        while True:
            _sleep(FOLLOW_INTERVAL)
            since = filters["since"] if horizon is None else _later(filters["since"], horizon - FOLLOW_OVERLAP)
            fresh = [a for a in database.run_sync(acks_db.list_acks, **{**filters, "since": since},
                                                  limit=None, oldest_first=True)
                     if a.ack_id not in seen]
            if not fresh:
                continue
            printer.batch(fresh)
            for a in fresh:
                seen[a.ack_id] = a.created_at
            horizon = max([horizon, *(a.created_at for a in fresh)] if horizon else
                          [a.created_at for a in fresh])
            cutoff = horizon - FOLLOW_OVERLAP
            seen = {k: v for k, v in seen.items() if v >= cutoff}
    except KeyboardInterrupt:
        return 0


def _later(a: dt.datetime | None, b: dt.datetime) -> dt.datetime:
    return b if a is None else max(a, b)


# -- gsem incidents ----------------------------------------------------------------------


def _incidents_list(args: argparse.Namespace) -> int:
    with _database(args) as database:
        incidents = database.run_sync(incidents_read.list_incidents, partner=args.partner,
                                      state=args.state, requester_ref=args.requester_id,
                                      limit=args.limit)
    if not incidents:
        print("no incidents match")
        return 0
    columns = [Column("ID"), Column("REQUESTER", 6), Column("REQUESTERID", 8), Column("PROVIDER", 6),
               Column("PROVIDERID", 6), Column("STATE", 10), Column("CHANGED (UTC)")]
    rows = [[str(i.id), i.requester_id, i.requester_ref, i.provider_id, i.provider_ref or "-",
             i.state, _fmt_time(i.updated_at, seconds=False)] for i in incidents]
    print(render_table(columns, rows))
    return 0


def _incidents_show(args: argparse.Namespace) -> int:
    if args.id is not None and (args.requester or args.requester_id):
        raise GsemError("give either an incident ID or --requester and --requester-id, not both")
    if args.id is None:
        if not (args.requester and args.requester_id):
            raise GsemError("name the incident: gsem incidents show ID, or "
                            "gsem incidents show --requester P --requester-id R")
        key: int | tuple[str, str] = (args.requester, args.requester_id)
    else:
        key = args.id
    with _database(args) as database:
        detail = database.run_sync(incidents_read.get_incident, key)
    _print_incident(detail, sys.stdout, document=args.document)
    return 0


def _print_incident(detail: incidents_read.IncidentDetail, out: IO[str], *, document: bool) -> None:
    # A detail view, one record per line pair rather than a table: the SIS names of
    # transactions and states are long, and nothing here should be cut short.
    i = detail.incident
    print(f"incident {i.id}: {i.state}", file=out)
    print(f"  requester  {i.requester_id}, RequesterID {i.requester_ref}", file=out)
    print(f"  provider   {i.provider_id}, ProviderID {i.provider_ref or '(not assigned yet)'}", file=out)
    print(f"  created    {_fmt_time(i.created_at)} UTC", file=out)
    print(f"  changed    {_fmt_time(i.updated_at)} UTC (version {i.version})", file=out)

    print(f"\nhistory: {len(detail.history)} accepted transaction(s), oldest first", file=out)
    for n, h in enumerate(detail.history, 1):
        print(f"  {n:>2}. {_fmt_time(h.received_at)}  {h.transaction_name or '-'} from {h.partner_id}",
              file=out)
        print(f"      {h.state_before or '(new)'} -> {h.state_after or '-'}  ack {h.ack_id}", file=out)

    if detail.rejections:
        print(f"\nrejected: {len(detail.rejections)} message(s) about it, oldest first", file=out)
        for h in detail.rejections:
            print(f"  {_fmt_time(h.received_at)}  {h.transaction_name or '-'} from {h.partner_id}",
                  file=out)
            codes = ", ".join(h.error_codes) or "-"
            print(f"      HTTP {h.http_status or '-'} {codes}  ack {h.ack_id}", file=out)

    print(f"\ndeliveries: {len(detail.deliveries)}", file=out)
    for d in detail.deliveries:
        receiver = "acknowledged by the receiver" if d.receiver_acknowledged else "no receiver ack yet"
        print(f"  #{d.id} {d.transaction_name or '-'} to {d.recipient_id}: {d.state}, "
              f"{d.attempts} attempt(s), {receiver}", file=out)
        if d.next_attempt_at is not None and d.state == "pending":
            print(f"      next attempt {_fmt_time(d.next_attempt_at)} UTC", file=out)
        if d.last_error:
            print(f"      last error: {d.last_error}", file=out)
    if document:
        print("\ndocument:", file=out)
        print(detail.document.decode("utf-8", "replace"), file=out)
