"""The conversation history: bounded by tokens, trimmed so the prompt's start stays stable."""

from __future__ import annotations

import itertools

from pipeline.history import History, Item


def _say(history: History, n: int) -> None:
    role = "user" if n % 2 == 0 else "assistant"
    history.add(Item(f"item_{n}", role, f"message {n} " + "x" * 26))  # 38 chars: 10 + 4 tokens


def test_history_stays_within_its_budget() -> None:
    history = History(max_tokens=100, chars_per_token=4.0)
    for n in range(40):
        _say(history, n)
        sent = history.messages("system")
        assert sum(history.tokens(m.content) for m in sent[1:]) <= 100
        assert sent[-1].content.startswith(f"message {n}")  # the newest is always there


def test_once_full_the_prompt_start_is_kept_for_several_turns() -> None:
    history = History(max_tokens=100, chars_per_token=4.0)
    firsts = []
    for n in range(40):
        _say(history, n)
        firsts.append(history.messages("system")[1].content)
    # the first message after the system prompt changes only when a trim drops half the
    # budget, not on every turn: an LLM prompt cache stays valid between trims
    changes = sum(1 for a, b in itertools.pairwise(firsts) if a != b)
    assert changes <= 40 // 3


def test_an_item_awaiting_its_transcript_keeps_its_place() -> None:
    history = History(max_tokens=30, chars_per_token=4.0)
    for n in range(6):
        _say(history, n)
    history.add(Item("pending", "user", None))
    _say(history, 6)
    assert history.get("pending") is not None
