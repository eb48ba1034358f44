"""``retrieval``: knowledge-base search over 10,000 chunks, as a voice turn does it.

The budget (issue 13): retrieval p50 <= 20 ms for 10,000 chunks on 2 cores, query embedding
included. The scenario talks to a server over HTTP (``/v1/vector_stores/{id}/search``, the
code path a turn's ``file_search`` takes: ``KnowledgeBase.search``) and reports the server's
own timing of each search beside the client's round trip:

- ``retrieval_ms``: query embedding + vector search (the share of a voice turn);
- ``embed_ms``, ``search_ms``: its two steps;
- ``http_ms``: the whole request as the client sees it.

The store is a synthetic corpus of exactly ``CHUNKS`` short sections (one chunk each, made
deterministically from a word list; search cost does not depend on chunk length, only on the
number of chunks), uploaded through ``/v1/files`` and indexed (about a minute on 2 cores): a
server given with ``--url`` that already has the store (by its name) reuses it; a server the
benchmark starts has a fresh state store each time. Queries are the golden knowledge-base
questions.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from benchmarks.context import BenchContext, Sample, ScenarioResult, ms_since, repeat
from benchmarks.eval.golden import GOLDEN_DIR, Golden
from benchmarks.scenarios.realtime import require_url
from pipeline.errors import EngineUnavailable

STAGES: tuple[str, ...] = ()
CHUNKS = 10_000
FILES = 10
STORE_NAME = f"voxline-bench-retrieval-{CHUNKS}-v1"
TOP_K = 3
_INGEST_TIMEOUT_S = 3600.0

_WORDS = (
    "filter fan sensor motor panel cover adapter cable light mode speed timer lock button app "
    "network update warranty repair return battery screen signal noise room air dust smoke "
    "pollen humidity temperature power standby cleaning brush grille outlet inlet level "
    "indicator alarm schedule night morning weekly monthly carbon particle odour allergy "
    "replace clean check reset press hold turn open close connect restart install measure"
).split()


def section(n: int) -> str:
    """Section ``n`` of the synthetic corpus: a heading and one short sentence."""
    rng = random.Random(n)
    words = " ".join(rng.choice(_WORDS) for _ in range(9))
    return f"## Topic {n}\n\n{words.capitalize()}."


def corpus_file(index: int) -> bytes:
    """The ``index``-th of ``FILES`` files, ``CHUNKS // FILES`` sections each."""
    per = CHUNKS // FILES
    parts = [section(n) for n in range(index * per, (index + 1) * per)]
    return ("\n\n".join(parts) + "\n").encode()


async def ensure_store(http: httpx.AsyncClient) -> tuple[str, float | None]:
    """The synthetic store's id, made now if the server does not have it; and the seconds
    ingestion took (``None``: reused).

    Raises:
        EngineUnavailable: ingestion failed or did not finish in time.
    """
    listed = (await http.get("/v1/vector_stores", params={"limit": 100})).json()
    for store in listed.get("data", []):
        counts = store["file_counts"]
        if store["name"] == STORE_NAME and counts["completed"] == FILES == counts["total"]:
            return str(store["id"]), None
    start = time.perf_counter()
    store = (await http.post("/v1/vector_stores", json={"name": STORE_NAME})).json()
    for i in range(FILES):
        files = {"file": (f"synthetic-{i}.md", corpus_file(i), "text/markdown")}
        uploaded = await http.post("/v1/files", files=files, data={"purpose": "assistants"})
        uploaded.raise_for_status()
        added = await http.post(
            f"/v1/vector_stores/{store['id']}/files", json={"file_id": uploaded.json()["id"]}
        )
        added.raise_for_status()
    while time.perf_counter() - start < _INGEST_TIMEOUT_S:
        state = (await http.get(f"/v1/vector_stores/{store['id']}")).json()
        counts = state["file_counts"]
        if counts["failed"]:
            break
        if counts["completed"] == FILES:
            return str(store["id"]), time.perf_counter() - start
        await asyncio.sleep(2.0)
    raise EngineUnavailable(
        f"the benchmark's vector store did not ingest: {state['file_counts']}",
        stage="pipeline",
        backend="kb",
        retryable=False,
    )


async def run(ctx: BenchContext, name: str = "retrieval") -> ScenarioResult:
    """Search the 10,000-chunk store once per golden question per run."""
    url = require_url(ctx)
    questions = [q.question for q in Golden(GOLDEN_DIR).kb_questions(ctx.options.quick)]
    key = ctx.options.api_key
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with httpx.AsyncClient(base_url=url, timeout=60.0, headers=headers) as http:
        store_id, ingest_s = await ensure_store(http)

        async def once(query: str, _: int) -> Sample:
            start = time.perf_counter()
            r = await http.post(
                f"/v1/vector_stores/{store_id}/search",
                json={"query": query, "max_num_results": TOP_K},
            )
            http_ms = ms_since(start)
            r.raise_for_status()
            timing = r.json()["voxline"]
            return {
                "retrieval_ms": timing["retrieval_ms"],
                "embed_ms": timing["embed_ms"],
                "search_ms": timing["search_ms"],
                "http_ms": http_ms,
            }

        result = await repeat(ctx, ScenarioResult(name), questions, once)
        store = (await http.get(f"/v1/vector_stores/{store_id}")).json()
    result.details = {
        "url": url,
        "chunks": CHUNKS,
        "top_k": TOP_K,
        "store": store_id,
        "store_usage_bytes": store.get("usage_bytes"),
        "ingest_seconds": None if ingest_s is None else round(ingest_s, 1),
        "ingest_chunks_per_s": None if not ingest_s else round(CHUNKS / ingest_s, 1),
        "budget": "retrieval_ms p50 <= 20 on 2 cores (issue 13)",
    }
    return result
