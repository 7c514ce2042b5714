"""Operator commands: the database, partners and certificates, agreements, acks, incidents, deliveries.

Every command opens the database named by the data directory's ``gsem.toml``, checks
that its schema is current (``gsem db upgrade`` fixes it), runs its queries with
:meth:`gsem.db.connector.Database.run_sync` (no reactor) and prints for people (tables
that fit in 100 columns) or, where it says so, for programs (JSON, CSV).  Times are UTC.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import getpass
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
from gsem.db import deliveries as deliveries_db
from gsem.db import incidents_read
from gsem.db import partners as partners_db
from gsem.db.connector import Database
from gsem.delivery.policy import RetryPolicy
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
    """Add ``db``, ``partners``, ``agreements``, ``acks``, ``incidents`` and ``deliveries``."""
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
    _register_partners_delivery(partners, common)

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

    _register_deliveries(commands, common)


def _register_partners_delivery(partners: argparse._SubParsersAction,
                                common: list[argparse.ArgumentParser]) -> None:
    p = partners.add_parser(
        "delivery", parents=common, help="set how the hub delivers to a partner",
        description="Set how the hub delivers accepted transactions to the partner, replacing "
        "its previous delivery settings (give every option you want kept). push: the hub POSTs "
        "each document over mutual TLS to --url. pull: the partner fetches its messages from the "
        "hub's mailbox. spool: the hub writes files into --outbox and reads the partner's "
        "acknowledgements from --acks. adapter: a plug-in from chs_adapters/ talks to the "
        "partner's ticketing system. Durations are seconds, or take a unit: 90s, 5m, 2h, 1d. "
        "A running server picks the new settings up without a restart.")
    p.add_argument("id", metavar="ID", help="the partner")
    p.add_argument("--mode", required=True, choices=partners_db.DELIVERY_MODES, help="the delivery mode")
    g = p.add_argument_group("push")
    g.add_argument("--url", metavar="URL", help="the partner's https:// endpoint (required)")
    g.add_argument("--ca", type=Path, metavar="FILE",
                   help="PEM file of the CA that signed the partner's server certificate")
    g.add_argument("--timeout", type=_seconds, metavar="S", help="give up on one attempt after S")
    g = p.add_argument_group("pull")
    g.add_argument("--visibility-timeout", type=_seconds, metavar="S",
                   help="hand a message out again when it is not acknowledged within S")
    g = p.add_argument_group("spool")
    g.add_argument("--outbox", type=Path, metavar="DIR", help="where the hub writes documents (required)")
    g.add_argument("--acks", type=Path, metavar="DIR",
                   help="where the partner puts its acknowledgements (required)")
    g = p.add_argument_group("adapter")
    g.add_argument("--adapter", metavar="NAME",
                   help="package.module:Class, or the short name of one of gsem's adapters (required)")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for the adapter; may be repeated")
    g = p.add_argument_group("retries (any mode; defaults: base 1 s, cap 300 s, 20 attempts, 24 h)")
    g.add_argument("--max-attempts", type=_positive, metavar="N", help="dead after N attempts")
    g.add_argument("--retry-base", type=_seconds, metavar="S", help="the first retry within S")
    g.add_argument("--retry-cap", type=_seconds, metavar="S",
                   help="the backoff's longest wait between attempts (a receiver's Retry-After may ask "
                   "for longer, and the circuit breaker below pauses a partner that keeps failing)")
    g.add_argument("--max-age", type=_seconds, metavar="S", help="dead when still undelivered after S")
    g = p.add_argument_group("circuit breaker (any mode; defaults: a 30 s pause after 5 transient "
                             "failures in a row, doubling on each failed probe up to 10 min)")
    g.add_argument("--pause-after", type=_positive, metavar="N",
                   help="pause deliveries to the partner after N transient failures in a row")
    g.add_argument("--pause", type=_seconds, metavar="S", help="the first pause, then one probe")
    g.add_argument("--max-pause", type=_seconds, metavar="S", help="the longest pause")
    p.set_defaults(func=_partners_delivery)


def _register_deliveries(commands: argparse._SubParsersAction,
                         common: list[argparse.ArgumentParser]) -> None:
    deliveries = _group(
        commands, "deliveries", help="deliveries to partners, dead letters, replays",
        description="Every accepted transaction (except Query_Incident) is delivered to the "
        "other party of its incident, in order per incident. A delivery that the receiver "
        "refused (Acknowledge=No) or that ran out of retries is dead: it holds back its "
        "incident's later deliveries until an operator replays or discards it.")

    def listing(p: argparse.ArgumentParser, *, state: bool) -> None:
        if state:
            p.add_argument("--state", choices=deliveries_db.STATES, metavar="STATE",
                           help="in this state (" + ", ".join(deliveries_db.STATES) + ")")
        p.add_argument("--partner", metavar="P", help="to partner P")
        p.add_argument("--incident", type=_positive, metavar="ID", help="of incident ID")
        p.add_argument("--limit", type=_positive, default=100, metavar="N", help="at most N (default 100)")
        p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                       help="table for people (default), json or csv for programs")

    p = deliveries.add_parser("list", parents=common, help="list deliveries, newest first",
                              description="List deliveries, newest first: the incident and its "
                              "RequesterID, the transaction, the recipient, the state (pending, sent, "
                              "acknowledged, dead, discarded, replayed), the attempts made, when the "
                              "next one is due and the last error.")
    listing(p, state=True)
    p.set_defaults(func=_deliveries_list, dead_only=False)
    p = deliveries.add_parser("dead", parents=common, help="list dead deliveries (dead letters)",
                              description="List dead deliveries, newest first: the same as "
                              "'gsem deliveries list --state dead'. Each holds back its incident's "
                              "later deliveries until it is replayed or discarded.")
    listing(p, state=False)
    p.set_defaults(func=_deliveries_list, dead_only=True, state="dead")
    p = deliveries.add_parser("show", parents=common, help="show a delivery, its attempts and audit trail",
                              description="Show one delivery: its incident, transaction and "
                              "recipient, its state and times, every attempt with its outcome, "
                              "HTTP status and error, the receiver's acknowledgement, the "
                              "operators' audit trail and the replay links both ways.")
    p.add_argument("id", metavar="ID", type=_positive, help="the delivery id")
    p.add_argument("--document", action="store_true", help="also print the document delivered")
    p.set_defaults(func=_deliveries_show)
    for name, verb, description in (
        ("replay", "deliver dead deliveries again",
         "Deliver dead (or discarded) deliveries again: each gets a new delivery of the same "
         "document, in the original's place in its incident's order, due at once. The old one "
         "becomes 'replayed'. All or nothing: if one cannot be replayed, none is. Audited."),
        ("discard", "give up on dead or pending deliveries",
         "Give up on dead or pending deliveries: they become 'discarded' and no longer hold "
         "back their incidents' later deliveries. All or nothing. Audited."),
    ):
        p = deliveries.add_parser(name, parents=common, help=verb, description=description)
        p.add_argument("ids", metavar="ID", type=_positive, nargs="+", help="delivery ids")
        p.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the audit trail)")
        p.add_argument("--actor", metavar="NAME",
                       help="who (default: $SUDO_USER, else $USER, else the login name)")
        p.set_defaults(func=_deliveries_replay if name == "replay" else _deliveries_discard)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    value = float(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds (90, 1.5) or a number with a unit (5m, 2h, 1d)")
    return int(value) if value.is_integer() else value


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
    for line in _delivery_lines(p.id, p.delivery_mode, partners_db.parse_delivery_config(p)):
        print(line)
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


def _fmt_seconds(value: float) -> str:
    value = float(value)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)} {unit}"
    return f"{value:g} s"


def _delivery_lines(partner_id: str, mode: str, config: dict[str, Any]) -> list[str]:
    """``delivery  MODE`` and the mode's settings, one per line, as 'partners show' prints them."""
    missing = {"push": "url", "spool": "outbox", "adapter": "adapter"}.get(mode)
    if missing and missing not in config:
        example = {"push": "--url https://HOST/PATH", "spool": "--outbox DIR --acks DIR",
                   "adapter": "--adapter NAME"}[mode]
        return [f"delivery  {mode}, not configured yet: nothing can be delivered until "
                f"'gsem partners delivery {partner_id} --mode {mode} {example}'"]
    lines = [f"delivery  {mode}"]
    labels = [("url", "url"), ("ca", "server CA"), ("timeout", "timeout"),
              ("visibility_timeout", "visibility timeout"), ("outbox", "outbox"), ("acks", "acks from"),
              ("adapter", "adapter")]
    for key, label in labels:
        if key in config:
            value = config[key]
            shown = _fmt_seconds(value) if key in ("timeout", "visibility_timeout") else str(value)
            lines.append(f"  {label:<19} {shown}")
    for key, value in sorted(config.get("options", {}).items()):
        lines.append(f"  {'option ' + key:<19} {value}")
    retry = config.get("retry", {})
    policy = RetryPolicy.from_config(retry)
    lines.append(f"  {'retries':<19} first within {_fmt_seconds(policy.base)}, doubling to at most "
                 f"{_fmt_seconds(policy.cap)}; dead after {policy.max_attempts} attempts or "
                 f"{_fmt_seconds(policy.max_age)}" + ("" if retry else " (defaults)"))
    return lines


