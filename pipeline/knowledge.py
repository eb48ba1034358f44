"""Knowledge in the voice turn: retrieval between the transcript and the LLM, with citations.

Retrieval is an optional step of the one reply path (docs/architecture.md), not a second
pipeline. A turn that names vector stores (OpenAI's ``file_search`` tool) asks a ``Grounder``
to prepare its reply::

    grounded = await grounder.ground(messages, search)     # retrieve, decide, build messages
    reply = Reply(llm, tts, grounded.messages, text=grounded.fixed_reply, vet=grounded.vet)
    ...                                                     # speak it
    report = await grounded.report(reply.text)              # citations, scores, support

What this module decides (and nothing else does):

- **the prompt**: the relevant passages, best first and within ``max_context_chars``, are put
  in front of the user's question in the last user message, numbered and named by file, with
  the instruction to answer only from them (``grounded_messages``, in ``pipeline.grounding``);
  earlier turns stay as they were, so the history the session keeps never holds passages;
- **"I don't know"**: a passage is relevant when its *relevance* reaches the relevance
  threshold: its cosine similarity plus ``keyword_weight`` times the share of the question's
  content words it contains (``keyword_coverage``, in ``pipeline.grounding``). Dense similarity
  alone separates answerable from unanswerable questions poorly (the embedding model puts any
  question about the product near any chunk about it); the words the question asks about being
  there, or not, is the missing evidence (measured in docs/knowledge.md). With no relevant
  passage, the turn either speaks a fixed reply without calling the LLM (``dont_know="fixed"``)
  or tells the LLM explicitly that the documents hold no answer (``"llm"``);
- **groundedness**: after the reply, its support against the passages it was given is scored
  (a ``SupportScorer``); below the support threshold the answer is flagged, and with
  ``replace_unsupported`` the reply is held until it is scored (``vet``) and a safe reply is
  spoken instead of a flagged one.

The ``file_search`` tool a turn names, and its parsing, are in ``pipeline.file_search``.

The ``Retriever`` (the state store's vector search and the embedding model, in ``server``) and
the ``SupportScorer`` are protocols: this module knows no store and no engine.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pipeline.file_search import FileSearch
from pipeline.grounding import grounded_messages, keyword_coverage, last_user
from pipeline.types import Message

Clock = Callable[[], float]
AttributeValue = str | float | bool


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved chunk of a file.

    Attributes:
        file_id: The file it comes from (``file-...``).
        filename: That file's name, as uploaded.
        chunk: The chunk's index in the file (0-based, in reading order).
        text: The chunk's text.
        score: Cosine similarity with the query, in [-1, 1].
        vector_store_id: The vector store it was found in.
        attributes: The file's attributes in that store (OpenAI's ``attributes``).
    """

    file_id: str
    filename: str
    chunk: int
    text: str
    score: float
    vector_store_id: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Citation:
    """A source an answer was given: a passage as results name it (file, chunk, score, and
    the chunk's text, so a client can show the quote)."""

    file_id: str
    filename: str
    chunk: int
    score: float
    text: str

    @classmethod
    def of(cls, passage: Passage) -> Citation:
        """The citation of a passage."""
        return cls(
            passage.file_id, passage.filename, passage.chunk, round(passage.score, 4), passage.text
        )


@dataclass(frozen=True, slots=True)
class Retrieval:
    """What one search found, and what it took (embedding the query, then searching)."""

    query: str
    passages: tuple[Passage, ...]
    embed_ms: float
    search_ms: float

    @property
    def total_ms(self) -> float:
        """Query embedding plus search."""
        return round(self.embed_ms + self.search_ms, 2)


class Retriever(Protocol):
    """Finds the passages of some vector stores most similar to a query."""

    async def retrieve(self, query: str, vector_store_ids: Sequence[str], k: int) -> Retrieval:
        """The ``k`` best passages for ``query`` over ``vector_store_ids``, best first.

        Raises:
            InvalidInput: a store that does not exist (or is not the caller's).
            StageError: the embedding model failed.
        """
        ...


class SupportScorer(Protocol):
    """Scores how well an answer is supported by the passages it was given, in [0, 1]."""

    name: str

    async def support(self, answer: str, passages: Sequence[str], question: str) -> float:
        """1: every claim of ``answer`` is in ``passages``; 0: none is."""
        ...


