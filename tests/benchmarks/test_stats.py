"""Percentiles, summaries and WER with its normalisation (numbers, punctuation, case)."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest

from benchmarks.stats import (
    corpus_wer,
    normalize_text,
    number_words,
    percentile,
    summarize,
    wer,
    word_edits,
)


def test_percentiles_interpolate_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 50) == 30.0
    assert percentile(values, 95) == pytest.approx(48.0)  # 40 + 0.8 * (50 - 40)
    assert percentile(values, 0) == 10.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summary_skips_missing_values_and_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    values = list(rng.lognormal(6, 0.5, size=200))
    s = summarize([*values, None])
    assert s is not None
    assert s.n == 200
    assert s.p50 == pytest.approx(float(np.percentile(values, 50)))
    assert s.p99 == pytest.approx(float(np.percentile(values, 99)))
    assert s.mean == pytest.approx(float(np.mean(values)))
    assert s.min <= s.p50 <= s.p95 <= s.p99 <= s.max
    assert set(s.as_dict()) >= {"p50", "p95", "p99", "mean", "n"}
    assert summarize([None, None]) is None
    assert summarize([]) is None


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (19, "nineteen"),
        (21, "twenty one"),
        (105, "one hundred five"),
        (1000, "one thousand"),
        (384_000, "three hundred eighty four thousand"),
        (2_000_017, "two million seventeen"),
        (-3, "minus three"),
    ],
)
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("What is 12 plus 7?", "what is twelve plus seven"),
        ("A spider has 8 legs.", "a spider has eight legs"),
        (
            "It's 8:30, the 2nd of May -- 3.5% up!",
            "it's eight thirty the second of may three point five percent up",
        ),
        (
            "The moon is about 384,000 kilometers away.",
            "the moon is about three hundred eighty four thousand kilometers away",
        ),
        ("one hundred and five", "one hundred five"),
        ("twenty-one", "twenty one"),
        ("Rock and roll", "rock and roll"),  # "and" between words that are not numbers stays
        ("Buenos días, «Señor»", "buenos dias senor"),
        ("  HELLO,   World  ", "hello world"),
        ("'quoted' don't", "quoted don't"),
    ],
)
def test_normalize_text(text: str, normalized: str) -> None:
    assert normalize_text(text) == normalized


def test_wer_counts_digits_and_words_as_the_same_word() -> None:
    assert wer("What is twelve plus seven?", "what is 12 plus 7") == 0.0
    assert wer("A spider has 8 legs.", "A spider has eight legs") == 0.0
    assert wer("The capital of France is Paris.", "the capital of Francis Paris.") == pytest.approx(
        2 / 6
    )  # "france is" -> "francis": one substitution, one deletion
    assert wer("", "") == 0.0
    assert wer("", "noise") == 1.0
    assert wer("one two", "") == 1.0


def test_word_edits_agree_with_jiwer() -> None:
    pairs = [
        ("the cat sat on the mat", "the cat sat on mat"),
        ("a b c d", "a x c d e"),
        ("hello world", "world hello"),
        ("one", "two three four"),
    ]
    for ref, hyp in pairs:
        expected = jiwer.wer(ref, hyp) * len(ref.split())
        assert word_edits(ref.split(), hyp.split()) == round(expected)


def test_corpus_wer_weighs_by_reference_length() -> None:
    pairs = [("one two three four", "one two three four"), ("five", "six")]
    assert corpus_wer(pairs) == pytest.approx(1 / 5)  # not the mean of 0 and 1
    assert corpus_wer([]) == 0.0
