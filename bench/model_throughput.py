"""Embedded model throughput: LocalProvider (worker thread + async streaming) vs llama.cpp called directly.

Same GGUF, same context and micro-batch, same prompt, same max tokens, greedy decoding; one warm-up run each
(so both measure with the prompt already in llama.cpp's prefix cache), then `--runs` timed runs; prints p50.

    PYTHONPATH=src .venv/bin/python bench/model_throughput.py [--runs 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from llama_cpp import Llama

from threadline.domain.messages import ChatMessage
from threadline.providers.base import Finished, GenerationParams, TextDelta
from threadline.providers.local import LocalProvider, default_model_path, default_ubatch_size

PROMPT = "Explain in a few sentences why the sky is blue."
MODEL = "smollm2-135m-instruct"
N_CTX = 8192


def run_direct(max_tokens: int) -> tuple[int, float, float]:
    """(output tokens, seconds to first token, total seconds) for one streamed llama.cpp chat completion."""
    llama = _direct_llama()
    start = time.perf_counter()
    first: float | None = None
    text = []
    for chunk in llama.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}], stream=True, max_tokens=max_tokens, temperature=0.0
    ):
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            first = first or time.perf_counter()
            text.append(content)
    total = time.perf_counter() - start
    # Streaming llama.cpp reports no usage: count the answer's tokens with its own tokenizer.
    tokens = len(llama.tokenize("".join(text).encode(), add_bos=False, special=False))
    return tokens, (first or start) - start, total


_direct: list[Llama] = []


def _direct_llama() -> Llama:
    if not _direct:
        _direct.append(
            Llama(model_path=str(default_model_path()), n_ctx=N_CTX, n_ubatch=default_ubatch_size(), verbose=False)
        )
    return _direct[0]


async def run_provider(provider: LocalProvider, max_tokens: int) -> tuple[int, float, float]:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    params = GenerationParams(max_output_tokens=max_tokens, temperature=0.0)
    async for event in provider.stream(MODEL, [ChatMessage("user", PROMPT)], params):
        if isinstance(event, TextDelta):
            first = first or time.perf_counter()
        elif isinstance(event, Finished):
            tokens = event.output_tokens or 0
    return tokens, (first or start) - start, time.perf_counter() - start


def report(name: str, runs: list[tuple[int, float, float]]) -> None:
    tokens = statistics.median(r[0] for r in runs)
    ttft = statistics.median(r[1] for r in runs)
    rate = statistics.median(r[0] / r[2] for r in runs)
    print(f"{name:<28} p50 {rate:7.1f} tokens/s   p50 first token {ttft * 1000:6.1f} ms   ({tokens:.0f} tokens/run)")


def timed(fn: Callable[[], tuple[int, float, float]], runs: int) -> list[tuple[int, float, float]]:
    fn()  # warm-up: loads the model and fills the prefix cache
    return [fn() for _ in range(runs)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    print(f"model {default_model_path().name}, n_ctx {N_CTX}, n_ubatch {default_ubatch_size()}, runs {args.runs}")
    report("llama.cpp direct", timed(lambda: run_direct(args.max_tokens), args.runs))
    _direct.pop().close()

    provider = LocalProvider(model_name=MODEL, context_window=N_CTX)
    try:
        await run_provider(provider, args.max_tokens)  # warm-up
        runs = [await run_provider(provider, args.max_tokens) for _ in range(args.runs)]
        report("LocalProvider (streamed)", runs)
    finally:
        await provider.aclose()


if __name__ == "__main__":
    asyncio.run(main())
