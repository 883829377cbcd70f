"""Token counts: exact where an exact tokenizer exists, a conservative estimate elsewhere."""

from __future__ import annotations

import pytest
from llama_cpp import Llama

from threadline.domain.tokens import message_overhead, message_token_count, reply_overhead
from threadline.providers.local import LlamaTokenizer, default_model_path
from threadline.providers.tokenizers import (
    BpeTokenizer,
    EstimateTokenizer,
    bpe_encoding,
    encoding_for_model,
    make_tokenizer,
    needs_loading,
    tokenizer_name_for,
)

SAMPLES = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. " * 20,
    "Ünïcödé ✓ — 日本語のテキスト, emoji 🎉🎉 and <|endoftext|> as plain text.",
    "def f(x):\n    return x ** 2  # code\n\n\tindented\r\n",
]

# Typical English prose (several registers) for the estimate's never-undercount promise.
ENGLISH = [
    "Threadline keeps conversation threads so that your application only sends the new turn. It looks up the "
    "thread, injects as much history as fits into the model's context window, streams the answer back and saves "
    "both sides of the exchange for the next request.",
    "Dear customer, thank you for reaching out about your invoice from March. We have reviewed the charges and "
    "issued a refund of $42.17 to the card ending in 4242; it should appear within 5-7 business days.",
    "Photosynthesis converts light energy into chemical energy: chlorophyll absorbs mostly blue and red light, "
    "water is split, oxygen is released, and carbon dioxide is fixed into sugars by the Calvin cycle.",
    "I can't believe it's already Friday! Let's grab lunch at noon — maybe the new place on 5th Street? "
    "They've got great reviews, though I'd heard the wait can be long.",
    "ok",
    "Yes.",
]


@pytest.mark.parametrize("name", ["o200k", "cl100k"])
@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_counts_equal_bpe_openai(name: str, text: str) -> None:
    encoding = bpe_encoding(name)  # bpe-openai's own Encoding object
    assert encoding.name == f"{name}_base"
    assert BpeTokenizer(name).count(text) == len(encoding.encode_ordinary(text))
    if "<|" not in text:
        assert BpeTokenizer(name).count(text) == len(encoding.encode(text))


@pytest.fixture(scope="module")
def smollm_vocab() -> Llama:
    vocab = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
    yield vocab
    vocab.close()


@pytest.mark.parametrize("text", SAMPLES)
def test_llama_counts_equal_llama_tokenize(smollm_vocab: Llama, text: str) -> None:
    tokenizer = LlamaTokenizer("llama:smollm2", smollm_vocab)
    assert tokenizer.count(text) == len(smollm_vocab.tokenize(text.encode(), add_bos=False, special=False))
    assert tokenizer.name == "llama:smollm2"


@pytest.mark.parametrize("text", [*ENGLISH, SAMPLES[1], SAMPLES[2], SAMPLES[3]])
def test_estimate_never_undercounts_typical_text_against_o200k(text: str) -> None:
    assert EstimateTokenizer().count(text) >= BpeTokenizer("o200k").count(text)


def test_estimate_overcounts_english_prose_by_a_bounded_margin() -> None:
    prose = " ".join(ENGLISH)
    exact, estimate = BpeTokenizer("o200k").count(prose), EstimateTokenizer().count(prose)
    assert exact < estimate < 2 * exact  # safe, yet not so loose that it wastes half the window


def test_estimate_rule_is_utf8_bytes_over_three_rounded_up() -> None:
    assert EstimateTokenizer().count("") == 0
    assert EstimateTokenizer().count("abcd") == 2
    assert EstimateTokenizer().count("日本") == 2  # 6 bytes


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k"),
        ("gpt-4o-mini", "o200k"),
        ("gpt-4.1", "o200k"),
        ("gpt-4.1-nano", "o200k"),
        ("gpt-5", "o200k"),
        ("o1", "o200k"),
        ("o3-mini", "o200k"),
        ("o4-mini-2025-04-16", "o200k"),
        ("chatgpt-4o-latest", "o200k"),
        ("openai/gpt-4o", "o200k"),
        ("gpt-4", "cl100k"),
        ("gpt-4-turbo", "cl100k"),
        ("gpt-3.5-turbo", "cl100k"),
        ("text-embedding-3-small", "cl100k"),
        ("llama3.1:8b", None),
        ("o1x-local", None),
        ("mistral-7b-instruct", None),
    ],
)
def test_encoding_by_model_name(model: str, expected: str | None) -> None:
    assert encoding_for_model(model) == expected
    assert tokenizer_name_for(model) == (expected or "estimate")


def test_a_configured_tokenizer_wins_and_must_be_known() -> None:
    assert tokenizer_name_for("gpt-4o", "cl100k") == "cl100k"
    assert tokenizer_name_for("anything", "estimate") == "estimate"
    assert make_tokenizer("o200k").name == "o200k"
    with pytest.raises(ValueError, match="tokenizer"):
        tokenizer_name_for("gpt-4o", "p50k")


def test_message_token_count_is_content_plus_overhead() -> None:
    o200k = BpeTokenizer("o200k")
    # OpenAI's guide: 3 framing tokens + the role (1 token) per message.
    assert message_overhead(o200k, "user") == 4
    assert message_token_count(o200k, "assistant", "Hello there") == o200k.count("Hello there") + 4
    assert message_token_count(EstimateTokenizer(), "user", "") == 4 + 2  # "user" is 4 bytes → 2
    assert reply_overhead(o200k) == 3


def test_llama_message_counts_match_the_chat_template_exactly(smollm_vocab: Llama) -> None:
    """ChatML: the stored counts of a conversation + reply priming = the formatted prompt's tokens."""
    tokenizer = LlamaTokenizer("llama:smollm2", smollm_vocab)
    conversation = [
        ("system", "You answer in one sentence."),
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital of France."),
        ("user", "And of Italy? Ünïcödé ✓"),
    ]
    prompt = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in conversation)
    prompt += "<|im_start|>assistant\n"
    exact = len(smollm_vocab.tokenize(prompt.encode(), add_bos=False, special=True))
    counted = sum(message_token_count(tokenizer, role, content) for role, content in conversation)
    assert reply_overhead(tokenizer) == 4  # <|im_start|> ass istant \n
    assert counted + reply_overhead(tokenizer) == exact


def test_a_tokenizer_loads_its_tables_on_first_use() -> None:
    """An idle server holds no BPE tables (~140 MB for o200k): they load on the first count, and the turn engine
    loads them off the event loop before a model's first turn (`needs_loading`)."""
    tokenizer = BpeTokenizer("o200k")
    assert not tokenizer.loaded and needs_loading(tokenizer)
    assert tokenizer.count("hello world") == 2
    assert tokenizer.loaded and not needs_loading(tokenizer)
    assert not needs_loading(EstimateTokenizer())
