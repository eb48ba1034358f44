"""Per-key rate limits and quotas on a real server (uvicorn on loopback): 429s in OpenAI's shape
with ``Retry-After`` and the ``x-ratelimit-*`` headers, session slots, and the realtime
``rate_limits.updated`` and ``error`` events."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from models.registry import Engines
from pipeline.stages import CallRecord
from server.app import create_app
from store import KeyLimits, NewKey, RateLimiter, Store, UsageAmounts
from tests.server.conftest import LiveServer, make_settings, spoken_wav

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT = {"model": "x", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 3}


class Served:
    """A live server and its store."""

    def __init__(self, server: LiveServer, store: Store) -> None:
        self.server = server
        self.store = store
        self.url = server.url
        self.ws_url = server.url.replace("http://", "ws://") + "/v1/realtime?model=voxline"

    def key(self, scopes: list[str], **limits: Any) -> NewKey:
        return self.store.keys.create("test", scopes, KeyLimits(**limits))

    def client(self, key: NewKey) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key.secret}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120)


@pytest.fixture
def served(engines: Engines) -> Iterator[Served]:
    app = create_app(make_settings(), engines=engines)
    with LiveServer(app) as server:
        yield Served(server, app.state.voxline.store)


def assert_429(response: httpx.Response, code: str) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == code
    assert int(response.headers["retry-after"]) >= 1


async def test_the_request_past_the_rpm_gets_429_with_the_headers(served: Served) -> None:
    key = served.key(["chat"], rpm=3)
    async with served.client(key) as client:
        answers = [await client.get("/v1/models") for _ in range(4)]
    for n, answer in enumerate(answers[:3]):
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-limit-requests"] == "3"
        assert answer.headers["x-ratelimit-remaining-requests"] == str(2 - n)
        assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
    over = answers[3]
    assert_429(over, "rate_limit_exceeded")
    assert over.json()["error"]["type"] == "requests"
    assert over.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(over.headers["retry-after"]) <= 21  # one request's share of the minute
    # another key is not limited by this one's requests
    async with served.client(served.key(["chat"], rpm=3)) as client:
        assert (await client.get("/v1/models")).status_code == 200


async def test_a_spent_token_quota_gets_insufficient_quota(served: Served) -> None:
    key = served.key(["chat"], tokens_per_day=5)
    async with served.client(key) as client:
        first = await client.post("/v1/chat/completions", json=CHAT)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "5"
        assert first.headers["x-ratelimit-remaining-tokens"] == "5"  # before this request
        spent = first.json()["usage"]["total_tokens"]
        assert spent > 5
        second = await client.post("/v1/chat/completions", json=CHAT)
        assert_429(second, "insufficient_quota")
        assert second.json()["error"]["type"] == "insufficient_quota"
        assert "tokens_per_day" in second.json()["error"]["message"]
        assert second.headers["x-ratelimit-remaining-tokens"] == "0"
        # requests that spend nothing still go through
        assert (await client.get("/v1/models")).status_code == 200


async def test_an_upload_past_the_audio_quota_is_refused_before_the_engine(
    served: Served, engine_calls: list[CallRecord]
) -> None:
    key = served.key(["audio"], audio_seconds_per_day=1.0)
    clip = spoken_wav("This sentence lasts longer than one second.")
    async with served.client(key) as client:
        answer = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("q.wav", clip, "audio/wav")},
            data={"model": "whisper-1"},
        )
    assert_429(answer, "insufficient_quota")
    assert "audio_seconds_per_day" in answer.json()["error"]["message"]
    assert engine_calls == []


async def test_a_job_is_refused_when_its_audio_would_pass_the_quota_or_one_is_spent(
    served: Served, engine_calls: list[CallRecord]
) -> None:
    key = served.key(["audio"], audio_seconds_per_day=1.0)
    clip = spoken_wav("This sentence lasts longer than one second.")
    turns = b'{"text": "Hi."}\n'
    async with served.client(key) as client:
        # the decoded upload alone would pass the audio quota: refused before it is queued
        answer = await client.post(
            "/v1/jobs", data={"kind": "transcription"}, files={"file": ("q.wav", clip, "audio/wav")}
        )
        assert_429(answer, "insufficient_quota")
        assert answer.json()["error"]["type"] == "insufficient_quota"
        assert "audio_seconds_per_day" in answer.json()["error"]["message"]
        # a spent quota refuses every kind of job, at the edge (billing comes after the work)
        served.store.usage.add(key.key.id, UsageAmounts(audio_seconds=1.0))
        for form in (
            {"data": {"kind": "speech", "input": "Hello."}},
            {"data": {"kind": "turns"}, "files": {"file": ("t.jsonl", turns, "application/jsonl")}},
        ):
            answer = await client.post("/v1/jobs", **form)
            assert_429(answer, "insufficient_quota")
    assert served.store.documents("job").list() == []
    assert engine_calls == []


async def test_a_key_holds_at_most_max_sessions_realtime_sessions(served: Served) -> None:
    key = served.key(["realtime"], max_sessions=1)
    auth = {"Authorization": f"Bearer {key.secret}"}
    async with connect(served.ws_url, additional_headers=auth) as first:
        assert json.loads(await first.recv())["type"] == "session.created"
        with pytest.raises(InvalidStatus) as info:
            async with connect(served.ws_url, additional_headers=auth):
                pass
        assert info.value.response.status_code == 429
        error = json.loads(info.value.response.body or b"{}")["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert served.store.leases.count(f"sessions:{key.key.id}") == 1
    # the slot is given back when the session ends
    for _ in range(3000):  # a hang guard, not a budget
        if served.store.leases.count(f"sessions:{key.key.id}") == 0:
            break
        await asyncio.sleep(0.02)
    async with connect(served.ws_url, additional_headers=auth) as again:
        assert json.loads(await again.recv())["type"] == "session.created"


async def respond(ws: ClientConnection, text: str) -> list[dict[str, Any]]:
    """Ask for a text-prompted response; the events up to its end (or an error)."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create"}))
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(120):
        while True:
            event = json.loads(await ws.recv())
            events.append(event)
            if event["type"] == "response.done":
                # the limits check runs beside the response: wait for its word too
                if any(e["type"] in ("rate_limits.updated", "error") for e in events):
                    return events
            if event["type"] == "error" and event["error"]["code"] == "insufficient_quota":
                return events


