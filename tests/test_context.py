"""The pure context builder: budgets, system placement, modes, edge cases (no database)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threadline.domain.context import (
    HistoryMessage,
    PromptMessage,
    anchor_of,
    build_context,
    gap_note,
    seq_ranges,
)
from threadline.errors import ContextLengthExceeded
from threadline.services.conversation import Segment
from threadline.storage.repositories.messages import ContextRow
from threadline.turns.context import FIRST_PAGE, MAX_PAGE, RowSizes, _Counter, _PathReader


def history(*tokens: int, roles: str = "") -> list[HistoryMessage]:
    """Messages with the given token costs; roles alternate user/assistant unless spelled out (s/u/a)."""
    names = {"s": "system", "u": "user", "a": "assistant"}
    out = []
    for index, cost in enumerate(tokens):
        role = names[roles[index]] if roles else ("user" if index % 2 == 0 else "assistant")
        out.append(HistoryMessage(seq=index + 1, role=role, content=f"m{index + 1}", tokens=cost))
    return out


USER = PromptMessage("user", "new question", 10)


def note_cost(text: str) -> int:
    return 5


# What every request costs besides its messages (a model's request_overhead_tokens).
PRIMING = 2


def build(mode: str = "recent", *, window: int = 100, max_out: int = 20, hist=(), head=None, pinned=(), inputs=None):
    hist = list(hist)
    return build_context(
        mode=mode,  # type: ignore[arg-type]
        window=window,
        max_output_tokens=max_out,
        pinned=list(pinned),
        inputs=[USER] if inputs is None else inputs,
        tail=hist,
        head=hist if head is None else head,
        history_total=len(hist),
        count_note=note_cost,
        priming_tokens=PRIMING,
    )


def test_empty_thread_gives_just_the_inputs() -> None:
    plan = build(hist=[])
    assert [m.content for m in plan.messages] == ["new question"]
    report = plan.report
    assert report.messages_included == 0 and report.messages_omitted == 0
    assert report.history_budget == 100 - 20 - PRIMING - 10
    assert report.input_tokens == 10 + PRIMING


def test_recent_keeps_the_newest_that_fit() -> None:
    # budget = 100 - 20 - 2 - 10 = 68
    plan = build(hist=history(30, 30, 30, 30))
    assert [m.seq for m in plan.messages if m.seq] == [3, 4]
    assert plan.report.messages_included == 2
    assert plan.report.messages_omitted == 2
    assert plan.report.seq_ranges == ((3, 4),)
    assert plan.messages[-1] is USER


def test_recent_is_a_suffix_even_if_an_older_small_message_would_fit() -> None:
    plan = build(hist=history(1, 60, 30))
    assert [m.seq for m in plan.messages if m.seq] == [3]


def test_exact_fit_boundary() -> None:
    budget = 100 - 20 - PRIMING - 10
    assert [m.seq for m in build(hist=history(budget)).messages if m.seq] == [1]
    assert [m.seq for m in build(hist=history(budget + 1)).messages if m.seq] == []
    total = build(hist=history(budget)).report.input_tokens
    assert total == 100 - 20  # prompt + reply reserve fill the window exactly


def test_single_huge_message_is_left_out_in_recent_mode() -> None:
    plan = build(hist=history(10, 10_000))
    assert plan.report.messages_included == 0
    assert plan.report.messages_omitted == 2


def test_inputs_alone_over_the_window_are_refused() -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        build(inputs=[PromptMessage("user", "x", 90)])
    assert caught.value.code == "context_length_exceeded"
    assert "100" in caught.value.message and "90" in caught.value.message


def test_inputs_that_leave_exactly_no_history_budget_are_accepted() -> None:
    plan = build(inputs=[PromptMessage("user", "x", 100 - 20 - PRIMING)], hist=history(1))
    assert plan.report.history_budget == 0
    assert plan.report.messages_included == 0


def test_pinned_instructions_come_first_and_always_stay() -> None:
    pinned = [PromptMessage("system", "be brief", 10 - PRIMING)]
    plan = build(hist=history(30, 30, 30), pinned=pinned)
    assert plan.messages[0] is pinned[0]
    # budget = window 100 - reply 20 - inputs 10 - priming - pinned = 60: two 30-token messages
    assert [m.seq for m in plan.messages if m.seq] == [2, 3]


def test_request_system_messages_stay_in_place() -> None:
    inputs = [PromptMessage("system", "step 2", 3), USER]
    plan = build(hist=history(30, 30), inputs=inputs)
    assert list(plan.messages[-2:]) == inputs


def test_full_mode_includes_everything_or_refuses_with_the_sizes() -> None:
    plan = build("full", hist=history(20, 20, 20))
    assert [m.seq for m in plan.messages if m.seq] == [1, 2, 3]
    with pytest.raises(ContextLengthExceeded) as caught:
        build("full", hist=history(30, 30, 30))
    assert "90" in caught.value.message and "68" in caught.value.message
    assert caught.value.param == "thread_context_mode"


def test_smart_keeps_the_start_and_marks_the_gap() -> None:
    hist = history(5, 6, 7, 8, 20, 20, 20, 20, roles="suauauau")
    plan = build("smart", hist=hist)
    seqs = [m.seq for m in plan.messages]
    # anchor: system + first exchange (5+6+7=18); note 5; budget 68 → 45 left: newest two (40)
    assert seqs[:3] == [1, 2, 3]
    note = plan.messages[3]
    assert note.role == "system" and note.seq is None and note.content == gap_note(3)
    assert seqs[4:6] == [7, 8]
    assert plan.report.gap_marked is True
    assert plan.report.messages_omitted == 3
    assert plan.report.seq_ranges == ((1, 3), (7, 8))
    assert sum(m.tokens for m in plan.messages) + PRIMING <= 100 - 20


def test_smart_without_a_gap_adds_no_note() -> None:
    plan = build("smart", hist=history(5, 5, 5, 5))
    assert [m.seq for m in plan.messages if m.seq] == [1, 2, 3, 4]
    assert plan.report.gap_marked is False


def test_smart_drops_an_anchor_that_does_not_fit() -> None:
    plan = build("smart", hist=history(70, 5, 5, 5))
    assert [m.seq for m in plan.messages if m.seq] == [2, 3, 4]
    assert not plan.report.gap_marked


def test_anchor_is_leading_system_then_first_exchange() -> None:
    assert [m.seq for m in anchor_of(history(1, 1, 1, 1, 1, roles="ssuau"))] == [1, 2, 3, 4]
    assert [m.seq for m in anchor_of(history(1, 1, roles="as"))] == []
    assert [m.seq for m in anchor_of(history(1, 1, 1, roles="uua"))] == [1]


def test_seq_ranges() -> None:
    assert seq_ranges([1, 2, 3, 7, 8, 10]) == ((1, 3), (7, 8), (10, 10))
    assert seq_ranges([]) == ()


costs = st.lists(st.integers(min_value=0, max_value=60), max_size=40)
role_strings = st.text(alphabet="sua", min_size=40, max_size=40)


@given(costs=costs, roles=role_strings, window=st.integers(60, 400), mode=st.sampled_from(["recent", "smart"]))
def test_properties_of_recent_and_smart(costs: list[int], roles: str, window: int, mode: str) -> None:
    hist = history(*costs, roles=roles[: len(costs)])
    pinned = [PromptMessage("system", "instructions", 3)]
    plan = build(mode, window=window, hist=hist, pinned=pinned)
    chosen = [m.seq for m in plan.messages if m.seq is not None]
    # Never over the window, pinned first, inputs last, order kept, counts add up.
    assert plan.report.input_tokens + 20 <= window
    assert plan.report.input_tokens == sum(m.tokens for m in plan.messages) + PRIMING
    assert plan.messages[0] is pinned[0] and plan.messages[-1] is USER
    assert chosen == sorted(chosen)
    assert plan.report.messages_included + plan.report.messages_omitted == len(hist)
    if mode == "recent":
        assert chosen == [m.seq for m in hist[len(hist) - len(chosen) :]]
        assert not plan.report.gap_marked
    else:
        anchor = [m.seq for m in anchor_of(hist)]
        assert plan.report.gap_marked == (plan.report.messages_omitted > 0 and chosen[: len(anchor)] == anchor != [])


@given(costs=costs, window=st.integers(60, 400))
def test_full_mode_is_all_or_an_error(costs: list[int], window: int) -> None:
    hist = history(*costs)
    try:
        plan = build("full", window=window, hist=hist)
    except ContextLengthExceeded:
        assert sum(costs) > window - 20 - PRIMING - 10
    else:
        assert [m.seq for m in plan.messages if m.seq] == [m.seq for m in hist]


def test_smart_drops_the_anchor_when_the_anchor_and_its_gap_note_do_not_fit() -> None:
    # Found by hypothesis: the anchor (21) fits the budget (25) but not together with the note (5).
    hist = history(0, 21, 5, roles="sus")
    plan = build("smart", window=60, hist=hist, pinned=[PromptMessage("system", "instructions", 3)])
    assert plan.report.input_tokens + 20 <= 60
    assert not plan.report.gap_marked
    assert [m.seq for m in plan.messages if m.seq] == [3]


class _Thread:
    """`MessageRepository.context_rows` over one thread of `count` rows of `tokens` tokens each (or the tokens of
    each row, oldest first), counting reads."""

    def __init__(self, count: int, tokens: int | Sequence[int]) -> None:
        costs = [tokens] * count if isinstance(tokens, int) else list(tokens)
        self.rows = [
            ContextRow(f"m{seq}", seq, "user", f"m{seq}", cost, "o200k", "message", None, None)
            for seq, cost in enumerate(costs, start=1)
        ]
        self.reads: list[int] = []

    async def context_rows(
        self, org: str, thread_id: str, limit: int, *, newest: bool, before_seq: int | None = None, after_seq: int = 0
    ) -> list[ContextRow]:
        assert newest
        below = [r for r in self.rows if after_seq < r.seq and (before_seq is None or r.seq < before_seq)]
        self.reads.append(len(below[-limit:]))
        return below[-limit:]


@pytest.mark.parametrize("budget", [100, 1_000, 3_900, 40_000])
async def test_the_tail_reads_about_what_the_budget_holds(budget: int) -> None:
    """The pages after the first are sized by the tokens per row read so far: a long thread's tail takes two reads
    and little more than the rows the budget holds, where doubling pages read up to twice as many."""
    thread = _Thread(count=20_000, tokens=12)
    reader = _PathReader(thread, _Counter(None, "o200k"), "org", [Segment("t", 0, None, 20_000)])  # type: ignore[arg-type]
    messages, reached_start = await reader.tail(budget)
    assert not reached_start
    fits = budget // 12
    assert sum(m.tokens for m in messages) > budget  # the tail goes past the budget, for the builder to cut
    read = sum(thread.reads)
    assert len(thread.reads) <= max(2, math.ceil(fits / MAX_PAGE) + 1)
    # A quarter over what fits (the estimate's margin), or two first pages for a budget the first page nearly holds.
    assert read <= max(fits * 1.25 + 2, 2 * FIRST_PAGE), thread.reads


def _reader(thread: _Thread, sizes: RowSizes | None = None) -> _PathReader:
    segments = [Segment("t", 0, None, len(thread.rows))]
    return _PathReader(thread, _Counter(None, "o200k"), "org", segments, sizes)  # type: ignore[arg-type]


def _fitting(tail: list[HistoryMessage], budget: int) -> list[int]:
    """The seqs of the newest messages of `tail` that fit `budget`: what the builder can take from it."""
    taken, used = [], 0
    for message in reversed(tail):
        used += message.tokens
        if used > budget:
            break
        taken.append(message.seq)
    return taken


async def test_a_threads_next_tail_reads_first_the_rows_its_budget_holds() -> None:
    """A thread of long messages: its first tail read takes a first page of FIRST_PAGE rows; the next read of that
    thread takes what the budget holds at the tokens per row seen (a quarter more), and the same tail results."""
    thread = _Thread(count=2_000, tokens=500)
    sizes = RowSizes()
    first, _ = await _reader(thread, sizes).tail(4_000)
    assert thread.reads == [FIRST_PAGE]
    thread.reads.clear()
    again, _ = await _reader(thread, sizes).tail(4_000)
    assert thread.reads == [math.ceil(4_000 / 500 * 1.25) + 1]  # 11 rows, not 64
    assert _fitting(again, 4_000) == _fitting(first, 4_000) == list(range(2_000, 1_992, -1))
    assert sum(m.tokens for m in again) > 4_000  # still past the budget, for the builder to cut


# No deadline: two event loops an example, and a loaded machine's stall is no failure of this property.
@settings(deadline=None)
@given(
    costs=st.lists(st.integers(min_value=1, max_value=3_000), min_size=1, max_size=300),
    budget=st.integers(min_value=0, max_value=20_000),
    hinted=st.floats(min_value=1, max_value=5_000),
)
def test_the_first_page_changes_the_reads_never_the_tail_the_builder_sees(
    costs: list[int], budget: int, hinted: float
) -> None:
    """Whatever size a thread's rows were last seen at (however wrong for them now), the tail gives the builder the
    same newest messages. A smaller first page may stop short of a start the default page reached, past the budget
    (the plan then counts the history from the thread's counts, which says the same)."""
    thread = _Thread(count=len(costs), tokens=costs)
    plain, plain_start = asyncio.run(_reader(thread).tail(budget))
    sizes = RowSizes()
    sizes.learn(("org", "t"), round(hinted * 10), 10)
    hinted_tail, hinted_start = asyncio.run(_reader(thread, sizes).tail(budget))
    assert _fitting(hinted_tail, budget) == _fitting(plain, budget)
    if not hinted_start:
        assert sum(m.tokens for m in hinted_tail) > budget
    else:
        assert plain_start and len(hinted_tail) == len(plain) == len(costs)


def test_row_sizes_keep_the_threads_used_last() -> None:
    sizes = RowSizes(kept=2)
    for thread in ("a", "b", "c"):
        sizes.learn(("org", thread), 1_000, 10)  # 100 tokens a row: 1,000 tokens take 14 rows
    sizes.learn(("org", "b"), 1_000, 10)  # used again: now the newest
    sizes.learn(("org", "d"), 1_000, 10)  # forgets the least recently used, c
    assert [sizes.first_page(("org", t), 1_000) for t in "abcd"] == [FIRST_PAGE, 14, FIRST_PAGE, 14]
    assert sizes.first_page(("other-org", "b"), 1_000) == FIRST_PAGE  # by organization and thread
    assert sizes.first_page(("org", "b"), 1_000_000) == FIRST_PAGE  # never more than FIRST_PAGE
    sizes.learn(("org", "e"), 0, 0)  # nothing counted (compaction items only): nothing learnt
    assert sizes.first_page(("org", "e"), 1_000) == FIRST_PAGE
