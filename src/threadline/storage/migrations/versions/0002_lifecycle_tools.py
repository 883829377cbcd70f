"""lifecycle tools: full-text search indexes and retention indexes

Revision ID: 0002
Revises: 0001

Search (GET /v1/threads/search) never scans a table:
- SQLite: two external-content FTS5 tables, `messages_fts` (over messages.content) and `threads_fts` (over
  threads.title), keyed by the rowid of their content table and kept in sync by triggers. A later migration that
  recreates `messages` or `threads` (Alembic batch mode copies the table) must recreate these triggers and run
  `INSERT INTO <fts>(<fts>) VALUES ('rebuild')`.
- PostgreSQL: stored generated `tsvector` columns (`messages.content_tsv`, `threads.title_tsv`, over
  `to_tsvector('simple', …)`) with GIN indexes. Stored rather than expression indexes: a query that matches many
  rows then checks a ready tsvector instead of re-parsing every text (about 10× faster). They are not mapped in
  `tables.py` (PostgreSQL only); adding them rewrites both tables once.

Retention (the sweeper) finds its rows through partial indexes instead of scanning: threads by age, inactive
threads that still hold messages, hidden `previousResponseId` chains, soft-deleted messages, the edit history
of a thread.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (fts table, content table, column)
_SQLITE_FTS = (("messages_fts", "messages", "content"), ("threads_fts", "threads", "title"))


def _sqlite_fts_up(fts: str, table: str, column: str) -> None:
    op.execute(
        f"CREATE VIRTUAL TABLE {fts} USING fts5({column}, content='{table}', tokenize='unicode61 remove_diacritics 2')"
    )
    op.execute(
        f"CREATE TRIGGER {fts}_ai AFTER INSERT ON {table} BEGIN "
        f"INSERT INTO {fts}(rowid, {column}) VALUES (new.rowid, new.{column}); END"
    )
    op.execute(
        f"CREATE TRIGGER {fts}_ad AFTER DELETE ON {table} BEGIN "
        f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.rowid, old.{column}); END"
    )
    # Only a change of the indexed column touches the index (threads are updated on every message).
    op.execute(
        f"CREATE TRIGGER {fts}_au AFTER UPDATE OF {column} ON {table} BEGIN "
        f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.rowid, old.{column}); "
        f"INSERT INTO {fts}(rowid, {column}) VALUES (new.rowid, new.{column}); END"
    )
    op.execute(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')")


def _sqlite_fts_down(fts: str, table: str) -> None:
    for suffix in ("ai", "ad", "au"):
        op.execute(f"DROP TRIGGER IF EXISTS {fts}_{suffix}")
    op.execute(f"DROP TABLE IF EXISTS {fts}")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for fts, table, column in _SQLITE_FTS:
            _sqlite_fts_up(fts, table, column)
    else:
        for table, column, source in (("messages", "content_tsv", "content"), ("threads", "title_tsv", "title")):
            op.execute(
                f"ALTER TABLE {table} ADD COLUMN {column} tsvector "
                f"GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, coalesce({source}, ''))) STORED"
            )
        op.execute("CREATE INDEX ix_messages_content_fts ON messages USING gin (content_tsv)")
        op.execute("CREATE INDEX ix_threads_title_fts ON threads USING gin (title_tsv)")

    op.create_index(
        "ix_threads_last_message_at_with_messages",
        "threads",
        ["last_message_at"],
        sqlite_where=sa.text("message_count > 0"),
        postgresql_where=sa.text("message_count > 0"),
    )
    op.create_index(
        "ix_threads_chain_last_message_at",
        "threads",
        ["last_message_at"],
        sqlite_where=sa.text("kind = 'chain'"),
        postgresql_where=sa.text("kind = 'chain'"),
    )
    op.create_index("ix_message_edits_organization_id_thread_id", "message_edits", ["organization_id", "thread_id"])
    op.create_index(
        "ix_messages_deleted_at",
        "messages",
        ["deleted_at"],
        sqlite_where=sa.text("deleted_at IS NOT NULL"),
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_deleted_at", table_name="messages")
    op.drop_index("ix_message_edits_organization_id_thread_id", table_name="message_edits")
    op.drop_index("ix_threads_chain_last_message_at", table_name="threads")
    op.drop_index("ix_threads_last_message_at_with_messages", table_name="threads")
    if op.get_bind().dialect.name == "sqlite":
        for fts, table, _ in _SQLITE_FTS:
            _sqlite_fts_down(fts, table)
    else:
        op.execute("DROP INDEX IF EXISTS ix_threads_title_fts")
        op.execute("DROP INDEX IF EXISTS ix_messages_content_fts")
        op.execute("ALTER TABLE threads DROP COLUMN IF EXISTS title_tsv")
        op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS content_tsv")
