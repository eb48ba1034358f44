"""Summaries of measurements and word error rate, with the normalisation that makes WER fair.

Latency distributions are skewed (one slow turn in twenty is what users remember), so every
metric is summarised by its percentiles as well as its mean. WER compares words after a
normalisation both sides share: case, punctuation and accents are dropped, and numbers are spelt
out ("8" and "eight" are the same word, "1,000" is "one thousand"), because Whisper writes digits
where Piper speaks words and neither is wrong. We count word edits ourselves rather than depend on
jiwer at run time: a Levenshtein distance over word lists is a dozen lines.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Summary:
    """Percentiles (linear interpolation), mean and count of one metric's measurements."""

    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """The JSON shape: ``{p50, p95, p99, mean, min, max, n}``."""
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks.

    Raises:
        ValueError: no values, or ``q`` outside 0-100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0-100")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Summarise the measurements that exist (``None`` ones are skipped); ``None`` if none do."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    arr = np.asarray(kept, dtype=np.float64)
    p50, p95, p99 = (float(x) for x in np.percentile(arr, [50, 95, 99]))
    return Summary(
        p50=p50,
        p95=p95,
        p99=p99,
        mean=float(arr.mean()),
        min=float(arr.min()),
        max=float(arr.max()),
        n=len(kept),
    )


# ---------------------------------------------------------------------------- number words

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_NUMBER_WORDS = frozenset(
    [*_ONES, *_TENS[2:], "hundred", *(name for _, name in _SCALES), "point", "minus"]
)


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_words(n: int) -> str:
    """``n`` spelt out the way the STT and the normaliser agree on: ``105`` -> "one hundred five".

    No "and" (it is dropped between number words on the text side too), no hyphens.
    """
    if n < 0:
        return "minus " + number_words(-n)
    if n < 1000:
        return " ".join(_below_thousand(n))
    words: list[str] = []
    for scale, name in _SCALES:
        if n >= scale:
            words += [*(number_words(n // scale).split()), name]
            n %= scale
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def _ordinal(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    if last in _ORDINALS:
        words[-1] = _ORDINALS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


_NUMBER = re.compile(r"(?<![\w.])(-?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(%?)")


def _spell_number(match: re.Match[str]) -> str:
    sign, whole, decimals, ordinal, percent = match.groups()
    value = int(whole.replace(",", ""))
    if ordinal and not decimals:
        words = _ordinal(value)
    else:
        words = number_words(value)
        if decimals:
            words += " point " + " ".join(_ONES[int(d)] for d in decimals)
    if sign:
        words = "minus " + words
    if percent:
        words += " percent"
    return f" {words} "


def normalize_text(text: str) -> str:
    """Lower-case words without punctuation, accents or digits, for WER.

    "It's 8:30, the 2nd of May -- 3.5% up!" -> "it's eight thirty the second of may three point
    five percent up". Apostrophes inside words are kept ("it's" is not "its").
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"[^\w\s']|_", " ", text)  # punctuation (hyphens too) separates words
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes inside words
    words = text.split()
    # "one hundred and five" is "one hundred five": "and" between number words carries nothing
    kept = [
        w
        for i, w in enumerate(words)
        if not (
            w == "and"
            and 0 < i < len(words) - 1
            and words[i - 1] in _NUMBER_WORDS
            and words[i + 1] in _NUMBER_WORDS
        )
    ]
    return " ".join(kept)


# ---------------------------------------------------------------------------- word error rate


def word_edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two word lists (substitutions, insertions, deletions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[j] + 1,
                    current[j - 1] + 1,
                    previous[j - 1] + (ref_word != hyp_word),
                )
            )
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one utterance after ``normalize_text`` on both sides.

    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise (so silence
    transcribed as words still counts against the model).
    """
    ref = normalize_text(reference).split()
    hyp = normalize_text(hypothesis).split()
    if not ref:
        return 0.0 if not hyp else 1.0
    return word_edits(ref, hyp) / len(ref)


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Total word edits over total reference words, over ``(reference, hypothesis)`` pairs."""
    edits = words = 0
    for reference, hypothesis in pairs:
        ref = normalize_text(reference).split()
        edits += word_edits(ref, normalize_text(hypothesis).split())
        words += len(ref)
    return edits / words if words else 0.0
