"""``/v1/realtime`` end to end: a real uvicorn server, the real default models, real speech.

A "microphone" streams Piper speech at real-time pace in 20 ms pcm16 frames, and silence between
utterances (server VAD needs the silence to end a turn), as a browser would. The clients are the
``websockets`` library and the official ``openai`` SDK's realtime client, unchanged but for its
base URL. The server runs in a thread of this process, so the test can watch the engines' worker
threads and time the LLM on the same clock as the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types.realtime import ResponseAudioDeltaEvent, ResponseDoneEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from models.registry import Engines
from models.vad_silero import SileroVAD
from pipeline.audio import to_pcm16
from pipeline.settings import AudioLimits, Settings
from pipeline.stages import CallRecord
from server.app import create_app
from tests.conftest import speak
from tests.server.conftest import LiveServer, live_threads, make_settings, wait_threads_gone

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE = 24_000
FRAME = RATE // 50  # 20 ms
QUESTION = "What is the capital city of France?"
LONG_ANSWERS = "You are a chatty assistant. Answer in at least five full sentences."


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    model = SileroVAD()
    model.load()
    return model


@contextlib.contextmanager
def serving(
    engines: Engines | None, vad: SileroVAD | None, settings: Settings | None = None, **config: Any
) -> Iterator[LiveServer]:
    app = create_app(settings or make_settings(), engines=engines, vad=vad)
    with LiveServer(app, **config) as server:
        yield server


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1/realtime?model=voxline"


class Client:
    """A raw WebSocket client that records every server event with its arrival time."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                self.events.append((time.perf_counter(), json.loads(message)))

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.ws.send(event if isinstance(event, str) else json.dumps(event))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def index(self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda e: True) -> int:
        return next(i for i, (_, e) in enumerate(self.events) if e["type"] == kind and where(e))

    def at(self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda e: True) -> float:
        return self.events[self.index(kind, where)][0]

    async def wait_for(
        self,
        kind: str,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        within: float = 60.0,
    ) -> dict[str, Any]:
        deadline = time.perf_counter() + within
        while True:
            for _, event in self.events:
                if event["type"] == kind and where(event):
                    return event
            if time.perf_counter() > deadline or self._reader.done():
                raise AssertionError(f"no {kind}; got {[e['type'] for _, e in self.events]}")
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def client_of(server: LiveServer) -> AsyncIterator[Client]:
    async with connect(ws_url(server), max_size=None) as ws:
        client = Client(ws)
        await client.wait_for("session.created", within=10)
        yield client


