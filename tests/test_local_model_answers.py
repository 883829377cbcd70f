"""The embedded model's first impression: on its default sampling (the model card's, plus a repetition penalty)
SmolLM2-135M answers twenty varied first prompts without looping.

Before the penalty, "Write a haiku about the sea" came back as "A lone soul, a lone soul," until the token limit.
A loop shows as a line said over and over (no answer may repeat one more than twice), or as a clause looping
within one line. The seed is fixed so a run is reproducible; the sampling is otherwise the provider's default.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest

from threadline.domain.messages import ChatMessage
from threadline.providers.base import GenerationParams, TextDelta
from threadline.providers.local import LocalProvider, Sampling

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow

PROMPTS = [
    "Write a haiku about the sea.",
    "Hello!",
    "What is the capital of France?",
    "Tell me a joke.",
    "Explain what a database index is.",
    "Give me three tips for learning Python.",
    "Write a short poem about autumn leaves.",
    "How do I make a cup of tea?",
    "What is photosynthesis?",
    "Summarize the story of Little Red Riding Hood.",
    "Translate 'good morning' into Spanish.",
    "What should I pack for a weekend hiking trip?",
    "Write a limerick about a cat.",
    "Why is the sky blue?",
    "List the planets of the solar system.",
    "How does a bicycle stay upright?",
    "Write a two-sentence horror story.",
    "What are the benefits of regular exercise?",
    "Describe a sunset in one paragraph.",
    "What is the difference between weather and climate?",
]


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    local = LocalProvider(model_name=MODEL, context_window=2048, sampling=replace(Sampling(), seed=20260301))
    yield local
    local.shutdown()


def repeated_pieces(answer: str) -> dict[str, int]:
    """What an answer says over and over (case and spacing aside): a line more than twice, or a clause of three
    words or more (between punctuation) more than three times — a loop within one line."""
    lines = [" ".join(line.lower().split()) for line in answer.splitlines() if line.strip()]
    clauses = [" ".join(p.lower().split()) for p in re.split(r"[.,;:!?\n]", answer) if len(p.split()) >= 3]
    found = {line: n for line, n in Counter(lines).items() if n > 2}
    found.update({clause: n for clause, n in Counter(clauses).items() if n > 3})
    return found


def test_repeated_pieces_finds_the_old_loop() -> None:
    assert repeated_pieces("A lone soul, a lone soul, a lone soul, a lone soul,") == {"a lone soul": 4}
    assert repeated_pieces("Big waves.\nBig waves.\nBig waves.") == {"big waves.": 3}
    assert repeated_pieces("Mercury\nVenus\nEarth\nMars\nthe key is this, the key is that, the key is") == {}


async def test_first_answers_do_not_loop(provider: LocalProvider) -> None:
    loops = {}
    for prompt in PROMPTS:
        events = [
            e
            async for e in provider.stream(
                MODEL, [ChatMessage("user", prompt)], GenerationParams(max_output_tokens=128)
            )
        ]
        answer = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert answer.strip(), prompt
        if repeated := repeated_pieces(answer):
            loops[prompt] = (repeated, answer)
    assert loops == {}