async def test_realtime_reports_rate_limits_and_refuses_a_spent_quota(served: Served) -> None:
    # 100 a minute refills one request every 0.6 s (GCRA): on the wall clock the response's
    # count showed only if it started within 0.6 s of the handshake (a starved run: 99, not 98)
    pinned = time.time()
    served.store.rate_limits = RateLimiter(served.store.db, clock=lambda: pinned)
    key = served.key(["realtime"], rpm=100, tokens_per_day=5)
    auth = {"Authorization": f"Bearer {key.secret}"}
    async with connect(served.ws_url, additional_headers=auth) as ws:
        assert ws.response is not None  # the handshake's answer has the headers too
        assert ws.response.headers["x-ratelimit-remaining-requests"] == "99"
        assert json.loads(await ws.recv())["type"] == "session.created"
        update = {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 8}}
        await ws.send(json.dumps(update))
        first = await respond(ws, "Say hello.")
        [updated] = [e for e in first if e["type"] == "rate_limits.updated"]
        windows = {w["name"]: w for w in updated["rate_limits"]}
        assert windows["requests"]["limit"] == 100
        assert windows["requests"]["remaining"] == 98  # the handshake and this response
        assert windows["tokens"] == {
            "name": "tokens",
            "limit": 5,
            "remaining": 5,
            "reset_seconds": windows["tokens"]["reset_seconds"],
        }
        done = [e for e in first if e["type"] == "response.done"][-1]
        assert done["response"]["status"] in ("completed", "incomplete")  # 8 tokens: a cap
        second = await respond(ws, "Say it again.")
        [error] = [e for e in second if e["type"] == "error"]
        assert error["error"]["code"] == "insufficient_quota"
        assert error["error"]["type"] == "insufficient_quota"
        # the session stays open
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(await ws.recv())["type"] in (
            "input_audio_buffer.cleared",
            "response.done",
        )


async def test_the_next_response_waits_for_the_previous_ones_usage_to_be_stored(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the usage of a response is written by the accounting's thread after its response.done; a
    # client asking again at once was checked against the usage before it (a starved run let a
    # second response through a spent quota): the check now waits for the session's writes
    store = served.store.usage
    add = store.add

    def slow_add(*args: Any, **kwargs: Any) -> None:
        time.sleep(1.0)  # a slow database
        add(*args, **kwargs)

    monkeypatch.setattr(store, "add", slow_add)
    key = served.key(["realtime"], tokens_per_day=5)
    auth = {"Authorization": f"Bearer {key.secret}"}
    async with connect(served.ws_url, additional_headers=auth) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        update = {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 8}}
        await ws.send(json.dumps(update))
        first = await respond(ws, "Say hello.")
        assert not [e for e in first if e["type"] == "error"]
        second = await respond(ws, "Say it again.")
        [error] = [e for e in second if e["type"] == "error"]
        assert error["error"]["code"] == "insufficient_quota"


async def test_transcribing_past_a_spent_audio_quota_ends_the_session(served: Served) -> None:
    """No response to cancel: a session that only transcribes (manual commits, no
    ``response.create``) is ended once its key's audio quota is spent."""
    from websockets.exceptions import ConnectionClosed

    from pipeline.audio import decode_audio, to_pcm16
    from pipeline.settings import AudioLimits

    key = served.key(["realtime"], audio_seconds_per_day=1)
    auth = {"Authorization": f"Bearer {key.secret}"}
    speech = decode_audio(spoken_wav("Hello there."), sample_rate=16_000, limits=AudioLimits())
    pcm = to_pcm16(speech.samples).tobytes()
    audio = {"input": {"format": {"type": "audio/pcm", "rate": 16_000}, "turn_detection": None}}
    events: list[dict[str, Any]] = []
    async with connect(served.ws_url, additional_headers=auth) as ws:
        update = {"type": "session.update", "session": {"type": "realtime", "audio": audio}}
        await ws.send(json.dumps(update))
        with pytest.raises(ConnectionClosed):  # the server ends it
            async with asyncio.timeout(120):
                for _ in range(3):  # each commit is transcribed and billed (over a second)
                    for i in range(0, len(pcm), 3_200):
                        chunk = base64.b64encode(pcm[i : i + 3_200]).decode()
                        await ws.send(
                            json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
                        )
                    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                    while (
                        not events
                        or events[-1]["type"]
                        != "conversation.item.input_audio_transcription.completed"
                    ):
                        events.append(json.loads(await ws.recv()))
                while True:
                    events.append(json.loads(await ws.recv()))
        # ended while this client was still sending: what it had not read yet is still there
        with contextlib.suppress(ConnectionClosed):
            while True:
                events.append(json.loads(await ws.recv()))
        assert ws.close_code == 1008
    types = [e["type"] for e in events]
    heard = types.index("conversation.item.input_audio_transcription.completed")
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["insufficient_quota"], errors
    assert types.index("error") > heard and "response.created" not in types
    assert served.store.usage.day(key.key.id).audio_seconds >= 1  # what was done is billed
