"""Scoring of transcripts and answers: normalization, matches, error rates per condition."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.eval.scoring import (
    SEMANTIC_THRESHOLD,
    answer_focus,
    contains_match,
    error_rates,
    exact_match,
    normalize_answer,
    quote_supported,
    rates_by_condition,
    says_dont_know,
    semantic_similarities,
)
from models.embed_minilm import MiniLMEmbedder


def test_answers_are_normalized_like_wer_plus_articles() -> None:
    assert normalize_answer("The Pacific Ocean!") == "pacific ocean"
    assert normalize_answer("It's 212 degrees.") == "it's two hundred twelve degrees"
    assert normalize_answer("AF-50") == normalize_answer("af 50") == "af fifty"


def test_exact_match_needs_the_whole_reply() -> None:
    assert exact_match("Tokyo.", ["Tokyo"])
    assert exact_match("the Nile", ["Nile"])
    assert not exact_match("The capital of Japan is Tokyo.", ["Tokyo"])
    assert not exact_match("", ["Tokyo"]) and not exact_match("", [""])


def test_contains_match_needs_whole_words_in_order() -> None:
    assert contains_match("The capital of Japan is Tokyo.", ["Tokyo"])
    assert contains_match("A hexagon has 6 sides.", ["six"])  # digits are spelt out
    assert contains_match("It was Leonardo da Vinci.", ["Leonardo da Vinci", "da vinci"])
    assert not contains_match("Kyoto, not Tokyoites", ["Tokyo"])  # no partial words
    assert not contains_match("Vinci da Leonardo", ["Leonardo da Vinci"])  # order matters
    assert not contains_match("anything", [""])


@pytest.mark.parametrize(
    "reply",
    [
        "I don't know.",
        "I do not know the price.",
        "Sorry, I can't find that in the manual.",
        "The documents do not mention a battery.",
        "That is not covered in the manual.",
        "I'm not sure.",
    ],
)
def test_dont_know_replies_are_recognized(reply: str) -> None:
    assert says_dont_know(reply)


@pytest.mark.parametrize(
    "reply", ["The warranty lasts two years.", "Know your filter: replace it every 6 months."]
)
def test_answers_are_not_dont_know(reply: str) -> None:
    assert not says_dont_know(reply)


def test_a_cited_passage_supports_a_quote_even_when_cut_at_a_chunk_border() -> None:
    quote = "Registering the purifier in the Tarvo Home app within 60 days extends the warranty"
    whole = "3. CLAIMS ... " + quote + " to 3 years."
    assert quote_supported(whole, quote)
    assert quote_supported("Registering the purifier in the Tarvo Home app within 60", quote)
    assert not quote_supported("Registering the purifier", quote)  # too little of it
    assert not quote_supported("Filters are consumables.", quote)


def test_error_rates_are_corpus_level_and_count_characters_too() -> None:
    rates = error_rates([("go forward ten meters", "go forward 10 meters"), ("one two", "one")])
    assert rates.utterances == 2 and rates.words == 6
    assert rates.wer == pytest.approx(1 / 6)  # "10" is "ten"; one deletion in six words
    # "one two" -> "one": 4 characters deleted (" two") of 21 + 7 reference characters
    assert rates.cer == pytest.approx(4 / 28)
    assert error_rates([]).wer == 0.0


def test_rates_are_grouped_by_every_condition_of_a_row() -> None:
    rows = [
        (("real",), "and you always want to see it", "and you always want to see it"),
        (("synthetic", "noise=pink-5db"), "set a timer", "set a time"),
        (("synthetic", "noise=clean"), "set a timer", "set a timer"),
    ]
    groups = rates_by_condition(rows)
    assert set(groups) == {"real", "synthetic", "noise=pink-5db", "noise=clean"}
    assert groups["real"].wer == 0.0 and groups["noise=clean"].wer == 0.0
    assert groups["noise=pink-5db"].wer == pytest.approx(1 / 3)
    assert groups["synthetic"].wer == pytest.approx(1 / 6)
    assert groups["synthetic"].utterances == 2


def test_answer_focus_drops_the_question_and_stop_words() -> None:
    question = "What is the capital of Japan?"
    assert answer_focus("The capital of Japan is Tokyo.", question) == "tokyo"
    assert answer_focus("What is the capital of Japan?", question) == ""


@pytest.fixture(scope="module")
def embedder() -> Iterator[MiniLMEmbedder]:
    model = MiniLMEmbedder()
    model.load()
    yield model


async def test_semantic_similarity_credits_meaning_not_a_restated_question(
    embedder: MiniLMEmbedder,
) -> None:
    q = "What is the largest planet in our solar system?"
    ref = "Jupiter is the largest planet in our solar system."
    right, paraphrase, wrong, restated, off_topic = await semantic_similarities(
        embedder,
        [
            (q, "The largest planet in our solar system is Jupiter.", ref),
            (q, "It's Jupiter, the biggest one by far, a gas giant.", ref),
            (q, "The largest planet in our solar system is Mercury.", ref),
            (q, "The largest planet in our solar system is a planet.", ref),
            (q, "Bananas.", ref),
        ],
    )
    assert right == pytest.approx(1.0, abs=1e-3)
    assert paraphrase >= SEMANTIC_THRESHOLD  # found in a window of the longer reply
    assert max(wrong, restated, off_topic) < SEMANTIC_THRESHOLD
    assert (await semantic_similarities(embedder, [(q, q, ref)])) == [0.0]
