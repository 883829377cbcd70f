"""thread forks and imports: a fork's inherited count, stable source ids for idempotent imports

Revision ID: 0012
Revises: 0011

A fork is a normal thread with the parent pointer chains already use (migration 0003): its history is its source's
live items up to the fork point, then its own. `inherited_message_count` is how many of those live items it reads
from its sources, so `message_count` of every surface is the whole history without counting rows on each read
(see docs/threads-as-data.md).

`source_id` says where an imported thread or item came from ("chatgpt:<conversation id>", "threadline:<org>/<id>"):
re-importing the same file finds its threads by it (unique per organization) and creates nothing new.

Plain ADD/DROP COLUMN on both backends; existing threads inherit nothing (0) and were imported from nowhere (NULL).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "threads", sa.Column("inherited_message_count", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column("threads", sa.Column("source_id", sa.String(length=255), nullable=True))
    op.add_column("messages", sa.Column("source_id", sa.String(length=255), nullable=True))
    op.create_index(
        "ix_threads_organization_id_source_id",
        "threads",
        ["organization_id", "source_id"],
        unique=True,
        sqlite_where=sa.text("source_id IS NOT NULL"),
        postgresql_where=sa.text("source_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_threads_organization_id_source_id", table_name="threads")
    op.drop_column("messages", "source_id")
    op.drop_column("threads", "source_id")
    op.drop_column("threads", "inherited_message_count")
