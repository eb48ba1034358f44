"""How one transcript, answer or grounded reply is scored against the golden data.

Text is compared after the benchmark's WER normalization (``benchmarks.stats.normalize_text``:
case, punctuation and accents dropped, numbers spelt out), so "212" and "two hundred twelve"
agree and the same rules hold for WER, CER and answers. Answers additionally drop the articles
(SQuAD's normalization): "the Pacific" is "Pacific".

Three answer checks, from strict to lenient:

- ``exact_match``: the whole normalized reply is one of the accepted answers;
- ``contains_match``: an accepted answer appears in the reply as a whole run of words (a voice
  assistant answers in sentences: "The capital of Japan is Tokyo." holds "Tokyo");
- ``semantic_match``: the reply means the reference answer. Sentence embeddings of a whole reply
  and a whole reference mostly measure that both restate the question ("The capital of Japan
  is Kyoto." is 0.85 from "The capital of Japan is Tokyo."), so both sides first lose the
  question's words and stop words, leaving the answers ("kyoto" vs "tokyo": 0.64; "jupiter
  biggest one" vs "jupiter": 0.80), and the reply is also compared window by window (a run of
  about the reference's length), so a correct answer inside a long reply still matches. It
  credits paraphrases and spelt-out numbers the word checks miss; it is reported beside them,
  never instead of them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.stats import normalize_text, word_edits
from pipeline.embedding import Embedder

SEMANTIC_THRESHOLD = 0.7
"""Answer-focused cosine similarity (all-MiniLM-L6-v2) from which a reply matches its reference
(calibration in benchmarks/golden/README.md)."""

_ARTICLES = frozenset({"a", "an", "the"})
_STOP = frozenset(
    "a an the is are was were be of in on at to it its it's that this and or which what who whom "
    "how many much do does did there their they i you your my me".split()
)
_WINDOW_EXTRA = 2

_DONT_KNOW = re.compile(
    r"\b(i\s+(do\s+not|don'?t|dont)\s+know|not\s+sure|no\s+information|"
    r"(can'?t|cannot|couldn'?t|could\s+not|unable\s+to)\s+(find|answer|tell|say)|"
    r"not\s+(mentioned|covered|stated|in\s+the\s+(documents?|manual|sources?|context))|"
    r"(does|do)\s+not\s+(say|mention|contain)|i\s+have\s+no\s+idea)\b"
)


def normalize_answer(text: str) -> str:
    """``normalize_text`` without articles: the form answers are compared in."""
    return " ".join(w for w in normalize_text(text).split() if w not in _ARTICLES)


def exact_match(reply: str, answers: Sequence[str]) -> bool:
    """Whether the normalized reply is exactly one of ``answers`` (normalized)."""
    got = normalize_answer(reply)
    return any(got == normalize_answer(a) for a in answers if normalize_answer(a))


def _contains(words: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(words[i : i + n] == phrase for i in range(len(words) - n + 1))


def contains_match(reply: str, answers: Sequence[str]) -> bool:
    """Whether one of ``answers`` appears in the reply as a contiguous run of whole words."""
    words = normalize_answer(reply).split()
    return any(_contains(words, normalize_answer(a).split()) for a in answers)


def says_dont_know(reply: str) -> bool:
    """Whether a reply declines to answer ("I don't know", "the manual does not say"...)."""
    text = " ".join(reply.lower().replace("\u2019", "'").split())
    return bool(_DONT_KNOW.search(text))


def answer_focus(text: str, question: str) -> str:
    """``text`` normalized, without the question's words and stop words: what it answers."""
    drop = set(normalize_text(question).split()) | _STOP
    return " ".join(w for w in normalize_text(text).split() if w not in drop)


def _windows(words: list[str], size: int) -> list[str]:
    sizes = range(max(1, size), size + _WINDOW_EXTRA + 1)
    return [" ".join(words[i : i + n]) for n in sizes for i in range(len(words) - n + 1)]


async def semantic_similarities(
    embedder: Embedder, items: Sequence[tuple[str, str, str]]
) -> list[float]:
    """Answer-focused similarity of each ``(question, reply, reference)``: the best cosine
    between the reference's focus and the reply's focus or one of its windows (0 when either
    focus is empty: a reply that only restates the question answers nothing)."""
    texts: list[str] = []
    spans: list[tuple[int, int, int] | None] = []
    for question, reply, reference in items:
        ref, got = answer_focus(reference, question), answer_focus(reply, question)
        if not ref or not got:
            spans.append(None)
            continue
        candidates = [got, *_windows(got.split(), len(ref.split()))]
        spans.append((len(texts), len(texts) + 1, len(texts) + 1 + len(candidates)))
        texts += [ref, *candidates]
    vectors = await embedder.aembed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
    out = []
    for span in spans:
        if span is None:
            out.append(0.0)
            continue
        ref_at, start, end = span
        out.append(round(float(np.max(vectors[start:end] @ vectors[ref_at])), 4))
    return out


def quote_supported(cited_text: str, quote: str, min_overlap: float = 0.6) -> bool:
    """Whether a cited passage holds the golden quote.

    A chunker may cut a quote at a chunk border, so a passage that holds ``min_overlap`` of
    the quote's words as one contiguous run is enough.
    """
    words = normalize_text(cited_text).split()
    target = normalize_text(quote).split()
    if not target:
        return False
    need = max(1, round(len(target) * min_overlap))
    return any(_contains(words, target[i : i + need]) for i in range(len(target) - need + 1))


# ---------------------------------------------------------------------------- error rates


def char_edits(reference: str, hypothesis: str) -> tuple[int, int]:
    """Character edits between the normalized texts and the reference's character count."""
    ref = normalize_text(reference)
    return word_edits(list(ref), list(normalize_text(hypothesis))), len(ref)


def word_edit_counts(reference: str, hypothesis: str) -> tuple[int, int]:
    """Word edits between the normalized texts and the reference's word count."""
    ref = normalize_text(reference).split()
    return word_edits(ref, normalize_text(hypothesis).split()), len(ref)


@dataclass(frozen=True, slots=True)
class ErrorRates:
    """Corpus-level error rates of one group of utterances (total edits / total reference
    units, so a long utterance weighs more than a short one)."""

    wer: float
    cer: float
    utterances: int
    words: int


def error_rates(pairs: Iterable[tuple[str, str]]) -> ErrorRates:
    """WER and CER over ``(reference, hypothesis)`` pairs."""
    w_edits = words = c_edits = chars = n = 0
    for reference, hypothesis in pairs:
        we, wn = word_edit_counts(reference, hypothesis)
        ce, cn = char_edits(reference, hypothesis)
        w_edits, words, c_edits, chars, n = (
            w_edits + we,
            words + wn,
            c_edits + ce,
            chars + cn,
            n + 1,
        )
    return ErrorRates(
        wer=w_edits / words if words else 0.0,
        cer=c_edits / chars if chars else 0.0,
        utterances=n,
        words=words,
    )


def rates_by_condition(
    rows: Iterable[tuple[Sequence[str], str, str]],
) -> dict[str, ErrorRates]:
    """Error rates per condition over ``(conditions, reference, hypothesis)`` rows; a row counts
    in each of its conditions."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for conditions, reference, hypothesis in rows:
        for condition in conditions:
            groups[condition].append((reference, hypothesis))
    return {c: error_rates(pairs) for c, pairs in sorted(groups.items())}
