"""The embedded llama.cpp provider, for real: SmolLM2-135M generating on this machine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from threadline import errors
from threadline.domain.messages import ChatMessage
from threadline.domain.tokens import message_token_count, reply_overhead
from threadline.providers.base import Finished, GenerationParams, StreamEvent, TextDelta
from threadline.providers.local import LocalProvider

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    local = LocalProvider(model_name=MODEL, context_window=2048)
    yield local
    local.shutdown()


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def generate(provider: LocalProvider, prompt: str, max_tokens: int = 16) -> list[StreamEvent]:
    messages = [ChatMessage("user", prompt)]
    return [e async for e in provider.stream(MODEL, messages, GenerationParams(max_output_tokens=max_tokens))]


async def test_generates_text_with_exact_token_counts(provider: LocalProvider) -> None:
    messages = [ChatMessage("system", "You are terse."), ChatMessage("user", "Name a color.")]
    events = [e async for e in provider.stream(MODEL, messages, GenerationParams(16, temperature=0.0))]

    assert text_of(events).strip()
    finished = events[-1]
    assert isinstance(finished, Finished) and sum(isinstance(e, Finished) for e in events) == 1
    info = provider.models()[0]
    tokenizer = provider.tokenizer(MODEL)
    # What the context builder computes before the call is what llama.cpp evaluated.
    expected_input = sum(message_token_count(tokenizer, m.role, m.content) for m in messages)
    # With a system message of its own, SmolLM2's template adds only the reply priming.
    assert finished.input_tokens == expected_input + reply_overhead(tokenizer)
    assert info.request_overhead_tokens > reply_overhead(tokenizer)  # …without one, its default system prompt
    assert finished.output_tokens is not None and 0 < finished.output_tokens <= 16
    if finished.finish_reason == "length":
        assert finished.output_tokens == 16


async def test_request_overhead_covers_the_default_system_prompt(provider: LocalProvider) -> None:
    events = await generate(provider, "Hi", max_tokens=4)
    finished = events[-1]
    assert isinstance(finished, Finished)
    tokenizer = provider.tokenizer(MODEL)
    info = provider.models()[0]
    assert finished.input_tokens == message_token_count(tokenizer, "user", "Hi") + info.request_overhead_tokens


async def test_concurrent_generations_both_complete_while_the_event_loop_stays_free(provider: LocalProvider) -> None:
    ticks = 0
    first_token_tick: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    async def consume(prompt: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        async for event in provider.stream(MODEL, [ChatMessage("user", prompt)], GenerationParams(24)):
            if not events:
                first_token_tick.append(ticks)
            events.append(event)
        return events

    ticking = asyncio.create_task(ticker())
    try:
        first, second = await asyncio.gather(consume("Tell me about cats."), consume("Tell me about dogs."))
    finally:
        ticking.cancel()
    for events in (first, second):
        assert text_of(events).strip()
        assert isinstance(events[-1], Finished)
    # The loop kept running while the model worked: it ticked between the first token and the last one.
    assert ticks > min(first_token_tick)
    assert ticks >= 3


async def test_closing_the_stream_stops_generation_and_frees_the_worker(provider: LocalProvider) -> None:
    messages = [ChatMessage("user", "Write a very long essay about the history of the Roman Empire.")]
    stream = provider.stream(MODEL, messages, GenerationParams(max_output_tokens=1500, temperature=0.0))
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    await stream.aclose()  # what a client disconnect does

    # load() queues behind the closed generation on the one worker thread, so once it returns that generation
    # has ended: by the cancel flag, long before its 1,500 tokens.
    await provider.load()
    llama = provider._llama
    assert llama.stopped_by_cancel is True
    assert llama.sampled_tokens < 1500

    events = await generate(provider, "Say OK.", max_tokens=4)  # the worker is free again
    assert text_of(events) and isinstance(events[-1], Finished)
    assert llama.stopped_by_cancel is False


async def test_unknown_model_and_oversized_input(provider: LocalProvider) -> None:
    with pytest.raises(errors.ModelNotFound):
        [e async for e in provider.stream("gpt-4o", [ChatMessage("user", "x")], GenerationParams(4))]
    huge = "word " * 5000  # > the 2,048-token window of this fixture
    with pytest.raises(errors.ContextLengthExceeded):
        await generate(provider, huge, max_tokens=4)


async def test_shutdown_ends_queued_streams_with_an_error() -> None:
    local = LocalProvider(model_name=MODEL, context_window=512)
    try:
        params = GenerationParams(max_output_tokens=64)
        first = local.stream(MODEL, [ChatMessage("user", "Tell me a story.")], params)
        second = local.stream(MODEL, [ChatMessage("user", "Tell me another.")], params)
        waiting = asyncio.gather(anext(first), anext(second), return_exceptions=True)
        await asyncio.sleep(0)  # both jobs are submitted: the first loads the model, the second waits behind it
        await local.aclose()
        results = await waiting
        assert any(isinstance(r, errors.UpstreamError) and r.code == "local_model_unavailable" for r in results)
        with pytest.raises(errors.UpstreamError):
            await anext(local.stream(MODEL, [ChatMessage("user", "x")], params))
    finally:
        local.shutdown()
