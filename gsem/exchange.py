"""Receiving one transaction: decide, persist, acknowledge (SPEC §2, §5, §6).

Parsing and the schema run first, before the transaction.  Everything that depends on
stored state — idempotency, routing, authorization, the incident's state, the field
matrix of the sender's role — runs in :func:`decide_and_store`, one database
transaction that also writes the message, the incident change, the acknowledgement and
the outbound delivery record.  ``Acknowledge=Yes`` is returned only after that commit.
"""

from __future__ import annotations

import hashlib
import json
import operator
import time
from collections import namedtuple
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from twisted.logger import Logger

from gsem.ack import Acknowledgement, mark_duplicate
from gsem.contract import IncidentFacts, Role, State, TransactionSpec
from gsem.db import model
from gsem.db.incidents_read import ENTRIES_OF
from gsem.db.pool import BatchUndone
from gsem.errors import AckCode, Problem
from gsem.ids import new_ulid
from gsem.incident import (
    Entry,
    ForwardTemplate,
    IncidentChange,
    forwarded_document,
    stored_incident_for_query,
)
from gsem.validation import DocumentValidator, Inspection, check_state
from transactions import registry

__all__ = ["Inbound", "Outcome", "Prepared", "Exchange", "decide_and_store", "prepare_inbound", "contract_id_of"]

log = Logger()
#: The one transaction that reads its incident: it changes nothing and forwards nothing.
_QUERY = "Query_Incident"
#: How often a transaction is retried after losing a race on a unique key.
_RACE_RETRIES = 3

# Every statement of the hot path is built once, with bind parameters: building one per
# call (``.values(**literals)``) cost more CPU than running it, and SQLAlchemy's compiled
# cache only helps when the statement object need not be rebuilt and re-keyed each time.
_incidents = model.incidents
_messages = model.messages
_acks = model.acknowledgements
#: The idempotency key (an accepted message's, ``uq_messages_partner_key``) and, in the same
#: round trip, the acknowledgement it was answered with.  ``model.KEYED`` is the index's
#: own condition, so that the index serves the lookup.
_SELECT_KEY = (
    sa.select(_messages.c.digest, _messages.c.ack_id, _acks.c.document, _acks.c.http_status,
              _acks.c.transaction_name, _acks.c.requester_ref, _acks.c.provider_ref, _acks.c.state_after)
    .select_from(_messages.outerjoin(_acks, _acks.c.ack_id == _messages.c.ack_id))
    .where(_messages.c.partner_id == sa.bindparam("partner_id"),
           _messages.c.idempotency_key == sa.bindparam("key"), model.KEYED)
)
#: What the decision reads of an incident: not its times, whose text SQLite's processor
#: would parse into datetimes for nothing.
_SELECT_BY_REF = (
    sa.select(_incidents.c.id, _incidents.c.requester_id, _incidents.c.provider_id, _incidents.c.provider_ref,
              _incidents.c.state, _incidents.c.document, _incidents.c.problem_with_request, _incidents.c.version)
    .where(_incidents.c.requester_ref == sa.bindparam("requester_ref")).with_for_update()
)
_SELECT_OWN_REF = sa.select(_incidents.c.id).where(
    _incidents.c.requester_id == sa.bindparam("requester_id"),
    _incidents.c.requester_ref == sa.bindparam("requester_ref"))
_SELECT_WAITING = sa.select(_incidents.c.id).where(
    _incidents.c.provider_id == sa.bindparam("provider_id"),
    _incidents.c.requester_ref == sa.bindparam("requester_ref"),
    _incidents.c.provider_ref.is_(None))
_SELECT_PROVIDER = sa.select(model.agreements.c.provider_id).where(
    model.agreements.c.requester_id == sa.bindparam("requester_id"),
    model.agreements.c.contract_id == sa.bindparam("contract_id"))
_INSERT_INCIDENT = _incidents.insert()
_UPDATE_INCIDENT = _incidents.update().where(_incidents.c.id == sa.bindparam("incident_id"))
_INSERT_MESSAGE = model.messages.insert()
_INSERT_ACK = _acks.insert()
_INSERT_DELIVERY = model.deliveries.insert()
_INSERT_ENTRY = model.incident_entries.insert()
#: A message keeps this much of its idempotency key, and keys are compared by it (the
#: listener never reads more of the header).
_KEY_LENGTH = model.messages.c.idempotency_key.type.length


