"""``/v1/vector_stores``: OpenAI's Vector Stores API (stores, their files, search).

The ``openai`` SDK drives it unchanged: ``client.vector_stores.create(name=...)``,
``client.vector_stores.files.create_and_poll(vector_store_id=..., file_id=...)``,
``client.vector_stores.search(vector_store_id, query=...)``. Adding a file answers at once
with status ``in_progress``; the file is chunked and embedded in the background (its status
turns ``completed`` or ``failed`` with ``last_error``), and the ``openai-poll-after-ms`` header
tells the SDK's pollers how soon to look again. A search answers OpenAI's
``vector_store.search_results.page`` plus a ``voxline`` object with its timings.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from pipeline.errors import InvalidInput
from server.kb import caller
from server.kb.filters import parse_filter
from server.kb.records import StoreRecord
from server.kb.wire import page, search_page, store_file_json, store_json
from server.state import AppState, state_of

router = APIRouter()

POLL_AFTER_MS = "200"
"""What ``openai-poll-after-ms`` tells pollers of a file being added."""

Attributes = dict[str, str | float | bool]


class ExpiresAfter(BaseModel):
    """OpenAI's ``expires_after`` (kept and shown; stores do not expire here yet)."""

    anchor: Literal["last_active_at"] = "last_active_at"
    days: int = Field(ge=1, le=365)


def _whole(value: object) -> object:
    """A whole float (``1000.0``) as the int it is: JSON Schema's ``integer`` admits it; a string
    or a bool stays what it is, for the strict check to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Tokens = Annotated[int, BeforeValidator(_whole)]


class StaticChunking(BaseModel):
    """The sizes of ``{"type": "static", "static": {...}}``."""

    max_chunk_size_tokens: Tokens = Field(ge=100, le=4096, strict=True)
    chunk_overlap_tokens: Tokens = Field(ge=0, strict=True)


class AutoStrategy(BaseModel):
    """``{"type": "auto"}``: the ``kb`` settings' sizes."""

    type: Literal["auto"]

    def sizes(self) -> tuple[int | None, int | None]:
        """``(None, None)``: the settings' sizes."""
        return None, None


class StaticStrategy(BaseModel):
    """``{"type": "static", "static": {"max_chunk_size_tokens", "chunk_overlap_tokens"}}``."""

    type: Literal["static"]
    static: StaticChunking

    def sizes(self) -> tuple[int | None, int | None]:
        """``(max tokens, overlap)``.

        Raises:
            InvalidInput: an overlap over half a chunk (OpenAI's rule too).
        """
        s = self.static
        if s.chunk_overlap_tokens > s.max_chunk_size_tokens // 2:
            raise InvalidInput(
                "chunk_overlap_tokens must not exceed half of max_chunk_size_tokens",
                param="chunking_strategy.static.chunk_overlap_tokens",
            )
        return s.max_chunk_size_tokens, s.chunk_overlap_tokens


ChunkingStrategy = Annotated[AutoStrategy | StaticStrategy, Field(discriminator="type")]
"""OpenAI's ``chunking_strategy``."""


class CreateStore(BaseModel):
    """``POST /v1/vector_stores``."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(default="", max_length=256)
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    metadata: dict[str, str] | None = None
    expires_after: ExpiresAfter | None = None
    chunking_strategy: ChunkingStrategy | None = None


class UpdateStore(BaseModel):
    """``POST /v1/vector_stores/{id}``."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    expires_after: ExpiresAfter | None = None


class AddFile(BaseModel):
    """``POST /v1/vector_stores/{id}/files``."""

    model_config = ConfigDict(extra="ignore")

    file_id: str = Field(min_length=1, max_length=100)
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


class RankingOptions(BaseModel):
    """``ranking_options`` of a search (the ranker is always cosine similarity here)."""

    model_config = ConfigDict(extra="ignore")

    ranker: str | None = None
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class Search(BaseModel):
    """``POST /v1/vector_stores/{id}/search``."""

    model_config = ConfigDict(extra="ignore")

    query: str | list[str]
    max_num_results: int = Field(default=10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = metadata or {}
    if len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items()):
        raise InvalidInput(
            "metadata holds at most 16 keys of 64 characters, values of 512", param="metadata"
        )
    return metadata


