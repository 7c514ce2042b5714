"""The first schema: partners, certificates, agreements, incidents, messages, acks, outbox.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22

Written out in full rather than imported from ``gsem.db.model``: a migration is history
and must not change when the model does.  A test upgrades an empty database and compares
the result with the model.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table of gsem 0.1."""
    op.create_table(
        "partners",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("strict", sa.Boolean, nullable=False),
        sa.Column("delivery_mode", sa.String(16), nullable=False),
        sa.Column("delivery_config", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "partner_certs",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("partner_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("valid_from", sa.DateTime, nullable=False),
        sa.Column("valid_until", sa.DateTime, nullable=False),
        sa.Column("retired_at", sa.DateTime, nullable=True),
        sa.Column("pem", sa.Text, nullable=False),
        sa.Column("added_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_partner_certs_partner_id", "partner_certs", ["partner_id"])
    op.create_table(
        "agreements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("requester_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
        sa.Column("provider_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
        sa.Column("contract_id", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("requester_id", "contract_id", name="uq_agreement_requester_contract"),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("requester_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
        sa.Column("provider_id", sa.String(64), sa.ForeignKey("partners.id"), nullable=False),
        sa.Column("requester_ref", sa.String(64), nullable=False),
        sa.Column("provider_ref", sa.String(64), nullable=True),
        sa.Column("state", sa.String(40), nullable=False),
        sa.Column("document", sa.LargeBinary, nullable=False),
        sa.Column("problem_with_request", sa.Boolean, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("requester_id", "requester_ref", name="uq_incident_requester_ref"),
    )
    op.create_index("ix_incident_provider_ref", "incidents", ["provider_id", "requester_ref"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("cert_fingerprint", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("transaction_name", sa.String(64), nullable=True),
        sa.Column("requester_ref", sa.String(64), nullable=True),
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=True),
        sa.Column("accepted", sa.Boolean, nullable=False),
        sa.Column("state_before", sa.String(40), nullable=True),
        sa.Column("state_after", sa.String(40), nullable=True),
        sa.Column("ack_id", sa.String(26), nullable=False, unique=True),
        sa.Column("timings", sa.Text, nullable=False),
    )
    op.create_index("ix_messages_partner_id", "messages", ["partner_id"])
    op.create_index("ix_messages_incident_id", "messages", ["incident_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("partner_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("ack_id", sa.String(26), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.create_table(
        "acknowledgements",
        sa.Column("ack_id", sa.String(26), primary_key=True),
        sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("transaction_name", sa.String(64), nullable=True),
        sa.Column("requester_ref", sa.String(64), nullable=True),
        sa.Column("provider_ref", sa.String(64), nullable=True),
        sa.Column("result", sa.String(3), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("error_codes", sa.String(500), nullable=False),
        sa.Column("state_after", sa.String(40), nullable=True),
        sa.Column("document", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_acknowledgements_partner_id", "acknowledgements", ["partner_id"])
    op.create_index("ix_acknowledgements_created_at", "acknowledgements", ["created_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("recipient_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("document", sa.LargeBinary, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("receiver_ack", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_deliveries_incident_id", "deliveries", ["incident_id"])
    op.create_index("ix_deliveries_recipient_id", "deliveries", ["recipient_id"])


def downgrade() -> None:
    """Drop every table (the data goes with them)."""
    for table in ("deliveries", "acknowledgements", "idempotency_keys", "messages",
                  "incidents", "agreements", "partner_certs", "partners"):
        op.drop_table(table)