class Microphone:
    """Sends 20 ms frames at real-time pace: speech queued by ``say``, silence otherwise."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.speech_ends: list[float] = []
        """When the last voiced frame of each ``say`` was sent (the end of speech)."""
        self._frames: deque[tuple[bytes, bool]] = deque()
        self._task = asyncio.create_task(self._run())

    def say(self, text: str) -> None:
        pcm = to_pcm16(speak(text, RATE, pad_seconds=0.0).samples)
        frames = [pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)]
        # the end of speech is the last frame with voice in it, not the clip's quiet tail
        rms = [np.sqrt(np.mean(f.astype(np.float64) ** 2)) for f in frames]
        last = max(i for i, r in enumerate(rms) if r > 300)  # about -40 dBFS
        self._frames.extend((f.tobytes(), i == last) for i, f in enumerate(frames))

    async def _run(self) -> None:
        silence = bytes(2 * FRAME)
        start = time.perf_counter()
        for i in range(1_000_000):
            await asyncio.sleep(max(0.0, start + i * 0.02 - time.perf_counter()))
            frame, last = self._frames.popleft() if self._frames else (silence, False)
            audio = base64.b64encode(frame).decode()
            with contextlib.suppress(ConnectionClosed):
                await self.client.send({"type": "input_audio_buffer.append", "audio": audio})
            if last:
                self.speech_ends.append(time.perf_counter())

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
def llm_calls(engines: Engines) -> Iterator[list[tuple[float, CallRecord]]]:
    """Every LLM call that ends during the test, with the (perf_counter) time it ended."""
    ends: list[tuple[float, CallRecord]] = []

    def record(call: CallRecord) -> None:
        ends.append((time.perf_counter(), call))

    engines.llm.listeners.append(record)
    try:
        yield ends
    finally:
        engines.llm.listeners.remove(record)


def thread_name(stage: object) -> str:
    """The name of a stage's worker threads: its (first) engine module's ``THREAD_NAME``."""
    engine = getattr(stage, "backends", [stage])[0]  # a fallback chain: its first backend
    name = sys.modules[type(engine).__module__].THREAD_NAME
    assert isinstance(name, str)
    return name


def user_text(text: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": content},
    }


def long_answers(max_tokens: int) -> dict[str, Any]:
    session = {"type": "realtime", "instructions": LONG_ANSWERS, "max_output_tokens": max_tokens}
    return {"type": "session.update", "session": session}


# ---------------------------------------------------------------- tests


async def test_spoken_question_gets_spoken_answer_streamed_before_the_llm_is_done(
    engines: Engines, vad: SileroVAD, llm_calls: list[tuple[float, CallRecord]]
) -> None:
    with serving(engines, vad) as server:
        async with client_of(server) as client:
            await client.send(long_answers(80))
            await client.wait_for("session.updated")
            mic = Microphone(client)
            mic.say(QUESTION)
            done = await client.wait_for("response.done")
            await mic.aclose()
        async with httpx.AsyncClient(base_url=server.url) as http:
            billed = (await http.get("/v1/usage")).json()
            metrics = (await http.get("/metrics")).text
    kinds = [e["type"] for _, e in client.events]
    assert not client.of("error"), client.of("error")
    order = [
        client.index("session.created"),
        client.index("input_audio_buffer.speech_started"),
        client.index("input_audio_buffer.speech_stopped"),
        client.index("input_audio_buffer.committed"),
        client.index("conversation.item.input_audio_transcription.completed"),
        client.index("response.created"),
        client.index("response.output_audio.delta"),
        client.index("response.output_audio.done"),
        client.index("response.done"),
    ]
    assert order == sorted(order), kinds
    # partial transcripts come before the final one. Whether one lands while the user still
    # speaks is a matter of the machine's speed (a loaded one finishes Whisper after the turn):
    # test_session proves it at Whisper's measured pace, test_realtime_protocol the wire events.
    final = client.index("conversation.item.input_audio_transcription.completed")
    partials = [
        i
        for i, (_, e) in enumerate(client.events)
        if e["type"] == "conversation.item.input_audio_transcription.delta"
    ]
    assert all(i < final for i in partials), kinds
    heard = client.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert "capital" in heard.lower() and "france" in heard.lower()

    response = done["response"]
    # a long answer may well reach max_output_tokens: then it is "incomplete", as OpenAI says
    assert response["status"] in ("completed", "incomplete"), response
    if response["status"] == "incomplete":
        assert response["status_details"]["reason"] == "max_output_tokens"
    pcm = b"".join(base64.b64decode(e["delta"]) for e in client.of("response.output_audio.delta"))
    assert len(pcm) / 2 / RATE > 1.0 and np.abs(np.frombuffer(pcm, "<i2")).max() > 1000
    # several phrases, the first of them spoken while the LLM was still generating: the LLM call
    # that wrote this reply ended (in this process, same clock) after the first audio arrived
    assert len(client.of("response.output_audio_transcript.delta")) >= 2
    llm_end, call = max(llm_calls, key=lambda ended: ended[0] - ended[1].total_ms / 1000)
    assert call.error is None and call.outputs > 10
    first_audio = client.at("response.output_audio.delta")
    assert first_audio < llm_end, (first_audio, llm_end)

    t = response["voxline"]
    for key in ("endpoint_ms", "stt_ms", "llm_ttft_ms", "first_phrase_ms", "tts_ttfb_ms", "v2v_ms"):
        assert isinstance(t[key], float) and t[key] >= 0, (key, t)
    # the default smart turn end: no sooner than the silence after a complete transcript (less a
    # 32 ms frame of arrival), however fast the transcript came
    shortest = make_settings().session.complete_silence_ms
    assert t["endpoint_ms"] >= shortest - 32, t
    assert t["endpoint_ms"] <= t["v2v_ms"], t
    assert t["backends"] == {
        "stt": engines.stt.name,
        "llm": engines.llm.name,
        "tts": engines.tts.name,
    }
    # the client's own voice-to-voice (last voiced frame sent -> first audio received) holds the
    # server's (arrival -> sending) and the transport both ways; how little the transport adds
    # is the benchmark's to measure (`voxline bench realtime`: pipeline overhead)
    client_v2v = (first_audio - mic.speech_ends[0]) * 1000
    assert client_v2v >= t["v2v_ms"] - 50, (client_v2v, t)  # 50: the VAD's frame vs the clip's
    usage = response["usage"]
    assert usage["output_tokens"] > 10 and usage["total_tokens"] > usage["output_tokens"]
    # the cost ledger priced this response, and it is the only one this app has seen
    assert usage["cost_usd"] > 0
    assert billed["total"]["cost_usd"] == pytest.approx(usage["cost_usd"], abs=1e-8)  # rounding
    assert billed["total"]["tokens_out"] == usage["output_tokens"]
    assert 'voxline_v2v_seconds_count{release="settings"} 1.0' in metrics


async def test_openai_sdk_realtime_client_connects_unchanged(engines: Engines) -> None:
    with serving(engines, None) as server:  # and the app loads its VAD on first use
        client = openai.AsyncOpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0)
        seen: list[Any] = []
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "instructions": "Answer in one short sentence.",
                    "max_output_tokens": 24,
                    "audio": {
                        "input": {"format": {"type": "audio/pcm", "rate": 24000}},
                        "output": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "voice": "alloy",
                        },
                    },
                }
            )
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello to me."}],
                }
            )
            await conn.response.create()
            async with asyncio.timeout(60):
                async for event in conn:
                    seen.append(event)
                    if event.type == "response.done":
                        break
    kinds = [e.type for e in seen]
    assert kinds[0] == "session.created" and "session.updated" in kinds, kinds
    assert seen[0].session.model == "gpt-realtime"
    assert "conversation.item.added" in kinds and "response.created" in kinds
    deltas = [e for e in seen if isinstance(e, ResponseAudioDeltaEvent)]
    assert deltas and all(e.type == "response.output_audio.delta" for e in deltas)
    assert sum(len(base64.b64decode(e.delta)) for e in deltas) > 2 * RATE // 4
    done = seen[-1]
    assert isinstance(done, ResponseDoneEvent)
    assert done.response.status in ("completed", "incomplete")  # 24 tokens may cut it short
    assert done.response.usage is not None and (done.response.usage.output_tokens or 0) > 0
    assert "error" not in kinds


async def test_barge_in_cancels_the_response_and_the_new_turn_goes_on(
    engines: Engines, vad: SileroVAD
) -> None:
    with serving(engines, vad) as server:
        async with client_of(server) as client:
            await client.send(long_answers(96))
            mic = Microphone(client)
            mic.say(QUESTION)
            first_delta = await client.wait_for("response.output_audio.delta")
            first = first_delta["response_id"]
            # one sentence: the smart turn end (the default) would rightly end a turn at the
            # pause after "Stop." and answer it before "What about Germany?"
            mic.say("And what about Germany?")
            cancelled = await client.wait_for(
                "response.done", lambda e: e["response"]["id"] == first
            )
            second = await client.wait_for("response.done", lambda e: e["response"]["id"] != first)
            await mic.aclose()
    assert cancelled["response"]["status"] == "cancelled", cancelled
    assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
    first_done = client.index("response.done", lambda e: e["response"]["id"] == first)
    first_audio = client.index("response.output_audio.delta")
    barge = [
        i
        for i, (_, e) in enumerate(client.events)
        if e["type"] == "input_audio_buffer.speech_started" and i > first_audio
    ]
    assert barge and barge[0] < first_done
    # no audio of the cancelled response after its response.done
    late = [
        i
        for i, (_, e) in enumerate(client.events)
        if e["type"] == "response.output_audio.delta" and e["response_id"] == first
    ]
    assert max(late) < first_done
    # the assistant item keeps only what could have been heard
    said = "".join(
        e["delta"]
        for e in client.of("response.output_audio_transcript.delta")
        if e["response_id"] == first
    )
    kept = cancelled["response"]["output"][0]["content"][0]["transcript"]
    assert len(kept) <= len(said)
    # the new turn was heard and answered
    transcripts = [
        e["transcript"].lower()
        for e in client.of("conversation.item.input_audio_transcription.completed")
    ]
    assert any("germany" in t for t in transcripts), transcripts
    assert second["response"]["status"] in ("completed", "incomplete"), second
    assert client.of("response.output_audio.delta")[-1]["response_id"] == second["response"]["id"]


async def test_client_disconnect_mid_response_stops_the_engines(
    engines: Engines, vad: SileroVAD, llm_calls: list[tuple[float, CallRecord]]
) -> None:
    with serving(engines, vad) as server:
        async with client_of(server) as client:
            await client.send(long_answers(400))
            await client.send(user_text("Tell me a long story about a dragon."))
            await client.send({"type": "response.create"})
            await client.wait_for("response.output_audio.delta")
            assert live_threads(thread_name(engines.llm)), "the LLM already finished"
        # the socket is closed: nothing computes for nobody
        for engine in (engines.llm, engines.tts, engines.stt):
            name = thread_name(engine)
            assert await wait_threads_gone(name) == [], name
        assert not client.of("response.done")
    # stopped, not run to the end: the reply's LLM call made far fewer than its 400 tokens
    assert llm_calls and all(call.outputs < 200 for _, call in llm_calls)


async def test_manual_turns_at_another_input_rate(engines: Engines, vad: SileroVAD) -> None:
    pcm16k = to_pcm16(speak(QUESTION, 16_000).samples).tobytes()
    audio = {"input": {"format": {"type": "audio/pcm", "rate": 16_000}, "turn_detection": None}}
    session = {"type": "realtime", "max_output_tokens": 16, "audio": audio}
    with serving(engines, vad) as server:
        async with client_of(server) as client:
            await client.send({"type": "session.update", "session": session})
            updated = await client.wait_for("session.updated", within=10)
            for i in range(0, len(pcm16k), 3_200):  # 100 ms appends, as fast as they go
                chunk = base64.b64encode(pcm16k[i : i + 3_200]).decode()
                await client.send({"type": "input_audio_buffer.append", "audio": chunk})
            await client.send({"type": "input_audio_buffer.commit"})
            await client.send({"type": "response.create"})
            done = await client.wait_for("response.done")
    audio_in = updated["session"]["audio"]["input"]
    assert audio_in["format"]["rate"] == 16_000 and audio_in["turn_detection"] is None
    assert not client.of("input_audio_buffer.speech_started")  # no server VAD
    heard = client.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert "capital" in heard.lower() and "france" in heard.lower()  # decoded at 16 kHz
    assert client.index("input_audio_buffer.committed") < client.index("response.created")
    assert done["response"]["status"] in ("completed", "incomplete")
    timings = done["response"]["voxline"]
    assert timings["endpoint_ms"] is None and timings["stt_ms"] is not None  # no VAD decision
    assert not client.of("error")


async def test_bad_events_get_errors_and_the_session_stays_usable(
    engines: Engines, vad: SileroVAD
) -> None:
    settings = make_settings(audio=AudioLimits(max_bytes=9_600))  # 200 ms of 24 kHz pcm16
    big = base64.b64encode(bytes(9_602)).decode()
    bad: list[tuple[dict[str, Any] | str, str | None, str]] = [
        ("{not json", None, "invalid_json"),
        (
            {"type": "conversation.item.delete", "item_id": "x", "event_id": "e1"},
            "e1",
            "unknown_event_type",
        ),
        (
            {"type": "input_audio_buffer.append", "audio": "@@@", "event_id": "e2"},
            "e2",
            "invalid_audio",
        ),
        (
            {"type": "input_audio_buffer.append", "audio": big, "event_id": "e3"},
            "e3",
            "audio_too_large",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "i",
                "content_index": 0,
                "audio_end_ms": "9",
                "event_id": "e4",
            },
            "e4",
            "invalid_value",
        ),
        # refused by the session itself, which reports it as an event: still tagged
        (
            {"type": "input_audio_buffer.commit", "event_id": "e5"},
            "e5",
            "input_audio_buffer_commit_empty",
        ),
        ({"type": "response.cancel", "event_id": "e6"}, "e6", "response_cancel_not_active"),
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "nope",
                "content_index": 0,
                "audio_end_ms": 5,
                "event_id": "e7",
            },
            "e7",
            "item_not_found",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"output": {"speed": 9}}},
                "event_id": "e8",
            },
            "e8",
            "invalid_value",
        ),
    ]
    with serving(engines, vad, settings) as server:
        async with client_of(server) as client:
            for event, _, _ in bad:
                await client.send(event)
            await client.wait_for("error", lambda e: e["error"]["event_id"] == "e8", within=10)
            errors = [e["error"] for e in client.of("error")]
            assert [(e["event_id"], e["code"]) for e in errors] == [(i, c) for _, i, c in bad]
            assert all(e["type"] == "invalid_request_error" and e["message"] for e in errors)
            # still open and serving: a binary frame, a good update and a text item
            await client.ws.send(json.dumps({"type": "input_audio_buffer.clear"}).encode())
            cleared = await client.wait_for("input_audio_buffer.cleared", within=10)
            await client.send({"type": "session.update", "session": {"instructions": "Hi."}})
            updated = await client.wait_for("session.updated", within=10)
            assert updated["session"]["instructions"] == "Hi."
            await client.send(user_text("Hi"))
            added = await client.wait_for("conversation.item.added", within=10)
            assert added["item"]["content"][0] == {"type": "input_text", "text": "Hi"}
            # an append of exactly the limit is taken
            ok = base64.b64encode(bytes(9_600)).decode()
            await client.send({"type": "input_audio_buffer.append", "audio": ok, "event_id": "e9"})
            await client.send({"type": "input_audio_buffer.clear"})
            await client.wait_for("input_audio_buffer.cleared", lambda e: e is not cleared)
            assert len(client.of("error")) == len(bad)


async def test_engines_not_ready_closes_with_try_again_later(vad: SileroVAD) -> None:
    with serving(None, vad, lifespan="off") as server:  # no lifespan: the engines never load
        async with connect(ws_url(server)) as ws:
            event = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert event["type"] == "error"
    assert (event["error"]["type"], event["error"]["code"]) == ("server_error", "engines_not_ready")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def test_each_realtime_response_is_traced_with_a_span_per_stage(
    engines: Engines, vad: SileroVAD
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from server.tracing import Tracing, models_of

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(make_settings(), engines=engines, vad=vad)
    app.state.voxline.tracing = Tracing(provider, models=models_of(make_settings()))
    with LiveServer(app) as server:
        async with client_of(server) as client:
            await client.send(long_answers(16))
            await client.wait_for("session.updated")
            mic = Microphone(client)
            mic.say(QUESTION)
            done = await client.wait_for("response.done")
            await mic.aclose()
    provider.shutdown()
    spans = exporter.get_finished_spans()
    # a speculative reply dropped when the user went on has a trace of its own: take the
    # response's
    turns = [s for s in spans if s.name == "voxline.turn"]
    (turn,) = [
        s for s in turns if (s.attributes or {}).get("voxline.request_id") == done["response"]["id"]
    ]
    assert turn.attributes is not None
    children = {s.name: s for s in spans if s.parent and s.parent.span_id == turn.context.span_id}
    assert set(children) == {"voxline.stt", "voxline.llm", "voxline.tts"}
    stt = children["voxline.stt"]
    assert stt.end_time is not None and stt.start_time is not None
    assert stt.end_time - stt.start_time > 0  # the transcription's own duration
