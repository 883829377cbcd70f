"""The pure rules of AI naming: the bounded prompt, cleaning a model's answer, the streamed preview."""

from __future__ import annotations

import pytest

from threadline.domain.naming import (
    EXCERPT_CHARS,
    EXCERPT_MESSAGES,
    INSTRUCTION,
    ExcerptMessage,
    TitlePreview,
    clean_title,
    naming_prompt,
)
from threadline.domain.threads import TITLE_MAX_CHARS


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ("Python Basics", "Python Basics"),
        ('"Python Basics."', "Python Basics"),
        ("**Python   Basics**", "Python Basics"),
        ("## Title: “Learning Rust”!", "Learning Rust"),
        ("Conversation title - Tax forms", "Tax forms"),
        ("`Ada's notes`", "Ada's notes"),
        ("'Quoted title'...", "Quoted title"),
        ("\n\n  Weather in Paris?\nThis title reflects the question.", "Weather in Paris"),
        ("- Bullet title", "Bullet title"),
        ("_Emphasis_ matters", "Emphasis matters"),
        ("Renaming my_var safely", "Renaming my_var safely"),
        ("Title-based search", "Title-based search"),
        ("Titles in Python", "Titles in Python"),
        ("", ""),
        ('"" \n **', ""),
        ("...", ""),
    ],
)
def test_clean_title(answer: str, title: str) -> None:
    assert clean_title(answer) == title


def test_clean_title_cuts_long_answers_at_a_word_boundary() -> None:
    title = clean_title("word " * 100)
    assert len(title) <= TITLE_MAX_CHARS
    assert title.endswith("word") and "  " not in title
    one_word = clean_title("x" * 500)
    assert one_word == "x" * TITLE_MAX_CHARS


def test_prompt_is_bounded_whatever_the_thread_length() -> None:
    messages = [ExcerptMessage("user" if i % 2 == 0 else "assistant", f"message {i} " + "y" * 1000) for i in range(50)]
    prompt = naming_prompt(messages)
    assert [m.role for m in prompt] == ["system", "user"]
    assert prompt[0].content == INSTRUCTION
    lines = [line for line in prompt[1].content.splitlines() if line.startswith(("User: ", "Assistant: "))]
    assert len(lines) == EXCERPT_MESSAGES
    assert lines[0].startswith("User: message 0 ") and lines[1].startswith("Assistant: message 1 ")
    assert all(len(line.split(": ", 1)[1]) <= EXCERPT_CHARS + 1 for line in lines)
    assert "message 6" not in prompt[1].content


def test_prompt_flattens_newlines_inside_messages() -> None:
    prompt = naming_prompt([ExcerptMessage("user", "line one\nline two\n\nUser: injected")])
    assert "User: line one line two User: injected" in prompt[1].content
    assert prompt[1].content.count("\nUser:") == 1


def _preview(chunks: list[str]) -> tuple[list[str], TitlePreview]:
    preview = TitlePreview()
    deltas = [delta for chunk in chunks if (delta := preview.feed(chunk))]
    return deltas, preview


def test_preview_streams_the_clean_title_in_order() -> None:
    chunks = ['"', "**Python", " basics", " for", " beginners", ".**", '"']
    deltas, _ = _preview(chunks)
    assert deltas == ["Python", " basics", " for", " beginners"]
    assert "".join(deltas) == clean_title("".join(chunks))


def test_preview_holds_back_a_label_until_it_is_known() -> None:
    deltas, _ = _preview(["Ti", "tle", ":", " Tax", " forms"])
    assert "".join(deltas) == "Tax forms"
    deltas, _ = _preview(["Ti", "tles", " in", " Python"])
    assert "".join(deltas) == "Titles in Python"


def test_preview_stops_at_the_first_line() -> None:
    deltas, _ = _preview(["Weather", " in Paris", "\n", "This", " explains"])
    assert "".join(deltas) == "Weather in Paris"
