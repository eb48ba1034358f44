"""The knowledge base service on both state-store backends (SQLite and the real Postgres):
ingestion in one transaction, search, owners, deletion. The embedding model is the real
packaged MiniLM on onnxruntime, loaded once for the module."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.embed_minilm import MiniLMEmbedder
from pipeline.errors import InvalidInput
from pipeline.settings import KBSettings
from server.kb import KnowledgeBase
from store import Store
from store.errors import NotFound

CORPUS = Path(__file__).parents[2] / "benchmarks" / "golden" / "kb" / "corpus" / "tarvo-aero5"


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder(runtime="onnx", threads=1)
    model.load()
    return model


@pytest.fixture
def kb(store: Store, embedder: MiniLMEmbedder) -> KnowledgeBase:
    return KnowledgeBase(store, KBSettings(), lambda: embedder)


def _added(kb: KnowledgeBase, owner: str | None, *names: str) -> str:
    vs = kb.create_store("aero", owner)
    for name in names:
        f = kb.upload((CORPUS / name).read_bytes(), name, "assistants", owner)
        record, new = kb.attach(vs.id, f.id, owner)
        assert new and record.status == "in_progress"
        progress: list[tuple[int, int]] = []
        done = kb.ingest(vs.id, f.id, lambda a, b, seen=progress: seen.append((a, b)))
        assert done.status == "completed" and done.chunks == progress[-1][0] == progress[-1][1]
    return vs.id


def test_ingest_and_search_on_each_backend(kb: KnowledgeBase, store: Store) -> None:
    vs = _added(kb, None, "manual.md", "safety.pdf")
    assert store.vectors.count(vs) == sum(f.chunks for f in kb.catalog.store_files(vs))
    found = kb.search("Can children clean the purifier?", [vs], 2, None)
    assert found.passages[0].filename == "safety.pdf" and len(found.passages) == 2
    assert found.passages[0].score > found.passages[1].score
    assert found.embed_ms > 0 and found.search_ms > 0
    assert found.passages[0].vector_store_id == vs


def test_owners_see_only_their_own(kb: KnowledgeBase) -> None:
    vs = _added(kb, "key_a", "warranty.txt")
    with pytest.raises(InvalidInput):
        kb.search("warranty", [vs], 3, "key_b")
    with pytest.raises(NotFound):
        kb.catalog.vector_store(vs, "key_b")
    assert kb.catalog.vector_stores("key_b") == [] and kb.catalog.files("key_b") == []
    assert kb.search("warranty", [vs], 3, "key_a").passages


def test_a_failed_ingestion_adds_nothing(kb: KnowledgeBase, store: Store) -> None:
    vs = kb.create_store("x", None)
    f = kb.upload(b"Some words here.", "note.txt", "assistants", None)
    kb.attach(vs.id, f.id, None, max_chunk_tokens=100, overlap_tokens=90)  # an overlap too big
    failed = kb.ingest(vs.id, f.id)
    assert failed.status == "failed" and failed.error_code == "invalid_file"
    assert store.vectors.count(vs.id) == 0


def test_deleting_a_store_or_a_file_deletes_its_embeddings(kb: KnowledgeBase, store: Store) -> None:
    vs = _added(kb, None, "warranty.txt")
    other = _added(kb, None, "manual.md")
    kb.delete_store(vs, None)
    assert store.vectors.count(vs) == 0 and store.vectors.count(other) > 0
    (file_id,) = [f.file_id for f in kb.catalog.store_files(other)]
    kb.delete_file(file_id, None)
    assert store.vectors.count(other) == 0 and kb.catalog.store_files(other) == []
    assert store.blobs.info(file_id) is None
