"""Is the user done? A pause judged by what was said before it (``EndpointPolicy.turn_end``).

A fixed silence (``silence_duration_ms``, 400 ms by default) is a compromise that fails both ways:
it ends a turn at a hesitation in the middle of a sentence ("I'd like to book a table for ...
four people"), and it makes every complete question wait the same 400 ms. The ``smart`` mode
uses what is known at a pause: the transcript of all the speech so far (the session starts that
transcription at the first silent frame anyway, as the final transcript it may become). Whisper
punctuates what it hears, and a sentence does not end on "for", "the" or "and", so:

- a transcript that reads **complete** ("What is the capital of Italy?") ends the turn after
  ``complete_silence_ms``, shorter than the fixed silence;
- one that reads **incomplete** (it ends on a preposition, an article, a conjunction, a filler,
  or on "...") waits ``incomplete_silence_ms``, long enough for a hesitation;
- an **unclear** one (nothing recognised, or no end punctuation) waits the fixed silence;
- while the transcript is not ready yet, the turn waits for it, up to ``incomplete_silence_ms``.
  Ending a turn before its transcript exists gains nothing: the reply cannot start without it.

What words cannot end an English sentence is a short, explainable list rather than a model: it
costs nothing on the CPU that also runs STT, LLM and TTS, and its mistakes are readable. It
cannot see a pause after a word that *can* end a sentence ("Set a timer ... for ten minutes"):
those end early in both modes (``voxline bench endpoint`` reports them).
"""

from __future__ import annotations

import re
from typing import Literal

TurnEndMode = Literal["fixed", "smart"]
Verdict = Literal["complete", "incomplete", "unclear"]

# Words after which an English sentence goes on: articles, possessive determiners, conjunctions,
# prepositions, fillers. Pronouns and auxiliaries are left out ("who is he?", "where we are").
# Prepositions are kept although English strands them at the end of some questions ("where are
# you from?"): such a question then waits the longer silence, a cost in latency, whereas leaving
# them out would end "book a table for ..." mid-sentence, a cost in correctness.
CONTINUATION_WORDS = frozenset(
    """
    a an the my your our their
    and or but nor because although though unless whereas if
    for to of in on at by with from into onto about between among through during without
    within toward towards than via per
    um uh er erm uhm
    """.split()
)
"""Words an English sentence does not end on (lower case)."""
_TRAILING = re.compile(r"(\.\.\.|…|[,;:\-\u2013\u2014])[\"')\]]*\s*$")  # a sentence left hanging
_END = re.compile(r"[.!?][\"')\]]*\s*$")
_WORD = re.compile(r"[a-z']+")


def judge(text: str) -> Verdict:
    """Whether a transcript reads as a finished utterance.

    >>> judge("What is the capital of Italy?")
    'complete'
    >>> judge("I'd like to book a table for.")
    'incomplete'
    >>> judge("")
    'unclear'
    """
    text = text.strip()
    words = _WORD.findall(text.lower())
    if not words:
        return "unclear"
    if _TRAILING.search(text) or words[-1] in CONTINUATION_WORDS:
        return "incomplete"
    return "complete" if _END.search(text) else "unclear"
