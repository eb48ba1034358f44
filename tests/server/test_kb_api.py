"""``/v1/files`` and ``/v1/vector_stores`` driven by the official ``openai`` SDK, unchanged.

The app runs without voice engines (the knowledge base needs only the state store and the
packaged embedding model); the golden corpus (md, txt, html, pdf) is what is uploaded. Every
response is parsed by the SDK into its own types, so a shape that drifts from OpenAI's fails
here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import pytest_asyncio
from fastapi import FastAPI
from openai.types import FileObject, VectorStore
from openai.types.vector_stores import VectorStoreFile

from server.app import create_app
from server.state import AppState
from tests.server.conftest import http_client, make_settings, openai_client

CORPUS = Path(__file__).parents[2] / "benchmarks" / "golden" / "kb" / "corpus"
MANUAL = CORPUS / "tarvo-aero5" / "manual.md"


@pytest.fixture
def app() -> FastAPI:
    return create_app(make_settings())


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(app) as sdk:
        yield sdk


def _state(app: FastAPI) -> AppState:
    state = app.state.voxline
    assert isinstance(state, AppState)
    return state


def _stored(app: FastAPI) -> tuple[int, int]:
    """(files, blobs) in the app's state store."""
    store = _state(app).store
    with store.db.read() as conn:
        import sqlalchemy as sa

        blobs = conn.execute(sa.text("SELECT count(*) FROM blobs")).scalar_one()
    return len(store.documents("kb_file").list()), int(blobs)


async def _ingested(client: openai.AsyncOpenAI, *paths: Path) -> tuple[VectorStore, list[str]]:
    ids = []
    for path in paths:
        uploaded = await client.files.create(
            file=(path.name, path.read_bytes()), purpose="assistants"
        )
        ids.append(uploaded.id)
    store = await client.vector_stores.create(name="aero")
    for file_id in ids:
        done = await client.vector_stores.files.create_and_poll(
            vector_store_id=store.id, file_id=file_id, poll_interval_ms=50
        )
        assert done.status == "completed", done.last_error
    return store, ids


async def test_files_upload_list_get_content_delete(client: openai.AsyncOpenAI) -> None:
    data = MANUAL.read_bytes()
    uploaded = await client.files.create(file=("manual.md", data), purpose="assistants")
    assert isinstance(uploaded, FileObject)
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(data)
    assert uploaded.filename == "manual.md" and uploaded.purpose == "assistants"
    listed = await client.files.list()
    assert [f.id for f in listed.data] == [uploaded.id]
    assert (await client.files.retrieve(uploaded.id)).filename == "manual.md"
    assert (await client.files.content(uploaded.id)).content == data
    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_a_vector_store_ingests_every_format_and_searches(
    client: openai.AsyncOpenAI,
) -> None:
    paths = sorted(p for p in (CORPUS / "tarvo-aero5").iterdir())
    assert {p.suffix for p in paths} == {".md", ".html", ".txt", ".pdf"}
    store, ids = await _ingested(client, *paths)
    store = await client.vector_stores.retrieve(store.id)
    assert store.status == "completed" and store.file_counts.completed == len(paths)
    assert store.usage_bytes > 0
    files = await client.vector_stores.files.list(vector_store_id=store.id)
    assert sorted(f.id for f in files.data) == sorted(ids)
    assert all(isinstance(f, VectorStoreFile) and f.usage_bytes > 0 for f in files.data)

    page = await client.vector_stores.search(
        store.id, query="How often should I replace the main filter?", max_num_results=3
    )
    results = page.data
    assert 1 <= len(results) <= 3
    assert results[0].filename == "manual.md"
    assert "6 months" in results[0].content[0].text and results[0].content[0].type == "text"
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    # the PDF's text was extracted: a safety question finds it
    pdf = await client.vector_stores.search(store.id, query="Can children clean the purifier?")
    assert pdf.data[0].filename == "safety.pdf"


