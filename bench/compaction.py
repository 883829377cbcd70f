"""Does the model still see what was said early in a long thread? Compaction against the plain modes.

A scripted conversation plants facts in its first turns ("the code word for box 3 is saffron"), talks about other
things for a while, then asks for every fact. It is replayed through a small window under each mode:

- `recent`                 the newest messages that fit;
- `smart`                  the start, a gap note, the newest (`THREADLINE_SMART_SUMMARIES=false`);
- `smart+summaries`        the start, a summary of what it leaves out, the newest (background compaction jobs,
                           waited for between turns, as a thread would see them in real use);
- `recent+compact_at=0.6`  the thread compacted whenever a prompt passes 60 % of the window.

For each mode it prints how many planted facts the last prompts still held (the fact's value appears in what the
model was sent), with the embedded model also how many it answered, and what compaction cost: summary calls, their
input and output tokens, and the time they took next to the turns'. Two upstreams: `--model stub` (an instant
OpenAI-compatible process, `tests/upstream.py`, whose summaries keep the transcript's oldest lines) and
`--model embedded` (SmolLM2-135M in-process through llama.cpp: slow, and a 135M model's summaries and answers are
weak; the figures show what the context holds more than what the model makes of it).

    PYTHONPATH=src .venv/bin/python bench/compaction.py [--model stub|embedded] [--window 640] [--filler 14]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from processes import free_port, stop, wait_http  # noqa: E402
from threadline.api.app import create_app  # noqa: E402
from threadline.config import Settings  # noqa: E402
from threadline.domain.messages import ChatMessage  # noqa: E402
from threadline.providers.base import GenerationParams, ModelInfo, Provider, StreamEvent, Tokenizer  # noqa: E402
from threadline.providers.registry import ModelRegistry  # noqa: E402
from threadline.services import auth  # noqa: E402
from threadline.storage.engine import create_sessionmaker, upgrade  # noqa: E402
from threadline.storage.tables import Job, Message  # noqa: E402

FACTS = [
    ("box 1", "saffron"),
    ("box 2", "quartz"),
    ("box 3", "marigold"),
    ("box 4", "tundra"),
    ("box 5", "obsidian"),
    ("box 6", "lantern"),
]
FILLER = [
    "Tell me something about the weather in spring.",
    "What is a good way to store apples?",
    "Describe a quiet morning in a small town.",
    "How do bicycles stay upright?",
    "What makes a good cup of tea?",
    "Why do cats like boxes?",
    "Give me a short tip for packing a suitcase.",
]
MODES = [
    ("recent", {"mode": "recent"}),
    ("smart", {"mode": "smart", "smart_summaries": False}),
    ("smart+summaries", {"mode": "smart", "smart_summaries": True}),
    ("recent+compact_at=0.6", {"mode": "recent", "compact_at": 0.6}),
]


class Recording:
    """A provider that remembers every prompt it is sent and times each call (summary calls apart)."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.prompts: list[list[ChatMessage]] = []
        self.summary_seconds: list[float] = []
        self.turn_seconds: list[float] = []

    def models(self) -> Sequence[ModelInfo]:
        return self.inner.models()

    def tokenizer(self, model: str) -> Tokenizer:
        return self.inner.tokenizer(model)

    async def stream(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        is_summary = bool(messages) and messages[-1].content.startswith("Summarise this conversation:")
        if not is_summary:
            self.prompts.append(list(messages))
        started = time.perf_counter()
        async for event in self.inner.stream(model, messages, params):
            yield event
        (self.summary_seconds if is_summary else self.turn_seconds).append(time.perf_counter() - started)

    async def aclose(self) -> None:
        """Each replay's app closes its registry at shutdown: the provider outlives them (closed by `run_all`)."""


@dataclass
class Result:
    mode: str
    seen: list[int] = field(default_factory=list)
    answered: int = 0
    summaries: int = 0
    summary_in: int = 0
    summary_out: int = 0
    summary_seconds: float = 0.0
    turn_seconds: list[float] = field(default_factory=list)


def script(filler_turns: int) -> list[str]:
    planted = [f"Please remember: the code word for {box} is {word}." for box, word in FACTS]
    filler = [FILLER[i % len(FILLER)] for i in range(filler_turns)]
    return planted + filler


def fresh_database() -> str:
    """A migrated SQLite file of its own (Alembic runs its own event loop: called before the benchmark's)."""
    url = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix='threadline-compaction-')) / 'bench.db'}"
    upgrade(url)
    return url


