"""How well an answer is supported by its sources, from the embedding model and the words.

No PyPI package ships the weights of a small entailment (NLI) or cross-encoder model (checked:
``flashrank`` and ``nli-device`` download theirs at run time), so the support score is built
from the embedding model the knowledge base already has, plus the words themselves. Each
sentence of the answer is scored on two things:

- **meaning**: its best cosine similarity with a sentence of the sources, mapped from
  ``[floor, ceiling]`` to [0, 1] (a sentence-embedding model puts anything on the same topic
  above ~0.3, and a restatement above ~0.8);
- **words**: the share of its content words (numbers, names, nouns: not stop words, not words
  of the question) that appear in the sources. Sentence embeddings barely tell "6 months" from
  "12 months"; this does.

A sentence's support is the mean of the two, scaled by the share of its numbers (digits) that
the sources state: a number they never mention is the classic invention, and voids the claim.
The answer's support is its weakest sentence's (one invented claim is enough to flag it). A
sentence that only declines ("I don't know") is supported by definition. How the scores fall on
the golden knowledge-base answers: docs/knowledge.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from pipeline.embedding import Embedder

_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_DECLINE = re.compile(r"\b(don'?t|do not|cannot|can'?t) (know|say|find)\b|\bnot sure\b")
_STOP = frozenset(
    """a an the is are was were be been being of in on at to it its this that these those and or
    but if then so as by for with from into about over under than too very can could should would
    will shall may might must do does did done have has had having i you your yours we our they
    them their he she his her what which who whom when where why how there here not no yes also
    just only up out off more most some any each all both one ones my me us it's that's there's
    use used using get got make made please sure okay ok well need needs""".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _content(text: str, question: set[str]) -> list[str]:
    return [w for w in _words(text) if w not in _STOP and w not in question and len(w) > 1]


class EmbeddingSupport:
    """The support score of ``pipeline.knowledge.SupportScorer`` from an embedding model.

    Args:
        embedder: The embedding model (the knowledge base's own).
        floor: Cosine similarity that counts as no support in meaning.
        ceiling: Cosine similarity that counts as full support in meaning.
    """

    def __init__(self, embedder: Embedder, *, floor: float = 0.35, ceiling: float = 0.8) -> None:
        self.embedder = embedder
        self.floor = floor
        self.ceiling = ceiling
        self.name = f"embedding+words:{embedder.name}"

    async def support(self, answer: str, passages: Sequence[str], question: str) -> float:
        """The answer's support in [0, 1] (see the module docstring)."""
        claims = [s for s in _SENTENCE.split(answer.strip()) if _words(s)]
        claims = [s for s in claims if not _DECLINE.search(s.lower().replace("\u2019", "'"))]
        if not claims:
            return 1.0  # nothing asserted
        source_sentences = [s for p in passages for s in _SENTENCE.split(p) if _words(s)]
        if not source_sentences:
            return 0.0
        vectors = await self.embedder.aembed([*claims, *source_sentences])
        sims = vectors[: len(claims)] @ vectors[len(claims) :].T
        meaning = np.clip((sims.max(axis=1) - self.floor) / (self.ceiling - self.floor), 0, 1)
        asked = set(_words(question))
        known = set(_words(" ".join(passages)))
        scores = []
        for claim, sense in zip(claims, meaning, strict=True):
            words = _content(claim, asked)
            lexical = sum(w in known for w in words) / len(words) if words else 1.0
            numbers = [w for w in words if w[0].isdigit()]
            # a number the sources never state is the classic invention: it voids the claim
            exact = sum(n in known for n in numbers) / len(numbers) if numbers else 1.0
            scores.append((0.5 * float(sense) + 0.5 * lexical) * exact)
        return round(min(scores), 4)
