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
from threadline.domain.context import PromptMessage
from threadline.domain.messages import NewMessage, reasoning_payload
from threadline.domain.tokens import item_token_count, message_token_count
from threadline.domain.turns import COMPLETED, REQUIRES_ACTION, OutputCall, StoredTurn
from threadline.errors import ThreadBusy
from threadline.providers.base import Finished
from threadline.services import compaction_jobs, webhooks
from threadline.services import messages as message_service
from threadline.services import threads as thread_service
from threadline.storage.repositories.responses import ResponseRepository
from threadline.storage.repositories.threads import ThreadRepository
from threadline.turns import compaction
from threadline.turns.record import answer_context, stored, stored_values
from threadline.turns.turn import Turn


class TurnSaver:
    def __init__(self, maker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.maker = maker
        self.settings = settings

    async def complete(
        self,
        turn: Turn,
        text: str,
        finished: Finished,
        calls: Sequence[OutputCall],
        reasoning: tuple[str, str] | None = None,
    ) -> StoredTurn:
        """The output is the model's reasoning item (`reasoning`: its id and text, when the upstream sent any),
        the answer's text as an assistant message (left out when the answer is only function calls), then its
        calls — which an Assistants run keeps on its row instead, waiting for their outputs (docs/runs.md)."""
        output_tokens = finished.output_tokens
        if output_tokens is None:
            output_tokens = turn.tokenizer.count(text)
        input_tokens = finished.input_tokens or int(turn.record.context.get("input_tokens", 0))
        # A compaction item the turn wrote goes right after its inputs (docs/compaction.md).
        with_message = (bool(text) or not calls) and not compaction.answers_nothing(turn)
        waiting = turn.defer_calls and bool(calls)
        new = (
            _inputs(turn)
            + compaction.items_to_save(turn)
            + _outputs(turn, text if with_message else None, [] if waiting else calls, reasoning)
        )
        async with self.maker() as session:
            now = utcnow()
            changes: dict[str, Any] = {"last_model_used": turn.info.name, "updated_at": now}
            if turn.thread_state is not None:
                changes["state"] = turn.thread_state
            # One UPDATE … RETURNING frees the thread, hands out the seqs of `new` and reads what the save needs
            # (no SELECT first); it matches only while this turn holds the lease on a live thread. Otherwise tell
            # the two apart: deleted meanwhile, or lease lost.
            thread = await ThreadRepository(session).release_lease_returning(
                turn.organization_id, turn.thread_id, turn.id, changes, len(new), now
            )
            if thread is None:
                await thread_service.get_thread(session, turn.organization_id, turn.thread_id)  # ThreadNotFound
                raise ThreadBusy(
                    "This turn lost its lease on the thread (it ran past the lease without renewing it); nothing "
                    "was saved.",
                    code="lease_lost",
                )
            await message_service.insert_reserved(session, self.settings, thread, new, user_id=turn.user_id, now=now)
            # A prompt that asked for a new summary queues it, for the next turns.
            report, window = turn.record.context, turn.info.context_window
            await compaction_jobs.enqueue_if_due(
                session,
                self.settings,
                thread,
                report,
                str(turn.record.context_mode or ""),
                window,
                turn.assistant_compact_at,
            )
            # Written without reading it back, before or after: the start recorded it and only this turn (holding
            # the lease) writes it until now. A run continued after tool outputs (turns/waiting.py) adds this
            # turn's usage to what it used.
            earlier = turn.record.usage
            values: dict[str, Any] = {
                "status": REQUIRES_ACTION if waiting else COMPLETED,
                "output_text": text,
                "input_tokens": input_tokens + (earlier.input_tokens if earlier else 0),
                "output_tokens": output_tokens + (earlier.output_tokens if earlier else 0),
                "context": answer_context(
                    turn.record.context,
                    finished.finish_reason,
                    with_message,
                    calls,
                    finished.usage_details(),
                    reasoning,
                ),
                "completed_at": now,
            }
            if new:
                values["output_seq"] = thread.first_seq + len(new) - 1
            if turn.inputs:  # an Assistants run may have none: it answers the thread as it stands
                if turn.record.input_seqs is None:  # a continued run keeps its first inputs' start
                    values["input_first_seq"] = thread.first_seq
                values["input_last_seq"] = thread.first_seq + len(turn.inputs) - 1
            # A run's metadata may have changed while it ran (turns/runs.py · update_run): that column is read back.
            read = ("request",) if turn.record.run is not None else ()
            values |= await ResponseRepository(session).update(turn.organization_id, turn.id, values, read=read)
            if thread.webhooks:  # the outbox (docs/webhooks.md); the release's statement saw whether it has any
                await webhooks.response_settled(session, turn.organization_id, turn.id)
            await session.commit()
            return stored_values({**turn.row, **values})

    async def fail(self, turn: Turn, code: str, message: str) -> StoredTurn:
        """Record the failure and free the thread; the thread's messages are untouched."""
        async with self.maker() as session:
            repo = ResponseRepository(session)
            error = {"code": code, "message": message}
            if await repo.fail_if_in_progress(turn.organization_id, turn.id, error, utcnow()):
                await webhooks.response_settled(session, turn.organization_id, turn.id)
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
            payload=_input_payload(m),
        )
        for i, m in enumerate(turn.inputs)
    ]


def _input_payload(m: PromptMessage) -> dict[str, Any] | None:
    """The structure stored next to an input's text (docs/items.md): a call's name, a message's parts."""
    payload: dict[str, Any] = {}
    if m.name is not None:
        payload["name"] = m.name
    if m.parts:
        payload["content"] = list(m.parts)
    return payload or None


def _outputs(
    turn: Turn, text: str | None, calls: Sequence[OutputCall], reasoning: tuple[str, str] | None
) -> list[NewMessage]:
    """The reasoning item (when the model sent any), the answer's message (when `text` is not None), then its
    function calls."""
    tokenizer, model = turn.tokenizer, turn.info.name
    out = []
    if reasoning is not None:
        item_id, thought = reasoning
        out.append(
            NewMessage(
                id=item_id,
                role="assistant",
                type="reasoning",
                content=thought,
                payload=reasoning_payload(thought),
                token_count=message_token_count(tokenizer, "assistant", thought),
                tokenizer=tokenizer.name,
                model=model,
                response_id=turn.id,
                assistant_id=turn.assistant_id,
            )
        )
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
