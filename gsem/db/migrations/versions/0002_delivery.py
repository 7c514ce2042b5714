"""Delivery: leases, receiver acknowledgements, attempts and the operators' audit trail.

Revision ID: 0002_delivery
Revises: 0001_initial
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_delivery"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add what forwarding needs to the outbox, and its two logs."""
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("transaction_name", sa.String(64), nullable=True))
        batch.add_column(sa.Column("requester_ref", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_owner", sa.String(100), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("delivered_at", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("acknowledged_at", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("replay_of", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_deliveries_replay_of", "deliveries", ["replay_of"], ["id"])
        batch.create_index("ix_deliveries_incident_order", ["incident_id", "message_id"])
        batch.create_index("ix_deliveries_due", ["state", "next_attempt_at"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("node", sa.String(100), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("receiver_ack", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_delivery_attempts_delivery_id", "delivery_attempts", ["delivery_id"])
    op.create_table(
        "delivery_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("new_delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=True),
    )
    op.create_index("ix_delivery_audit_delivery_id", "delivery_audit", ["delivery_id"])


def downgrade() -> None:
    """Remove them again."""
    op.drop_table("delivery_audit")
    op.drop_table("delivery_attempts")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_due")
        batch.drop_index("ix_deliveries_incident_order")
        batch.drop_constraint("fk_deliveries_replay_of", type_="foreignkey")
        for column in ("replay_of", "acknowledged_at", "delivered_at", "lease_until", "lease_owner",
                       "requester_ref", "transaction_name"):
            batch.drop_column(column)