class _Store:
    """The connection of one :func:`decide_and_store` call, looked up once for its statements.

    *raw* is the SQLite DBAPI connection of *conn*'s transaction; None on other dialects,
    whose statements go through ``conn.execute``.
    """

    __slots__ = ("conn", "raw", "error")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.raw: Any = conn.connection.driver_connection if conn.dialect.name == "sqlite" else None
        self.error: Any = conn.dialect.loaded_dbapi.Error


#: The last datetime a DATETIME parameter was formatted for, and its text.  Every stored
#: time of one transaction is the same ``now``: SQLAlchemy's processor formats it once.
_last_time: tuple[Any, Any] = (None, None)


def _once_per_value(process: Any) -> Any:
    """*process* (a DATETIME bind processor), run once for repeats of the same object."""

    def formatted(value: Any) -> Any:
        global _last_time
        last = _last_time  # one read and one write of a tuple: safe between threads
        if last[0] is value:
            return last[1]
        text = process(value)
        _last_time = (value, text)
        return text

    return formatted


#: Times a DATETIME processor is checked on: microseconds, none, a year below 1000.
_SAMPLE_TIMES = (datetime(2026, 11, 22, 8, 3, 42, 70), datetime(2026, 11, 22, 8, 3, 42), datetime(999, 1, 2, 3, 4, 5, 6))


def _isoformat_if_same(process: Any) -> Any:
    """*process* (a DATETIME bind processor), as ``datetime.isoformat`` when that writes the same.

    SQLite's processor formats with ``%``-formatting of each field, several times slower
    than ``isoformat``, which writes the same text for a naive datetime (SQLAlchemy's
    default storage format).  Checked on samples; any other processor is kept as it is.
    """
    if any(process(sample) != sample.isoformat(" ", "microseconds") for sample in _SAMPLE_TIMES):
        return process

    def formatted(value: Any) -> Any:
        if value.__class__ is datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        return process(value)

    return formatted


def _getter(order: tuple[str, ...]) -> Any:
    """The values of *order* from a parameter dict, as a tuple."""
    if len(order) == 1:
        name = order[0]
        return lambda params: (params[name],)
    return operator.itemgetter(*order) if order else (lambda params: ())


class _Hot:
    """One statement of the hot path, run on SQLite straight through the DBAPI connection.

    ``conn.execute`` spends about twice as much Python per call (execution context, result
    set-up) as SQLite spends running the statement.  On SQLite this compiles the statement
    once per set of parameter names, keeps the SQL string, the positional order and the
    types' bind and result processors, and runs it with ``sqlite3``'s own ``execute``
    (whose statement cache keeps it prepared) on the connection of *conn*'s transaction.
    DBAPI errors are wrapped as ``conn.execute`` would wrap them (``IntegrityError`` stays
    an ``IntegrityError`` for the race retry).  Other dialects use ``conn.execute``.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, ...], tuple[str, Any, tuple[tuple[int, Any], ...]]] = {}
        #: The row type of a SELECT, and its columns' result processors by position.
        self._row: tuple[Any, tuple[tuple[int, Any], ...]] | None = None

    def _prepare(self, conn: Connection, names: tuple[str, ...]) -> tuple[str, Any, tuple[tuple[int, Any], ...]]:
        dialect = conn.dialect
        compiled = self.statement.compile(dialect=dialect, column_keys=list(names))
        order = tuple(compiled.positiontup or ())
        if not set(order) <= set(names):
            raise AssertionError(f"hot statement needs parameters {sorted(set(order) - set(names))}")
        binds = {bind.key: bind for bind in compiled.binds.values()}
        processors = []
        for index, name in enumerate(order):
            type_ = binds[name].type
            process = type_.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                if isinstance(type_, sa.DateTime):
                    process = _once_per_value(_isoformat_if_same(process))
                processors.append((index, process))
        prepared = (compiled.string, _getter(order), tuple(processors))
        self._compiled[names] = prepared
        if self._row is None and self.statement.is_select:
            columns = list(self.statement.selected_columns)
            row_type = namedtuple("_HotRow", [c.key for c in columns])  # type: ignore[misc]
            processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
            self._row = (row_type, tuple((i, p) for i, p in enumerate(processors) if p is not None))
        return prepared

    def _run(self, store: _Store, params: dict[str, Any]) -> Any:
        names = tuple(params)
        prepared = self._compiled.get(names) or self._prepare(store.conn, names)
        sql, getter, processors = prepared
        values = getter(params)
        if processors:
            values = list(values)
            for index, process in processors:
                values[index] = process(values[index])
        try:
            return store.raw.execute(sql, values)
        except store.error as e:
            dialect = store.conn.dialect
            raise sa.exc.DBAPIError.instance(sql, values, e, dialect.loaded_dbapi.Error, dialect=dialect) from e

    def insert(self, store: _Store, params: dict[str, Any]) -> Any:
        """Run the INSERT; its new row's primary key."""
        if store.raw is None:
            return store.conn.execute(self.statement, params).inserted_primary_key[0]
        return self._run(store, params).lastrowid

    def write(self, store: _Store, params: dict[str, Any]) -> None:
        """Run an INSERT or UPDATE whose result is not needed."""
        if store.raw is None:
            store.conn.execute(self.statement, params)
        else:
            self._run(store, params)

    def rows(self, store: _Store, params: dict[str, Any]) -> list[Any]:
        """Run the SELECT; every row, with attribute access by column key."""
        if store.raw is None:
            return list(store.conn.execute(self.statement, params).all())
        cursor = self._run(store, params)
        assert self._row is not None
        row_type, processors = self._row
        found = cursor.fetchall()
        if not processors:
            return [row_type._make(raw) for raw in found]
        rows = []
        for raw in found:
            values = list(raw)
            for index, process in processors:
                values[index] = process(values[index])
            rows.append(row_type._make(values))
        return rows

    def first(self, store: _Store, params: dict[str, Any]) -> Any:
        """Run the SELECT; its first row or ``None``."""
        found = self.rows(store, params)
        return found[0] if found else None


