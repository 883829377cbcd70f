"""Resumable streams: every streamed response's events are rows (docs/streams.md), so any process can replay a
stream from any `sequence_number` and then follow it live.

- `EventRecorder` takes each event as it is framed and writes them in small batches, each batch one multi-row
  INSERT in its own short transaction (never the turn's): at most `FLUSH_SECONDS` behind, a few statements per
  second however fast the model writes. The last event of a stream is written at once.
- `StreamHub` (one per process) wakes the followers of a response when a batch of it commits: in process directly,
  and from other processes by `NOTIFY threadline_stream_events` (payload `org/response id`).
- `follow()` yields recorded events after a sequence number, then waits for more until the stream's last event,
  or until the response is over without one (its process died, its client left a stream that was not kept
  running): a follower then ends, and the caller closes the stream with the response as it stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from threadline.domain.clock import utcnow
from threadline.storage.engine import Listener, notify
from threadline.storage.repositories.response_events import ResponseEventRepository
from threadline.storage.tables import ResponseEvent

logger = logging.getLogger("threadline.streams")

CHANNEL = "threadline_stream_events"
CANCEL_CHANNEL = "threadline_response_cancel"
# Events of a stream written together: at most this long after the first of them was framed…
FLUSH_SECONDS = 0.05
# …or as soon as this many are waiting.
FLUSH_EVENTS = 64
# A follower with no wake-up checks the database this often (a notification lost, a response settled elsewhere).
FOLLOW_POLL_SECONDS = 2.0
_READ_BATCH = 500

# The events that end a stream (`error` too: a stream that fails before it starts).
TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})


@dataclass(frozen=True)
class RecordedEvent:
    sequence_number: int
    type: str
    data: str  # the event's JSON, as framed


class StreamHub:
    """A process's live signals about responses, from any process: new events of a stream were committed (its
    followers wake), a background response was cancelled (its turn stops). Keyed by `stream_key`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}
        self._cancels: dict[str, set[asyncio.Event]] = {}
        self._listeners = [
            Listener(engine, CHANNEL, self.wake),
            Listener(engine, CANCEL_CHANNEL, self.cancel),
        ]

    async def start(self) -> None:
        await self.ensure_listening()

    async def stop(self) -> None:
        for listener in self._listeners:
            await listener.close()

    async def ensure_listening(self) -> None:
        try:
            for listener in self._listeners:
                await listener.ensure()
        except Exception:
            logger.warning("cannot LISTEN for stream events; followers poll every %gs", FOLLOW_POLL_SECONDS)

    def wake(self, key: str) -> None:
        for event in self._events.get(key, ()):
            event.set()

    def cancel(self, key: str) -> None:
        for event in self._cancels.get(key, ()):
            event.set()

    def waiter(self, key: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set whenever new events of `key`'s stream are committed, while the block runs."""
        return _registered(self._events, key)

    def cancellation(self, key: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set when `key`'s response is cancelled, while the block runs."""
        return _registered(self._cancels, key)


@contextlib.contextmanager
def _registered(table: dict[str, set[asyncio.Event]], key: str) -> Iterator[asyncio.Event]:
    event = asyncio.Event()
    table.setdefault(key, set()).add(event)
    try:
        yield event
    finally:
        waiting = table.get(key)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del table[key]


async def announce_cancel(session: AsyncSession, hub: StreamHub, organization_id: str, response_id: str) -> None:
    """Tell the process running the response (whichever it is) that it was cancelled, once `session` commits."""
    key = stream_key(organization_id, response_id)
    await notify(session, CANCEL_CHANNEL, key)
    sa.event.listen(session.sync_session, "after_commit", lambda _s: hub.cancel(key), once=True)


def stream_key(organization_id: str, response_id: str) -> str:
    return f"{organization_id}/{response_id}"


class EventRecorder:
    """Records one response's events as they are framed (`add`), in batches; `aclose()` writes what is left."""

    def __init__(
        self, maker: async_sessionmaker[AsyncSession], hub: StreamHub, organization_id: str, response_id: str
    ) -> None:
        self._maker = maker
        self._hub = hub
        self._organization_id = organization_id
        self._response_id = response_id
        self._pending: list[ResponseEvent] = []
        self._due = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._failed = False
        self._closing = False

    def add(self, sequence_number: int, type_: str, data: str) -> None:
        self._pending.append(
            ResponseEvent(
                organization_id=self._organization_id,
                response_id=self._response_id,
                sequence_number=sequence_number,
                type=type_,
                data=data,
                created_at=utcnow(),
            )
        )
        if self._writer is None and not self._closing:
            self._writer = asyncio.create_task(self._write_batches(), name=f"stream events {self._response_id}")
        if type_ in TERMINAL or len(self._pending) >= FLUSH_EVENTS:
            self._due.set()

    async def _write_batches(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_SECONDS):
                    await self._due.wait()
            self._due.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch or self._failed:
            return
        try:
            async with self._maker() as session:
                await ResponseEventRepository(session).add_many(batch)
                await notify(session, CHANNEL, stream_key(self._organization_id, self._response_id))
                await session.commit()
        except Exception:
            # The live stream goes on; only its replay is lost (and said so in the log). Later batches would leave
            # a gap, so none is written after a failure.
            self._failed = True
            logger.warning("could not record the events of response %s", self._response_id, exc_info=True)
            return
        self._hub.wake(stream_key(self._organization_id, self._response_id))

    async def aclose(self) -> None:
        """Write what is left (shielded: a stream closed by its client still records its last events). The writer
        is let finish the batch it is writing, never cancelled in the middle of one."""
        with anyio.CancelScope(shield=True):
            self._closing = True
            self._due.set()
            if self._writer is not None:
                await self._writer
            await self.flush()


async def last_sequence(maker: async_sessionmaker[AsyncSession], organization_id: str, response_id: str) -> int | None:
    async with maker() as session:
        return await ResponseEventRepository(session).last_sequence(organization_id, response_id)


async def last_event(
    maker: async_sessionmaker[AsyncSession], organization_id: str, response_id: str
) -> RecordedEvent | None:
    async with maker() as session:
        repo = ResponseEventRepository(session)
        last = await repo.last_sequence(organization_id, response_id)
        found = [] if last is None else await repo.after(organization_id, response_id, last - 1, 1)
    return RecordedEvent(found[0].sequence_number, found[0].type, found[0].data) if found else None


async def follow(
    maker: async_sessionmaker[AsyncSession],
    hub: StreamHub,
    organization_id: str,
    response_id: str,
    after: int,
    is_over: Callable[[], Awaitable[bool]],
) -> AsyncIterator[RecordedEvent]:
    """The recorded events after `after`, then each new one as it is committed, until the stream's last event. Ends
    early when, with nothing new recorded, `is_over()` says the response finished without a last event."""
    key = stream_key(organization_id, response_id)
    with hub.waiter(key) as woken:
        while True:
            woken.clear()
            async with maker() as session:
                rows = await ResponseEventRepository(session).after(organization_id, response_id, after, _READ_BATCH)
            for row in rows:
                after = row.sequence_number
                yield RecordedEvent(row.sequence_number, row.type, row.data)
                if row.type in TERMINAL:
                    return
            if len(rows) == _READ_BATCH:
                continue
            try:
                async with asyncio.timeout(FOLLOW_POLL_SECONDS):
                    await woken.wait()
            except TimeoutError:
                await hub.ensure_listening()
                async with maker() as session:
                    newer = await ResponseEventRepository(session).after(organization_id, response_id, after, 1)
                if not newer and await is_over():
                    return
