"""Cut a stream of LLM text into speakable phrases.

The first phrase goes to TTS as soon as it is speakable, a clause rather than a whole
paragraph, because time to first audio is what the user hears; later phrases prefer whole
sentences (better prosody) and fall back to clause boundaries only when a sentence runs long.
Decimal points ("3.5"), common abbreviations ("Dr.", "e.g.") and a period not followed by a space
(yet) do not end a phrase, nor does a list item's number ("1. Go to bed early"). A first phrase
cut for time (``first_max_words``, no punctuation yet) is not cut right after a word it should
not end on ("the", "of", "is", "any", "8"...): it waits for up to three more words, because a
phrase spoken as "The capital of" sounds broken.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from pipeline.settings import ReplySettings
from pipeline.turn_end import CONTINUATION_WORDS

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n+")
_CLAUSE_END = re.compile(r"[,;:\u2014\u2013]+[\"')\]]*(?=\s)")
_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")  # "j", "u.s": letters, dot-separated
_DANGLING_GRACE = 3  # more words a time cut may wait for, past a word it should not end on
# A phrase spoken on its own gets a phrase-final intonation, which sounds broken on a word the
# sentence cannot stop at, on an auxiliary, a subject pronoun or a determiner ("The capital of
# France is", "I'm sorry for any"), and on a number or a sign ("A spider has 8", "12 + 7 =").
# (The turn-end judge leaves most of these out: a sentence can end on them, "where it is".)
_WEAK_ENDINGS = CONTINUATION_WORDS | frozenset(
    """
    is are was were be been being am will would can could should shall may might must
    has have had do does did i you we they he she it there that which who
    i'm you're we're they're he's she's it's that's there's i'll you'll we'll they'll
    i've you've we've they've i'd you'd we'd they'd
    this these those some any each every no all both many much more most few several another
    other such very so too really just also not
    """.split()
)
_NUMBER_OR_SIGN = re.compile(r"[\d.,%$€£]*\d[\d.,%]*|[-+=*/<>&\u00d7\u00f7]")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e no approx fig inc ltd co".split()
)


@dataclass(frozen=True, slots=True)
class PhrasePolicy:
    """Where to cut.

    Attributes:
        first_min_words: the first phrase may end at a clause boundary once it has this many words.
        min_words: later phrases end at a clause boundary only once they have this many words.
        max_chars: past this length a phrase is cut at the last clause boundary or space.
        first_max_words: the first phrase is cut at a word boundary once it has this many words
            even with no punctuation yet (0: never). Time to first audio is what the user hears,
            and a small LLM on a CPU takes ~100 ms per word, so waiting for the first comma
            can cost a second; a short opening phrase costs a little prosody.
    """

    first_min_words: int = 3
    min_words: int = 8
    max_chars: int = 160
    first_max_words: int = 4

    @classmethod
    def from_settings(cls, settings: ReplySettings) -> PhrasePolicy:
        """The policy the ``reply`` settings describe."""
        return cls(
            first_min_words=settings.first_phrase_min_words,
            min_words=settings.phrase_min_words,
            max_chars=settings.phrase_max_chars,
            first_max_words=settings.first_phrase_max_words,
        )


class PhraseChunker:
    """Incremental phrase splitter: ``feed`` text deltas, get finished phrases; ``flush`` at end."""

    def __init__(self, policy: PhrasePolicy | None = None) -> None:
        self.policy = policy or PhrasePolicy()
        self._buffer = ""
        self._emitted = 0

    def feed(self, text: str) -> Iterator[str]:
        """Add a delta; yield every phrase it completes."""
        # One character at a time, so the cuts do not depend on how the LLM happened to split its
        # deltas: a clause boundary or the max_chars cut is not skipped because a sentence end
        # arrived in the same delta. Buffers stay under max_chars, so this is cheap.
        for char in text:
            self._buffer += char
            while (cut := self._find_cut()) is not None:
                phrase, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
                if phrase:
                    self._emitted += 1
                    yield phrase

    def flush(self) -> Iterator[str]:
        """Yield what is left (end of the LLM stream)."""
        phrase, self._buffer = self._buffer.strip(), ""
        if phrase:
            self._emitted += 1
            yield phrase

    def _find_cut(self) -> int | None:
        text = self._buffer
        for match in _SENTENCE_END.finditer(text):
            if match.group().startswith("\n") or not self._is_abbreviation(text, match.start()):
                return match.end()
        min_words = self.policy.first_min_words if self._emitted == 0 else self.policy.min_words
        for match in _CLAUSE_END.finditer(text):
            if len(text[: match.start()].split()) >= min_words:
                return match.end()
        limit = self.policy.first_max_words
        if self._emitted == 0 and limit and text.endswith((" ", "\n")):
            words = text.split()
            if len(words) >= limit and (
                len(words) >= limit + _DANGLING_GRACE or not dangles(words[-1])
            ):
                return len(text)
        if len(text) > self.policy.max_chars:
            space = text.rfind(" ", 0, self.policy.max_chars)
            return space if space > 0 else self.policy.max_chars
        return None

    @staticmethod
    def _is_abbreviation(text: str, dot: int) -> bool:
        if text[dot] != ".":
            return False
        words = text[:dot].split()
        word = words[-1].lower().lstrip("\"'([") if words else ""
        # a single letter ("J. Smith") or dotted letters ("U.S.") are initials, not a sentence end
        if word in _ABBREVIATIONS or _INITIALS.fullmatch(word) is not None:
            return True
        # a number opening a line ("1. Go to bed early") numbers a list item
        line_start = text[:dot].rsplit("\n", 1)[-1].split()
        return word.isdigit() and len(line_start) == 1


def dangles(word: str) -> bool:
    """Whether a phrase cut for time should not end on ``word`` ("the", "of", "is"...)."""
    word = word.strip("\"'()[]").lower().replace("\u2019", "'")
    return word in _WEAK_ENDINGS or _NUMBER_OR_SIGN.fullmatch(word) is not None


async def phrases(
    deltas: AsyncIterator[str], policy: PhrasePolicy | None = None
) -> AsyncIterator[str]:
    """Phrases of an async stream of text deltas."""
    chunker = PhraseChunker(policy)
    async for delta in deltas:
        for phrase in chunker.feed(delta):
            yield phrase
    for phrase in chunker.flush():
        yield phrase