def _check_attributes(attributes: Attributes | None) -> Attributes:
    attributes = attributes or {}
    too_long = any(isinstance(v, str) and len(v) > 512 for v in attributes.values())
    if len(attributes) > 16 or any(len(k) > 64 for k in attributes) or too_long:
        raise InvalidInput(
            "attributes hold at most 16 keys of 64 characters, strings of 512",
            param="attributes",
        )
    return attributes


async def _store_json(state: AppState, record: StoreRecord) -> dict[str, Any]:
    files = await asyncio.to_thread(state.kb.catalog.store_files, record.id)
    return store_json(record, files)


@router.post("/v1/vector_stores")
async def create_store(request: Request, body: CreateStore) -> dict[str, Any]:
    """A new vector store, with ``file_ids`` being added to it.

    Raises:
        InvalidInput: bad metadata or chunking (400); NotFound: an unknown file (404).
    """
    state, owner = state_of(request), caller()
    metadata = _check_metadata(body.metadata)
    size, overlap = body.chunking_strategy.sizes() if body.chunking_strategy else (None, None)
    for file_id in body.file_ids:  # every file exists before anything is made
        await asyncio.to_thread(state.kb.catalog.file, file_id, owner)
    days = body.expires_after.days if body.expires_after else None
    record = await asyncio.to_thread(
        lambda: state.kb.create_store(body.name, owner, metadata=metadata, expires_after_days=days)
    )
    for file_id in dict.fromkeys(body.file_ids):
        await _add(state, record.id, file_id, owner, {}, size, overlap)
    return await _store_json(state, record)


@router.get("/v1/vector_stores")
async def list_stores(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    before: str | None = None,
) -> dict[str, Any]:
    """The caller's vector stores."""
    state = state_of(request)
    stores = await asyncio.to_thread(state.kb.catalog.vector_stores, caller())
    counts = {s.id: await asyncio.to_thread(state.kb.catalog.store_files, s.id) for s in stores}
    return page(
        stores,
        lambda s: store_json(s, counts[s.id]),
        lambda s: s.id,
        limit=limit,
        order=order,
        after=after,
        before=before,
    )


@router.get("/v1/vector_stores/{vector_store_id}")
async def get_store(request: Request, vector_store_id: str) -> dict[str, Any]:
    """One vector store with its file counts."""
    state = state_of(request)
    record = await asyncio.to_thread(state.kb.catalog.vector_store, vector_store_id, caller())
    return await _store_json(state, record)


@router.post("/v1/vector_stores/{vector_store_id}")
async def update_store(request: Request, vector_store_id: str, body: UpdateStore) -> dict[str, Any]:
    """Rename a store, or change its metadata or expiry."""
    state = state_of(request)
    record = await asyncio.to_thread(state.kb.catalog.vector_store, vector_store_id, caller())
    changes: dict[str, Any] = {}
    if body.name is not None:
        changes["name"] = body.name
    if body.metadata is not None:
        changes["metadata"] = _check_metadata(body.metadata)
    if body.expires_after is not None:
        changes["expires_after_days"] = body.expires_after.days
    from dataclasses import replace

    record = replace(record, **changes)
    await asyncio.to_thread(state.kb.catalog.update_store, record)
    return await _store_json(state, record)


@router.delete("/v1/vector_stores/{vector_store_id}")
async def delete_store(request: Request, vector_store_id: str) -> dict[str, Any]:
    """Delete a store and its embeddings (the files stay)."""
    await asyncio.to_thread(state_of(request).kb.delete_store, vector_store_id, caller())
    return {"id": vector_store_id, "object": "vector_store.deleted", "deleted": True}