def _partners_delivery(args: argparse.Namespace) -> int:
    config, notes = _delivery_config(args)
    with _database(args) as database:
        partner = database.run_sync(partners_db.set_delivery, args.id, mode=args.mode, config=config)
    print(f"partner {partner.id} now receives its deliveries by {partner.delivery_mode}")
    for line in _delivery_lines(partner.id, partner.delivery_mode, config)[1:]:
        print(line)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


#: Which options belong to which mode (the retry options belong to every mode).
_MODE_OPTIONS = {
    "url": "push", "ca": "push", "timeout": "push", "visibility_timeout": "pull",
    "outbox": "spool", "acks": "spool", "adapter": "adapter", "option": "adapter",
}


def _delivery_config(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The settings the options describe, and notes for the operator.

    Every misplaced or unusable option is reported at once, with the settings' own problems.
    """
    problems: list[str] = []
    notes: list[str] = []
    for name, mode in _MODE_OPTIONS.items():
        given = getattr(args, name)
        if given not in (None, []) and mode != args.mode:
            flag = "--" + name.replace("_", "-")
            problems.append(f"{flag} is for --mode {mode}, not --mode {args.mode}")
    config: dict[str, Any] = {}
    if args.mode == "push":
        if args.url is not None:
            config["url"] = args.url
        if args.ca is not None:
            ca = args.ca.expanduser().resolve()
            try:
                text = ca.read_text("ascii", errors="replace")
            except OSError as e:
                problems.append(f"cannot read the CA file {ca}: {e.strerror}")
            else:
                if "-----BEGIN CERTIFICATE-----" not in text:
                    problems.append(f"{ca} holds no PEM certificate ('-----BEGIN CERTIFICATE-----')")
            config["ca"] = str(ca)
        if args.timeout is not None:
            config["timeout"] = args.timeout
    elif args.mode == "pull":
        if args.visibility_timeout is not None:
            config["visibility_timeout"] = args.visibility_timeout
    elif args.mode == "spool":
        for name in ("outbox", "acks"):
            path = getattr(args, name)
            if path is None:
                continue
            path = path.expanduser().resolve()
            if path.exists() and not path.is_dir():
                problems.append(f"--{name} {path} is not a directory")
            elif not path.exists():
                notes.append(f"{path} does not exist yet; create it before the hub delivers")
            config[name] = str(path)
    elif args.mode == "adapter":
        if args.adapter is not None:
            config["adapter"] = args.adapter
        options: dict[str, str] = {}
        for item in args.option:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                problems.append(f"--option {item!r}: write KEY=VALUE")
            elif key in options:
                problems.append(f"--option {key} is given twice")
            else:
                options[key] = value
        if options:
            config["options"] = options
    retry = {key: value for key, value in (("base", args.retry_base), ("cap", args.retry_cap),
                                           ("max_attempts", args.max_attempts), ("max_age", args.max_age),
                                           ("pause_after", args.pause_after), ("pause", args.pause),
                                           ("max_pause", args.max_pause))
             if value is not None}
    if retry:
        config["retry"] = retry
    if problems:
        # Report the settings' own problems too, so that one run shows everything to fix.
        raise partners_db.BadDeliverySettings(args.id, problems + partners_db.delivery_problems(args.mode, config))
    return config, notes


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
               "http_status", "error_codes", "state_after", "provider_id",
               "delivery_id", "delivery_state", "delivered_at", "receiver_ack"]


def _ack_cells(a: acks_db.AckRow) -> list[str]:
    return [a.created_at.strftime("%H:%M:%S"), a.ack_id, a.partner_id, a.transaction_name or "-",
            a.requester_ref or "-", a.result, str(a.http_status), a.state_after or "-"]


def _ack_record(a: acks_db.AckRow) -> dict[str, Any]:
    return {"time": _iso(a.created_at), "ack_id": a.ack_id, "partner": a.partner_id,
            "transaction": a.transaction_name, "requester_id": a.requester_ref,
            "result": a.result, "http_status": a.http_status, "error_codes": list(a.error_codes),
            "state_after": a.state_after, "provider_id": a.provider_ref,
            # the other two of the three acknowledgements (SPEC §7)
            "delivery_id": a.delivery_id, "delivery_state": a.delivery_state,
            "delivered_at": _iso(a.delivered_at), "receiver_ack": a.receiver_result}


def _delivery_summary(delivery_id: int | None, recipient: str | None, state: str | None,
                      delivered_at: dt.datetime | None, receiver: str | None,
                      day: dt.date | None = None) -> str:
    """"delivery 12 to GLOBEX: acknowledged, delivered 12:55:49; receiver Yes"."""
    text = f"delivery {delivery_id} to {recipient}: {state}"
    if delivered_at is not None:
        same_day = day is not None and delivered_at.date() == day
        text += f", delivered {delivered_at:%H:%M:%S}" if same_day else f", delivered {_fmt_time(delivered_at)}"
    return f"{text}; receiver {_receiver_text(receiver)}"


class _AckPrinter:
    """Prints acknowledgements in one format, a batch at a time (so --follow can stream).

    The table fits 100 columns: the date is a line of its own whenever it changes, a
    rejection's error codes follow on an indented line below its row, and so does an
    accepted transaction's delivery and the receiver's answer (the three acknowledgements
    would not fit as columns).
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
            indent = " " * (self._layout.widths[0] + len(self._layout.gap))
            if a.error_codes:
                self.out.write(indent + "errors: " + ", ".join(a.error_codes) + "\n")
            if a.delivery_state is not None:
                self.out.write(indent + _delivery_summary(
                    a.delivery_id, a.recipient_id, a.delivery_state, a.delivered_at, a.receiver_result,
                    a.created_at.date()) + "\n")


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
        if h.delivery_state is not None:
            print("      " + _delivery_summary(h.delivery_id, h.recipient_id, h.delivery_state,
                                               h.delivered_at, h.receiver_result), file=out)
        else:
            print("      not forwarded", file=out)

    if detail.rejections:
        print(f"\nrejected: {len(detail.rejections)} message(s) about it, oldest first", file=out)
        for h in detail.rejections:
            print(f"  {_fmt_time(h.received_at)}  {h.transaction_name or '-'} from {h.partner_id}",
                  file=out)
            codes = ", ".join(h.error_codes) or "-"
            print(f"      HTTP {h.http_status or '-'} {codes}  ack {h.ack_id}", file=out)

    print(f"\ndeliveries: {len(detail.deliveries)}", file=out)
    for d in detail.deliveries:
        receiver = {"Yes": "the receiver said Yes", "No": "the receiver said No"}.get(
            d.receiver_result or "", "no receiver ack yet")
        replay = f" (replay of #{d.replay_of})" if d.replay_of is not None else ""
        print(f"  #{d.id} {d.transaction_name or '-'} to {d.recipient_id}{replay}: {d.state}, "
              f"{d.attempts} attempt(s), {receiver}", file=out)
        if d.delivered_at is not None:
            print(f"      delivered {_fmt_time(d.delivered_at)} UTC", file=out)
        if d.next_attempt_at is not None and d.state == "pending":
            print(f"      next attempt {_fmt_time(d.next_attempt_at)} UTC", file=out)
        if d.last_error:
            print(f"      last error: {d.last_error}", file=out)
    if document:
        print("\ndocument:", file=out)
        print(detail.document.decode("utf-8", "replace"), file=out)


# -- gsem deliveries -----------------------------------------------------------------------

_DELIVERY_COLUMNS = [
    Column("ID"),
    Column("INCIDENT", 8),
    Column("TRANSACTION", 12),
    Column("TO", 6),
    Column("STATE"),
    Column("TRIES"),
    Column("NEXT ATTEMPT"),
    Column("LAST ERROR", 10),
]
_DELIVERY_FIELDS = ["id", "incident_id", "requester_id", "transaction", "recipient", "state", "attempts",
                    "next_attempt_at", "last_error", "message_id", "created_at", "updated_at",
                    "delivered_at", "acknowledged_at", "receiver_ack", "replay_of", "lease_owner",
                    "lease_until"]


def _delivery_record(d: deliveries_db.Delivery) -> dict[str, Any]:
    return {"id": d.id, "incident_id": d.incident_id, "requester_id": d.requester_ref,
            "transaction": d.transaction_name, "recipient": d.recipient_id, "state": d.state,
            "attempts": d.attempts, "next_attempt_at": _iso(d.next_attempt_at) if d.state == "pending" else None,
            "last_error": d.last_error, "message_id": d.message_id, "created_at": _iso(d.created_at),
            "updated_at": _iso(d.updated_at), "delivered_at": _iso(d.delivered_at),
            "acknowledged_at": _iso(d.acknowledged_at), "receiver_ack": d.receiver_result,
            "replay_of": d.replay_of, "lease_owner": d.lease_owner, "lease_until": _iso(d.lease_until)}


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split()) or "-"


