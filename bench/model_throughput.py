"""Embedded model throughput: llama.cpp called directly vs LocalProvider (worker thread + async streaming) vs a
whole Threadline turn over HTTP (`threadline serve`, streamed `POST /v1/model/response`, store=false).

Same GGUF, same prompt, same max tokens, greedy decoding; one warm-up run each (so all measure with the prompt
already in llama.cpp's prefix cache), then `--runs` timed runs; prints p50.

    PYTHONPATH=src .venv/bin/python bench/model_throughput.py [--runs 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import httpx
from llama_cpp import Llama

from processes import child_env, create_key, serve, stop
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


def run_http(base: str, key: str, max_tokens: int) -> tuple[int, float, float]:
    """One streamed turn through the server: tokens from the final usage, time to the first text delta."""
    body = {
        "inputs": [{"role": "user", "texts": [{"text": PROMPT}]}],
        "stream": True,
        "store": False,
        "max_output_tokens": max_tokens,
        "temperature": 0.0,
    }
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    event = ""
    with httpx.stream("POST", f"{base}/v1/model/response", json=body, headers={"X-API-Key": key}, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "response.output_text.delta":
                first = first or time.perf_counter()
            elif line.startswith("data: ") and event == "response.completed":
                tokens = json.loads(line.removeprefix("data: "))["response"]["usage"]["output_tokens"]
            elif event == "response.failed":
                raise SystemExit(f"turn failed: {line}")
    return tokens, (first or start) - start, time.perf_counter() - start


def serve_embedded(workdir: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """`threadline serve` on its embedded defaults (temp SQLite), and an API key made by the CLI."""
    env = child_env(THREADLINE_DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/bench.db")
    key = create_key(env, workdir)
    server, base = serve(env, workdir, timeout=120)
    return server, base, key


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

    with tempfile.TemporaryDirectory() as workdir:
        server, base, key = serve_embedded(workdir)
        try:
            report("Threadline HTTP turn (SSE)", timed(lambda: run_http(base, key, args.max_tokens), args.runs))
        finally:
            stop([server])


if __name__ == "__main__":
    asyncio.run(main())
