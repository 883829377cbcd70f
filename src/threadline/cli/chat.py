"""`threadline chat [THREAD]`: a terminal chat on a thread, in this process.

Each line typed is one turn through the same services as `POST /v1/model/response` (the thread's history
injected within the model's window, both sides saved), on the embedded model or any configured one, printed as
it is generated. The CLI owns the database like `threadline keys create`: it acts as the member named by
`--org`/`--email` (created if missing). Lines starting with `/` are commands: `/context` shows what the model saw
in the last turn, `/quit` (or end of input) leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from threadline.config import Settings
from threadline.domain.messages import ChatMessage
from threadline.errors import ThreadlineError, ThreadNotFound
from threadline.ids import new_id
from threadline.providers.registry import ModelRegistry
from threadline.providers.transport import upstream_client
from threadline.services import auth
from threadline.services import threads as thread_service
from threadline.services.auth import Principal
from threadline.storage.engine import create_engine, create_sessionmaker
from threadline.turns.engine import TurnEngine
from threadline.turns.request import TurnRequest
from threadline.turns.turn import OutputDelta, TurnDone

HELP = "Type a message and press Enter. /context: what the model saw last turn · /help · /quit (or Ctrl-D)."


@dataclass
class ChatOptions:
    thread_id: str | None
    org: str
    email: str
    model: str | None
    show_context: bool


@dataclass
class _State:
    last_context: dict[str, Any] | None = None
    last_usage: tuple[int | None, int | None] = (None, None)
    errors: int = field(default=0)


def describe_context(context: dict[str, Any], usage: tuple[int | None, int | None]) -> str:
    """The context report of a turn, in one readable block."""
    included, omitted = context.get("messages_included", 0), context.get("messages_omitted", 0)
    ranges = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in context.get("seq_ranges", [])) or "none"
    lines = [
        f"context: {context.get('mode')} mode, {included} history message{'s' if included != 1 else ''} included, "
        f"{omitted} omitted{' (a gap note marks where)' if context.get('gap_marked') else ''}",
        f"  history seq: {ranges}",
        f"  window {context.get('window')} tokens: {context.get('input_tokens')} in the prompt, "
        f"{context.get('max_output_tokens')} reserved for the answer (history budget {context.get('history_budget')})",
        f"  tokenizer: {context.get('tokenizer')}",
    ]
    input_tokens, output_tokens = usage
    if input_tokens is not None or output_tokens is not None:
        lines.append(f"  usage: {input_tokens} input tokens, {output_tokens} output tokens")
    return "\n".join(lines)


async def chat(settings: Settings, options: ChatOptions, stdin: TextIO, stdout: TextIO) -> int:
    """Run the chat until end of input or /quit; returns the exit code (1 if any turn failed)."""
    engine = create_engine(settings.database_url)
    maker = create_sessionmaker(engine)
    http_client = upstream_client()
    models: ModelRegistry | None = None
    try:
        models = await asyncio.to_thread(ModelRegistry.from_settings, settings, http_client)
        _, info = models.resolve(options.model)
        turns = TurnEngine(maker, settings, models)
        async with maker() as session:
            organization, user = await auth.ensure_member(session, options.org, options.email)
            await session.commit()
        principal = Principal(user.id, user.email, (organization.id,), "api_key", "cli")
        thread_id = options.thread_id or new_id("thread")
        thread_service.validate_thread_id(thread_id, param="thread")
        try:
            async with maker() as session:
                existing = await thread_service.get_thread(session, organization.id, thread_id)
            state = f"{existing.message_count} messages so far"
        except ThreadNotFound:
            state = "new thread"
        _say(stdout, f"Thread {thread_id} ({state}) · model {info.name} · organization {organization.id}")
        _say(stdout, f"Resume it with: threadline chat {thread_id} --org {options.org} --email {options.email}")
        _say(stdout, HELP)
        chat_state = _State()
        while True:
            _write(stdout, "you> ")
            line = await asyncio.to_thread(stdin.readline)
            if not line:
                _say(stdout, "")
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            if text == "/help":
                _say(stdout, HELP)
            elif text == "/context":
                if chat_state.last_context is None:
                    _say(stdout, "No turn yet in this chat.")
                else:
                    _say(stdout, describe_context(chat_state.last_context, chat_state.last_usage))
            elif text.startswith("/"):
                _say(stdout, f"Unknown command {text.split()[0]}. {HELP}")
            else:
                request = TurnRequest(
                    organization_id=organization.id,
                    inputs=[ChatMessage("user", text)],
                    thread_id=thread_id,
                    model=options.model,
                )
                await _turn(turns, principal, request, chat_state, stdout)
                if options.show_context and chat_state.last_context is not None:
                    _say(stdout, describe_context(chat_state.last_context, chat_state.last_usage))
        return 1 if chat_state.errors else 0
    except ThreadlineError as exc:
        _say(sys.stderr, f"error: {exc.message} ({exc.code})")
        return 1
    finally:
        if models is not None:
            await models.aclose()
        await http_client.aclose()
        await engine.dispose()


async def _turn(turns: TurnEngine, principal: Principal, request: TurnRequest, state: _State, stdout: TextIO) -> None:
    try:
        turn = await turns.start(principal, request)
    except ThreadlineError as exc:
        state.errors += 1
        _say(sys.stderr, f"error: {exc.message} ({exc.code})")
        return
    _write(stdout, "assistant> ")
    async with contextlib.aclosing(turns.run(turn)) as events:
        async for event in events:
            if isinstance(event, OutputDelta):
                _write(stdout, event.text)
            elif isinstance(event, TurnDone):
                _say(stdout, "")
                state.last_context = dict(event.record.context)
                usage = event.record.usage
                state.last_usage = (usage.input_tokens, usage.output_tokens) if usage else (None, None)
                if event.error is not None:
                    state.errors += 1
                    _say(sys.stderr, f"error: {event.error.message} ({event.error.code})")


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()  # streaming: each piece shows as it is generated, also through a pipe


def _say(out: TextIO, text: str) -> None:
    _write(out, text + "\n")
