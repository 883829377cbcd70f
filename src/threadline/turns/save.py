"""The save of a turn, in one short transaction after the model call: the inputs and the output land together
with the thread update and the lease release (`complete`). On any failure the turn is marked failed and the lease
released instead (`fail`): the thread is left exactly as before the turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from threadline.config import Settings
from threadline.domain.clock import utcnow
from threadline.domain.messages import NewMessage
from threadline.domain.tokens import item_token_count, message_token_count
from threadline.domain.turns import COMPLETED, OutputCall, StoredTurn
from threadline.errors import ThreadBusy
from threadline.providers.base import Finished
from threadline.services import messages as message_service
from threadline.services import threads as thread_service
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.turns.record import answer_context, stored
from threadline.turns.turn import Turn


class TurnSaver:
    def __init__(self, maker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.maker = maker
        self.settings = settings

    async def complete(self, turn: Turn, text: str, finished: Finished, calls: Sequence[OutputCall]) -> StoredTurn:
        """The output is the answer's text as an assistant message (left out when the answer is only function
        calls), then its calls."""
        output_tokens = finished.output_tokens
        if output_tokens is None:
            output_tokens = turn.tokenizer.count(text)
        input_tokens = finished.input_tokens or int(turn.record.context.get("input_tokens", 0))
        async with self.maker() as session:
            now = utcnow()
            changes: dict[str, Any] = {"last_model_used": turn.info.name, "updated_at": now}
            if turn.thread_state is not None:
                changes["state"] = turn.thread_state
            # One UPDATE … RETURNING frees the thread and reads it (no SELECT first); it matches only while this
            # turn holds the lease on a live thread. Otherwise tell the two apart: deleted meanwhile, or lease lost.
            thread = await ThreadRepository(session).release_lease_returning(
                turn.organization_id, turn.thread_id, turn.id, changes
            )
            if thread is None:
                await thread_service.get_thread(session, turn.organization_id, turn.thread_id)  # ThreadNotFound
                raise ThreadBusy(
                    "This turn lost its lease on the thread (it ran past the lease without renewing it); nothing "
                    "was saved.",
                    code="lease_lost",
                )
            with_message = bool(text) or not calls
            new = _inputs(turn) + _outputs(turn, text if with_message else None, calls)
            rows = await message_service.append_messages(
                session, self.settings, thread, new, user_id=turn.user_id, check_state=False
            )
            # Written without reading it back first: the start recorded it and only this turn (holding the lease)
            # writes it until now. The message INSERTs are flushed first (autoflush), keeping the seq links valid.
            values: dict[str, Any] = {
                "status": COMPLETED,
                "output_text": text,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "output_seq": rows[-1].seq,
                "context": answer_context(turn.record.context, finished.finish_reason, with_message, calls),
                "completed_at": now,
            }
            if turn.inputs:  # an Assistants run may have none: it answers the thread as it stands
                values["input_first_seq"] = rows[0].seq
                values["input_last_seq"] = rows[len(turn.inputs) - 1].seq
            row = await ResponseRepository(session).update(turn.organization_id, turn.id, values)
            await session.commit()
            return stored(row)

    async def fail(self, turn: Turn, code: str, message: str) -> StoredTurn:
        """Record the failure and free the thread; the thread's messages are untouched."""
        async with self.maker() as session:
            repo = ResponseRepository(session)
            await repo.fail_if_in_progress(turn.organization_id, turn.id, {"code": code, "message": message}, utcnow())
            await ThreadRepository(session).release_lease(turn.organization_id, turn.thread_id, turn.id)
            row = await repo.get(turn.organization_id, turn.id)
            assert row is not None
            await session.commit()
            return stored(row)


def _inputs(turn: Turn) -> list[NewMessage]:
    return [
        NewMessage(
            role=m.role,  # type: ignore[arg-type]
            content=m.content,
            token_count=m.tokens,
            tokenizer=turn.tokenizer.name,
            response_id=turn.id,
            metadata=turn.input_metadata[i] if i < len(turn.input_metadata) else {},
            type=m.type,  # type: ignore[arg-type]
            call_id=m.call_id,
            payload={"name": m.name} if m.name is not None else None,
        )
        for i, m in enumerate(turn.inputs)
    ]


def _outputs(turn: Turn, text: str | None, calls: Sequence[OutputCall]) -> list[NewMessage]:
    """The answer's message (when `text` is not None), then its function calls."""
    tokenizer, model = turn.tokenizer, turn.info.name
    out = []
    if text is not None:
        out.append(
            NewMessage(
                id=turn.output_message_id,
                role="assistant",
                content=text,
                token_count=message_token_count(tokenizer, "assistant", text),
                tokenizer=tokenizer.name,
                model=model,
                response_id=turn.id,
                assistant_id=turn.assistant_id,
            )
        )
    for call in calls:
        out.append(
            NewMessage(
                id=call.id,
                role="assistant",
                type="function_call",
                call_id=call.call_id,
                content=call.arguments,
                payload={"name": call.name, "status": "completed"},
                token_count=item_token_count(tokenizer, "assistant", call.arguments, call.name),
                tokenizer=tokenizer.name,
                model=model,
                response_id=turn.id,
                assistant_id=turn.assistant_id,
            )
        )
    return out
