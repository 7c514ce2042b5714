"""An index on incidents.requester_ref, for finding an incident by RequesterID alone.

A partner that sends anything but a Service_Request names the incident by its
RequesterID (and perhaps ProviderID); the hub looks it up among every incident with that
RequesterID (``gsem.exchange._find_incident``).  No index started with ``requester_ref``,
so each lookup scanned the whole table and cost grew with the number of incidents.

Revision ID: 0003_requester_ref_index
Revises: 0002_delivery
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003_requester_ref_index"
down_revision = "0002_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the index."""
    op.create_index("ix_incident_requester_ref", "incidents", ["requester_ref"])


def downgrade() -> None:
    """Drop it again."""
    op.drop_index("ix_incident_requester_ref", table_name="incidents")
