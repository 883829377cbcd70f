"""Compaction on the OpenAI surfaces, through the real `openai` SDK with a real upstream process:
`client.responses.compact(...)`, its output sent back as `input` and its id continued with
`previous_response_id`, compaction items as conversation items, and `client.responses.input_tokens.count(...)`.
On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI
from openai.types.responses import ResponseCompactionItem, ResponseUsage

from tests.conftest import Caller, make_caller
from tests.openai_sdk import sdk_client
from tests.tool_helpers import WEATHER_TOOL, last_request_with
from threadline.domain.tokens import message_token_count, reply_overhead
from threadline.providers.tokenizers import make_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture
async def caller(tool_app: FastAPI) -> Caller:
    return await make_caller(tool_app)


@pytest.fixture
async def oa(tool_app: FastAPI, caller: Caller) -> AsyncIterator[AsyncOpenAI]:
    """Lenient: `responses.compact` answers with user messages, which the SDK types only as assistant messages
    (the agents SDK reads them the same way); every other answer is checked strictly in the other tests."""
    client, _ = sdk_client(tool_app, caller.api_key, strict=False)
    async with client:
        yield client


async def test_compact_a_chain_then_continue_it(oa: AsyncOpenAI, tool_upstream_url: str) -> None:
    first = await oa.responses.create(model="tool-model", input="The vault code is 8812.")
    second = await oa.responses.create(
        model="tool-model", input="Anna signs the contract.", previous_response_id=first.id
    )

    compacted = await oa.responses.compact(model="tool-model", previous_response_id=second.id)
    assert compacted.object == "response.compaction" and compacted.id.startswith("resp_")
    *users, item = compacted.output
    assert item.type == "compaction" and item.id.startswith("cmp_")
    assert "8812" in item.encrypted_content and "Anna signs the contract" in item.encrypted_content
    assert [u.content[0].text for u in users] == ["The vault code is 8812.", "Anna signs the contract."]  # type: ignore[union-attr]
    assert compacted.usage.input_tokens > 0 and compacted.usage.output_tokens > 0
    # Strictly, all but the user messages (typed as assistant messages by the SDK): the item, the usage, the rest.
    ResponseCompactionItem.model_validate(item.to_dict())
    ResponseUsage.model_validate(compacted.usage.to_dict())
    assert isinstance(compacted.created_at, int)
    assert users[0].model_dump(exclude_unset=True, warnings=False)["content"] == [
        {"type": "input_text", "text": "The vault code is 8812."}
    ]

    # Stored like any response: retrieved, its output is the compaction item.
    stored = await oa.responses.retrieve(compacted.id)
    assert [i.type for i in stored.output] == ["compaction"] and stored.output[0].id == item.id

    # Continued by id: the model sees the summary, then the new input.
    third = await oa.responses.create(
        model="tool-model", input="What is the vault code?", previous_response_id=compacted.id
    )
    assert third.output_text == "echo: What is the vault code?"
    sent = last_request_with(tool_upstream_url, "What is the vault code?")
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert "8812" in sent["messages"][0]["content"]

    # Sent back as input (the agents SDK's way): the compaction item stands for everything before it.
    replay = [i.model_dump(exclude_unset=True, warnings=False) for i in compacted.output]
    fourth = await oa.responses.create(
        model="tool-model",
        input=[*replay, {"role": "user", "content": "Who signs?"}],  # type: ignore[list-item]
    )
    assert fourth.output_text == "echo: Who signs?"
    sent = last_request_with(tool_upstream_url, "Who signs?")
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][0]["content"].endswith(item.encrypted_content)


async def test_compact_an_input_list_with_instructions(oa: AsyncOpenAI) -> None:
    compacted = await oa.responses.compact(
        model="tool-model",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "Ship to Porto."},
            {"role": "assistant", "content": "Noted: Porto."},
            {"role": "user", "content": "Use crate 7."},
        ],
    )
    *users, item = compacted.output
    assert [u.role for u in users] == ["user", "user"]  # type: ignore[union-attr]
    assert "System: Be brief." in item.encrypted_content and "crate 7" in item.encrypted_content


async def test_compaction_items_in_a_conversation(oa: AsyncOpenAI) -> None:
    conversation = await oa.conversations.create(items=[{"role": "user", "content": "Paint it teal."}])
    compacted = await oa.responses.compact(model="tool-model", input="Paint it teal.")
    item = compacted.output[-1]
    await oa.conversations.items.create(
        conversation.id,
        items=[{"type": "compaction", "encrypted_content": item.encrypted_content}],  # type: ignore[union-attr,list-item]
    )
    items = [i async for i in oa.conversations.items.list(conversation.id, order="asc")]
    assert [i.type for i in items] == ["message", "compaction"]
    assert items[1].encrypted_content == item.encrypted_content  # type: ignore[union-attr]


async def test_compact_refusals(oa: AsyncOpenAI, tool_app: FastAPI, caller: Caller) -> None:
    with pytest.raises(openai.BadRequestError) as missing:
        await oa.responses.compact(model=None)  # type: ignore[arg-type]
    assert missing.value.code == "missing_required_parameter" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as empty:
        await oa.responses.compact(model="tool-model")
    assert empty.value.param == "input"
    with pytest.raises(openai.NotFoundError):
        await oa.responses.compact(model="tool-model", previous_response_id="resp_missing")
    with pytest.raises(openai.BadRequestError) as trigger:
        await oa.responses.compact(
            model="tool-model", input=[{"type": "compaction_trigger"}, {"role": "user", "content": "x"}]
        )
    assert trigger.value.code == "invalid_compaction_trigger"
    with pytest.raises(openai.BadRequestError) as bad_item:
        await oa.responses.create(model="tool-model", input=[{"type": "compaction", "encrypted_content": " "}])
    assert bad_item.value.param == "input.0.encrypted_content"


async def test_input_tokens_are_exact_for_the_model(oa: AsyncOpenAI) -> None:
    o200k = make_tokenizer("o200k")
    counted = await oa.responses.input_tokens.count(model="tool-model", input="Hello there", instructions="Be kind.")
    assert counted.object == "response.input_tokens"
    expected = (
        message_token_count(o200k, "system", "Be kind.") + message_token_count(o200k, "user", "Hello there")
    ) + reply_overhead(o200k)
    assert counted.input_tokens == expected

    with_tools = await oa.responses.input_tokens.count(model="tool-model", input="Hello there", tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert with_tools.input_tokens > message_token_count(o200k, "user", "Hello there") + reply_overhead(o200k)

    # Over a conversation and a chain: what the next turn's usage will report.
    first = await oa.responses.create(model="tool-model", input="one two three", truncation="auto")
    counted = await oa.responses.input_tokens.count(
        model="tool-model", input="four", previous_response_id=first.id, truncation="auto"
    )
    turns = [("user", "one two three"), ("assistant", "echo: one two three"), ("user", "four")]
    assert counted.input_tokens == sum(message_token_count(o200k, r, t) for r, t in turns) + reply_overhead(o200k)

    conversation = await oa.conversations.create(items=[{"role": "user", "content": "hi"}])
    alone = await oa.responses.input_tokens.count(model="tool-model", conversation=conversation.id)
    assert alone.input_tokens == message_token_count(o200k, "user", "hi") + reply_overhead(o200k)


async def conversation_with(oa: AsyncOpenAI, *texts: str) -> str:
    conversation = await oa.conversations.create()
    for text in texts:
        await oa.responses.create(model="tool-model", input=text, conversation=conversation.id, truncation="auto")
    return conversation.id


async def test_context_management_compacts_before_the_turn(oa: AsyncOpenAI, tool_upstream_url: str) -> None:
    conversation = await conversation_with(oa, "The ferry leaves at 06:40 from pier 3.", "Bring the blue permit.")
    response = await oa.responses.create(
        model="tool-model",
        input="When does the ferry leave?",
        conversation=conversation,
        context_management=[{"type": "compaction", "compact_threshold": 30}],
    )
    compacted, answer = response.output
    assert compacted.type == "compaction" and "06:40" in compacted.encrypted_content  # type: ignore[union-attr]
    assert answer.type == "message" and response.output_text == "echo: When does the ferry leave?"
    sent = last_request_with(tool_upstream_url, "When does the ferry leave?")
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert "pier 3" in sent["messages"][0]["content"]

    # Saved after the inputs, covering the history before them; the next turn starts from it.
    items = [i async for i in oa.conversations.items.list(conversation, order="asc")]
    assert [i.type for i in items] == ["message"] * 5 + ["compaction", "message"]
    assert items[5].id == compacted.id
    await oa.responses.create(model="tool-model", input="And the permit?", conversation=conversation)
    sent = last_request_with(tool_upstream_url, "And the permit?")
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][1]["content"] == "When does the ferry leave?"

    # Under the threshold nothing is compacted.
    quiet = await oa.responses.create(
        model="tool-model", input="ok", context_management=[{"type": "compaction", "compact_threshold": 100_000}]
    )
    assert [i.type for i in quiet.output] == ["message"]


async def test_context_management_streams_the_compaction_item_first(tool_app: FastAPI, caller: Caller) -> None:
    strict, _ = sdk_client(tool_app, caller.api_key)
    async with strict:
        conversation = await conversation_with(strict, "Alpha is 1.", "Beta is 2.")
        async with strict.responses.stream(
            model="tool-model",
            input="Gamma?",
            conversation=conversation,
            context_management=[{"type": "compaction", "compact_threshold": 20}],
        ) as stream:
            kinds = [(e.type, getattr(e, "output_index", None)) async for e in stream]
            final = await stream.get_final_response()
    assert ("response.output_item.added", 0) in kinds and ("response.output_item.added", 1) in kinds
    assert [i.type for i in final.output] == ["compaction", "message"]
    assert final.output_text == "echo: Gamma?"


async def test_a_compaction_trigger_compacts_everything(oa: AsyncOpenAI, tool_upstream_url: str) -> None:
    conversation = await conversation_with(oa, "Locker 12 holds the keys.")
    response = await oa.responses.create(
        model="tool-model",
        conversation=conversation,
        input=[{"role": "user", "content": "Also: the code is 5150."}, {"type": "compaction_trigger"}],
    )
    (item,) = response.output
    assert item.type == "compaction"
    assert "Locker 12" in item.encrypted_content and "5150" in item.encrypted_content  # type: ignore[union-attr]
    items = [i async for i in oa.conversations.items.list(conversation, order="asc")]
    assert [i.type for i in items] == ["message", "message", "message", "compaction"]

    await oa.responses.create(model="tool-model", input="Which locker?", conversation=conversation)
    sent = last_request_with(tool_upstream_url, "Which locker?")
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]

    with pytest.raises(openai.BadRequestError) as misplaced:
        await oa.responses.create(
            model="tool-model", input=[{"type": "compaction_trigger"}, {"role": "user", "content": "x"}]
        )
    assert misplaced.value.code == "invalid_compaction_trigger" and misplaced.value.param == "input.0.type"


async def test_context_management_refusals_save_nothing(oa: AsyncOpenAI) -> None:
    conversation = await conversation_with(oa, "one")
    for management, param in (
        ([{"type": "compaction", "compact_threshold": 3}], "context_management.0.compact_threshold"),
        ([{"type": "other"}], "context_management.0.type"),
        ([{"type": "compaction", "compact_threshold": "many"}], "context_management.0.compact_threshold"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            await oa.responses.create(
                model="tool-model",
                input="a question long enough to pass a tiny threshold",
                conversation=conversation,
                context_management=management,  # type: ignore[arg-type]
            )
        assert refused.value.param == param
    items = [i async for i in oa.conversations.items.list(conversation)]
    assert len(items) == 2


async def test_a_failed_summary_falls_back_and_says_so(oa: AsyncOpenAI, tool_app: FastAPI, caller: Caller) -> None:
    conversation = await conversation_with(oa, "[fail-summary] the tide turns at noon")
    response = await oa.responses.create(
        model="tool-model",
        input="When?",
        conversation=conversation,
        truncation="auto",
        context_management=[{"type": "compaction", "compact_threshold": 20}],
    )
    assert [i.type for i in response.output] == ["message"]
    assert response.output_text == "echo: When?"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=tool_app), base_url="http://t") as client:
        stored = await client.get(f"/v1/model/response/{response.id}", headers=caller.headers)
    report = stored.json()["context"]
    assert report["compaction_fallback"] == "summary_failed: upstream_error" and report["compaction"] is None
    items = [i async for i in oa.conversations.items.list(conversation)]
    assert "compaction" not in [i.type for i in items]

    # Over the window with truncation disabled, the turn could only run compacted: it fails as it would have.
    await oa.conversations.items.create(conversation, items=[{"role": "user", "content": "x " * 9000}])
    with pytest.raises(openai.BadRequestError) as too_long:
        await oa.responses.create(
            model="tool-model",
            input="And now?",
            conversation=conversation,
            context_management=[{"type": "compaction", "compact_threshold": 100}],
        )
    assert too_long.value.code == "context_length_exceeded"
    assert len([i async for i in oa.conversations.items.list(conversation)]) == 5


async def test_context_management_without_a_threshold_compacts_only_what_does_not_fit(
    oa: AsyncOpenAI, tool_upstream_url: str
) -> None:
    conversation = await conversation_with(oa, "The meeting is in room 7.")
    managed = [{"type": "compaction"}]
    fits = await oa.responses.create(
        model="tool-model",
        input="ok",
        conversation=conversation,
        truncation="auto",
        context_management=managed,  # type: ignore[arg-type]
    )
    assert [i.type for i in fits.output] == ["message"]

    # A message longer than the window: `auto` would drop it; compaction summarises it instead, in rolling passes.
    await oa.conversations.items.create(conversation, items=[{"role": "user", "content": "word " * 9000}])
    response = await oa.responses.create(
        model="tool-model",
        input="Where is the meeting?",
        conversation=conversation,
        truncation="auto",
        context_management=managed,  # type: ignore[arg-type]
    )
    assert [i.type for i in response.output] == ["compaction", "message"]
    assert "room 7" in response.output[0].encrypted_content  # type: ignore[union-attr]
    sent = last_request_with(tool_upstream_url, "Where is the meeting?")
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