_HOT_SELECT_KEY = _Hot(_SELECT_KEY)
_HOT_SELECT_BY_REF = _Hot(_SELECT_BY_REF)
_HOT_SELECT_OWN_REF = _Hot(_SELECT_OWN_REF)
_HOT_SELECT_WAITING = _Hot(_SELECT_WAITING)
_HOT_SELECT_PROVIDER = _Hot(_SELECT_PROVIDER)
_HOT_INSERT_INCIDENT = _Hot(_INSERT_INCIDENT)
_HOT_UPDATE_INCIDENT = _Hot(_UPDATE_INCIDENT)
_HOT_INSERT_MESSAGE = _Hot(_INSERT_MESSAGE)
_HOT_INSERT_ACK = _Hot(_INSERT_ACK)
_HOT_INSERT_DELIVERY = _Hot(_INSERT_DELIVERY)
_HOT_INSERT_ENTRY = _Hot(_INSERT_ENTRY)
_HOT_SELECT_ENTRIES = _Hot(ENTRIES_OF)
_ADVISORY_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:pair, 0))")


@dataclass(frozen=True)
class Inbound:
    """One request as read from a partner's connection."""

    partner_id: str
    fingerprint: str
    body: bytes
    received_at: datetime
    idempotency_key: str | None = None
    strict: bool = False
    read_ms: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """What goes back to the partner, and what the acknowledgement log line says."""

    http_status: int
    document: bytes
    log_fields: dict[str, Any] = field(default_factory=dict)


def contract_id_of(value: str) -> str:
    """The contract id of ``AGREEMENT/ContractID``: the text before the first ``;`` tag."""
    return value.split(";", 1)[0].strip()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Prepared:
    """What :func:`decide_and_store` needs that no stored state decides, worked out before.

    :meth:`of` runs before the database transaction (in the listener's thread, while other
    transactions hold the database), so the transaction itself does less.  The texts and
    change are the document's after :meth:`~gsem.validation.DocumentValidator.precheck_matrix`,
    as the decision reads them; :func:`decide_and_store` reads them again when the matrix
    it applies drops elements.
    """

    digest: str  # hex SHA-256 of the body
    key: str  # the idempotency key: the partner's, else the digest, as the message keeps it
    ack_id: str  # the id of the acknowledgement that will answer the request
    received_at: datetime  # ``inbound.received_at`` in UTC, as the acknowledgement says it
    requester_ref: str | None  # RequesterID
    provider_ref: str | None  # ProviderID
    contract: str | None  # AGREEMENT/ContractID as sent
    problem: bool  # whether the document has a PROBLEM
    #: What the document changes in its incident, when it may change one.
    change: IncidentChange | None = None

    @classmethod
    def of(cls, inbound: Inbound, inspection: Inspection) -> Prepared:
        """What can be prepared for *inbound*, whose validation is *inspection*."""
        digest = hashlib.sha256(inbound.body).hexdigest()
        root = inspection.root
        change = None
        if root is not None and inspection.accepted and inspection.transaction_name != _QUERY:
            change = IncidentChange.prepare(root)
        key = (inbound.idempotency_key or digest)[:_KEY_LENGTH]
        return cls(digest=digest, key=key, ack_id=new_ulid(),
                   received_at=inbound.received_at.replace(tzinfo=UTC), change=change, **_texts(inspection))


