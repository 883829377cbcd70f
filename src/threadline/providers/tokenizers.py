"""Exact token counts where they exist, a stated conservative estimate where they don't.

- OpenAI models: `bpe-openai` (offline, exact): o200k for gpt-4o*, gpt-4.1*, gpt-5*, o1/o3/o4*, chatgpt-*;
  cl100k for gpt-4, gpt-3.5*, text-embedding-*.
- GGUF models: llama.cpp's own tokenizer (`LlamaTokenizer` in `local.py`).
- Any other upstream: the provider's `tokenizer = "o200k" | "cl100k" | "estimate"`; unset means the rules above
  by model name, else the estimate.

The estimate is ceil(UTF-8 bytes / 3). o200k averages about 4–5 bytes per token on English prose and about 3 on
CJK text, so the estimate overcounts typical prose by a quarter or more and does not undercount it (tested on
samples): a context budget built on it errs on the safe side. Symbol-dense text (source code, emoji) can need
~15 % more tokens than the estimate: configure an exact tokenizer for upstreams that mostly see code.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from functools import cache
from typing import Any

ENCODINGS = {"o200k": "o200k_base", "cl100k": "cl100k_base"}
TOKENIZER_CHOICES = ("o200k", "cl100k", "estimate")

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-5", "chatgpt-")
# o1, o1-mini, o3-2025-04-16, o4-mini… but not a local model that merely starts with those letters.
_O_SERIES = re.compile(r"o[134](?:-|$)")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "text-embedding-")
_encoding_lock = threading.Lock()


@cache
def bpe_encoding(name: str) -> Any:
    """The bpe-openai `Encoding` for "o200k" or "cl100k", built on first use (building the tables takes ~1 s)."""
    with warnings.catch_warnings():
        # bpe-openai loads its tables with importlib.resources.open_binary, deprecated since Python 3.11.
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        return bpe_openai.get_encoding(ENCODINGS[name])


class BpeTokenizer:
    """Exact counts with an OpenAI encoding (`o200k` or `cl100k`)."""

    def __init__(self, name: str) -> None:
        if name not in ENCODINGS:
            raise ValueError(f"unknown encoding {name!r}: use one of {', '.join(ENCODINGS)}")
        self.name = name
        # Loaded on first use, not at start: an idle server does not hold the tables (~140 MB for o200k). The turn
        # engine loads them off the event loop before a model's first turn (`needs_loading`).
        self._encoding: Any = None

    @property
    def loaded(self) -> bool:
        return self._encoding is not None

    def load(self) -> None:
        with _encoding_lock:
            self._encoding = bpe_encoding(self.name)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._encoding is None:
            self.load()
        encoding = self._encoding
        # encode_ordinary: text that looks like "<|endoftext|>" is ordinary text in a message, never a special token.
        return len(encoding.encode_ordinary(text))


class EstimateTokenizer:
    """ceil(UTF-8 bytes / 3): a conservative count for models whose tokenizer is unknown (see the module doc)."""

    name = "estimate"

    def count(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) / 3)


def encoding_for_model(model: str) -> str | None:
    """ "o200k" or "cl100k" for OpenAI model names (an "openai/" style prefix is ignored), else None."""
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith(_O200K_PREFIXES) or _O_SERIES.match(name):
        return "o200k"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k"
    return None


def tokenizer_name_for(model: str, configured: str | None = None) -> str:
    """The tokenizer that counts for `model`: the configured one, else by model name, else "estimate"."""
    if configured is not None:
        if configured not in TOKENIZER_CHOICES:
            raise ValueError(f"tokenizer {configured!r}: use one of {', '.join(TOKENIZER_CHOICES)}")
        return configured
    return encoding_for_model(model) or "estimate"


def needs_loading(tokenizer: object) -> bool:
    """Whether counting with `tokenizer` would first load its tables (about a second: do it off the event loop)."""
    return isinstance(tokenizer, BpeTokenizer) and not tokenizer.loaded


def make_tokenizer(name: str) -> BpeTokenizer | EstimateTokenizer:
    """A tokenizer by name ("o200k", "cl100k" or "estimate")."""
    return EstimateTokenizer() if name == "estimate" else BpeTokenizer(name)
