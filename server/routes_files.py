"""``/v1/files``: OpenAI's Files API for the knowledge base (upload, list, get, delete, content).

The ``openai`` SDK drives it unchanged (``client.files.create(file=..., purpose="assistants")``).
An upload is checked before anything is kept (purpose, name, type, size, text that can be
extracted: ``server.kb.service``); a refused upload leaves the store as it was. Files belong
to the caller (``server.kb.caller``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from server.kb import caller
from server.kb.service import content_type_of, too_large
from server.kb.wire import file_json, page
from server.state import state_of

router = APIRouter()


@router.post("/v1/files")
async def upload_file(
    request: Request,
    file: Annotated[UploadFile, File(description="The document: txt, md, html or pdf.")],
    purpose: Annotated[str, Form(description="assistants or user_data.")],
) -> dict[str, Any]:
    """Upload a document for vector stores.

    Raises:
        InvalidInput: a bad purpose or type (400), an undecodable file (400), too large (413).
    """
    kb = state_of(request).kb
    owner = caller()
    if file.size is not None and file.size > kb.settings.max_file_bytes:
        raise too_large(kb.settings.max_file_bytes)  # before reading it
    record = await asyncio.to_thread(kb.upload, file.file, file.filename or "", purpose, owner)
    return file_json(record)


@router.get("/v1/files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> dict[str, Any]:
    """The caller's files, newest first by default (OpenAI pages files 10,000 at a time)."""
    kb = state_of(request).kb
    files = await asyncio.to_thread(kb.catalog.files, caller(), purpose)
    return page(
        files, file_json, lambda f: f.id, limit=limit, order=order, after=after, max_limit=10_000
    )


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str) -> dict[str, Any]:
    """One file.

    Raises:
        NotFound: no such file of the caller's (404).
    """
    record = await asyncio.to_thread(state_of(request).kb.catalog.file, file_id, caller())
    return file_json(record)


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    """Delete a file and remove it (and its chunks) from every vector store.

    Raises:
        NotFound: no such file of the caller's (404).
    """
    await asyncio.to_thread(state_of(request).kb.delete_file, file_id, caller())
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    """A file's bytes, as uploaded.

    Raises:
        NotFound: no such file of the caller's (404).
    """
    kb = state_of(request).kb
    record, data = await asyncio.to_thread(kb.content, file_id, caller())
    return Response(data, media_type=content_type_of(record.filename))
