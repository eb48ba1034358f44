"""Admission control with the real engines: past capacity, work is refused at once.

The engines are the default models, built by the registry with ``max_sessions=2`` and one
waiting call per engine. Promptness is shown by causality, not by a clock: a refusal that
arrives while the test itself holds every engine slot cannot have waited for the engines, and
one that left no engine call behind did no engine work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from client.realtime import RealtimeClient
from models.registry import Engines, start_engines
from models.vad_silero import SileroVAD
from pipeline.errors import EngineBusy
from pipeline.fallback_core import Chain
from pipeline.priority import Priority
from pipeline.scheduler import EngineScheduler, Slot
from pipeline.settings import LimitsSettings
from pipeline.stages import CallRecord
from server.app import create_app
from tests.server.conftest import LiveServer, http_client, make_settings, wait_threads_gone

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = LimitsSettings(max_sessions=2, engine_queue=1)
FILE = ("notes.txt", b"Rome is the capital of Italy.", "text/plain")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines() -> AsyncIterator[Engines]:
    """The default engines, with this module's engine queues (one waiting call each)."""
    started = await start_engines(make_settings(limits=LIMITS))
    try:
        yield started
    finally:
        await started.aclose()


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


def schedulers(engines: Engines) -> list[EngineScheduler]:
    out = []
    for chain in (engines.stt, engines.llm, engines.tts):
        assert isinstance(chain, Chain)
        out += [b.scheduler for b in chain.backends if b.scheduler is not None]
    return out


def record_calls(engines: Engines) -> list[CallRecord]:
    calls: list[CallRecord] = []
    for chain in (engines.stt, engines.llm, engines.tts):
        assert isinstance(chain, Chain)
        for backend in chain.backends:
            backend.listeners.append(calls.append)
    return calls


