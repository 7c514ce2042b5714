"""Every table of gsem's store, in one place (SQLAlchemy 2 Core).

Times are UTC, stored as naive ``DateTime``.  Migrations under ``migrations/`` must
produce exactly these tables; a test compares them.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "metadata",
    "partners",
    "partner_certs",
    "agreements",
    "incidents",
    "messages",
    "acknowledgements",
    "deliveries",
    "delivery_attempts",
    "delivery_audit",
]

metadata = sa.MetaData()

#: A registered call-handling system (SPEC §2).
partners = sa.Table(
    "partners",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    # Unknown elements become errors instead of warnings (SPEC §3).
    sa.Column("strict", sa.Boolean, nullable=False, default=False),
    # push | pull | spool | adapter (SPEC §7); its settings as JSON text.
    sa.Column("delivery_mode", sa.String(16), nullable=False, default="pull"),
    sa.Column("delivery_config", sa.Text, nullable=False, default="{}"),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

#: A client certificate of a partner, identified by its SHA-256 fingerprint.
partner_certs = sa.Table(
    "partner_certs",
    metadata,
    # lowercase hex SHA-256 of the DER certificate, no separators
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False, index=True),
    sa.Column("subject", sa.String(500), nullable=False),
    sa.Column("issuer", sa.String(500), nullable=False),
    sa.Column("serial", sa.String(64), nullable=False),
    # the window in which the hub accepts it: the certificate's own validity by default
    sa.Column("valid_from", sa.DateTime, nullable=False),
    sa.Column("valid_until", sa.DateTime, nullable=False),
    sa.Column("retired_at", sa.DateTime, nullable=True),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("added_at", sa.DateTime, nullable=False),
)

#: A requester may pass calls to a provider under a contract id (SPEC §2).
agreements = sa.Table(
    "agreements",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("requester_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
    sa.Column("provider_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
    # the text before the first ';' of AGREEMENT/ContractID (tags are not part of the id)
    sa.Column("contract_id", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("requester_id", "contract_id", name="uq_agreement_requester_contract"),
)

#: One incident between a requester and a provider; its current document and state.
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("requester_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
    sa.Column("provider_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
    sa.Column("requester_ref", sa.String(64), nullable=False),  # RequesterID
    sa.Column("provider_ref", sa.String(64), nullable=True),  # ProviderID
    sa.Column("state", sa.String(40), nullable=False),
    # the merged SERVICE_INCIDENT (SPEC §4.2), UTF-8 XML, without its appended ACTIVITY,
    # SOLUTION and ATTACHMENT entries: those are incident_entries (gsem.incident.assemble)
    sa.Column("document", sa.LargeBinary, nullable=False),
    # whether the Service_Request carried a PROBLEM (decides Entitlement's next state)
    sa.Column("problem_with_request", sa.Boolean, nullable=False, default=False),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("requester_id", "requester_ref", name="uq_incident_requester_ref"),
    sa.Index("ix_incident_provider_ref", "provider_id", "requester_ref"),
    # added by 0003_requester_ref_index: _find_incident looks up by RequesterID alone
    sa.Index("ix_incident_requester_ref", "requester_ref"),
)

#: The appended entries of an incident (ACTIVITY, SOLUTION, ATTACHMENT: SPEC §4.2), each
#: written once, in the order they came (``id``).  Added by 0005_incident_entries: kept in
#: the incident's document, they were written again by every later transaction.
incident_entries = sa.Table(
    "incident_entries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
    # the accepted message that appended it; None for the entries 0005 moved out of documents
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=True),
    # how many children of the incident's document come before it (gsem.incident.Entry)
    sa.Column("after_children", sa.Integer, nullable=False),
    sa.Column("xml", sa.LargeBinary, nullable=False),  # the entry, UTF-8 XML
    sa.Index("ix_incident_entries_incident", "incident_id", "id"),
)

#: Every request the hub read from a partner, accepted or not (SPEC §6).
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # 0004_keys_on_messages dropped its index: no query looks messages up by partner alone
    sa.Column("partner_id", sa.String(64), nullable=False),
    sa.Column("cert_fingerprint", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),  # hex SHA-256 of body
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("transaction_name", sa.String(64), nullable=True),
    sa.Column("requester_ref", sa.String(64), nullable=True),
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=True, index=True),
    sa.Column("accepted", sa.Boolean, nullable=False),
    sa.Column("state_before", sa.String(40), nullable=True),
    sa.Column("state_after", sa.String(40), nullable=True),
    sa.Column("ack_id", sa.String(26), nullable=False, unique=True),
    # {"read_ms": …, "validate_ms": …, "commit_ms": …} as JSON text
    sa.Column("timings", sa.Text, nullable=False, default="{}"),
)
#: The idempotency keys (SPEC §6), per sending partner: an accepted message's key is bound
#: to its digest and its acknowledgement (a replayed duplicate is stored as not accepted).
#: Added by 0004_keys_on_messages, which replaced the table ``idempotency_keys``.
#: A query must say ``accepted = true`` as this does for the database to use the index.
KEYED = messages.c.accepted == sa.true()
sa.Index("uq_messages_partner_key", messages.c.partner_id, messages.c.idempotency_key, unique=True,
         sqlite_where=KEYED, postgresql_where=KEYED)

#: The acknowledgement sent for every message (the operators' log).
acknowledgements = sa.Table(
    "acknowledgements",
    metadata,
    sa.Column("ack_id", sa.String(26), primary_key=True),  # a ULID: sorts by time
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=False),
    sa.Column("partner_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    sa.Column("transaction_name", sa.String(64), nullable=True),
    sa.Column("requester_ref", sa.String(64), nullable=True),
    sa.Column("provider_ref", sa.String(64), nullable=True),
    sa.Column("result", sa.String(3), nullable=False),  # Yes | No
    sa.Column("http_status", sa.Integer, nullable=False),
    # ",code1,code2," so that one LIKE finds a code
    sa.Column("error_codes", sa.String(500), nullable=False, default=""),
    sa.Column("state_after", sa.String(40), nullable=True),
    sa.Column("document", sa.LargeBinary, nullable=False),  # the ACKNOWLEDGEMENT sent
)

#: The transactional outbox: one record per accepted transaction to forward (SPEC §7).
#:
#: States: ``pending`` (waiting for its turn or its next attempt), ``sent`` (handed over
#: by spool or pull; the receiver's acknowledgement is awaited), ``acknowledged`` (the
#: receiver said Yes), ``dead`` (permanent failure or retries exhausted), ``discarded``
#: and ``replayed`` (an operator's decision on a dead one).  Per incident, deliveries go
#: out in ``message_id`` order; a replay keeps the message id, so it keeps its place.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=False),
    # no index of its own since 0004_keys_on_messages: ix_deliveries_incident_order starts with it
    sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
    sa.Column("recipient_id", sa.String(64), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),  # what the receiver gets
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.DateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("receiver_ack", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    # added by 0002_delivery
    sa.Column("transaction_name", sa.String(64), nullable=True),
    sa.Column("requester_ref", sa.String(64), nullable=True),
    # a node (or a pull mailbox) holds a delivery while it works on it
    sa.Column("lease_owner", sa.String(100), nullable=True),
    sa.Column("lease_until", sa.DateTime, nullable=True),
    sa.Column("delivered_at", sa.DateTime, nullable=True),  # handed over to the receiver
    sa.Column("acknowledged_at", sa.DateTime, nullable=True),  # the receiver's acknowledgement
    sa.Column("replay_of", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=True),
    sa.Index("ix_deliveries_incident_order", "incident_id", "message_id"),
    sa.Index("ix_deliveries_due", "state", "next_attempt_at"),
)

#: Every attempt to hand a delivery over, and what came of it (SPEC §8: one log line each).
delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("node", sa.String(100), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=False),
    # acknowledged | accepted | transient | permanent
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("receiver_ack", sa.LargeBinary, nullable=True),
)

#: Operators' replays and discards: who, when, why (SPEC §7).
delivery_audit = sa.Table(
    "delivery_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),  # replay | discard
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("new_delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=True),
)