def prepare_inbound(validator: DocumentValidator,
                    inbound: Inbound) -> tuple[Inspection, ForwardTemplate | None, Prepared]:
    """What :meth:`Exchange.receive` works out for *inbound* before its database transaction.

    The validation that no stored state decides, the forwarding template (when the
    document may be forwarded) and :class:`Prepared`: what :func:`decide_and_store` takes.
    The benchmarks run this too, so that they measure what the hub does.
    """
    inspection = validator.inspect(inbound.body, strict=inbound.strict)
    forward = None
    if inspection.accepted and inspection.transaction_name != _QUERY:
        # From the validator's tree, before the matrix drops what it ignores from it.
        forward = ForwardTemplate.prepare(inbound.body, inspection.root)
    validator.precheck_matrix(inspection)
    return inspection, forward, Prepared.of(inbound, inspection)


def _texts(inspection: Inspection) -> dict[str, Any]:
    """The document's texts that :class:`Prepared` keeps.

    The stripped texts of the first RequesterID and ProviderID (None when absent or
    empty), ``findtext("AGREEMENT/ContractID")`` and whether there is a PROBLEM, read in
    one pass over the root's children: two ``text`` calls, ``findtext`` and ``find``
    (lxml's ElementPath) cost four times as much.
    """
    root = inspection.root
    requester_ref = provider_ref = contract = None
    problem = seen_requester = seen_provider = False
    for child in () if root is None else root:
        tag = child.tag
        if tag == "RequesterID":
            if not seen_requester:
                requester_ref, seen_requester = (child.text or "").strip() or None, True
        elif tag == "ProviderID":
            if not seen_provider:
                provider_ref, seen_provider = (child.text or "").strip() or None, True
        elif tag == "AGREEMENT":
            if contract is None:
                for found in child.iterchildren("ContractID"):
                    contract = found.text or ""
                    break
        elif tag == "PROBLEM":
            problem = True
    return dict(requester_ref=requester_ref, provider_ref=provider_ref, contract=contract, problem=problem)


def _apply_matrix(validator: DocumentValidator, inspection: Inspection, spec: TransactionSpec,
                  prepared: Prepared) -> Prepared:
    """Apply *spec*'s matrix; *prepared*, with its texts read again if that dropped elements.

    The matrix only drops children of the root (the elements *spec* does not use); when it
    drops none, what was read before still holds.
    """
    root = inspection.root
    assert root is not None
    children = len(root)
    validator.apply_matrix(inspection, spec)
    return prepared if len(root) == children else replace(prepared, change=None, **_texts(inspection))


@dataclass
class _Found:
    incident: Any | None = None  # a row of model.incidents (the columns of _SELECT_BY_REF)
    role: Role | None = None
    problems: list[Problem] = field(default_factory=list)


