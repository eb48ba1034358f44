"""The knowledge base's records (files, vector stores, a store's files) as state-store documents.

Three kinds of ``store.documents``, each payload converted to a frozen record at this boundary:

- ``kb_file``: an uploaded file (``file-...``): its name, size, purpose, owner and the blob
  holding its bytes;
- ``kb_store``: a vector store (``vs_...``): name, metadata, owner, timestamps; its embeddings
  are the ``store.vectors`` collection of the same id;
- ``kb_vsf:<vector store id>``: a file in that store, id = the file's id, with the ingestion
  status (``in_progress`` -> ``completed`` | ``failed``), attributes, chunking and counts. One
  kind per store, so listing a store's files is one indexed query.

Every record has an ``owner`` (the API key id that made it; ``None`` when the server runs
without keys). A caller sees only its own records: another owner's id reads as not found.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from store import Document, Store
from store.errors import NotFound

FILE_KIND = "kb_file"
STORE_KIND = "kb_store"
VSF_PREFIX = "kb_vsf:"
_ALL = 100_000  # listing reads every record of one owner (few per owner; paged in Python)

FileStatus = Literal["in_progress", "completed", "cancelled", "failed"]


def new_file_id() -> str:
    """A fresh ``file-`` id (OpenAI's form)."""
    return "file-" + secrets.token_hex(12)


def new_store_id() -> str:
    """A fresh ``vs_`` id (OpenAI's form)."""
    return "vs_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """An uploaded file."""

    id: str
    filename: str
    bytes: int
    purpose: str
    blob_id: str
    owner: str | None
    created_at: int


@dataclass(frozen=True, slots=True)
class StoreRecord:
    """A vector store."""

    id: str
    name: str
    owner: str | None
    created_at: int
    last_active_at: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    expires_after_days: int | None = None


@dataclass(frozen=True, slots=True)
class StoreFileRecord:
    """A file in a vector store, and its ingestion."""

    file_id: str
    vector_store_id: str
    status: FileStatus
    owner: str | None
    created_at: int
    attributes: Mapping[str, str | float | bool] = field(default_factory=dict)
    max_chunk_tokens: int = 200
    overlap_tokens: int = 40
    chunks: int = 0
    usage_bytes: int = 0
    error_code: str | None = None
    error_message: str | None = None


def _file(doc: Document) -> FileRecord:
    p = doc.payload
    return FileRecord(
        doc.id, p["filename"], p["bytes"], p["purpose"], p["blob_id"], p["owner"], p["created_at"]
    )


def _store(doc: Document) -> StoreRecord:
    p = doc.payload
    return StoreRecord(
        doc.id,
        p["name"],
        p["owner"],
        p["created_at"],
        p["last_active_at"],
        p.get("metadata") or {},
        p.get("expires_after_days"),
    )


def _store_file(doc: Document) -> StoreFileRecord:
    p = doc.payload
    return StoreFileRecord(
        doc.id,
        doc.kind.removeprefix(VSF_PREFIX),
        doc.status,  # type: ignore[arg-type]  # written by this module only
        p["owner"],
        p["created_at"],
        p.get("attributes") or {},
        p.get("max_chunk_tokens", 200),
        p.get("overlap_tokens", 40),
        p.get("chunks", 0),
        p.get("usage_bytes", 0),
        p.get("error_code"),
        p.get("error_message"),
    )


class Catalog:
    """Read and write the knowledge base's records (blocking: call from a worker thread).

    Args:
        store: The state store.
    """

    def __init__(self, store: Store) -> None:
        self._files = store.documents(FILE_KIND)
        self._stores = store.documents(STORE_KIND)
        self._store = store

    def _vsf(self, vector_store_id: str) -> Any:
        return self._store.documents(VSF_PREFIX + vector_store_id)

    # ---------------------------------------------------------------- files

    def add_file(self, record: FileRecord) -> FileRecord:
        """Store a file's record (its blob is already stored)."""
        payload = {
            "filename": record.filename,
            "bytes": record.bytes,
            "purpose": record.purpose,
            "blob_id": record.blob_id,
            "owner": record.owner,
            "created_at": record.created_at,
        }
        self._files.create(record.id, payload, status="processed")
        return record

    def file(self, file_id: str, owner: str | None) -> FileRecord:
        """The caller's file.

        Raises:
            NotFound: no such file, or another owner's.
        """
        doc = self._files.get(file_id)
        if doc is None or doc.payload.get("owner") != owner:
            raise NotFound(f"No file found with id '{file_id[:64]}'.")
        return _file(doc)

    def files(self, owner: str | None, purpose: str | None = None) -> list[FileRecord]:
        """The caller's files, oldest first."""
        found = [_file(d) for d in self._files.list(limit=_ALL)]
        return [f for f in found if f.owner == owner and purpose in (None, f.purpose)]

    def delete_file(self, file_id: str) -> bool:
        """Delete a file's record."""
        return self._files.delete(file_id)

    # ---------------------------------------------------------------- vector stores

    def add_store(self, record: StoreRecord) -> StoreRecord:
        """Store a new vector store's record."""
        self._stores.create(record.id, self._store_payload(record), status="completed")
        return record

    def update_store(self, record: StoreRecord) -> StoreRecord:
        """Replace a vector store's name, metadata and expiry."""
        self._stores.update(record.id, payload=self._store_payload(record))
        return record

    @staticmethod
    def _store_payload(record: StoreRecord) -> dict[str, Any]:
        return {
            "name": record.name,
            "owner": record.owner,
            "created_at": record.created_at,
            "last_active_at": record.last_active_at,
            "metadata": dict(record.metadata),
            "expires_after_days": record.expires_after_days,
        }

    def vector_store(self, vector_store_id: str, owner: str | None) -> StoreRecord:
        """The caller's vector store.

        Raises:
            NotFound: no such vector store, or another owner's.
        """
        doc = self._stores.get(vector_store_id)
        if doc is None or doc.payload.get("owner") != owner:
            raise NotFound(f"No vector store found with id '{vector_store_id[:64]}'.")
        return _store(doc)

    def vector_stores(self, owner: str | None) -> list[StoreRecord]:
        """The caller's vector stores, oldest first."""
        return [s for s in map(_store, self._stores.list(limit=_ALL)) if s.owner == owner]

    def delete_store(self, vector_store_id: str) -> None:
        """Delete a vector store's record and its files' records (not the embeddings)."""
        files = self._vsf(vector_store_id)
        for doc in files.list(limit=_ALL):
            files.delete(doc.id)
        self._stores.delete(vector_store_id)

    # ---------------------------------------------------------------- a store's files

    def add_store_file(self, record: StoreFileRecord) -> StoreFileRecord:
        """Record a file being added to a store (``in_progress``).

        Raises:
            Conflict: the file is in the store already.
        """
        self._vsf(record.vector_store_id).create(
            record.file_id, self._vsf_payload(record), status=record.status
        )
        return record

    def set_store_file(self, record: StoreFileRecord) -> StoreFileRecord:
        """Replace a store file's status and counts."""
        self._vsf(record.vector_store_id).update(
            record.file_id, payload=self._vsf_payload(record), status=record.status
        )
        return record

    @staticmethod
    def _vsf_payload(record: StoreFileRecord) -> dict[str, Any]:
        return {
            "owner": record.owner,
            "created_at": record.created_at,
            "attributes": dict(record.attributes),
            "max_chunk_tokens": record.max_chunk_tokens,
            "overlap_tokens": record.overlap_tokens,
            "chunks": record.chunks,
            "usage_bytes": record.usage_bytes,
            "error_code": record.error_code,
            "error_message": record.error_message,
        }

    def store_file(self, vector_store_id: str, file_id: str) -> StoreFileRecord:
        """A file of a store.

        Raises:
            NotFound: the file is not in the store.
        """
        doc = self._vsf(vector_store_id).get(file_id)
        if doc is None:
            raise NotFound(f"No file found with id '{file_id[:64]}' in vector store.")
        return _store_file(doc)

    def store_files(
        self, vector_store_id: str, status: Sequence[str] | None = None
    ) -> list[StoreFileRecord]:
        """A store's files, oldest first (optionally only those with ``status``)."""
        docs = self._vsf(vector_store_id).list(status=status, limit=_ALL)
        return [_store_file(d) for d in docs]

    def delete_store_file(self, vector_store_id: str, file_id: str) -> bool:
        """Remove a file's record from a store."""
        return bool(self._vsf(vector_store_id).delete(file_id))
