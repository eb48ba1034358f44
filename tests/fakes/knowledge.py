"""Doubles of the knowledge base's protocols (``pipeline.knowledge``): a scripted retriever and a
scripted support scorer, for tests of the grounding logic, the reply path and the session where
the real knowledge base (state store + embedding model, tested in ``tests/server`` and
``tests/store``) would only add seconds and noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.errors import InvalidInput
from pipeline.knowledge import Passage, Retrieval


def passage(text: str, score: float, *, file: str = "manual.md", chunk: int = 0) -> Passage:
    """A passage of ``file`` (id ``file-<name>``) in store ``vs_test``."""
    return Passage(f"file-{file}", file, chunk, text, score, "vs_test")


@dataclass
class ScriptedRetriever:
    """Returns ``passages`` (best first, cut to ``k``) for any query over known stores.

    Attributes:
        passages: What every search finds.
        stores: The stores that exist (others are refused, as the real one does).
        queries: Every ``(query, stores, k)`` asked, in order.
    """

    passages: list[Passage] = field(default_factory=list)
    stores: tuple[str, ...] = ("vs_test",)
    queries: list[tuple[str, tuple[str, ...], int]] = field(default_factory=list)

    async def retrieve(self, query: str, vector_store_ids: Sequence[str], k: int) -> Retrieval:
        """The scripted passages."""
        self.queries.append((query, tuple(vector_store_ids), k))
        for vs in vector_store_ids:
            if vs not in self.stores:
                raise InvalidInput(f"no vector store {vs!r}", code="vector_store_not_found")
        found = sorted(self.passages, key=lambda p: -p.score)[:k]
        return Retrieval(query, tuple(found), embed_ms=1.0, search_ms=0.5)


@dataclass
class ScriptedSupport:
    """Scores every answer ``score``; remembers what it was asked."""

    score: float = 0.9
    name: str = "scripted"
    asked: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    async def support(self, answer: str, passages: Sequence[str], question: str) -> float:
        """The scripted score."""
        self.asked.append((answer, tuple(passages)))
        return self.score