def _find_incident(store: _Store, inbound: Inbound, name: str, prepared: Prepared) -> _Found:
    """Which incident the document addresses, and in which role the partner sends it (SPEC §2)."""
    requester_ref = prepared.requester_ref
    provider_ref = prepared.provider_ref
    if requester_ref is None:
        return _Found()  # missing-mandatory is reported by the matrix
    rows = _HOT_SELECT_BY_REF.rows(store, {"requester_ref": requester_ref})
    senders = {role for spec in registry.specs_named(name) for role in spec.sender}
    mine = []
    for row in rows:
        for role, party in ((Role.REQUESTER, row.requester_id), (Role.PROVIDER, row.provider_id)):
            if party != inbound.partner_id:
                continue
            if provider_ref and row.provider_ref and provider_ref != row.provider_ref:
                continue
            mine.append((row, role))
    if not mine:
        if any(inbound.partner_id in (row.requester_id, row.provider_id) for row in rows):
            # The partner's own incident, named with a ProviderID that is not its: there
            # is no incident with that pair for this partner, not a foreign one.
            return _Found(problems=[Problem(
                AckCode.UNKNOWN_INCIDENT,
                f"no incident {requester_ref!r} with ProviderID {provider_ref!r} for this partner",
                "/SERVICE_INCIDENT/ProviderID")])
        if rows:
            # The RequesterID exists, but not among this partner's incidents: a partner
            # can never touch another partner's incident.
            return _Found(problems=[Problem(AckCode.NOT_AUTHORIZED, "this partner is not a party to that incident",
                                            "/SERVICE_INCIDENT/RequesterID")])
        return _Found(problems=[Problem(AckCode.UNKNOWN_INCIDENT, f"no incident {requester_ref!r} for this partner",
                                        "/SERVICE_INCIDENT/RequesterID")])
    allowed = [(row, role) for row, role in mine if role in senders]
    if not allowed:
        row, role = mine[0]
        wanted = " or ".join(sorted(r.value for r in senders))
        return _Found(problems=[Problem(AckCode.NOT_AUTHORIZED,
                                        f"{name} is sent by the incident's {wanted}; this partner is its {role.value}",
                                        "/SERVICE_INCIDENT/TransactionName")])
    if len(allowed) > 1:
        return _Found(problems=[Problem(AckCode.AMBIGUOUS_INCIDENT,
                                        f"RequesterID {requester_ref!r} matches {len(allowed)} incidents; send ProviderID",
                                        "/SERVICE_INCIDENT/ProviderID")])
    row, role = allowed[0]
    return _Found(incident=row, role=role)