@dataclass(frozen=True, slots=True)
class KnowledgePolicy:
    """How retrieved passages become a reply (the ``kb`` settings, see ``KBSettings``)."""

    top_k: int = 3
    relevance_threshold: float = 0.45
    dont_know: Literal["fixed", "llm"] = "fixed"
    dont_know_reply: str = "I don't know. The documents I can search don't say."
    support_threshold: float = 0.5
    replace_unsupported: bool = False
    safe_reply: str = "I'm not sure. I couldn't find a clear answer in the documents."
    max_context_chars: int = 2400
    keyword_weight: float = 0.3

    @classmethod
    def from_settings(cls, kb: Any) -> KnowledgePolicy:
        """The policy of a ``KBSettings`` section (typed ``Any``: settings are read, not
        imported, so the policy stays a plain value)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: getattr(kb, name) for name in names})


@dataclass(frozen=True, slots=True)
class Support:
    """How well an answer is supported by its sources.

    Attributes:
        score: The scorer's support score, in [0, 1].
        threshold: The support threshold it was judged against.
        scorer: The scorer's name.
        ms: How long scoring took.
        replaced: The answer was flagged and a safe reply was spoken instead.
    """

    score: float
    threshold: float
    scorer: str
    ms: float
    replaced: bool = False

    @property
    def flagged(self) -> bool:
        """The answer scored below the threshold: not grounded in its sources."""
        return self.score < self.threshold


@dataclass(frozen=True, slots=True)
class KnowledgeReport:
    """What a turn's retrieval found and how grounded its answer was (results, metrics, logs).

    Attributes:
        vector_store_ids: The stores searched.
        retrieval_ms: Query embedding plus search.
        scores: The similarity of every passage retrieved, best first (relevant or not).
        relevance: Their relevance (similarity plus keyword coverage), in the same order.
        citations: The passages the answer was given, best first.
        dont_know: Nothing relevant was retrieved: the answer is "I don't know".
        llm_called: Whether the LLM answered (``False``: a fixed reply was spoken).
        support: The answer's support, when it had sources to be checked against.
    """

    vector_store_ids: tuple[str, ...]
    retrieval_ms: float
    scores: tuple[float, ...]
    citations: tuple[Citation, ...]
    dont_know: bool
    llm_called: bool
    support: Support | None = None
    relevance: tuple[float, ...] = ()

    @property
    def top_score(self) -> float | None:
        """The best retrieval score (``None``: nothing was retrieved)."""
        return self.scores[0] if self.scores else None


class Grounder:
    """Prepares grounded replies: retrieval, the "don't know" decision, the prompt, support.

    Args:
        retriever: Searches the vector stores.
        policy: Thresholds and replies.
        scorer: Scores an answer's support (``None``: answers are not checked).
        clock: Time source of the support timing.
    """

    def __init__(
        self,
        retriever: Retriever,
        policy: KnowledgePolicy | None = None,
        scorer: SupportScorer | None = None,
        *,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.retriever = retriever
        self.policy = policy or KnowledgePolicy()
        self.scorer = scorer
        self._clock = clock

    async def ground(self, messages: Sequence[Message], search: FileSearch) -> Grounded:
        """Retrieve for the last user message and prepare the reply to ``messages``.

        Raises:
            InvalidInput: no user message, or a store that does not exist.
            StageError: the embedding model failed.
        """
        policy = self.policy
        query = messages[last_user(messages)].content
        k = search.max_num_results or policy.top_k
        retrieval = await self.retriever.retrieve(query, search.vector_store_ids, k)
        threshold = (
            policy.relevance_threshold if search.score_threshold is None else search.score_threshold
        )
        relevance = [
            p.score + policy.keyword_weight * keyword_coverage(query, p.text)
            for p in retrieval.passages
        ]
        relevant = tuple(
            p for p, r in zip(retrieval.passages, relevance, strict=True) if r >= threshold
        )
        fixed = None
        if not relevant and policy.dont_know == "fixed":
            fixed = policy.dont_know_reply
        prepared = grounded_messages(messages, relevant, max_chars=policy.max_context_chars)
        scored = tuple(round(r, 4) for r in relevance)
        return Grounded(self, search, retrieval, relevant, prepared, fixed, scored)

    async def check(self, answer: str, grounded: Grounded) -> Support | None:
        """The answer's support against the passages it was given (``None``: nothing to check
        it against, or no scorer)."""
        if self.scorer is None or not grounded.passages or not answer.strip():
            return None
        start = self._clock()
        texts = [p.text for p in grounded.passages]
        score = await self.scorer.support(answer, texts, grounded.retrieval.query)
        ms = round((self._clock() - start) * 1000, 2)
        score = min(1.0, max(0.0, float(score)))
        return Support(round(score, 4), self.policy.support_threshold, self.scorer.name, ms)


@dataclass(slots=True)
class Grounded:
    """One reply's grounding: what was retrieved, the messages to send, and (once the reply is
    done) how well the answer was supported. Made by ``Grounder.ground``.

    Attributes:
        search: The ``file_search`` the turn named.
        retrieval: Everything retrieved (relevant or not).
        passages: The relevant passages, in the prompt.
        messages: The conversation with the passages in front of the question.
        fixed_reply: Speak this instead of calling the LLM (nothing relevant, ``fixed``).
        relevance: Each retrieved passage's relevance (similarity plus keyword coverage).
        support: The answer's support, once scored.
    """

    grounder: Grounder
    search: FileSearch
    retrieval: Retrieval
    passages: tuple[Passage, ...]
    messages: list[Message]
    fixed_reply: str | None
    relevance: tuple[float, ...] = ()
    support: Support | None = None

    @property
    def citations(self) -> tuple[Citation, ...]:
        """The passages the answer was given, as citations."""
        return tuple(Citation.of(p) for p in self.passages)

    @property
    def vet(self) -> Callable[[str], Awaitable[str]] | None:
        """``Reply``'s ``vet``: with ``replace_unsupported``, the check that holds a grounded
        reply until its support is known (``None``: replies are spoken as they come)."""
        if not self.grounder.policy.replace_unsupported or self.fixed_reply is not None:
            return None
        return self._vet

    async def _vet(self, answer: str) -> str:
        self.support = await self.grounder.check(answer, self)
        if self.support is None or not self.support.flagged:
            return answer
        self.support = dataclasses.replace(self.support, replaced=True)
        return self.grounder.policy.safe_reply

    async def report(self, answer: str) -> KnowledgeReport:
        """The turn's knowledge report, scoring ``answer``'s support if ``vet`` did not."""
        if self.support is None and self.fixed_reply is None:
            self.support = await self.grounder.check(answer, self)
        return KnowledgeReport(
            vector_store_ids=self.search.vector_store_ids,
            retrieval_ms=self.retrieval.total_ms,
            scores=tuple(round(p.score, 4) for p in self.retrieval.passages),
            citations=self.citations,
            dont_know=not self.passages,
            llm_called=self.fixed_reply is None,
            support=self.support,
            relevance=self.relevance,
        )