async def replay(provider: Recording, url: str, label: str, options: dict[str, object], filler: int) -> Result:
    info = provider.models()[0]
    settings = Settings(
        database_url=url,
        local_model_enabled=False,
        retention_enabled=False,
        default_model=info.name,
        default_context_mode=options["mode"],  # type: ignore[arg-type]
        default_max_output_tokens=32,
        smart_summaries=bool(options.get("smart_summaries", False)),
        compact_at=options.get("compact_at"),  # type: ignore[arg-type]
        summary_max_tokens=160,
        job_poll_seconds=3600,
    )
    registry = ModelRegistry(info.name)
    registry.register(provider)
    provider.prompts.clear()
    provider.summary_seconds.clear()
    provider.turn_seconds.clear()
    app = create_app(settings, models=registry)
    result = Result(label)
    async with app.router.lifespan_context(app):
        maker = create_sessionmaker(app.state.engine)
        async with maker() as session:
            _, key = await auth.create_api_key(session, "bench", "bench@bench.test", "bench")
            await session.commit()
        headers = {"X-API-Key": key}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=600
        ) as client:

            async def turn(text: str) -> dict[str, object]:
                body = {"thread": "bench", "inputs": [{"role": "user", "texts": [{"text": text}]}]}
                response = await client.post("/v1/model/response", json=body, headers=headers)
                response.raise_for_status()
                await _jobs_settled(maker)  # a background summary is ready before the next turn, as in real use
                return dict(response.json())

            for text in script(filler):
                await turn(text)
            for box, word in FACTS:
                answer = await turn(f"What is the code word for {box}?")
                prompt = " ".join(m.content for m in provider.prompts[-1])
                result.seen.append(int(word in prompt))
                result.answered += int(word.lower() in str(answer.get("output_text", "")).lower())
            async with maker() as session:
                payloads = list(
                    (await session.execute(sa.select(Message.payload).where(Message.type == "compaction"))).scalars()
                )
            result.summaries = len(payloads)
            result.summary_in = sum(int((p or {}).get("input_tokens", 0)) for p in payloads)
            result.summary_out = sum(int((p or {}).get("summary_tokens", 0)) for p in payloads)
    result.summary_seconds = sum(provider.summary_seconds)
    result.turn_seconds = list(provider.turn_seconds)
    return result


async def _jobs_settled(maker: object) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    assert isinstance(maker, async_sessionmaker)
    session_maker: async_sessionmaker[AsyncSession] = maker
    for _ in range(6000):
        async with session_maker() as session:
            pending = (
                await session.execute(sa.select(sa.func.count()).where(Job.status.in_(("queued", "running"))))
            ).scalar_one()
        if not pending:
            return
        await asyncio.sleep(0.05)
    raise SystemExit("compaction jobs did not settle")


def provider_for(kind: str, window: int, http: httpx.AsyncClient, upstream: str | None) -> Provider:
    if kind == "embedded":
        from threadline.providers.local import LocalProvider

        return LocalProvider(model_name="smollm2-135m-instruct", context_window=window)
    from threadline.providers.openai_compat import OpenAICompatProvider

    assert upstream is not None
    return OpenAICompatProvider(
        name="stub",
        base_url=upstream,
        models=["stub-model"],
        http_client=http,
        context_window=window,
        tokenizer="o200k",
    )


async def run_all(args: argparse.Namespace, upstream: str | None, urls: list[str]) -> list[Result]:
    async with httpx.AsyncClient(timeout=600) as http:
        provider = Recording(provider_for(args.model, args.window, http, upstream))
        try:
            return [
                await replay(provider, url, label, options, args.filler)
                for url, (label, options) in zip(urls, MODES, strict=True)
            ]
        finally:
            await provider.inner.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["stub", "embedded"], default="stub")
    parser.add_argument("--window", type=int, default=640)
    parser.add_argument("--filler", type=int, default=14, help="turns of small talk between the facts and questions")
    args = parser.parse_args()

    urls = [fresh_database() for _ in MODES]
    procs: list[subprocess.Popen[bytes]] = []
    upstream = None
    if args.model == "stub":
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, str(REPO / "tests" / "upstream.py"), "--port", str(port)]))
        upstream = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{upstream}/models", procs[0], "stub upstream")
    try:
        results = asyncio.run(run_all(args, upstream, urls))
    finally:
        stop(procs)

    turns = len(script(args.filler)) + len(FACTS)
    print(f"model {args.model}, window {args.window} tokens, {turns} turns, {len(FACTS)} facts planted in turns 1-6")
    header = f"{'mode':<24}{'facts seen':>11}{'answered':>10}{'summaries':>11}{'sum in/out tok':>16}"
    print(header + f"{'sum s':>8}{'turn p50 s':>12}")
    for r in results:
        answered = f"{r.answered}/{len(FACTS)}" if args.model == "embedded" else "-"
        p50 = statistics.median(r.turn_seconds) if r.turn_seconds else 0.0
        print(
            f"{r.mode:<24}{f'{sum(r.seen)}/{len(FACTS)}':>11}{answered:>10}{r.summaries:>11}"
            f"{f'{r.summary_in}/{r.summary_out}':>16}{r.summary_seconds:>8.2f}{p50:>12.3f}"
        )


if __name__ == "__main__":
    main()