def decide_and_store(conn: Connection, inbound: Inbound, inspection: Inspection,
                     validator: DocumentValidator, timings: dict[str, float],
                     forward: ForwardTemplate | None = None, prepared: Prepared | None = None) -> Outcome:
    """Everything that depends on stored state, and the one commit that records it.

    Runs inside a transaction (``Database.run_batched``: on SQLite on the reactor thread,
    in a group commit; on PostgreSQL in a database thread).  Returns the
    acknowledgement to send; raises only when the database fails (then nothing is kept).
    *forward*, when given, is ``inbound.body`` prepared for forwarding
    (:class:`~gsem.incident.ForwardTemplate`), and *prepared* is :meth:`Prepared.of`
    *inbound*: less work while the database is held.
    """
    started = time.perf_counter()
    if prepared is None:
        prepared = Prepared.of(inbound, inspection)
    store = _Store(conn)
    digest = prepared.digest
    key = prepared.key
    now = _now()

    _wait_for_same_key(conn, inbound.partner_id, key)
    known = _HOT_SELECT_KEY.first(store, {"partner_id": inbound.partner_id, "key": key})
    if known is not None and known.digest == digest:
        original = known
        assert original.document is not None, f"acknowledgement {known.ack_id} of a kept key is missing"
        replay = mark_duplicate(original.document)
        _record(store, inbound, prepared, now, accepted=False, transaction_name=original.transaction_name,
                requester_ref=original.requester_ref, provider_ref=original.provider_ref, incident_id=None,
                state_before=None, state_after=original.state_after, http_status=original.http_status,
                result="Yes", error_codes=[], document=replay, timings=timings, duplicate_of=known.ack_id)
        return Outcome(original.http_status, replay, {"duplicate_of": known.ack_id, "result": "Yes",
                                                     "transaction": original.transaction_name,
                                                     "requester_id": original.requester_ref})

    ack = Acknowledgement(ack_id=prepared.ack_id, received_at=prepared.received_at, digest=digest,
                          transaction_name=inspection.transaction_name,
                          requester_ref=prepared.requester_ref, provider_ref=prepared.provider_ref,
                          errors=list(inspection.errors), warnings=list(inspection.warnings))
    if known is not None:
        ack.errors = [Problem(AckCode.IDEMPOTENCY_CONFLICT,
                              f"Idempotency-Key {key!r} was used for a different body (acknowledgement {known.ack_id})",
                              None)] + list(ack.errors)

    incident = None
    spec: TransactionSpec | None = None
    new_state: State | None = None
    state_before: State | None = None
    document_bytes: bytes | None = None  # the incident's document after the transaction ...
    entries: list[Entry] = []  # ... and the entries it appends (gsem.incident)
    recipient: str | None = None
    provider_id: str | None = None
    texts = prepared  # the document's texts, as the matrix left them
    if inspection.root is not None and inspection.transaction_name and registry.specs_named(inspection.transaction_name):
        name = inspection.transaction_name
        if name == "Service_Request":
            spec = registry.find(name, Role.REQUESTER)
            assert spec is not None
            texts = _apply_matrix(validator, inspection, spec, prepared)
            contract = texts.contract
            if contract:
                provider_id = _provider_for(store, inbound.partner_id, contract_id_of(contract))
                if provider_id is None:
                    inspection.errors.append(Problem(
                        AckCode.NOT_AUTHORIZED,
                        f"no agreement lets {inbound.partner_id} pass calls under contract {contract_id_of(contract)!r}",
                        "/SERVICE_INCIDENT/AGREEMENT/ContractID"))
            ref = texts.requester_ref
            exists = ref is not None and _HOT_SELECT_OWN_REF.first(
                store, {"requester_id": inbound.partner_id, "requester_ref": ref})
            inspection.errors.extend(check_state(spec, IncidentFacts(State.BEGINNING if exists else None)))
            if not exists and ref is not None and provider_id is not None:
                inspection.errors.extend(_unaddressable(store, provider_id, ref))
            recipient = provider_id
        else:
            found = _find_incident(store, inbound, name, prepared)
            inspection.errors.extend(found.problems)
            if found.incident is not None and found.role is not None:
                incident = found.incident
                spec = registry.find(name, found.role)
                assert spec is not None
                texts = _apply_matrix(validator, inspection, spec, prepared)
                state_before = State(incident.state)
                inspection.errors.extend(check_state(
                    spec, IncidentFacts(state_before, incident.problem_with_request)))
                recipient = incident.provider_id if found.role is Role.REQUESTER else incident.requester_id
        ack.errors = (ack.errors[:1] if known is not None else []) + list(inspection.errors)
        ack.warnings = list(inspection.warnings)
        ack.provider_ref = texts.provider_ref or (incident.provider_ref if incident is not None else None)

    if ack.accepted:
        assert spec is not None and inspection.root is not None
        facts = IncidentFacts(state_before, incident.problem_with_request if incident is not None else False)
        new_state = spec.next_state(inspection.root, facts)
        ack.current_state = new_state.value
        if spec.name == _QUERY:
            # The rows are (after_children, xml): entries as assemble takes them.
            ack.incident = stored_incident_for_query(
                incident.document, _HOT_SELECT_ENTRIES.rows(store, {"incident_id": incident.id}), new_state.value)
        else:
            change = texts.change if texts.change is not None else IncidentChange.prepare(inspection.root)
            document_bytes, entries = change.apply(None if incident is None else incident.document)
    elif incident is not None:
        ack.current_state = incident.state

    incident_id = None if incident is None else incident.id
    if ack.accepted and document_bytes is not None:
        provider_ref = ack.provider_ref if spec is not None and Role.PROVIDER in spec.sender else None
        if incident is None:
            incident_id = _HOT_INSERT_INCIDENT.insert(store, dict(
                requester_id=inbound.partner_id, provider_id=provider_id, requester_ref=ack.requester_ref,
                provider_ref=None, state=new_state.value, document=document_bytes,
                problem_with_request=texts.problem, version=1, created_at=now, updated_at=now))
        else:
            values: dict[str, Any] = dict(incident_id=incident.id, state=new_state.value, document=document_bytes,
                                          updated_at=now, version=incident.version + 1)
            if provider_ref and not incident.provider_ref:
                values["provider_ref"] = provider_ref
            _HOT_UPDATE_INCIDENT.write(store, values)

    document = ack.to_bytes()
    http_status = ack.http_status
    error_codes = ack.error_codes
    result = "Yes" if ack.accepted else "No"
    timings["decide_ms"] = round((time.perf_counter() - started) * 1000, 3)
    message_id = _record(store, inbound, prepared, now, accepted=ack.accepted,
                         transaction_name=ack.transaction_name, requester_ref=ack.requester_ref,
                         provider_ref=ack.provider_ref, incident_id=incident_id,
                         state_before=state_before.value if state_before else None, state_after=ack.current_state,
                         http_status=http_status, result=result, error_codes=error_codes, document=document,
                         timings=timings)
    for place, xml in entries:  # only when accepted: the incident was written above
        _HOT_INSERT_ENTRY.write(store, dict(incident_id=incident_id, message_id=message_id,
                                            after_children=place, xml=xml))
    # The message, stored as accepted, holds the idempotency key now (``_SELECT_KEY``).
    if ack.accepted and spec is not None and spec.name != _QUERY and recipient is not None:
        _HOT_INSERT_DELIVERY.write(store, dict(
            message_id=message_id, incident_id=incident_id, recipient_id=recipient, state="pending",
            transaction_name=ack.transaction_name, requester_ref=ack.requester_ref,
            document=forward.render(state=ack.current_state, provider_ref=ack.provider_ref) if forward
            else forwarded_document(inbound.body, state=ack.current_state, provider_ref=ack.provider_ref),
            attempts=0, next_attempt_at=now, created_at=now, updated_at=now))
    return Outcome(http_status, document, {
        "result": result, "transaction": ack.transaction_name,
        "requester_id": ack.requester_ref, "provider_id": ack.provider_ref, "state": ack.current_state,
        "errors": [{"code": p.code.code, "path": p.path} for p in ack.errors], "ack_id": ack.ack_id})


