"""typed items: a thread holds messages, function calls and their outputs (docs/items.md)

Revision ID: 0006
Revises: 0005

`messages.type` says what an item is; every existing row is a `message` (the server default fills them in, so
nothing is rewritten by hand and nothing is lost). `call_id` pairs a `function_call` with its
`function_call_output` (a partial index finds a call by it); `payload` holds the rest of what is structured. The
text column stays where it is, so the full-text indexes of migration 0002 keep working: plain ADD/DROP COLUMN on
both backends (SQLite >= 3.35 drops a column in place, keeping rowids).

Downgrading keeps function calls and outputs as rows of their roles (`assistant` with the arguments, `tool` with
the output) but forgets their pairing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("messages", sa.Column("type", sa.String(length=32), nullable=False, server_default="message"))
    op.add_column("messages", sa.Column("call_id", sa.String(length=128), nullable=True))
    op.add_column("messages", sa.Column("payload", _JSON, nullable=True))
    op.create_index(
        "ix_messages_organization_id_thread_id_call_id",
        "messages",
        ["organization_id", "thread_id", "call_id"],
        sqlite_where=sa.text("call_id IS NOT NULL"),
        postgresql_where=sa.text("call_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_organization_id_thread_id_call_id", table_name="messages")
    op.drop_column("messages", "payload")
    op.drop_column("messages", "call_id")
    op.drop_column("messages", "type")
