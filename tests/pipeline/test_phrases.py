"""The phrase chunker: where LLM text is cut before it goes to TTS."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from pipeline.phrases import PhraseChunker, PhrasePolicy, phrases


def cut(text: str, policy: PhrasePolicy | None = None) -> list[str]:
    """All phrases of ``text`` fed in one delta, flush included."""
    chunker = PhraseChunker(policy)
    return [*chunker.feed(text), *chunker.flush()]


def cut_in_pieces(text: str, sizes: list[int], policy: PhrasePolicy | None = None) -> list[str]:
    chunker = PhraseChunker(policy)
    out: list[str] = []
    start = 0
    for size in sizes:
        out.extend(chunker.feed(text[start : start + size]))
        start += size
    out.extend(chunker.feed(text[start:]))
    return [*out, *chunker.flush()]


def test_first_phrase_ends_at_a_clause_once_it_has_first_min_words() -> None:
    chunker = PhraseChunker(PhrasePolicy(first_min_words=3))

    # "Well," has one word: too short to speak alone
    assert list(chunker.feed("Well, I think the answer, ")) == ["Well, I think the answer,"]


def test_later_phrases_wait_for_a_sentence_end() -> None:
    text = "Well, I think the answer, in short, is yes. Then, after that, we go home! Done"

    assert cut(text) == [
        "Well, I think the answer,",
        "in short, is yes.",  # a clause of 2 words does not end a later phrase
        "Then, after that, we go home!",
        "Done",
    ]


def test_later_phrases_end_at_a_clause_once_they_have_min_words() -> None:
    policy = PhrasePolicy(first_min_words=3, min_words=4)
    text = "Yes. One two three, four five six seven, eight nine. Ten"

    assert cut(text, policy) == [
        "Yes.",
        "One two three, four five six seven,",  # the first comma had 3 words, the second 7
        "eight nine.",
        "Ten",
    ]


@pytest.mark.parametrize("end", ["!", "?", "...", "…", '."', ".)"])
def test_sentence_end_punctuation(end: str) -> None:
    chunker = PhraseChunker()

    assert list(chunker.feed(f"It works{end} Next")) == [f"It works{end}"]
    assert list(chunker.flush()) == ["Next"]


def test_a_newline_ends_a_phrase_without_waiting_for_more_text() -> None:
    chunker = PhraseChunker()

    assert list(chunker.feed("Shopping list\n")) == ["Shopping list"]
    assert list(chunker.feed("\n\n- eggs\n")) == ["- eggs"]


def test_no_cut_before_the_character_after_a_period_arrives() -> None:
    # "3." might become "3.5": a period ends a sentence only once whitespace follows it
    chunker = PhraseChunker()

    assert list(chunker.feed("It costs 3.")) == []
    assert list(chunker.feed("5 dollars. ")) == ["It costs 3.5 dollars."]


@pytest.mark.parametrize(
    "sentence",
    [
        "Dr. Smith and Mrs. Jones met Prof. Brown at St. Mary's today.",
        "J. R. R. Tolkien wrote it in 1937.",
        "The U.S. economy grew by 3.5 percent.",
        "Bring fruit, e.g. apples, i.e. something sweet, etc. for lunch.",
        "Pi is about 3.14159 and e is about 2.718 here.",
        "We meet at 5 p.m. tomorrow in the lobby.",
    ],
)
def test_abbreviations_initials_and_decimals_do_not_split(sentence: str) -> None:
    # isolate sentence ends
    policy = PhrasePolicy(first_min_words=100, min_words=100, first_max_words=0)

    assert cut(f"{sentence} And then more.", policy) == [sentence, "And then more."]


def test_long_run_without_punctuation_is_cut_on_a_space_within_max_chars() -> None:
    words = [f"word{i}" for i in range(200)]
    text = " ".join(words)
    policy = PhrasePolicy(max_chars=60, first_max_words=0)

    out = cut(text, policy)

    assert len(out) > 10
    assert all(len(phrase) <= 60 for phrase in out)
    assert all(len(phrase) > 60 - len("word199 ") for phrase in out[:-1])  # as late as possible
    assert " ".join(out).split() == words  # cut between words, never inside one


def test_a_run_without_spaces_is_cut_hard_at_max_chars() -> None:
    out = cut("x" * 250, PhrasePolicy(max_chars=100))

    assert out == ["x" * 100, "x" * 100, "x" * 50]


TEXTS = [
    "Well, I think the answer, in short, is yes. Then, after that, we go home! Done",
    "Sure thing, the answer is here. After that, the long explanation continues with more "
    "words, and then it ends. Ok.",
    "Dr. Smith met J. R. Tolkien at 3.5 p.m. yesterday. The U.S. team, e.g. Bob, won!\nNext",
    "Hello there, friend, how are you doing today? Fine.",
    " ".join(f"w{i}" for i in range(120)) + ". Short one.",
    "A sentence that is really quite long and keeps going without any commas at all for a "
    "while, then a clause; and then — a dash — and finally a long, long tail that only ends "
    "here after well over one hundred and sixty characters. End.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_phrases_do_not_depend_on_how_the_text_is_split_into_deltas(text: str) -> None:
    whole = cut(text)
    rng = random.Random(len(text))

    assert len(whole) >= 2
    assert cut_in_pieces(text, [1] * len(text)) == whole
    assert cut_in_pieces(text, [rng.randint(1, 12) for _ in range(len(text))]) == whole
    assert " ".join(whole).split() == text.split()  # nothing lost, nothing added


def test_flush_returns_the_rest_once() -> None:
    chunker = PhraseChunker()

    assert list(chunker.feed("Done. and the rest   ")) == ["Done."]
    assert list(chunker.flush()) == ["and the rest"]
    assert list(chunker.flush()) == []
    assert list(PhraseChunker().flush()) == []


def test_whitespace_only_is_never_a_phrase() -> None:
    chunker = PhraseChunker()

    assert list(chunker.feed("   \n\n  \t ")) == []
    assert list(chunker.flush()) == []


async def _deltas(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_async_phrases_helper() -> None:
    deltas = _deltas("Well, I ", "think the ans", "wer, in short, is ", "yes. Then", " more")

    out = [phrase async for phrase in phrases(deltas)]

    assert out == ["Well, I think the answer,", "in short, is yes.", "Then more"]


async def test_async_phrases_helper_uses_the_policy() -> None:
    out = [p async for p in phrases(_deltas("One, two three, four."), PhrasePolicy(1, 1))]

    assert out == ["One,", "two three,", "four."]


def test_first_phrase_is_cut_at_a_word_boundary_after_first_max_words() -> None:
    text = "The capital of France is Paris and it is lovely in spring and summer."
    out = cut(text, PhrasePolicy(first_max_words=4))
    assert out[0] == "The capital of France"  # whole words only, before any punctuation
    assert " ".join(out) == text
    assert len(out) == 2  # only the first phrase is cut early
    # fed one character at a time, the cut waits for the space that ends the fifth word
    chunker = PhraseChunker(PhrasePolicy(first_max_words=4))
    early = [p for ch in "The capital of Franc" for p in chunker.feed(ch)]
    assert early == []


def test_first_max_words_zero_waits_for_punctuation() -> None:
    text = "The capital of France is Paris and it is lovely in spring."
    assert cut(text, PhrasePolicy(first_max_words=0)) == [text]


def test_a_time_cut_waits_past_a_word_a_phrase_cannot_end_on() -> None:
    policy = PhrasePolicy(first_max_words=6)
    # the 6th word is "of": the cut waits one word, for "France"
    assert cut("Paris is the capital city of France and the largest", policy)[0] == (
        "Paris is the capital city of France"
    )
    # "is" too: "The capital of France is" would sound broken
    assert cut("The capital of France is Paris and", PhrasePolicy(first_max_words=5))[0] == (
        "The capital of France is Paris"
    )
    # nor on a determiner, a number or a sign
    four = PhrasePolicy(first_max_words=4)
    assert cut("I'm sorry for any misunderstanding here", four)[0] == (
        "I'm sorry for any misunderstanding"
    )
    assert cut("A spider has 8 legs and", four)[0] == "A spider has 8 legs"
    assert cut("Add 12 and 7 to get 19", four)[0] == "Add 12 and 7 to get"
    assert cut("It is 12 + 7 = 19 in all", four)[0] == "It is 12 + 7 = 19"  # 3 words late
    # after three more such words ("um uh and", then "the") it is cut anyway, three words late
    assert cut("So you go to the um uh and the left", policy)[0] == (
        "So you go to the um uh and the"
    )
    # a 6th word a phrase can end on is cut at once
    assert cut("The sun usually rises very early in summer", policy)[0] == (
        "The sun usually rises very early"
    )


def test_policy_from_settings() -> None:
    from pipeline.settings import ReplySettings

    settings = ReplySettings(
        first_phrase_min_words=2, first_phrase_max_words=4, phrase_min_words=5, phrase_max_chars=90
    )
    assert PhrasePolicy.from_settings(settings) == PhrasePolicy(
        first_min_words=2, min_words=5, max_chars=90, first_max_words=4
    )


def test_a_list_items_number_is_not_a_sentence() -> None:
    policy = PhrasePolicy(first_max_words=0)
    assert cut("1. Keep a regular schedule. 2. Avoid screens.", policy)[0] == (
        "1. Keep a regular schedule."
    )
    assert cut("Sure:\n1. Keep a regular schedule.", policy)[:2] == [
        "Sure:",
        "1. Keep a regular schedule.",
    ]
    assert cut("I have 3. That is all.", policy)[0] == "I have 3."  # a number ending a sentence