def _wait_for_same_key(conn: Connection, partner_id: str, key: str) -> None:
    """Make transactions with the same idempotency key wait for each other.

    Without this, on PostgreSQL (READ COMMITTED, several DB threads, several nodes) a copy
    sent on another connection reads "key unknown" while the original is still being
    decided, then waits for the original's incident row lock and is decided against the
    state the original left: a resent Entitlement came back ``not-allowed-in-state`` (409)
    instead of as the duplicate of the accepted one.  The transaction-scoped advisory lock
    makes the copy's key lookup run after the original committed.  SQLite needs nothing:
    ``BEGIN IMMEDIATE`` already serialises every writer.
    """
    if conn.dialect.name == "postgresql":
        # Partner ids hold no spaces, so "partner key" names one (partner, key) pair; a
        # hash collision between two pairs only makes them wait for each other.
        conn.execute(_ADVISORY_LOCK, {"pair": f"{partner_id} {key}"})


def _unaddressable(store: _Store, provider_id: str, requester_ref: str) -> list[Problem]:
    """Refuse a second incident the provider could not tell apart from one it has (SPEC §2).

    A provider addresses incidents by RequesterID, and by ProviderID when another
    requester used the same RequesterID.  An incident that has no ProviderID yet can only
    be addressed by RequesterID, so while one exists a second one with the same
    RequesterID at the same provider could be entitled by neither (docs/decisions.md).
    """
    waiting = _HOT_SELECT_WAITING.first(store, {"provider_id": provider_id, "requester_ref": requester_ref})
    if waiting is None:
        return []
    return [Problem(AckCode.DUPLICATE_INCIDENT,
                    f"the provider already has an incident {requester_ref!r} from another requester that it has "
                    "not yet given a ProviderID; use another RequesterID, or send again after its Entitlement",
                    "/SERVICE_INCIDENT/RequesterID")]


def _provider_for(store: _Store, requester_id: str, contract_id: str) -> str | None:
    row = _HOT_SELECT_PROVIDER.first(store, {"requester_id": requester_id, "contract_id": contract_id})
    return None if row is None else row.provider_id


def _record(store: _Store, inbound: Inbound, prepared: Prepared, now: datetime, *, accepted: bool, transaction_name: str | None, requester_ref: str | None, provider_ref: str | None,
            incident_id: int | None, state_before: str | None, state_after: str | None, http_status: int,
            result: str, error_codes: list[str], document: bytes, timings: dict[str, float],
            duplicate_of: str | None = None) -> int:
    """Keep the message and the acknowledgement sent for it (SPEC §6: every message is kept)."""
    kept_timings: dict[str, Any] = timings
    if duplicate_of:
        kept_timings = {**timings, "duplicate_of": duplicate_of}
    message_id = _HOT_INSERT_MESSAGE.insert(store, dict(
        partner_id=inbound.partner_id, cert_fingerprint=inbound.fingerprint, received_at=now, body=inbound.body,
        digest=prepared.digest, idempotency_key=prepared.key, transaction_name=_clip(transaction_name, 64),
        requester_ref=_clip(requester_ref, 64), incident_id=incident_id, accepted=accepted,
        state_before=state_before, state_after=state_after, ack_id=prepared.ack_id,
        timings=json.dumps(kept_timings)))
    _HOT_INSERT_ACK.write(store, dict(
        ack_id=prepared.ack_id, message_id=message_id, partner_id=inbound.partner_id, created_at=now,
        transaction_name=_clip(transaction_name, 64), requester_ref=_clip(requester_ref, 64),
        provider_ref=_clip(provider_ref, 64), result=result, http_status=http_status,
        error_codes=("," + ",".join(error_codes) + ",") if error_codes else "",
        state_after=state_after, document=document))
    return message_id