def _delivery_cells(d: deliveries_db.Delivery) -> list[str]:
    incident = f"{d.incident_id}/{d.requester_ref}" if d.requester_ref else str(d.incident_id)
    due = _fmt_time(d.next_attempt_at, seconds=False) if d.state == "pending" and d.next_attempt_at else "-"
    return [str(d.id), incident, d.transaction_name or "-", d.recipient_id, d.state, str(d.attempts), due,
            _one_line(d.last_error)]


def _deliveries_list(args: argparse.Namespace) -> int:
    with _database(args) as database:
        found = database.run_sync(deliveries_db.list_deliveries, state=args.state, recipient=args.partner,
                                  incident_id=args.incident, limit=args.limit)
    out = sys.stdout
    if args.format == "json":
        json.dump([_delivery_record(d) for d in found], out, indent=2)
        out.write("\n")
        return 0
    if args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_DELIVERY_FIELDS)
        for d in found:
            record = _delivery_record(d)
            writer.writerow(["" if record[f] is None else record[f] for f in _DELIVERY_FIELDS])
        return 0
    if not found:
        print("no dead deliveries" if args.dead_only else "no deliveries match")
        return 0
    print(render_table(_DELIVERY_COLUMNS, [_delivery_cells(d) for d in found]))
    if args.dead_only:
        print("\neach holds back its incident's later deliveries: 'gsem deliveries show ID' says why; "
              "then 'gsem deliveries replay ID… --reason TEXT' or 'gsem deliveries discard ID… "
              "--reason TEXT'")
    return 0