async def _add(
    state: AppState,
    vector_store_id: str,
    file_id: str,
    owner: str | None,
    attributes: Attributes,
    size: int | None,
    overlap: int | None,
) -> dict[str, Any]:
    record, new = await asyncio.to_thread(
        lambda: state.kb.attach(
            vector_store_id,
            file_id,
            owner,
            attributes=attributes,
            max_chunk_tokens=size,
            overlap_tokens=overlap,
        )
    )
    if new:
        state.ingest_later(vector_store_id, file_id)
    return store_file_json(record)


@router.post("/v1/vector_stores/{vector_store_id}/files")
async def add_file(
    request: Request, response: Response, vector_store_id: str, body: AddFile
) -> dict[str, Any]:
    """Add a file to a store: answered at once (``in_progress``), ingested in the background.

    Raises:
        NotFound: no such store or file of the caller's (404).
        InvalidInput: bad attributes or chunking (400), once the store is known to exist.
    """
    state, owner = state_of(request), caller()
    # the store first: an id that names nothing is a 404 whatever the body (whose cross-field
    # rules, an overlap over half a chunk, no schema can state)
    await asyncio.to_thread(state.kb.catalog.vector_store, vector_store_id, owner)
    size, overlap = body.chunking_strategy.sizes() if body.chunking_strategy else (None, None)
    attributes = _check_attributes(body.attributes)
    out = await _add(state, vector_store_id, body.file_id, owner, attributes, size, overlap)
    response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return out


@router.get("/v1/vector_stores/{vector_store_id}/files")
async def list_store_files(
    request: Request,
    vector_store_id: str,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    before: str | None = None,
    filter: Literal["in_progress", "completed", "failed", "cancelled"]
    | None = None,  # OpenAI's name
) -> dict[str, Any]:
    """A store's files, with their ingestion status."""
    kb = state_of(request).kb
    await asyncio.to_thread(kb.catalog.vector_store, vector_store_id, caller())
    statuses = [filter] if filter else None
    files = await asyncio.to_thread(kb.catalog.store_files, vector_store_id, statuses)
    return page(
        files,
        store_file_json,
        lambda f: f.file_id,
        limit=limit,
        order=order,
        after=after,
        before=before,
    )


@router.get("/v1/vector_stores/{vector_store_id}/files/{file_id}")
async def get_store_file(
    request: Request, response: Response, vector_store_id: str, file_id: str
) -> dict[str, Any]:
    """A file of a store and its status (``in_progress``, ``completed``, ``failed``)."""
    kb = state_of(request).kb
    await asyncio.to_thread(kb.catalog.vector_store, vector_store_id, caller())
    record = await asyncio.to_thread(kb.catalog.store_file, vector_store_id, file_id)
    if record.status == "in_progress":
        response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return store_file_json(record)


@router.delete("/v1/vector_stores/{vector_store_id}/files/{file_id}")
async def remove_store_file(request: Request, vector_store_id: str, file_id: str) -> dict[str, Any]:
    """Remove a file and its chunks from a store (the file itself stays)."""
    await asyncio.to_thread(state_of(request).kb.detach, vector_store_id, file_id, caller())
    return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}


@router.post("/v1/vector_stores/{vector_store_id}/search")
async def search_store(request: Request, vector_store_id: str, body: Search) -> dict[str, Any]:
    """The chunks of a store most similar to the query, best first.

    Raises:
        InvalidInput: an empty query or a bad filter (400); NotFound: no such store (404).
    """
    kb = state_of(request).kb
    owner = caller()
    await asyncio.to_thread(kb.catalog.vector_store, vector_store_id, owner)
    query = body.query if isinstance(body.query, str) else " ".join(body.query)
    where = parse_filter(body.filters) if body.filters is not None else None
    retrieval = await asyncio.to_thread(
        lambda: kb.search(query, [vector_store_id], body.max_num_results, owner, where=where)
    )
    threshold = body.ranking_options.score_threshold if body.ranking_options else None
    if threshold is not None:
        from dataclasses import replace

        kept = tuple(p for p in retrieval.passages if p.score >= threshold)
        retrieval = replace(retrieval, passages=kept)
    return search_page(query, retrieval)