def scraped(exposition: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` in a ``/metrics`` answer."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_a_session_past_the_limit_is_refused_at_the_handshake_without_engine_work(
    engines: Engines, vad: SileroVAD
) -> None:
    calls = record_calls(engines)
    app = create_app(make_settings(limits=LIMITS), engines=engines, vad=vad)
    admission = app.state.voxline.admission
    with LiveServer(app) as server:
        async with RealtimeClient(server.url), RealtimeClient(server.url):
            assert admission.sessions == 2
            # every engine is busy (the test holds its slots) while the third asks
            held: list[Slot] = [await s.acquire(Priority.INTERACTIVE) for s in schedulers(engines)]
            try:
                with pytest.raises(EngineBusy) as refused:
                    await RealtimeClient(server.url).connect()
                url = server.url.replace("http", "ws") + "/v1/realtime?model=voxline"
                with pytest.raises(InvalidStatus) as denied:
                    await connect(url)
                # refused while the engines were still held: it waited for nothing
                assert not any(slot.freed for slot in held)
            finally:
                for slot in held:
                    slot.release()
            assert refused.value.retry_after_s == 1
            response = denied.value.response
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            error = json.loads(response.body or b"{}")["error"]
            assert error["type"] == "server_error" and "MAX_SESSIONS" in error["message"]
            assert calls == []  # and did no engine work
            assert admission.refused_sessions == 2
            async with httpx.AsyncClient(base_url=server.url) as http:
                exposition = (await http.get("/metrics")).text
            refusals = "voxline_admission_refusals_total"
            assert scraped(exposition, refusals, kind="session", reason="capacity") == 2
        # the two left: there is room again
        async with RealtimeClient(server.url) as third:
            assert third.created is not None


async def test_without_the_denial_extension_a_refused_session_is_closed_with_1013(
    engines: Engines, vad: SileroVAD
) -> None:
    app = create_app(make_settings(limits=LIMITS), engines=engines, vad=vad)
    admission = app.state.voxline.admission
    leases = [admission.open_session(), admission.open_session()]  # the server is full
    scope = {
        "type": "websocket",
        "path": "/v1/realtime",
        "raw_path": b"/v1/realtime",
        "query_string": b"model=voxline",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50_000),  # loopback: the edge serves it without a key
        "server": ("127.0.0.1", 8_000),
        "subprotocols": [],
        "extensions": {},  # a server that cannot answer a handshake with an HTTP status
    }
    sent: list[dict[str, Any]] = []
    inbox = asyncio.Queue[dict[str, Any]]()
    inbox.put_nowait({"type": "websocket.connect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, inbox.get, send)
    for lease in leases:
        lease.close()
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    event = json.loads(sent[1]["text"])
    assert event["type"] == "error" and event["error"]["type"] == "server_error"
    assert sent[2]["code"] == 1013


async def test_a_saturated_engine_queue_answers_503_at_once_and_the_breaker_stays_closed(
    engines: Engines,
) -> None:
    calls = record_calls(engines)
    app = create_app(make_settings(limits=LIMITS), engines=engines)
    assert isinstance(engines.llm, Chain)
    llm = engines.llm.backends[0].scheduler
    assert llm is not None
    held = await llm.acquire(Priority.INTERACTIVE)  # the LLM is busy
    async with http_client(app) as client:
        try:
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
            # it takes the one place in the queue (a scheduler has no event to wait on)
            while llm.waiting == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/chat/completions", json=CHAT)
            assert not waiting.done()  # refused while the other still waits: not queued
            saturated = (await client.get("/metrics")).text
        finally:
            held.release()
        answered = await waiting
        ready = await client.get("/readyz")
        after = (await client.get("/metrics")).text
    assert answered.status_code == 200
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "llm_EngineBusy")
    assert len([c for c in calls if c.stage == "llm"]) == 1  # only the answered one ran
    (backend,) = ready.json()["stages"]["llm"]["backends"]
    assert (backend["state"], backend["consecutive_failures"]) == ("closed", 0)
    # the overload is visible: the refusal by reason, the queue while it was full
    engine = {"stage": "llm", "backend": llm.name}
    assert scraped(saturated, "voxline_engine_queue_depth", **engine) == 1
    assert scraped(saturated, "voxline_engine_in_flight", **engine) == 1
    assert scraped(saturated, "voxline_engine_capacity", **engine) == llm.capacity
    assert scraped(after, "voxline_engine_refusals_total", **engine, reason="queue_full") == 1
    assert scraped(after, "voxline_engine_queue_depth", **engine) == 0


async def test_a_burst_beyond_capacity_gets_fast_503s_and_the_admitted_are_answered(
    engines: Engines,
) -> None:
    app = create_app(make_settings(limits=LIMITS), engines=engines)
    async with http_client(app) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=CHAT) for _ in range(12))
        )
        ready = await client.get("/readyz")
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) == {200, 503}, statuses  # no 504, no 500: answered or refused
    refused = [a for a in answers if a.status_code == 503]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    assert statuses.count(200) >= 1
    assert ready.status_code == 200
    (backend,) = ready.json()["stages"]["llm"]["backends"]
    assert (backend["state"], backend["consecutive_failures"]) == ("closed", 0)


async def test_clients_that_leave_mid_response_leave_no_engine_work_behind(
    engines: Engines, vad: SileroVAD
) -> None:
    calls = record_calls(engines)
    settings = make_settings(limits=LIMITS.model_copy(update={"max_sessions": 4}))
    app = create_app(settings, engines=engines, vad=vad)
    chatty = {"type": "session.update", "session": {"instructions": "Talk at length."}}
    item = {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Tell me all about Rome."}],
        },
    }
    with LiveServer(app) as server:
        clients = [RealtimeClient(server.url) for _ in range(3)]
        for client in clients:
            await client.connect()
            for event in (chatty, item, {"type": "response.create", "event_id": "go"}):
                await client.send(event)
        # once audio is out, everyone leaves
        heard = False
        while not heard:
            for client in clients:
                received = await client.receive_for(0.05)
                heard = heard or any(r.type == "response.output_audio.delta" for r in received)
        for client in clients:
            await client.aclose()
        for prefix in ("stt-", "llm-", "tts-"):
            assert await wait_threads_gone(prefix) == [], prefix
        for scheduler in schedulers(engines):  # nothing running or waiting for nobody
            assert (scheduler.in_use, scheduler.waiting) == (0, 0), scheduler.name
    llm_calls = [c for c in calls if c.stage == "llm"]
    assert llm_calls and all(c.tokens_out < settings.llm.max_tokens for c in llm_calls)


async def test_while_draining_every_api_route_is_refused_and_the_probes_answer(
    engines: Engines,
) -> None:
    calls = record_calls(engines)
    app = create_app(make_settings(limits=LIMITS), engines=engines)
    app.state.voxline.admission.draining = True
    async with http_client(app) as client:
        refused = [
            await client.post("/v1/chat/completions", json=CHAT),
            await client.post("/v1/files", data={"purpose": "assistants"}, files={"file": FILE}),
            await client.get("/v1/files"),
            await client.post("/v1/vector_stores", json={"name": "kb"}),
            await client.post("/v1/jobs", data={"kind": "speech", "input": "Hello."}),
            await client.get("/v1/jobs"),
        ]
        ready, healthy = await client.get("/readyz"), await client.get("/healthz")
        exposition = (await client.get("/metrics")).text  # a probe: answered while draining
    for response in refused:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "server_shutting_down"
    assert (ready.status_code, ready.json()["status"]) == (503, "draining")
    assert healthy.status_code == 200
    assert calls == []
    refusals = "voxline_admission_refusals_total"
    assert scraped(exposition, refusals, kind="request", reason="draining") == len(refused)
