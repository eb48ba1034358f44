"""How a transcript before a pause is read, and the silence each reading asks for."""

from __future__ import annotations

import pytest

from pipeline.turn_end import judge
from pipeline.vad import EndpointPolicy


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of Italy?",
        "Turn the volume down a little, please.",
        "What time is it?",
        "Set a timer.",  # a pause a word list cannot see: it reads complete
        'He said "yes."',
    ],
)
def test_finished_sentences_read_complete(text: str) -> None:
    assert judge(text) == "complete"


@pytest.mark.parametrize(
    "text",
    [
        "I'd like to book a table for.",  # Whisper puts a period on a fragment too
        "What is the difference between?",
        "How do I get to the...",
        "I need a recipe with…",
        "Please add eggs, butter and",
        "Tell me about the history of",
        "Well, um",
        "Add milk,",
        "Send it to my",
        "Where are you from?",  # a stranded preposition: waits the long silence (a known cost)
    ],
)
def test_sentences_left_hanging_read_incomplete(text: str) -> None:
    assert judge(text) == "incomplete"


@pytest.mark.parametrize("text", ["", "   ", "...", "okay so", "twelve"])
def test_nothing_or_no_end_punctuation_is_unclear(text: str) -> None:
    assert judge(text) == "unclear"


def test_fixed_turn_end_ignores_the_verdict() -> None:
    policy = EndpointPolicy(silence_duration_ms=400)
    assert {policy.silence_needed(v) for v in (None, "complete", "incomplete", "unclear")} == {400}


def test_smart_turn_end_silences() -> None:
    policy = EndpointPolicy(
        silence_duration_ms=400,
        turn_end="smart",
        complete_silence_ms=250,
        incomplete_silence_ms=1200,
    )
    assert policy.silence_needed("complete") == 250
    assert policy.silence_needed("incomplete") == 1200
    assert policy.silence_needed("unclear") == 400
    assert policy.silence_needed(None) == 1200  # no transcript yet: wait for it, up to the cap
