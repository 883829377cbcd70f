"""rate limits: a per-credential request counter, per-organization limits, organization owners

Revision ID: 0007
Revises: 0006

`rate_limit_counters` holds one row per credential: its request count in the current fixed one-minute window,
counted (and moved to a new window) by one upsert per request, so every process shares it. Concurrent turns need
no table: they hold named leases in `leases`, which expire when a process dies. An organization's owner (its
first member) may tighten the server's limits for the organization: the two nullable columns.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_counters",
        sa.Column("credential_id", sa.String(length=64), nullable=False),
        sa.Column("window_minute", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("credential_id", name=op.f("pk_rate_limit_counters")),
    )
    op.add_column("organizations", sa.Column("rate_limit_requests_per_minute", sa.Integer(), nullable=True))
    op.add_column("organizations", sa.Column("rate_limit_concurrent_turns", sa.Integer(), nullable=True))
    # Organizations created before owners existed: their first member (who created them) owns them.
    op.execute(
        sa.text(
            "UPDATE memberships SET role = 'owner' WHERE NOT EXISTS ("
            " SELECT 1 FROM memberships AS earlier"
            " WHERE earlier.organization_id = memberships.organization_id"
            " AND (earlier.created_at < memberships.created_at"
            "  OR (earlier.created_at = memberships.created_at AND earlier.user_id < memberships.user_id)))"
        )
    )


def downgrade() -> None:
    op.execute(sa.text("UPDATE memberships SET role = 'member' WHERE role = 'owner'"))
    op.drop_column("organizations", "rate_limit_concurrent_turns")
    op.drop_column("organizations", "rate_limit_requests_per_minute")
    op.drop_table("rate_limit_counters")
