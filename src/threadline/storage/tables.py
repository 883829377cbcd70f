"""ORM tables. Every key starts with `organization_id` (docs/data-model.md); the schema itself comes from migrations.

Portable column types only: `UTCDateTime` keeps timestamps as naive UTC on SQLite and `timestamptz` on
PostgreSQL, and always hands back aware UTC datetimes; `JSONType` is JSONB on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # The text SQLite's DATETIME writes ("2026-12-03 15:36:13.000000"), in one call rather than its %-format of
        # seven fields: a turn writes a dozen timestamps.
        def to_text(value: datetime | None) -> str | None:
            naive = self.process_bind_param(value, dialect)
            return None if naive is None else naive.isoformat(" ", "microseconds")

        return to_text

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# For the columns that may be absent: Python's None is SQL NULL, not the JSON text `null` (JSONType's default), so
# reading a row without one parses no JSON. A plain message has no payload, and a turn reads every row of its context.
OptionalJSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


def core_table(entity: type[Base]) -> sa.Table:
    """A mapped class's table, for the Core statements of a turn: no ORM compile step, no objects built."""
    table = entity.__table__
    assert isinstance(table, sa.Table)
    return table


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    created_at: Mapped[datetime]
    # The owner's limits for the organization's credentials (migration 0007); None: the server's alone.
    rate_limit_requests_per_minute: Mapped[int | None]
    rate_limit_concurrent_turns: Mapped[int | None]


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime]


class Membership(Base):
    """A user in an organization; `role` is "owner" (who created it: may set its limits) or "member"."""

    __tablename__ = "memberships"

    organization_id: Mapped[str] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(20), default="member")
    created_at: Mapped[datetime]


class ApiKey(Base):
    """An API key belongs to one organization and one user. Only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    organization_id: Mapped[str] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(sa.String(200))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class UserToken(Base):
    """A login session: spans the user's organizations. Only its SHA-256 is stored."""

    __tablename__ = "user_tokens"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Assistant(Base):
    __tablename__ = "assistants"

    organization_id: Mapped[str] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(sa.String(64))
    name: Mapped[str | None] = mapped_column(sa.String(256))
    description: Mapped[str | None] = mapped_column(sa.String(512))
    model: Mapped[str | None] = mapped_column(sa.String(200))
    instructions: Mapped[str | None] = mapped_column(sa.Text)
    thread_context_mode: Mapped[str | None] = mapped_column(sa.String(16))
    temperature: Mapped[float | None]
    max_output_tokens: Mapped[int | None]
    # Compaction (migration 0014, docs/compaction.md): the share of the window past which its threads are compacted,
    # and the model that writes their summaries (None: the server's summary model, else the turn's).
    compact_at: Mapped[float | None]
    summary_model: Mapped[str | None] = mapped_column(sa.String(200))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    # Function tools in the Assistants v2 spelling (migration 0013); a run's `tools` replace them.
    tools: Mapped[list[Any] | None] = mapped_column(OptionalJSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]

    __table_args__ = (sa.Index(None, "organization_id", "created_at", "id"),)


