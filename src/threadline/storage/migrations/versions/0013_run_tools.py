"""run tools: an assistant's function tools, and the runs waiting for tool outputs

Revision ID: 0013
Revises: 0012

`assistants.tools` holds the assistant's function tools in the Assistants v2 spelling (null: none). A run whose
model called tools waits in `requires_action` holding no lease (docs/runs.md); the partial index finds a thread's
waiting run without reading its other runs, and holds only the runs waiting right now.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("assistants") as batch:
        batch.add_column(sa.Column("tools", JSONType, nullable=True))
    op.create_index(
        "ix_responses_waiting_runs",
        "responses",
        ["organization_id", "thread_id"],
        sqlite_where=sa.text("status = 'requires_action'"),
        postgresql_where=sa.text("status = 'requires_action'"),
    )


def downgrade() -> None:
    op.drop_index("ix_responses_waiting_runs", table_name="responses")
    with op.batch_alter_table("assistants") as batch:
        batch.drop_column("tools")
