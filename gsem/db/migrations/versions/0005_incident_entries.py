"""An incident's appended entries as rows of their own, written once.

ACTIVITY, SOLUTION and ATTACHMENT entries are appended to an incident (SPEC §4.2).  Kept
inside ``incidents.document``, they were written again, whole, by every later
transaction on the incident, and read and scanned again by every decision: the cost of
a transaction grew with the incident's history (docs/benchmarks.md).  They move to
``incident_entries``, one row each with its place among the document's children;
``gsem.incident.assemble`` puts the whole document back together.  The entries moved
here keep their order; which message appended each is not recorded (``message_id`` is
NULL), as the documents did not say.

Revision ID: 0005_incident_entries
Revises: 0004_keys_on_messages
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gsem.incident import assemble, split

revision = "0005_incident_entries"
down_revision = "0004_keys_on_messages"
branch_labels = None
depends_on = None

_incidents = sa.table("incidents", sa.column("id", sa.Integer), sa.column("document", sa.LargeBinary))
_entries = sa.table("incident_entries", sa.column("id", sa.Integer), sa.column("incident_id", sa.Integer),
                    sa.column("after_children", sa.Integer), sa.column("xml", sa.LargeBinary))


def _documents(conn: sa.Connection) -> list[tuple[int, bytes]]:
    return [(row.id, bytes(row.document)) for row in conn.execute(
        sa.select(_incidents.c.id, _incidents.c.document).order_by(_incidents.c.id))]


def upgrade() -> None:
    """The table, then each stored incident's entries moved out of its document."""
    op.create_table(
        "incident_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.Integer, sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=True),
        sa.Column("after_children", sa.Integer, nullable=False),
        sa.Column("xml", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_incident_entries_incident", "incident_entries", ["incident_id", "id"])
    conn = op.get_bind()
    for incident_id, document in _documents(conn):
        base, entries = split(document)
        if not entries:
            continue
        conn.execute(_entries.insert(), [dict(incident_id=incident_id, after_children=place, xml=xml)
                                         for place, xml in entries])
        conn.execute(_incidents.update().where(_incidents.c.id == incident_id).values(document=base))


def downgrade() -> None:
    """Each incident's entries back into its document; the table dropped."""
    conn = op.get_bind()
    for incident_id, base in _documents(conn):
        entries = [(row.after_children, bytes(row.xml)) for row in conn.execute(
            sa.select(_entries.c.after_children, _entries.c.xml)
            .where(_entries.c.incident_id == incident_id).order_by(_entries.c.id))]
        if entries:
            conn.execute(_incidents.update().where(_incidents.c.id == incident_id)
                         .values(document=assemble(base, entries)))
    op.drop_index("ix_incident_entries_incident", table_name="incident_entries")
    op.drop_table("incident_entries")
