"""A partner's own view of its incidents, kept in one SQLite file.

Per RequesterID: our role, the provider's id, the state the hub last told us, the last
transaction; every transaction sent or received as history; and every delivery id the
hub handed us with the acknowledgement we gave, so that a delivery seen before is
acknowledged again with the same answer but never applied twice (SPEC §7: receivers
deduplicate by delivery id).

Each change is one SQLite transaction (WAL, ``synchronous=FULL``): after a crash the
file holds every delivery it acknowledged.  Calls are synchronous and short; the client
is one process serving one partner.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gsem.chs.builder import document_facts
from gsem.contract import Role
from gsem.errors import GsemError
from transactions import registry

__all__ = ["LocalIncident", "HistoryEntry", "LocalIncidents"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    requester_id TEXT PRIMARY KEY,
    provider_id TEXT,
    role TEXT,
    state TEXT,
    last_transaction TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    requester_id TEXT,
    transaction_name TEXT,
    acknowledged INTEGER NOT NULL,
    ack BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    requester_id TEXT,
    direction TEXT NOT NULL,
    transaction_name TEXT,
    acknowledged INTEGER NOT NULL,
    state TEXT,
    delivery_id INTEGER,
    ack_id TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS history_by_incident ON history (requester_id, id);
"""


@dataclass(frozen=True)
class LocalIncident:
    """One incident as this partner sees it."""

    requester_id: str
    provider_id: str | None
    role: str | None  # "requester" or "provider": ours, on this incident
    state: str | None
    last_transaction: str | None
    updated_at: str


@dataclass(frozen=True)
class HistoryEntry:
    """One transaction we sent (``sent``) or the hub delivered to us (``received``)."""

    at: str
    requester_id: str | None
    direction: str
    transaction_name: str | None
    acknowledged: bool
    state: str | None
    delivery_id: int | None
    ack_id: str | None
    note: str | None


def _now() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"


def _our_role(transaction_name: str | None, *, sent: bool) -> str | None:
    """Our role, when the transaction has a single sender (the other one when received)."""
    specs = registry.specs_named(transaction_name) if transaction_name else ()
    senders = {role for spec in specs for role in spec.sender}
    if len(senders) != 1:
        return None
    (sender,) = senders
    if sent:
        return sender.value
    return (Role.PROVIDER if sender is Role.REQUESTER else Role.REQUESTER).value


class LocalIncidents:
    """The local store at *path* (created when missing)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise GsemError(f"{self.path}: cannot open the local incident store: {e}") from None
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    def __enter__(self) -> LocalIncidents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------

    def get(self, requester_id: str) -> LocalIncident | None:
        """The incident with *requester_id*, or None."""
        row = self._db.execute("SELECT * FROM incidents WHERE requester_id = ?", (requester_id,)).fetchone()
        return None if row is None else LocalIncident(**dict(row))

    def incidents(self) -> list[LocalIncident]:
        """Every incident, most recently changed first."""
        rows = self._db.execute("SELECT * FROM incidents ORDER BY updated_at DESC, requester_id").fetchall()
        return [LocalIncident(**dict(row)) for row in rows]

    def history(self, requester_id: str | None = None) -> list[HistoryEntry]:
        """What was sent and received, oldest first; for one incident when given."""
        sql = "SELECT * FROM history"
        params: tuple[Any, ...] = ()
        if requester_id is not None:
            sql += " WHERE requester_id = ?"
            params = (requester_id,)
        rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [HistoryEntry(**{k: row[k] for k in row.keys() if k != "id"}
                             | {"acknowledged": bool(row["acknowledged"])}) for row in rows]

    def delivery_ack(self, delivery_id: int) -> bytes | None:
        """The acknowledgement we gave for *delivery_id*, or None if it is new to us."""
        row = self._db.execute("SELECT ack FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return None if row is None else bytes(row["ack"])

    # -- writing ---------------------------------------------------------------------

    def _apply(self, facts: dict[str, str | None], *, sent: bool, state: str | None,
               provider_id: str | None) -> None:
        requester_id = facts["RequesterID"]
        if requester_id is None:
            return
        name = facts["TransactionName"]
        now = _now()
        self._db.execute(
            "INSERT INTO incidents (requester_id, provider_id, role, state, last_transaction, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (requester_id) DO UPDATE SET "
            "provider_id = COALESCE(excluded.provider_id, incidents.provider_id), "
            "role = COALESCE(incidents.role, excluded.role), "
            "state = COALESCE(excluded.state, incidents.state), "
            "last_transaction = excluded.last_transaction, updated_at = excluded.updated_at",
            (requester_id, provider_id, _our_role(name, sent=sent), state, name, now),
        )

    def record_received(self, delivery_id: int, document: bytes, ack: bytes, *, acknowledged: bool,
                        note: str | None = None) -> bool:
        """Keep delivery *delivery_id* and our *ack*; apply it when *acknowledged*.

        Returns False, changing nothing, when the delivery was recorded before.
        """
        facts = document_facts(document)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO deliveries (delivery_id, received_at, requester_id, transaction_name, "
                    "acknowledged, ack) VALUES (?, ?, ?, ?, ?, ?)",
                    (delivery_id, _now(), facts["RequesterID"], facts["TransactionName"], int(acknowledged), ack),
                )
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                return False
            if acknowledged:
                self._apply(facts, sent=False, state=facts["CurrentState"], provider_id=facts["ProviderID"])
            self._history(facts, "received", acknowledged, facts["CurrentState"], delivery_id, None, note)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise GsemError(f"{self.path}: cannot record delivery {delivery_id}: {e}") from None
        return True

    def record_sent(self, document: bytes, answer: Any) -> None:
        """Keep a transaction we sent and the hub's :class:`~gsem.chs.client.HubAnswer`.

        An accepted transaction updates the incident (state and ProviderID as the hub
        acknowledged them); a refused one is history only.  Query_Incident changes
        nothing but the history.
        """
        facts = document_facts(document)
        if answer.requester_id and not facts["RequesterID"]:
            facts["RequesterID"] = answer.requester_id
        note = None
        if answer.duplicate:
            note = "duplicate: the hub had this transaction already"
        elif answer.errors:
            note = ", ".join(answer.error_codes)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if answer.accepted and facts["TransactionName"] != "Query_Incident":
                self._apply(facts, sent=True, state=answer.current_state,
                            provider_id=answer.provider_id or facts["ProviderID"])
            elif answer.accepted and self.get(facts["RequesterID"] or "") is not None:
                # A query tells us the hub's current state; keep it, without calling it a transaction.
                self._db.execute("UPDATE incidents SET state = COALESCE(?, state), "
                                 "provider_id = COALESCE(?, provider_id) WHERE requester_id = ?",
                                 (answer.current_state, answer.provider_id, facts["RequesterID"]))
            self._history(facts, "sent", answer.accepted, answer.current_state, None, answer.ack_id, note)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise GsemError(f"{self.path}: cannot record a sent transaction: {e}") from None

    def _history(self, facts: dict[str, str | None], direction: str, acknowledged: bool, state: str | None,
                 delivery_id: int | None, ack_id: str | None, note: str | None) -> None:
        self._db.execute(
            "INSERT INTO history (at, requester_id, direction, transaction_name, acknowledged, state, "
            "delivery_id, ack_id, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_now(), facts["RequesterID"], direction, facts["TransactionName"], int(acknowledged), state,
             delivery_id, ack_id, note),
        )