def _receiver_text(result: str | None) -> str:
    return {"Yes": "Yes", "No": "No"}.get(result or "", "—")


def _deliveries_show(args: argparse.Namespace) -> int:
    def query(conn: Any) -> tuple[deliveries_db.DeliveryDetail, dict[str, partners_db.DeliverySettings]]:
        return deliveries_db.get_delivery(conn, args.id), partners_db.delivery_settings(conn)

    with _database(args) as database:
        detail, settings = database.run_sync(query)
    _print_delivery(detail, settings, sys.stdout, document=args.document)
    return 0


def _print_delivery(detail: deliveries_db.DeliveryDetail,
                    settings: dict[str, partners_db.DeliverySettings], out: IO[str], *,
                    document: bool) -> None:
    # A detail view like 'incidents show': every field on its own line, nothing cut.
    d = detail.delivery

    def field(label: str, value: str) -> None:
        print(f"  {label:<13} {value}", file=out)

    print(f"delivery {d.id}: {d.state}", file=out)
    requester = f", RequesterID {d.requester_ref}" if d.requester_ref else ""
    field("incident", f"{d.incident_id}{requester}  (gsem incidents show {d.incident_id})")
    field("transaction", f"{d.transaction_name or '-'} (message {d.message_id})")
    mode = settings[d.recipient_id].mode if d.recipient_id in settings else "unknown partner"
    field("recipient", f"{d.recipient_id} ({mode})")
    field("created", f"{_fmt_time(d.created_at)} UTC")
    field("changed", f"{_fmt_time(d.updated_at)} UTC")
    field("attempts", str(d.attempts))
    if d.state == "pending" and d.next_attempt_at is not None:
        field("next attempt", f"{_fmt_time(d.next_attempt_at)} UTC")
    if d.lease_owner is not None and d.lease_until is not None:
        field("held by", f"{d.lease_owner} until {_fmt_time(d.lease_until)} UTC")
    field("delivered", f"{_fmt_time(d.delivered_at)} UTC" if d.delivered_at else "not yet")
    receiver = d.receiver_result
    if receiver == "Yes":
        field("receiver", f"Yes, {_fmt_time(d.acknowledged_at)} UTC" if d.acknowledged_at else "Yes")
    elif receiver == "No":
        field("receiver", "No (Acknowledge=No)")
    else:
        field("receiver", "— (no acknowledgement yet)")
    if d.last_error:
        field("last error", d.last_error)
    if d.replay_of is not None:
        origin = detail.origin
        by = f", by {origin.actor} at {_fmt_time(origin.at)} UTC: {origin.reason}" if origin else ""
        field("replay of", f"delivery {d.replay_of}{by}")
    if detail.replays:
        field("replayed as", ", ".join(f"delivery {i}" for i in detail.replays))

    print(f"\nattempts: {len(detail.attempts)}", file=out)
    for a in detail.attempts:
        took = (a.finished_at - a.started_at).total_seconds()
        http = f"  HTTP {a.http_status}" if a.http_status is not None else ""
        print(f"  {a.attempt:>3}. {_fmt_time(a.started_at)}  {a.node}  {a.outcome}{http}  ({took:g} s)",
              file=out)
        if a.error:
            print(f"       error: {a.error}", file=out)

    if d.receiver_ack is not None:
        print("\nthe receiver's acknowledgement:", file=out)
        print(d.receiver_ack.decode("utf-8", "replace").rstrip(), file=out)

    print("\naudit trail:" if detail.audit else "\naudit trail: none", file=out)
    for e in detail.audit:
        new = f" -> delivery {e.new_delivery_id}" if e.new_delivery_id is not None else ""
        print(f"  {_fmt_time(e.at)}  {e.action} by {e.actor}{new}: {e.reason}", file=out)

    if document:
        print("\ndocument:", file=out)
        print(d.document.decode("utf-8", "replace").rstrip(), file=out)


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return args.actor
    name = os.environ.get("SUDO_USER") or os.environ.get("USER")
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):
            name = ""
    if not name:
        raise GsemError("cannot tell who you are; name yourself with --actor NAME")
    return name


def _deliveries_replay(args: argparse.Namespace) -> int:
    actor = _actor(args)
    with _database(args) as database:
        new_ids = database.run_sync(deliveries_db.replay, args.ids, actor=actor, reason=args.reason,
                                    now=_utcnow().replace(microsecond=0))
    for old, new in zip(dict.fromkeys(args.ids), new_ids, strict=True):
        print(f"replayed {old} as {new}")
    return 0


def _deliveries_discard(args: argparse.Namespace) -> int:
    actor = _actor(args)
    with _database(args) as database:
        database.run_sync(deliveries_db.discard, args.ids, actor=actor, reason=args.reason,
                          now=_utcnow().replace(microsecond=0))
    for delivery_id in dict.fromkeys(args.ids):
        print(f"discarded {delivery_id}")
    return 0