class Thread(Base):
    """A conversation. `state` is the lifecycle, `status` the streaming status (docs/surfaces.md).

    `next_seq` hands out message sequence numbers; `message_count` counts live (not deleted) messages.
    `lease_owner`/`lease_expires_at` serialize turns across processes: a lease that expires frees the thread.
    """

    __tablename__ = "threads"

    organization_id: Mapped[str] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(sa.String(64))
    title: Mapped[str | None] = mapped_column(sa.String(200))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    assistant_id: Mapped[str | None] = mapped_column(sa.String(128))
    workflow_id: Mapped[str | None] = mapped_column(sa.String(128))
    space_ids: Mapped[list[Any]] = mapped_column(default=list)
    visible_in_ui: Mapped[bool] = mapped_column(default=True)
    # What created it: "thread" (Freddy API / responses), "chain" (a previousResponseId chain),
    # "conversation" (OpenAI Conversations API).
    kind: Mapped[str] = mapped_column(sa.String(16), default="thread")
    # A chain forked from a turn of another thread (migration 0003, docs/chains.md): its history is the parent's
    # live messages with seq <= parent_seq, then its own, numbered on from parent_seq + 1. Nothing is copied. No
    # foreign key: the sweeper may purge a parent before its children, whose reads then stop at the gap.
    parent_thread_id: Mapped[str | None] = mapped_column(sa.String(128))
    parent_seq: Mapped[int | None]
    # A fork's live items read from its sources (migration 0012): `message_count` counts its own, so its whole
    # history holds message_count + inherited_message_count (docs/threads-as-data.md).
    inherited_message_count: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    # Where an imported thread came from ("chatgpt:<id>", "threadline:<org>/<id>"): a re-import finds it here.
    source_id: Mapped[str | None] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16), default="open")
    status: Mapped[str] = mapped_column(sa.String(16), default="inactive")
    is_pinned: Mapped[bool] = mapped_column(default=False)
    pinned_at: Mapped[datetime | None]
    message_count: Mapped[int] = mapped_column(default=0)
    next_seq: Mapped[int] = mapped_column(default=1)
    last_model_used: Mapped[str | None] = mapped_column(sa.String(200))
    # The share of the model's window past which the thread is compacted in the background (migration 0014).
    compact_at: Mapped[float | None]
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_message_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]

    __table_args__ = (
        # Lists are keyset pages over (created_at, id) after equality filters; the visible_in_ui column sits
        # before the sort key so the default list (visible threads) and the user list are pure range scans
        # even when hidden threads (store=false, response chains) outnumber visible ones.
        sa.Index(None, "organization_id", "visible_in_ui", "created_at", "id"),
        sa.Index(None, "organization_id", "user_id", "visible_in_ui", "created_at", "id"),
        sa.Index(None, "organization_id", "assistant_id", "created_at", "id"),
        sa.Index(None, "last_message_at"),
        # Retention (migration 0002): inactive threads that still hold messages, idle chains. Threads past the
        # maximum age are found by a scan in the hourly sweep: an index led by created_at alone would tempt
        # PostgreSQL's planner away from the organization-scoped list indexes above.
        sa.Index(
            "ix_threads_last_message_at_with_messages",
            "last_message_at",
            sqlite_where=sa.text("message_count > 0"),
            postgresql_where=sa.text("message_count > 0"),
        ),
        sa.Index(
            "ix_threads_chain_last_message_at",
            "last_message_at",
            sqlite_where=sa.text("kind = 'chain'"),
            postgresql_where=sa.text("kind = 'chain'"),
        ),
        # Full-text search over titles lives in migrations 0002 and 0005 only (FTS5 table / GIN index).
        # Threads mid-turn (migration 0004): start-up and the periodic settling find the expired leases of a dead
        # server here. Only streaming threads are in it, so it stays as small as the number of turns running.
        sa.Index(
            "ix_threads_streaming_lease_expires_at",
            "lease_expires_at",
            sqlite_where=sa.text("status = 'streaming'"),
            postgresql_where=sa.text("status = 'streaming'"),
        ),
        # The children of a thread (migration 0003): the sweeper keeps a chain while a live chain forks from it.
        sa.Index(
            "ix_threads_organization_id_parent_thread_id",
            "organization_id",
            "parent_thread_id",
            sqlite_where=sa.text("parent_thread_id IS NOT NULL"),
            postgresql_where=sa.text("parent_thread_id IS NOT NULL"),
        ),
        # Idempotent imports (migration 0012): one thread per source in an organization.
        sa.Index(
            "ix_threads_organization_id_source_id",
            "organization_id",
            "source_id",
            unique=True,
            sqlite_where=sa.text("source_id IS NOT NULL"),
            postgresql_where=sa.text("source_id IS NOT NULL"),
        ),
    )


class Message(Base):
    """One item of a thread, ordered by the per-thread `seq`, with its token count stored on the row.

    `type` is the item type (docs/items.md, migration 0006): `message`, `function_call` (role `assistant`,
    `content` = its arguments), `function_call_output` (role `tool`, `content` = its output text, so search finds
    it). `call_id` pairs a call with its output; `payload` holds the rest of what is structured (`name`,
    `status`, an output given as content parts).
    """

    __tablename__ = "messages"

    organization_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    thread_id: Mapped[str] = mapped_column(sa.String(128))
    seq: Mapped[int]
    role: Mapped[str] = mapped_column(sa.String(16))
    type: Mapped[str] = mapped_column(sa.String(32), default="message", server_default="message")
    call_id: Mapped[str | None] = mapped_column(sa.String(128))
    payload: Mapped[dict[str, Any] | None] = mapped_column(OptionalJSON)
    content: Mapped[str] = mapped_column(sa.Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    token_count: Mapped[int | None]
    # The tokenizer that produced token_count ("o200k", "llama:<model>", "estimate"…): counts are reused
    # only when the tokenizer matches.
    tokenizer: Mapped[str | None] = mapped_column(sa.String(100))
    model: Mapped[str | None] = mapped_column(sa.String(200))
    response_id: Mapped[str | None] = mapped_column(sa.String(64))
    assistant_id: Mapped[str | None] = mapped_column(sa.String(128))
    user_id: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    edited_at: Mapped[datetime | None]
    edit_count: Mapped[int] = mapped_column(default=0)
    deleted_at: Mapped[datetime | None]
    # Where an imported item came from (the source's node or item id, migration 0012).
    source_id: Mapped[str | None] = mapped_column(sa.String(255))

    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["organization_id", "thread_id"], ["threads.organization_id", "threads.id"], ondelete="CASCADE"
        ),
        sa.UniqueConstraint("organization_id", "thread_id", "seq"),
        sa.Index(
            "ix_messages_deleted_at",
            "deleted_at",
            sqlite_where=sa.text("deleted_at IS NOT NULL"),
            postgresql_where=sa.text("deleted_at IS NOT NULL"),
        ),
        # Pairing a function_call_output with its call (migration 0006).
        sa.Index(
            "ix_messages_organization_id_thread_id_call_id",
            "organization_id",
            "thread_id",
            "call_id",
            sqlite_where=sa.text("call_id IS NOT NULL"),
            postgresql_where=sa.text("call_id IS NOT NULL"),
        ),
        # A thread's newest compaction item (migration 0014): where its context starts.
        sa.Index(
            "ix_messages_compaction",
            "organization_id",
            "thread_id",
            "seq",
            sqlite_where=sa.text("type = 'compaction'"),
            postgresql_where=sa.text("type = 'compaction'"),
        ),
        # Full-text search over content lives in migrations 0002 and 0005 only (FTS5 table / GIN index).
    )


