"""Idempotency keys on the messages table; two indexes that were written but never read.

Every accepted transaction wrote its idempotency key as a row of its own
(``idempotency_keys``: the table, its primary key's index and an index on ``created_at``)
although its message row already holds the partner, the key, the digest, the
acknowledgement id and the time.  A unique index on ``messages (partner_id,
idempotency_key)`` over the accepted messages binds a key exactly as that table did (a
replayed duplicate is stored as not accepted), with one index written per transaction
instead of a row and two indexes.  Nothing ever deleted keys, so every key is kept as
long as its message: SPEC §6 asks for at least 30 days.

``ix_messages_partner_id`` was read by no query, and ``ix_deliveries_incident_id`` is the
first column of ``ix_deliveries_incident_order``, which serves its lookups; both went.

Revision ID: 0004_keys_on_messages
Revises: 0003_requester_ref_index
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_keys_on_messages"
down_revision = "0003_requester_ref_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Move the keys onto the messages; drop the keys' table and the unread indexes.

    Each key row was written with its accepted message, in the same transaction, from the
    same values: the messages already hold every key, and the unique index checks that.
    """
    accepted = sa.column("accepted", sa.Boolean) == sa.true()  # as the model says it
    op.create_index("uq_messages_partner_key", "messages", ["partner_id", "idempotency_key"], unique=True,
                    sqlite_where=accepted, postgresql_where=accepted)
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_messages_partner_id", table_name="messages")
    op.drop_index("ix_deliveries_incident_id", table_name="deliveries")


def downgrade() -> None:
    """The keys' table again, filled from the accepted messages; the two indexes again."""
    op.create_index("ix_deliveries_incident_id", "deliveries", ["incident_id"])
    op.create_index("ix_messages_partner_id", "messages", ["partner_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("partner_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("ack_id", sa.String(26), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.execute("INSERT INTO idempotency_keys (partner_id, key, digest, ack_id, created_at) "
               "SELECT partner_id, idempotency_key, digest, ack_id, received_at FROM messages WHERE accepted")
    op.drop_index("uq_messages_partner_key", table_name="messages")
