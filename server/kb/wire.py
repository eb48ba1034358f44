"""The knowledge base's records in OpenAI's JSON shapes (``openai.types.file_object``,
``vector_store``, ``vector_stores.vector_store_file``, ``vector_store_search_response``), and
OpenAI's cursor pagination of lists. The tests parse every shape with the SDK's own models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from pipeline.errors import InvalidInput
from pipeline.knowledge import Passage, Retrieval
from server.kb.records import FileRecord, StoreFileRecord, StoreRecord

T = TypeVar("T")
Order = Literal["asc", "desc"]


def file_json(f: FileRecord) -> dict[str, Any]:
    """A ``file`` object."""
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def counts_json(files: Sequence[StoreFileRecord]) -> dict[str, int]:
    """A vector store's ``file_counts``."""
    counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0}
    for f in files:
        counts[f.status] = counts.get(f.status, 0) + 1
    return {**counts, "total": len(files)}


def store_json(s: StoreRecord, files: Sequence[StoreFileRecord]) -> dict[str, Any]:
    """A ``vector_store`` object (its status and counts from its files)."""
    counts = counts_json(files)
    expires = None
    if s.expires_after_days is not None:
        expires = {"anchor": "last_active_at", "days": s.expires_after_days}
    return {
        "id": s.id,
        "object": "vector_store",
        "created_at": s.created_at,
        "name": s.name,
        "usage_bytes": sum(f.usage_bytes for f in files),
        "file_counts": counts,
        "status": "in_progress" if counts["in_progress"] else "completed",
        "expires_after": expires,
        "expires_at": None,
        "last_active_at": s.last_active_at,
        "metadata": dict(s.metadata),
    }


def store_file_json(f: StoreFileRecord) -> dict[str, Any]:
    """A ``vector_store.file`` object."""
    error = None
    if f.error_code is not None:
        error = {"code": f.error_code, "message": f.error_message or ""}
    return {
        "id": f.file_id,
        "object": "vector_store.file",
        "created_at": f.created_at,
        "vector_store_id": f.vector_store_id,
        "status": f.status,
        "usage_bytes": f.usage_bytes,
        "last_error": error,
        "attributes": dict(f.attributes),
        "chunking_strategy": {
            "type": "static",
            "static": {
                "max_chunk_size_tokens": f.max_chunk_tokens,
                "chunk_overlap_tokens": f.overlap_tokens,
            },
        },
    }


def passage_json(p: Passage) -> dict[str, Any]:
    """One search result (``vector_store_search_response``)."""
    return {
        "file_id": p.file_id,
        "filename": p.filename,
        "score": round(p.score, 6),
        "attributes": dict(p.attributes),
        "content": [{"type": "text", "text": p.text}],
    }


def search_page(query: str, retrieval: Retrieval) -> dict[str, Any]:
    """A ``vector_store.search_results.page``; the ``voxline`` object times the search."""
    return {
        "object": "vector_store.search_results.page",
        "search_query": [query],
        "data": [passage_json(p) for p in retrieval.passages],
        "has_more": False,
        "next_page": None,
        "voxline": {
            "embed_ms": retrieval.embed_ms,
            "search_ms": retrieval.search_ms,
            "retrieval_ms": retrieval.total_ms,
            "chunk": [p.chunk for p in retrieval.passages],
        },
    }


def page(
    items: Sequence[T],
    to_json: Callable[[T], dict[str, Any]],
    key: Callable[[T], str],
    *,
    limit: int,
    order: Order,
    after: str | None,
    before: str | None = None,
    max_limit: int = 100,
) -> dict[str, Any]:
    """One page of a list (``items`` oldest first), as OpenAI's cursor pages: ``after`` and
    ``before`` are ids of the previous page's items.

    Raises:
        InvalidInput: ``limit`` outside 1-``max_limit``.
    """
    if not 1 <= limit <= max_limit:
        raise InvalidInput(f"limit must be between 1 and {max_limit}", param="limit")
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [key(i) for i in ordered]
    start, end = 0, len(ordered)
    if after is not None and after in ids:
        start = ids.index(after) + 1
    if before is not None and before in ids:
        end = ids.index(before)
        start = max(start, end - limit) if after is None else start
    chosen = ordered[start:end][:limit]
    data = [to_json(i) for i in chosen]
    return {
        "object": "list",
        "data": data,
        "first_id": key(chosen[0]) if chosen else None,
        "last_id": key(chosen[-1]) if chosen else None,
        "has_more": start + len(chosen) < end,
    }
