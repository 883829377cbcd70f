"""chains: previousResponseId chains fork from a turn of another thread without copying it

Revision ID: 0003
Revises: 0002

A chain thread (kind "chain") records where its history starts: `parent_thread_id` and `parent_seq`. Its context
is the parent's live messages with seq <= parent_seq, then its own (numbered on from parent_seq + 1), so branching
from any earlier response costs one thread row, not a copy of the history (docs/chains.md). The partial index finds
a thread's children (the retention sweeper keeps a chain while a live chain forks from it).

Plain ADD/DROP COLUMN on both backends (SQLite >= 3.35 drops a column in place, keeping rowids, so the FTS5
index of migration 0002 stays valid).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("threads", sa.Column("parent_thread_id", sa.String(length=128), nullable=True))
    op.add_column("threads", sa.Column("parent_seq", sa.Integer(), nullable=True))
    op.create_index(
        "ix_threads_organization_id_parent_thread_id",
        "threads",
        ["organization_id", "parent_thread_id"],
        sqlite_where=sa.text("parent_thread_id IS NOT NULL"),
        postgresql_where=sa.text("parent_thread_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_threads_organization_id_parent_thread_id", table_name="threads")
    op.drop_column("threads", "parent_seq")
    op.drop_column("threads", "parent_thread_id")
