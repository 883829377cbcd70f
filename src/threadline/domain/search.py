"""Pure rules of thread search: what a query means and how a snippet is cut."""

from __future__ import annotations

import re

from threadline.errors import ValidationFailed

MAX_QUERY_CHARS = 256
MAX_TERMS = 16
SNIPPET_CHARS = 160

# Words are runs of letters and digits: both full-text engines split on everything else (underscore included).
_WORD = re.compile(r"[^\W_]+")


def parse_query(q: str, param: str = "q") -> list[str]:
    """The query's words, lowercased. Every word must occur (AND), each as a word prefix ("pyth" finds python)."""
    if len(q) > MAX_QUERY_CHARS:
        raise ValidationFailed(
            f"The search query has {len(q)} characters; the maximum is {MAX_QUERY_CHARS}.",
            code="query_too_long",
            param=param,
        )
    terms = list(dict.fromkeys(w.lower() for w in _WORD.findall(q)))
    if not terms:
        raise ValidationFailed("The search query has no words to look for.", code="invalid_query", param=param)
    if len(terms) > MAX_TERMS:
        raise ValidationFailed(
            f"The search query has {len(terms)} words; the maximum is {MAX_TERMS}.", code="query_too_long", param=param
        )
    return terms


def snippet(text: str, terms: list[str], width: int = SNIPPET_CHARS) -> str:
    """About `width` characters of `text` around the first word that starts with one of `terms`."""
    lowered = text.lower()
    first = min(
        (m.start() for term in terms for m in re.finditer(r"(?<![^\W_])" + re.escape(term), lowered)),
        default=0,
    )
    start = max(0, first - width // 3)
    end = min(len(text), start + width)
    start = max(0, min(start, end - width))
    piece = " ".join(text[start:end].split())
    return ("…" if start > 0 else "") + piece + ("…" if end < len(text) else "")
