"""Pure rules of AI thread naming: the bounded prompt, and turning a model's answer into a clean title."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from threadline.domain.messages import ChatMessage
from threadline.domain.threads import TITLE_MAX_CHARS

# The prompt reads only the start of a conversation (that is what a title names), so its cost does not grow
# with the thread: at most this many user/assistant messages, each cut to this many characters.
EXCERPT_MESSAGES = 6
EXCERPT_CHARS = 300

INSTRUCTION = (
    "You write titles for conversations. Reply with a title of at most 6 words for the conversation the user "
    "shows you. Reply with the title only: no quotes, no explanation, no punctuation at the end."
)

_LABEL = re.compile(r"^(?:conversation\s+)?title\s*(?::|\s[-–—]\s)\s*", re.IGNORECASE)
# While the answer so far could still become such a label, a preview shows nothing.
_LABEL_STARTS = ("title:", "conversation title:")
# Quotes that are never part of a title (apostrophes are: "Ada's notes"); markdown emphasis and code marks.
_DROP = str.maketrans("", "", '"“”„«»`*')
# Underscores mark emphasis unless they join two words (snake_case names stay).
_EMPHASIS = re.compile(r"(?<![^\W_])_+|_+(?![^\W_])")
_EDGE = " \t'‘’#>-•|~"
_TRAILING = " \t.,;:!?…'‘’-–—"


@dataclass(frozen=True)
class ExcerptMessage:
    role: str
    content: str


def naming_prompt(messages: Sequence[ExcerptMessage]) -> list[ChatMessage]:
    """The naming turn's inputs: the instruction, then the conversation's start as one user message."""
    lines = []
    for message in messages[:EXCERPT_MESSAGES]:
        text = " ".join(message.content.split())
        if len(text) > EXCERPT_CHARS:
            text = text[:EXCERPT_CHARS].rstrip() + "…"
        speaker = "User" if message.role == "user" else "Assistant"
        lines.append(f"{speaker}: {text}")
    conversation = "\n".join(lines)
    return [
        ChatMessage("system", INSTRUCTION),
        ChatMessage("user", f"Conversation:\n{conversation}\n\nWrite a short title for this conversation."),
    ]


def clean_title(text: str) -> str:
    """The model's answer as a title: its first line with content, without quotes, markdown, a "Title:" label
    or trailing punctuation, whitespace collapsed, at most TITLE_MAX_CHARS characters. May be empty."""
    for line in text.splitlines():
        title = _clean_line(line)
        if title:
            return title
    return ""


def _clean_line(line: str) -> str:
    title = " ".join(_EMPHASIS.sub("", line.translate(_DROP)).split())
    title = title.strip(_EDGE)
    title = _LABEL.sub("", title).strip(_EDGE)
    if len(title) > TITLE_MAX_CHARS:
        cut = title[: TITLE_MAX_CHARS + 1]
        # At a word boundary when there is one in the last quarter; a single huge word is simply cut.
        space = cut.rfind(" ")
        title = cut[:space] if space > TITLE_MAX_CHARS * 3 // 4 else cut[:TITLE_MAX_CHARS]
    return title.rstrip(_TRAILING).strip(_EDGE)


class TitlePreview:
    """Streams a title while it is generated: each delta extends what was already shown.

    What is shown is the cleaned answer so far, minus what may still change (trailing punctuation and spaces,
    which `clean_title` drops at the end). When cleaning rewrites the start (a "Title:" label seen only once its
    colon arrives), nothing more is shown; the completed event carries the saved title either way.
    """

    def __init__(self) -> None:
        self._raw: list[str] = []
        self.shown = ""

    def feed(self, text: str) -> str:
        """The new part of the preview after `text` arrived ("" when nothing new can be shown yet)."""
        self._raw.append(text)
        current = clean_title("".join(self._raw))
        if not self.shown and any(label.startswith(current.lower()) for label in _LABEL_STARTS):
            return ""
        if not current.startswith(self.shown):
            return ""
        delta = current[len(self.shown) :]
        self.shown = current
        return delta
