"""The pure context builder with a summary (the newest compaction item, docs/compaction.md): it starts the
history in every mode, `smart` keeps the conversation's start before it, and one that does not fit is left out
and reported (no database)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from threadline.domain.compaction import SourceItem, safe_cut, transcript
from threadline.domain.context import ContextPlan, HistoryMessage, PromptMessage, Summary, build_context
from threadline.errors import ContextLengthExceeded

USER = PromptMessage("user", "new question", 10)


def items(first_seq: int, *tokens: int) -> list[HistoryMessage]:
    return [
        HistoryMessage(
            seq=first_seq + i,
            role="user" if (first_seq + i) % 2 else "assistant",
            content=f"m{first_seq + i}",
            tokens=t,
        )
        for i, t in enumerate(tokens)
    ]


def summary(last_seq: int, tokens: int = 15) -> Summary:
    return Summary("cmp_1", seq=last_seq + 1, first_seq=1, last_seq=last_seq, content="S", tokens=tokens, model="m")


def build(
    mode: str, tail: Sequence[HistoryMessage], head: Sequence[HistoryMessage], total: int, s: Summary | None
) -> ContextPlan:
    return build_context(
        mode=mode,  # type: ignore[arg-type]
        window=100,
        max_output_tokens=20,
        pinned=[],
        inputs=[USER],
        tail=list(tail),
        head=list(head),
        history_total=total,
        count_note=lambda text: 5,
        priming_tokens=2,
        summary=s,
        after_summary=len(tail),
    )


@pytest.mark.parametrize("mode", ["recent", "smart", "full"])
def test_the_summary_starts_the_history_and_the_items_after_it_follow(mode: str) -> None:
    start = items(1, 10, 10)  # the conversation's start, covered by the summary
    plan = build(mode, items(11, 10, 10), start, 12, summary(10))
    contents = [m.content for m in plan.messages]
    expected = ["S", "m11", "m12", "new question"]
    if mode == "smart":
        expected = ["m1", "m2", *expected]  # the start as it was said, then the summary of the rest
    assert contents == expected
    assert plan.messages[len(expected) - 4].type == "compaction"
    report = plan.report.as_dict()
    assert report["compaction"] == {
        "id": "cmp_1",
        "thread_id": "",
        "seq": 11,
        "covers": [1, 10],
        "model": "m",
        "tokens": 15,
    }
    assert report["compaction_fallback"] is None and report["items_by_type"]["compaction"] == 1
    assert report["input_tokens"] == sum(m.tokens for m in plan.messages) + 2


def test_smart_marks_the_gap_between_the_summary_and_the_newest_items() -> None:
    start = items(1, 10, 10)
    after = items(11, 10, 10, 10, 10, 10)  # 50 tokens: with the start and the summary they do not all fit
    plan = build("smart", after, start, 15, summary(10))
    contents = [m.content for m in plan.messages]
    assert contents[:3] == ["m1", "m2", "S"] and contents[3].startswith("[…") and contents[-1] == "new question"
    assert plan.report.gap_marked and plan.report.history_budget >= sum(m.tokens for m in plan.messages[:-1])
    kept = contents[4:-1]
    assert kept == [f"m{seq}" for seq in range(16 - len(kept), 16)]  # the newest, in order


def test_recent_keeps_the_summary_before_the_newest_items_that_fit() -> None:
    plan = build("recent", items(11, 40, 10, 10), [], 13, summary(10))
    assert [m.content for m in plan.messages] == ["S", "m12", "m13", "new question"]
    assert plan.report.messages_omitted == 11  # ten summarised, one dropped


def test_full_refuses_when_the_items_after_the_summary_do_not_fit() -> None:
    with pytest.raises(ContextLengthExceeded):
        build("full", items(11, 30, 30), [], 12, summary(10))


def test_a_summary_too_large_for_the_budget_is_left_out_and_reported() -> None:
    plan = build("recent", items(11, 10), [], 11, summary(10, tokens=500))
    assert [m.content for m in plan.messages] == ["m11", "new question"]
    assert plan.report.as_dict()["compaction"] is None
    assert plan.report.compaction_fallback == "summary_too_large"


def test_a_compaction_never_cuts_a_call_from_its_output_nor_leaves_a_call_unanswered() -> None:
    kinds = ["message", "function_call", "function_call_output", "message", "function_call"]
    source = [SourceItem(i + 1, "user", "x", kind) for i, kind in enumerate(kinds)]
    assert safe_cut(source, 2) == 1  # between the call and its output: before the call
    assert safe_cut(source, 3) == 3
    assert safe_cut(source, 5) == 4  # the last call waits for its output: it stays
    text = transcript("earlier", [SourceItem(1, "user", "hi"), SourceItem(2, "assistant", "{}", "function_call", "f")])
    assert text.split("\n\n") == [
        "Summarise this conversation:",
        "Summary of what came before: earlier",
        "User: hi",
        "Assistant called the tool f with {}",
    ]
