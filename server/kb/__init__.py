"""The knowledge base in the server: OpenAI's files and vector stores, retrieval for turns.

- ``service.KnowledgeBase``: upload, ingestion, search over the state store;
- ``records``: files, vector stores and a store's files as state-store documents;
- ``filters``: OpenAI's attribute filters;
- here: the pieces a turn needs, ``StoreRetriever`` (``pipeline.knowledge.Retriever`` over
  the knowledge base, for one caller) and ``grounder_for``, and ``knowledge_base`` to build
  the service from settings.

Who owns what: records carry the API key id of their maker. ``caller()`` says who the current
request is (``None`` while the server runs without keys); a caller sees only its own files and
stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from pipeline.knowledge import Grounder, KnowledgePolicy, Retrieval
from pipeline.settings import KBSettings, Settings
from pipeline.support import EmbeddingSupport
from server import identity
from server.kb.service import KnowledgeBase
from store import Store

__all__ = ["KnowledgeBase", "StoreRetriever", "caller", "grounder_for", "knowledge_base"]


def caller() -> str | None:
    """The owner of the records the current request makes and may see: the API key id the
    edge bound for the request or realtime session (``server.identity``), ``None`` while the
    server runs without keys."""
    who = identity.current()
    return who.key_id if who is not None else None


class StoreRetriever:
    """The knowledge base as a turn's ``Retriever``, for one caller.

    Args:
        kb: The knowledge base.
        owner: Whose stores may be searched.
    """

    def __init__(self, kb: KnowledgeBase, owner: str | None) -> None:
        self.kb = kb
        self.owner = owner

    async def retrieve(self, query: str, vector_store_ids: Sequence[str], k: int) -> Retrieval:
        """Search in a worker thread (the model and the store block)."""
        return await asyncio.to_thread(self.kb.search, query, vector_store_ids, k, self.owner)


def grounder_for(
    kb: KnowledgeBase, owner: str | None, policy: KBSettings | None = None
) -> Grounder:
    """A grounder for one caller's turns: the knowledge base's retrieval, the retrieval policy
    of ``policy`` (a release's ``kb`` section; default: the knowledge base's own), and the
    support score from the knowledge base's embedding model (one per process: the stored
    vectors were made with it)."""
    scorer = EmbeddingSupport(kb.query_embedder()) if kb.embedder_loaded else None
    return Grounder(
        StoreRetriever(kb, owner),
        KnowledgePolicy.from_settings(policy or kb.settings),
        scorer or _LazySupport(kb),
    )


class _LazySupport:
    """The support scorer, loading the knowledge base's model on first use (not at connect)."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.name = "embedding+words"

    async def support(self, answer: str, passages: Sequence[str], question: str) -> float:
        embedder = await asyncio.to_thread(self.kb.query_embedder)
        return await EmbeddingSupport(embedder).support(answer, passages, question)


def knowledge_base(store: Store, settings: Settings) -> KnowledgeBase:
    """The knowledge base of ``settings`` on ``store`` (its model loads on first use)."""
    from models.embed_minilm import MiniLMEmbedder  # deferred: the model's libraries

    kb: KBSettings = settings.kb
    cache_dir: Path = settings.cache_dir

    def make() -> MiniLMEmbedder:
        return MiniLMEmbedder(
            kb.embedding_model,
            threads=kb.embedding_threads,
            offline=settings.hf_offline,
            cache_dir=cache_dir,
            runtime=kb.embedding_runtime,
            batch_size=16,
        )

    return KnowledgeBase(store, kb, make)
