"""search indexes: PostgreSQL's full-text indexes lead with the organization and have no pending list

Revision ID: 0005
Revises: 0004

On a young PostgreSQL database (never analyzed: autovacuum has not run yet, or is off) search on a few hundred
messages took seconds (issue 14). Two things in the indexes of migration 0002 made that possible:

- `gin (content_tsv)` knows nothing of the organization. Without statistics the planner guesses the same
  selectivity for `organization_id = …` and for `content_tsv @@ …`, so it preferred the b-tree led by
  `organization_id` and checked the match on every message of the organization. The new index holds both:
  `gin ((organization_id COLLATE "C"), content_tsv)` (`btree_gin`, a trusted extension shipped with
  PostgreSQL). The search compares `organization_id COLLATE "C"`, which no b-tree serves (their collation is
  the column's), so this index is the only one for the search's conditions, with or without statistics; and a
  small organization in a large table is not searched through everyone's matches. (Ids are compared for
  equality, which is byte equality in "C" as in any deterministic collation.)
- `fastupdate` (the default) queues new entries in a pending list that only VACUUM, or the list reaching
  `gin_pending_list_limit` (4 MB), merges. Every search reads the whole list, and the planner, which counts its
  pages, turns away from the index while it grows. `fastupdate = off`: a message is indexed when it is written.

SQLite's FTS5 tables (migration 0002) are unchanged. Downgrade restores 0002's indexes and leaves the extension
(other objects may use it).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, tsvector column)
_INDEXES = (("ix_messages_content_fts", "messages", "content_tsv"), ("ix_threads_title_fts", "threads", "title_tsv"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    for index, table, column in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {index}")
        op.execute(
            f'CREATE INDEX {index} ON {table} USING gin ((organization_id COLLATE "C"), {column}) '
            "WITH (fastupdate = off)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for index, table, column in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {index}")
        op.execute(f"CREATE INDEX {index} ON {table} USING gin ({column})")
