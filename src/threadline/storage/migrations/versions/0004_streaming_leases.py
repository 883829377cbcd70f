"""streaming leases: a partial index of the threads mid-turn, by lease expiry

Revision ID: 0004
Revises: 0003

A server killed mid-turn leaves its threads `streaming` under a lease nobody renews. Start-up and a periodic pass
settle them (services/recovery.py): they look for streaming threads whose lease expired. The index holds only the
threads with a turn running, so that look-up costs the same however many threads the database holds.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_threads_streaming_lease_expires_at",
        "threads",
        ["lease_expires_at"],
        sqlite_where=sa.text("status = 'streaming'"),
        postgresql_where=sa.text("status = 'streaming'"),
    )


def downgrade() -> None:
    op.drop_index("ix_threads_streaming_lease_expires_at", table_name="threads")