class MessageEdit(Base):
    """Audit trail: the content and metadata a message had before an edit, who edited it and when."""

    __tablename__ = "message_edits"

    organization_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    thread_id: Mapped[str] = mapped_column(sa.String(128))
    message_id: Mapped[str] = mapped_column(sa.String(64))
    previous_content: Mapped[str] = mapped_column(sa.Text)
    previous_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    edited_by: Mapped[str | None] = mapped_column(sa.String(64))
    edited_at: Mapped[datetime]

    __table_args__ = (
        sa.Index(None, "organization_id", "message_id", "edited_at"),
        sa.Index(None, "organization_id", "thread_id"),  # retention purges a thread's history (0002)
    )


class Response(Base):
    """A model response. It never copies history: it points into a thread by `seq` range (docs/data-model.md).

    `input_first_seq..input_last_seq` are this turn's inputs and `output_seq` its answer, in `thread_id`; the
    `context` report's `context_segments` list the (thread, first seq, last seq) runs the model saw, which span
    the parents of a `previousResponseId` chain.
    """

    __tablename__ = "responses"

    organization_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    thread_id: Mapped[str | None] = mapped_column(sa.String(128))
    previous_response_id: Mapped[str | None] = mapped_column(sa.String(64))
    user_id: Mapped[str | None] = mapped_column(sa.String(64))
    model: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(16))
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    input_first_seq: Mapped[int | None]
    input_last_seq: Mapped[int | None]
    output_seq: Mapped[int | None]
    output_text: Mapped[str | None] = mapped_column(sa.Text)
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    error: Mapped[dict[str, Any] | None] = mapped_column(OptionalJSON)
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]

    __table_args__ = (
        sa.Index(None, "organization_id", "thread_id", "created_at"),
        sa.Index(None, "created_at"),
        # A thread's run waiting for tool outputs (migration 0013): it holds no lease, so this finds it.
        sa.Index(
            "ix_responses_waiting_runs",
            "organization_id",
            "thread_id",
            sqlite_where=sa.text("status = 'requires_action'"),
            postgresql_where=sa.text("status = 'requires_action'"),
        ),
    )


