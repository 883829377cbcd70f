"""compaction: summaries in the item sequence, and when to write them (docs/compaction.md)

Revision ID: 0014
Revises: 0013

A `compaction` item is a row of `messages` like any other item (type `compaction`, role `system`, its summary in
`content`, the range it covers in `payload`), so no column changes for it; a partial index finds a thread's
newest one without reading the thread. `compact_at` (threads and assistants) is the share of the model's window
past which a thread is compacted in the background; `summary_model` names the model an assistant's summaries
are written by.

Downgrading drops the settings and the index; compaction items stay as rows (older code never reads them into a
context, as it reads only the item types it knows).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_compaction",
        "messages",
        ["organization_id", "thread_id", "seq"],
        sqlite_where=sa.text("type = 'compaction'"),
        postgresql_where=sa.text("type = 'compaction'"),
    )
    op.add_column("threads", sa.Column("compact_at", sa.Float(), nullable=True))
    op.add_column("assistants", sa.Column("compact_at", sa.Float(), nullable=True))
    op.add_column("assistants", sa.Column("summary_model", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("assistants", "summary_model")
    op.drop_column("assistants", "compact_at")
    op.drop_column("threads", "compact_at")
    op.drop_index("ix_messages_compaction", table_name="messages")
