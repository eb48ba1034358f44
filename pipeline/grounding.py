"""The words of a grounded turn: how relevant a passage reads to the question, and the prompt
the LLM is given.

``keyword_coverage`` is the share of the question's content words a passage contains (the
evidence dense similarity lacks, docs/knowledge.md); ``grounded_messages`` puts the relevant
passages in front of the question in the last user message, or, with none, the instruction to
say "I don't know". ``pipeline.knowledge``'s ``Grounder`` decides with them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.errors import InvalidInput
from pipeline.types import Message

if TYPE_CHECKING:  # pipeline.knowledge imports this module; Passage is only a type here
    from pipeline.knowledge import Passage


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    """a an the is are was were be been of in on at to it its that this these those and or but
    which what who whom how many much do does did there their they i you your my me we our can
    could should would will may might must when where why with for from by as if about after
    before into out up so not no any some have has had get got make please tell know""".split()
)


def _stems(text: str) -> set[str]:
    # a five-letter prefix is stemming enough here: "replacement" meets "replace"
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def keyword_coverage(query: str, text: str) -> float:
    """The share of ``query``'s content words (stop words out, stemmed to five letters) that
    ``text`` contains, in [0, 1] (0 for a query of stop words only)."""
    asked = _stems(query)
    return len(asked & _stems(text)) / len(asked) if asked else 0.0


DONT_KNOW_INSTRUCTION = (
    "The documents hold nothing about this question. Say that you don't know; do not guess."
)
GROUNDING_INSTRUCTION = (
    "Answer the question using only the sources below, in one or two short spoken sentences. "
    "If they do not answer it, say that you don't know."
)


def grounded_messages(
    messages: Sequence[Message], passages: Sequence[Passage], *, max_chars: int
) -> list[Message]:
    """``messages`` with the passages put in front of the last user message's question.

    The passages go in best first, numbered and named by file, until ``max_chars`` of passage
    text is used (the first one always, cut if it alone is longer). With no passage the
    question is prefixed with ``DONT_KNOW_INSTRUCTION`` instead.

    Raises:
        InvalidInput: no user message to answer.
    """
    at = last_user(messages)
    question = messages[at].content
    if not passages:
        content = f"{DONT_KNOW_INSTRUCTION}\n\nQuestion: {question}"
    else:
        sources: list[str] = []
        budget = max_chars
        for n, passage in enumerate(passages, 1):
            text = " ".join(passage.text.split())
            if sources and len(text) > budget:
                break
            text = text[: max(budget, 0)] if not sources else text
            sources.append(f"[{n}] ({passage.filename}) {text}")
            budget -= len(text)
        content = (
            f"{GROUNDING_INSTRUCTION}\n\nSources:\n"
            + "\n".join(sources)
            + f"\n\nQuestion: {question}"
        )
    out = list(messages)
    out[at] = Message("user", content)
    return out


def last_user(messages: Sequence[Message]) -> int:
    """The index of the last user message.

    Raises:
        InvalidInput: there is none.
    """
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    raise InvalidInput("there is no user message to answer", code="no_question")
