"""The knowledge base: files in, chunks embedded into vector stores, passages out.

One object per process (``AppState.kb``, or the ``voxline kb`` command's own) over the state
store: file bytes are blobs, records are documents (``server.kb.records``), embeddings are a
``store.vectors`` collection per vector store, owned by their file (deleting a file deletes its
chunks). Every method is blocking (the store and the model are); async callers use
``asyncio.to_thread``.

- **Upload** validates before it stores: the type (txt, md, html, pdf), the size, and that the
  text can be extracted. A bad file is refused with nothing kept.
- **Ingestion** reads the file's text, chunks it (``pipeline.chunking``), embeds the chunks in
  small batches (``Priority.BATCH``; a model instance of its own, so a voice turn's query never
  queues behind a document) and adds them in one transaction: a store never holds half a file.
- **Search** embeds the query and ranks the stores' chunks by cosine similarity; its two steps
  are timed apart (``Retrieval.embed_ms``, ``search_ms``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from pipeline.chunking import chunk_text
from pipeline.embedding import Embedder
from pipeline.errors import InvalidInput
from pipeline.knowledge import Passage, Retrieval
from pipeline.priority import Priority, priority
from pipeline.settings import KBSettings
from server.kb.filters import Predicate
from server.kb.records import (
    Catalog,
    FileRecord,
    StoreFileRecord,
    StoreRecord,
    new_file_id,
    new_store_id,
)
from store import Store
from store.errors import Conflict, NotFound, StoreError

log = logging.getLogger("voxline.kb")

PURPOSES = ("assistants", "user_data")
"""Upload purposes the knowledge base accepts (OpenAI's for file search)."""
INGEST_BATCH = 16
"""Chunks embedded per call while ingesting (progress is reported per batch)."""
_FILTER_WIDEN = 10  # a filtered search ranks this many times the results, then filters

Progress = Callable[[int, int], None]
"""``progress(chunks_done, chunks_total)`` during ingestion."""
EmbedderFactory = Callable[[], Embedder]


class KnowledgeBase:
    """Files, vector stores and search over the state store.

    Args:
        store: The state store.
        settings: The ``kb`` settings.
        make_embedder: Builds an embedding model (called once for queries and once for
            ingestion, lazily).
        clock: Unix time source of the records.
    """

    def __init__(
        self,
        store: Store,
        settings: KBSettings,
        make_embedder: EmbedderFactory,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.catalog = Catalog(store)
        self._make_embedder = make_embedder
        self._clock = clock
        self._lock = threading.Lock()
        self._query_embedder: Embedder | None = None
        self._ingest_embedder: Embedder | None = None
        self.closing = threading.Event()
        """Set when the process stops: ingestion ends at its next batch (status ``failed``)."""

    # ---------------------------------------------------------------- models

    @property
    def embedder_loaded(self) -> bool:
        """Whether the query model is loaded (a search will not pay for loading it)."""
        return self._query_embedder is not None

    def query_embedder(self) -> Embedder:
        """The embedding model of queries (loaded on first use)."""
        with self._lock:
            if self._query_embedder is None:
                embedder = self._make_embedder()
                embedder.load()
                self._query_embedder = embedder
            return self._query_embedder

    def _ingest_model(self) -> Embedder:
        with self._lock:
            if self._ingest_embedder is None:
                embedder = self._make_embedder()
                embedder.load()
                self._ingest_embedder = embedder
            return self._ingest_embedder

    # ---------------------------------------------------------------- files

    def upload(
        self, source: bytes | IO[bytes], filename: str, purpose: str, owner: str | None
    ) -> FileRecord:
        """Validate and store an uploaded file.

        Raises:
            InvalidInput: a bad purpose or name, an unsupported type (``unsupported_file``),
                bytes that are not the type's (``invalid_file``), too large (``file_too_large``).
        """
        from models.doc_text import extract_text, kind_of  # deferred: pypdf

        if purpose not in PURPOSES:
            raise InvalidInput(
                f"purpose must be one of {', '.join(PURPOSES)} for the knowledge base",
                param="purpose",
                code="invalid_value",
            )
        name = Path(filename.replace("\\", "/")).name.strip()
        if not name or len(name) > 255:
            raise InvalidInput("the file needs a name of 1-255 characters", param="file")
        kind_of(name)
        data = source if isinstance(source, bytes) else _read_capped(source, self.settings)
        if len(data) > self.settings.max_file_bytes:
            raise too_large(self.settings.max_file_bytes)
        extract_text(data, name, max_chars=self.settings.max_file_chars)  # decodable, or 4xx
        blob = self.store.blobs.put(data, content_type=content_type_of(name))
        record = FileRecord(
            new_file_id(), name, blob.size, purpose, blob.id, owner, int(self._clock())
        )
        try:
            return self.catalog.add_file(record)
        except BaseException:
            self.store.blobs.delete(blob.id)
            raise

    def content(self, file_id: str, owner: str | None) -> tuple[FileRecord, bytes]:
        """A file's record and bytes.

        Raises:
            NotFound: no such file of the caller's.
        """
        record = self.catalog.file(file_id, owner)
        return record, self.store.blobs.read(record.blob_id)

    def delete_file(self, file_id: str, owner: str | None) -> None:
        """Delete a file and remove it from every vector store of the caller's.

        Raises:
            NotFound: no such file of the caller's.
        """
        record = self.catalog.file(file_id, owner)
        for vs in self.catalog.vector_stores(owner):
            self.catalog.delete_store_file(vs.id, file_id)
        self.store.vectors.delete_owner(file_id)
        self.catalog.delete_file(file_id)
        self.store.blobs.delete(record.blob_id)

    # ---------------------------------------------------------------- vector stores

    def create_store(
        self,
        name: str,
        owner: str | None,
        *,
        metadata: dict[str, str] | None = None,
        expires_after_days: int | None = None,
    ) -> StoreRecord:
        """A new, empty vector store."""
        now = int(self._clock())
        record = StoreRecord(
            new_store_id(), name, owner, now, now, metadata or {}, expires_after_days
        )
        return self.catalog.add_store(record)

    def delete_store(self, vector_store_id: str, owner: str | None) -> None:
        """Delete a vector store, its embeddings and its file records (not the files).

        Raises:
            NotFound: no such store of the caller's.
        """
        self.catalog.vector_store(vector_store_id, owner)
        self.store.vectors.delete_collection(vector_store_id)
        self.catalog.delete_store(vector_store_id)

    def attach(
        self,
        vector_store_id: str,
        file_id: str,
        owner: str | None,
        *,
        attributes: dict[str, str | float | bool] | None = None,
        max_chunk_tokens: int | None = None,
        overlap_tokens: int | None = None,
    ) -> tuple[StoreFileRecord, bool]:
        """Record a file being added to a store; ``ingest`` does the work.

        Returns:
            The store file, and whether it is new (``False``: it was there already, and its
            record is returned as it stands).

        Raises:
            NotFound: no such store or file of the caller's.
        """
        self.catalog.vector_store(vector_store_id, owner)
        self.catalog.file(file_id, owner)
        record = StoreFileRecord(
            file_id,
            vector_store_id,
            "in_progress",
            owner,
            int(self._clock()),
            attributes or {},
            max_chunk_tokens or self.settings.chunk_tokens,
            self.settings.chunk_overlap_tokens if overlap_tokens is None else overlap_tokens,
        )
        try:
            return self.catalog.add_store_file(record), True
        except Conflict:
            return self.catalog.store_file(vector_store_id, file_id), False

    def ingest(
        self, vector_store_id: str, file_id: str, progress: Progress | None = None
    ) -> StoreFileRecord:
        """Chunk, embed and store a file attached with ``attach``; returns its final record
        (``completed``, or ``failed`` with the reason: this never raises for a bad file)."""
        record = self.catalog.store_file(vector_store_id, file_id)
        try:
            with priority(Priority.BATCH):
                chunks, used = self._embed_file(record, progress)
        except (InvalidInput, StoreError, NotFound) as exc:
            return self._finish(record, "failed", error=exc)
        except Exception as exc:  # a model failure: the file can be added again later
            log.exception("ingesting %s into %s failed", file_id, vector_store_id)
            return self._finish(record, "failed", error=exc)
        return self._finish(record, "completed", chunks=chunks, usage=used)

    def abandon(self, vector_store_id: str, file_id: str) -> None:
        """Mark a file that was queued but never indexed (the server stopped) as failed."""
        try:
            record = self.catalog.store_file(vector_store_id, file_id)
        except NotFound:
            return
        if record.status == "in_progress":
            stopped = InvalidInput("the server stopped before the file was indexed: add it again")
            self._finish(record, "failed", error=stopped)

    def _embed_file(self, record: StoreFileRecord, progress: Progress | None) -> tuple[int, int]:
        from models.doc_text import extract_text

        file = self.catalog.file(record.file_id, record.owner)
        data = self.store.blobs.read(file.blob_id)
        text = extract_text(data, file.filename, max_chars=self.settings.max_file_chars)
        chunks = chunk_text(
            text, max_tokens=record.max_chunk_tokens, overlap_tokens=record.overlap_tokens
        )
        model = self._ingest_model()
        vectors = []
        for start in range(0, len(chunks), INGEST_BATCH):
            if self.closing.is_set():
                raise InvalidInput("the server stopped while the file was being added")
            batch = chunks[start : start + INGEST_BATCH]
            vectors.append(model.embed([c.text for c in batch]))
            if progress is not None:
                progress(start + len(batch), len(chunks))
        metas = [
            {
                "file_id": file.id,
                "filename": file.filename,
                "chunk": c.index,
                "text": c.text,
                "attributes": dict(record.attributes),
            }
            for c in chunks
        ]
        if chunks:
            import numpy as np

            matrix = np.vstack(vectors)
            # all of a file's chunks in one transaction: a store never holds half a file
            self.store.vectors.add(record.vector_store_id, file.id, matrix, metas)
            used = sum(len(c.text.encode()) for c in chunks) + matrix.nbytes
        else:
            used = 0
        return len(chunks), used

    def _finish(
        self,
        record: StoreFileRecord,
        status: str,
        *,
        chunks: int = 0,
        usage: int = 0,
        error: BaseException | None = None,
    ) -> StoreFileRecord:
        from dataclasses import replace

        code = None
        if error is not None:
            code = "invalid_file" if isinstance(error, InvalidInput) else "server_error"
        done = replace(
            record,
            status=status,  # type: ignore[arg-type]  # "completed" or "failed"
            chunks=chunks,
            usage_bytes=usage,
            error_code=code,
            error_message=None if error is None else str(error)[:500],
        )
        try:
            return self.catalog.set_store_file(done)
        except NotFound:  # detached or deleted meanwhile: drop what was added
            self.store.vectors.delete_owner(record.file_id, collection=record.vector_store_id)
            return done

    def detach(self, vector_store_id: str, file_id: str, owner: str | None) -> None:
        """Remove a file (and its chunks) from a store; the file itself stays.

        Raises:
            NotFound: no such store of the caller's, or the file is not in it.
        """
        self.catalog.vector_store(vector_store_id, owner)
        self.catalog.store_file(vector_store_id, file_id)
        self.store.vectors.delete_owner(file_id, collection=vector_store_id)
        self.catalog.delete_store_file(vector_store_id, file_id)

    # ---------------------------------------------------------------- search

    def check_stores(
        self, vector_store_ids: Sequence[str], owner: str | None, param: str = "vector_store_ids"
    ) -> None:
        """Raise if one of the stores is not the caller's (``param``: where the ids were).

        Raises:
            InvalidInput: ``vector_store_not_found`` naming the first unknown store.
        """
        for vs_id in vector_store_ids:
            try:
                self.catalog.vector_store(vs_id, owner)
            except NotFound as exc:
                raise InvalidInput(
                    f"no vector store {vs_id[:64]!r}",
                    param=param,
                    code="vector_store_not_found",
                ) from exc

    def search(
        self,
        query: str,
        vector_store_ids: Sequence[str],
        k: int,
        owner: str | None,
        *,
        where: Predicate | None = None,
    ) -> Retrieval:
        """The ``k`` chunks most similar to ``query`` in the caller's stores, best first.

        Raises:
            InvalidInput: an empty query, or a store that is not the caller's.
            StageError: the embedding model failed.
        """
        if not query.strip():
            raise InvalidInput("the query is empty", param="query", code="empty_input")
        self.check_stores(vector_store_ids, owner)
        embedder = self.query_embedder()
        start = time.perf_counter()
        vector = embedder.embed([query])[0]
        embedded = time.perf_counter()
        wanted = k * _FILTER_WIDEN if where is not None else k
        hits = self.store.vectors.search(vector, vector_store_ids, wanted)
        passages = []
        for hit in hits:
            meta = hit.meta
            attributes = meta.get("attributes") or {}
            if where is not None and not where(attributes):
                continue
            passages.append(
                Passage(
                    str(meta["file_id"]),
                    str(meta["filename"]),
                    int(meta["chunk"]),
                    str(meta["text"]),
                    hit.score,
                    hit.collection,
                    attributes,
                )
            )
        done = time.perf_counter()
        return Retrieval(
            query,
            tuple(passages[:k]),
            round((embedded - start) * 1000, 2),
            round((done - embedded) * 1000, 2),
        )


def _read_capped(source: IO[bytes], settings: KBSettings) -> bytes:
    data = source.read(settings.max_file_bytes + 1)
    if len(data) > settings.max_file_bytes:
        raise too_large(settings.max_file_bytes)
    return data


def too_large(limit: int) -> InvalidInput:
    """The refusal of a file over ``limit`` bytes (413)."""
    return InvalidInput(
        f"the file is larger than {limit} bytes", param="file", code="file_too_large"
    )


def content_type_of(name: str) -> str:
    """The media type a file is served with, from its name."""
    suffix = Path(name.lower()).suffix
    return {
        ".pdf": "application/pdf",
        ".html": "text/html",
        ".htm": "text/html",
        ".md": "text/markdown",
        ".markdown": "text/markdown",
    }.get(suffix, "text/plain")