def _clip(value: str | None, size: int) -> str | None:
    # Rejected documents may carry over-long ids; the acknowledgement log keeps a prefix.
    return None if value is None else value[:size]


class Exchange:
    """Receives transactions for the listener: validation, then one durable decision."""

    def __init__(self, database: Any, validator: DocumentValidator, ack_log: Any = None) -> None:
        self.database = database
        self.validator = validator
        self.ack_log = ack_log

    async def receive(self, inbound: Inbound) -> Outcome:
        """Validate and store *inbound*; the outcome's document is its acknowledgement."""
        started = time.perf_counter()
        timings: dict[str, float] = {"read_ms": round(inbound.read_ms, 3)}
        outcome: Outcome | None = None
        for attempt in range(_RACE_RETRIES):
            # What can be prepared without the store is, here: the database (which, with
            # several workers, they take turns at) is what transactions queue for.
            inspection, forward, prepared = prepare_inbound(self.validator, inbound)
            timings["validate_ms"] = round((time.perf_counter() - started) * 1000, 3)
            try:
                # Group commit: on SQLite this transaction may share its commit with
                # others queued at the same moment; the outcome arrives after that commit.
                outcome = await self.database.run_batched(
                    lambda conn, i=inspection, f=forward, p=prepared: decide_and_store(
                        conn, inbound, i, self.validator, timings, f, p))
                break
            except (IntegrityError, BatchUndone):
                # Lost a race on a unique key (the same idempotency key or RequesterID on
                # another connection), and the retry sees the winner's row; or another
                # transaction of the same group commit failed and took this one's changes
                # with it.  Either way nothing was kept, and it is decided again from scratch.
                if attempt == _RACE_RETRIES - 1:
                    outcome = self._unavailable(inbound, "the store kept refusing the transaction")
            except SQLAlchemyError as e:
                log.failure("store could not commit {partner}", partner=inbound.partner_id)
                outcome = self._unavailable(inbound, f"the store could not commit ({type(e).__name__})")
                break
        assert outcome is not None
        timings["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if self.ack_log is not None:
            self.ack_log.write(inbound, outcome, timings)
        return outcome

    async def refuse(self, inbound: Inbound, problem: Problem) -> Outcome:
        """Record and acknowledge a request refused before its body was read (``too-large``)."""
        inspection = Inspection(tree=None, errors=[problem])
        timings: dict[str, float] = {}
        try:
            outcome = await self.database.run(
                lambda conn: decide_and_store(conn, inbound, inspection, self.validator, timings))
        except Exception:
            log.failure("recording a refusal from {partner}", partner=inbound.partner_id)
            ack = Acknowledgement(ack_id=new_ulid(), received_at=inbound.received_at.replace(tzinfo=UTC),
                                  digest="", errors=[problem])
            outcome = Outcome(ack.http_status, ack.to_bytes(), {"result": "No", "ack_id": ack.ack_id})
        if self.ack_log is not None:
            self.ack_log.write(inbound, outcome, timings)
        return outcome

    @staticmethod
    def _unavailable(inbound: Inbound, message: str) -> Outcome:
        ack = Acknowledgement(ack_id=new_ulid(), received_at=inbound.received_at.replace(tzinfo=UTC),
                              digest=hashlib.sha256(inbound.body).hexdigest(),
                              errors=[Problem(AckCode.UNAVAILABLE, message + "; nothing was kept, send again")])
        return Outcome(ack.http_status, ack.to_bytes(), {"result": "No", "errors": [{"code": "unavailable"}],
                                                        "ack_id": ack.ack_id})