class IdempotencyKey(Base):
    """A remembered POST: a retry with the same key and body gets the first result (issue: retry safety)."""

    __tablename__ = "idempotency_keys"

    organization_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))  # in_progress | completed
    response_status: Mapped[int | None]
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(OptionalJSON)
    response_body: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Lease(Base):
    """A named, expiring lock shared by all processes (e.g. one retention sweep at a time)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64))
    expires_at: Mapped[datetime]


class RateLimitCounter(Base):
    """Requests of one credential (API key or user token id) in the current fixed one-minute window.

    One row per credential, moved to the new window by the same upsert that counts a request, so every process
    on the database shares the count (migration 0007)."""

    __tablename__ = "rate_limit_counters"

    credential_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    # Minutes since the epoch: the fixed window `count` belongs to.
    window_minute: Mapped[int] = mapped_column(sa.BigInteger)
    count: Mapped[int]


class Job(Base):
    """A unit of work that outlives its request (DESIGN.md §7, migration 0010; docs/jobs.md): a background turn, a
    webhook delivery, a summary. Claimed by one process at a time under an expiring lease (`lease_owner` is a fresh
    token per claim), renewed by a heartbeat, taken over by another process once it expires.

    Jobs that share a `queue_key` (e.g. a thread id) run one at a time, in the order they were enqueued."""

    __tablename__ = "jobs"

    organization_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    queue_key: Mapped[str | None] = mapped_column(sa.String(200))
    # queued → running → done | failed (a running job whose lease expired is claimable again).
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=5)
    run_after: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        # The claim: due queued jobs, and running jobs whose lease expired. Only unfinished jobs are in it.
        sa.Index(
            "ix_jobs_claimable",
            "status",
            "run_after",
            sqlite_where=sa.text("status IN ('queued', 'running')"),
            postgresql_where=sa.text("status IN ('queued', 'running')"),
        ),
        # "Is an earlier job of this key unfinished?" (per-key order).
        sa.Index(
            "ix_jobs_queue_key",
            "organization_id",
            "queue_key",
            "created_at",
            sqlite_where=sa.text("queue_key IS NOT NULL AND status IN ('queued', 'running')"),
            postgresql_where=sa.text("queue_key IS NOT NULL AND status IN ('queued', 'running')"),
        ),
        # The retention sweeper purges finished jobs by age.
        sa.Index(
            "ix_jobs_finished_at",
            "finished_at",
            sqlite_where=sa.text("finished_at IS NOT NULL"),
            postgresql_where=sa.text("finished_at IS NOT NULL"),
        ),
    )


class WebhookEndpoint(Base):
    """Where an organization wants to hear about its responses (migration 0011, docs/webhooks.md).

    The signing secret must be stored as it is, not as a digest: every delivery is signed with it (HMAC). After a
    rotation that keeps the old secret for a while, `previous_secret` signs too until `previous_secret_expires_at`.
    `consecutive_failures`/`failing_since` count the attempts failed since the last success: they decide when the
    endpoint is disabled (`status`, `disabled_reason`).
    """

    __tablename__ = "webhook_endpoints"

    organization_id: Mapped[str] = mapped_column(
        sa.ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    url: Mapped[str] = mapped_column(sa.String(2048))
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    description: Mapped[str | None] = mapped_column(sa.String(512))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    secret: Mapped[str] = mapped_column(sa.String(100))
    previous_secret: Mapped[str | None] = mapped_column(sa.String(100))
    previous_secret_expires_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(sa.String(16), default="enabled")
    disabled_reason: Mapped[str | None] = mapped_column(sa.String(1000))
    disabled_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    failing_since: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (sa.Index(None, "organization_id", "created_at", "id"),)


class WebhookDelivery(Base):
    """One event for one endpoint: the signed body sent on every attempt and the log of those attempts.

    Written in the transaction that settles the response (an outbox): a delivery exists exactly when its event
    happened. The id is the `webhook-id` header, the same on every retry, so receivers can drop duplicates.
    `attempts` is the log (bounded by the retry window): `{"at", "duration_ms", "status_code", "error"}` each.
    """

    __tablename__ = "webhook_deliveries"

    organization_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(sa.String(64))
    event_id: Mapped[str] = mapped_column(sa.String(64))
    event_type: Mapped[str] = mapped_column(sa.String(64))
    body: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempt_count: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[list[Any]] = mapped_column(default=list)
    next_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(1000))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["organization_id", "endpoint_id"],
            ["webhook_endpoints.organization_id", "webhook_endpoints.id"],
            ondelete="CASCADE",
            name="fk_webhook_deliveries_endpoint",  # (named: the convention's name is over PostgreSQL's 63 bytes)
        ),
        # One delivery per event and endpoint, whatever happens: a second settling of a response inserts nothing.
        sa.UniqueConstraint("organization_id", "endpoint_id", "event_id", name="uq_webhook_deliveries_event"),
        sa.Index("ix_webhook_deliveries_endpoint_created_at", "organization_id", "endpoint_id", "created_at", "id"),
        # The retention sweeper purges finished deliveries by age.
        sa.Index(
            "ix_webhook_deliveries_finished_updated_at",
            "updated_at",
            sqlite_where=sa.text("status IN ('delivered', 'failed')"),
            postgresql_where=sa.text("status IN ('delivered', 'failed')"),
        ),
    )


class ResponseEvent(Base):
    """One server-sent event of a streamed response, as sent (migration 0010; docs/streams.md): any process can
    replay a stream from any `sequence_number` and follow it live. Purged by the retention sweeper."""

    __tablename__ = "response_events"

    organization_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    response_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    sequence_number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(sa.String(64))
    # The event's JSON exactly as framed (`data:`), so a replay sends the same bytes without re-encoding them.
    data: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
