"""Typed items in the pure domain: pairing rules with OpenAI's wording, and the context builder keeping a call and
its output together (no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from threadline.domain.context import HistoryMessage, PromptMessage, build_context
from threadline.domain.messages import ChatMessage, check_pairing, unanswered_calls
from threadline.errors import ValidationFailed


def call(call_id: str) -> ChatMessage:
    return ChatMessage("assistant", "{}", "function_call", call_id, "f")


def output(call_id: str) -> ChatMessage:
    return ChatMessage("tool", "ok", "function_call_output", call_id)


USER = ChatMessage("user", "hi")


def test_an_output_needs_its_call() -> None:
    check_pairing(["c1"], [output("c1")])
    check_pairing([], [output("c1")], known=["c1"])
    check_pairing([], [call("c2"), output("c2")])
    with pytest.raises(ValidationFailed) as refused:
        check_pairing([], [output("c9")])
    assert refused.value.message == "No tool call found for function call output with call_id c9."
    assert refused.value.param == "inputs.0"


def test_a_message_needs_every_earlier_call_answered() -> None:
    check_pairing(["c1", "c2"], [output("c2"), output("c1"), USER])
    with pytest.raises(ValidationFailed) as refused:
        check_pairing(["c1", "c2"], [output("c1"), USER])
    assert refused.value.message == "No tool output found for function call c2."
    with pytest.raises(ValidationFailed):
        check_pairing([], [call("c3"), USER])


def test_a_turn_may_not_end_with_a_call_unanswered_but_stored_items_may() -> None:
    with pytest.raises(ValidationFailed) as refused:
        check_pairing(["c1"], [])
    assert refused.value.message == "No tool output found for function call c1."
    check_pairing(["c1"], [], all_answered=False)
    check_pairing([], [USER, call("c4")], all_answered=False)


def test_unanswered_calls_come_from_the_trailing_tool_items_only() -> None:
    # Newest first: output c2, call c2, call c1, then a message (older items do not matter).
    items = [("function_call_output", "c2"), ("function_call", "c2"), ("function_call", "c1"), ("message", None)]
    assert unanswered_calls([*items, ("function_call", "c0")]) == ["c1"]
    assert unanswered_calls([("message", None), ("function_call", "c0")]) == []
    assert unanswered_calls([]) == []


def item(seq: int, kind: str, tokens: int = 10, call_id: str | None = None) -> HistoryMessage:
    role = {"message": "user" if seq % 2 else "assistant", "function_call": "assistant"}.get(kind, "tool")
    return HistoryMessage(seq=seq, role=role, content=f"i{seq}", tokens=tokens, type=kind, call_id=call_id)


# user, call a, call b, output a, output b, answer, user, call c, output c, answer
HISTORY = [
    item(1, "message"),
    item(2, "function_call", call_id="a"),
    item(3, "function_call", call_id="b"),
    item(4, "function_call_output", call_id="a"),
    item(5, "function_call_output", call_id="b"),
    item(6, "message"),
    item(7, "message"),
    item(8, "function_call", call_id="c"),
    item(9, "function_call_output", call_id="c"),
    item(10, "message"),
]


def chosen(budget_items: int, mode: str = "recent", tail: list[HistoryMessage] = HISTORY) -> list[int]:
    """Seqs chosen when the history budget holds `budget_items` items of 10 tokens."""
    plan = build_context(
        mode=mode,  # type: ignore[arg-type]
        window=budget_items * 10 + 10 + 5,
        max_output_tokens=10,
        pinned=[],
        inputs=[PromptMessage("user", "q", 5)],
        tail=tail,
        history_total=len(HISTORY),
        priming_tokens=0,
    )
    return [m.seq for m in plan.messages if m.seq is not None]


def test_recent_keeps_or_drops_a_unit_of_calls_and_outputs_whole() -> None:
    assert chosen(10) == list(range(1, 11))
    assert chosen(5) == [6, 7, 8, 9, 10]
    # Room for 6 would start at output b (seq 5): the rest of its unit goes too.
    assert chosen(6) == [6, 7, 8, 9, 10]
    assert chosen(8) == [6, 7, 8, 9, 10]
    assert chosen(9) == list(range(2, 11))
    assert chosen(2) == [10]
    assert chosen(3) == [8, 9, 10]


def test_a_tail_read_from_inside_a_unit_drops_the_orphaned_outputs() -> None:
    # The history read began at output a: its call lies before what was read.
    assert chosen(10, tail=HISTORY[3:]) == [6, 7, 8, 9, 10]
    # Beginning at call b: output a has no call in what was read either.
    assert chosen(10, tail=HISTORY[2:]) == [6, 7, 8, 9, 10]


def test_smart_mode_anchor_stops_before_a_call() -> None:
    plan = build_context(
        mode="smart",
        window=60 + 10 + 5,
        max_output_tokens=10,
        pinned=[],
        inputs=[PromptMessage("user", "q", 5)],
        tail=HISTORY,
        head=HISTORY,
        history_total=len(HISTORY),
        count_note=lambda _: 1,
        priming_tokens=0,
    )
    seqs = [m.seq for m in plan.messages if m.seq is not None]
    # The anchor is the first user message alone (the first answer is a call, not a message).
    assert seqs[0] == 1 and 2 not in seqs


@given(st.integers(min_value=0, max_value=12))
def test_no_budget_ever_separates_a_call_from_its_output(budget: int) -> None:
    seqs = set(chosen(budget))
    by_call: dict[str, set[str]] = {}
    for m in HISTORY:
        if m.call_id is not None and m.seq in seqs:
            by_call.setdefault(m.call_id, set()).add(m.type)
    assert all(kinds == {"function_call", "function_call_output"} for kinds in by_call.values())