async def test_search_options_filters_and_threshold(client: openai.AsyncOpenAI) -> None:
    uploaded = [
        await client.files.create(file=(p.name, p.read_bytes()), purpose="assistants")
        for p in (MANUAL, CORPUS / "tarvo-aero5" / "warranty.txt")
    ]
    store = await client.vector_stores.create(name="filtered")
    for f, kind in zip(uploaded, ("manual", "legal"), strict=True):
        await client.vector_stores.files.create_and_poll(
            vector_store_id=store.id, file_id=f.id, attributes={"kind": kind, "year": 2025}
        )
    query = "How long is the warranty?"
    legal = await client.vector_stores.search(
        store.id, query=query, filters={"type": "eq", "key": "kind", "value": "manual"}
    )
    assert legal.data and {r.filename for r in legal.data} == {"manual.md"}
    assert all(r.attributes == {"kind": "manual", "year": 2025} for r in legal.data)
    none = await client.vector_stores.search(
        store.id, query=query, filters={"type": "gt", "key": "year", "value": 2030}
    )
    assert none.data == []
    strict = await client.vector_stores.search(
        store.id, query=query, ranking_options={"score_threshold": 0.99}
    )
    assert strict.data == []


async def test_removing_a_file_removes_its_chunks(client: openai.AsyncOpenAI) -> None:
    store, (file_id,) = await _ingested(client, MANUAL)
    query = "How do I lock the control panel?"
    assert (await client.vector_stores.search(store.id, query=query)).data
    removed = await client.vector_stores.files.delete(file_id, vector_store_id=store.id)
    assert removed.deleted
    assert (await client.vector_stores.search(store.id, query=query)).data == []
    assert (await client.files.retrieve(file_id)).id == file_id  # the file itself stays
    # deleting the file removes it from every store too
    await client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=file_id)
    await client.files.delete(file_id)
    assert (await client.vector_stores.search(store.id, query=query)).data == []
    assert (await client.vector_stores.retrieve(store.id)).file_counts.total == 0


async def test_vector_stores_list_update_delete(client: openai.AsyncOpenAI) -> None:
    a = await client.vector_stores.create(name="a", metadata={"team": "x"})
    b = await client.vector_stores.create(name="b")
    listed = await client.vector_stores.list(order="asc")
    assert [s.id for s in listed.data] == [a.id, b.id]
    first = await client.vector_stores.list(limit=1, order="asc")
    assert [s.id for s in first.data] == [a.id] and first.has_more
    renamed = await client.vector_stores.update(a.id, name="renamed", metadata={"team": "y"})
    assert renamed.name == "renamed" and renamed.metadata == {"team": "y"}
    gone = await client.vector_stores.delete(a.id)
    assert gone.deleted and gone.object == "vector_store.deleted"
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.retrieve(a.id)
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.files.create(vector_store_id=b.id, file_id="file-nope")


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("report.docx", b"PK\x03\x04 not ours", 400, "unsupported_file"),
        ("notes.txt", b"\x00\x01\x02binary", 400, "invalid_file"),
        ("notes.txt", "caf\u00e9".encode("latin-1"), 400, "invalid_file"),
        ("broken.pdf", b"%PDF-1.4\n garbage, no objects at all", 400, "invalid_file"),
        ("fake.pdf", b"just text", 400, "invalid_file"),
        ("empty.md", b"   \n\n ", 400, "invalid_file"),
    ],
)
async def test_bad_uploads_are_refused_and_leave_nothing(
    app: FastAPI, client: openai.AsyncOpenAI, name: str, data: bytes, status: int, code: str
) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        await client.files.create(file=(name, data), purpose="assistants")
    assert refused.value.status_code == status
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == code
    assert _stored(app) == (0, 0)


async def test_a_file_over_the_limit_is_413_and_a_bad_purpose_400() -> None:
    from pipeline.settings import KBSettings

    app = create_app(make_settings(kb=KBSettings(max_file_bytes=1000)))
    async with openai_client(app) as client:
        with pytest.raises(openai.APIStatusError) as big:
            await client.files.create(file=("big.txt", b"word " * 1000), purpose="assistants")
        assert big.value.status_code == 413
        with pytest.raises(openai.BadRequestError):
            await client.files.create(file=("ok.txt", b"hello"), purpose="fine-tune")
    assert _stored(app) == (0, 0)


async def test_a_static_chunking_strategy_is_used_and_reported(
    client: openai.AsyncOpenAI, app: FastAPI
) -> None:
    uploaded = await client.files.create(
        file=("manual.md", MANUAL.read_bytes()), purpose="assistants"
    )
    store = await client.vector_stores.create(name="small chunks")
    strategy = {
        "type": "static",
        "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20},
    }
    done = await client.vector_stores.files.create_and_poll(
        vector_store_id=store.id,
        file_id=uploaded.id,
        chunking_strategy=strategy,  # type: ignore[arg-type]
    )
    assert done.chunking_strategy is not None and done.chunking_strategy.type == "static"
    small = _state(app).store.vectors.count(store.id)
    default = await client.vector_stores.create(name="default chunks")
    await client.vector_stores.files.create_and_poll(
        vector_store_id=default.id, file_id=uploaded.id
    )
    assert small > _state(app).store.vectors.count(default.id) > 0
    async with http_client(app) as http:
        bad = {
            "type": "static",
            "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 90},
        }
        r = await http.post(
            f"/v1/vector_stores/{store.id}/files",
            json={"file_id": uploaded.id, "chunking_strategy": bad},
        )
        assert r.status_code == 400


async def test_search_reports_its_timings(client: openai.AsyncOpenAI, app: FastAPI) -> None:
    store, _ = await _ingested(client, MANUAL)
    async with http_client(app) as http:
        r = await http.post(f"/v1/vector_stores/{store.id}/search", json={"query": "noise level"})
        body = r.json()
        assert body["object"] == "vector_store.search_results.page"
        timing = body["voxline"]
        assert timing["embed_ms"] > 0 and timing["search_ms"] > 0
        assert timing["retrieval_ms"] == pytest.approx(
            timing["embed_ms"] + timing["search_ms"], abs=0.02
        )
        empty = await http.post(f"/v1/vector_stores/{store.id}/search", json={"query": "  "})
        assert empty.status_code == 400
        bad_filter = await http.post(
            f"/v1/vector_stores/{store.id}/search",
            json={"query": "noise", "filters": {"type": "near", "key": "a", "value": 1}},
        )
        assert bad_filter.status_code == 400


async def test_files_queued_when_the_server_stops_end_failed() -> None:
    app = create_app(make_settings())
    state = _state(app)
    async with openai_client(app) as client:
        store = await client.vector_stores.create(name="stopping")
        ids = [
            (await client.files.create(file=(p.name, p.read_bytes()), purpose="assistants")).id
            for p in sorted((CORPUS / "tarvo-aero5").iterdir())
        ]
        for file_id in ids:  # queued one after another on the indexing thread
            await client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)
        await state.stop_ingestions()
        files = (await client.vector_stores.files.list(vector_store_id=store.id)).data
    statuses = {f.status for f in files}
    assert statuses <= {"completed", "failed"} and "failed" in statuses
    failed = [f for f in files if f.status == "failed"]
    assert all(f.last_error is not None for f in failed)
    for f in failed:  # nothing of a failed file is searchable
        with state.store.db.read() as conn:
            import sqlalchemy as sa

            n = conn.execute(
                sa.text("SELECT count(*) FROM vectors WHERE owner = :f"), {"f": f.id}
            ).scalar_one()
        assert n == 0


async def test_documents_have_their_own_body_limit() -> None:
    from pipeline.settings import AudioLimits, KBSettings

    # audio bodies are small here: a 100 KB document is still taken, a 4 MB one is not
    app = create_app(
        make_settings(audio=AudioLimits(max_bytes=20_000), kb=KBSettings(max_file_bytes=2_000_000))
    )
    async with openai_client(app) as client:
        doc = ("Plenty of words in a sentence. " * 3300).encode()
        assert (await client.files.create(file=("long.txt", doc), purpose="assistants")).bytes
        with pytest.raises(openai.APIStatusError) as refused:
            await client.files.create(file=("huge.txt", b"x " * 2_000_000), purpose="assistants")
    assert refused.value.status_code == 413


async def test_files_and_stores_belong_to_the_key_that_made_them() -> None:
    from typing import Any

    app = create_app(make_settings())
    keys = _state(app).store.keys
    alice, bob = keys.create("alice", ["audio"]), keys.create("bob", ["chat"])

    def sdk(secret: str) -> openai.AsyncOpenAI:
        transport: Any = http_client(app)
        return openai.AsyncOpenAI(
            base_url="http://test/v1", api_key=secret, max_retries=0, http_client=transport
        )

    async with sdk(alice.secret) as a, sdk(bob.secret) as b:
        store, (file_id,) = await _ingested(a, MANUAL)
        assert (await b.files.list()).data == [] and (await b.vector_stores.list()).data == []
        with pytest.raises(openai.NotFoundError):
            await b.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            await b.vector_stores.search(store.id, query="filter")
        with pytest.raises(openai.NotFoundError):
            await b.files.delete(file_id)
        assert (await a.vector_stores.search(store.id, query="filter")).data
    async with openai_client(app) as anonymous:
        with pytest.raises(openai.AuthenticationError):
            await anonymous.files.list()
