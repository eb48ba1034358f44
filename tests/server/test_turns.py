"""``POST /v1/turns`` on the real default models, through httpx (the openai SDK has no such call).

The question is real speech from the packaged Piper voice. One default turn runs once per module
(``default_turn``) and several tests read it; the streamed turn runs on a live server so the
arrival time of each event shows that they are sent as the turn progresses, not all at the end.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import wave
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from fastapi import FastAPI

from models.llm_transformers import THREAD_NAME as LLM_THREAD
from models.registry import Engines
from models.stt_whisper import THREAD_NAME as STT_THREAD
from models.tts_piper import THREAD_NAME as TTS_THREAD
from pipeline.audio import encode_wav
from pipeline.router import Router
from pipeline.settings import AudioLimits
from pipeline.stages import CallRecord
from pipeline.types import AudioChunk
from server.app import create_app
from server.turn_schemas import TurnResponse
from tests.server.conftest import (
    AppFactory,
    LiveServer,
    hang_up_once,
    http_client,
    live_threads,
    make_settings,
    spoken_wav,
    wait_for_calls,
    wait_threads_gone,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = "What is the capital of France?"
MAX_TOKENS = "24"


def _form(**fields: str) -> dict[str, str]:
    return {"max_tokens": MAX_TOKENS, **fields}


def _upload(data: bytes, name: str = "question.wav") -> dict[str, Any]:
    return {"file": (name, data, "audio/wav")}


@pytest.fixture(scope="module")
def question_wav() -> bytes:
    return spoken_wav(QUESTION)


@pytest.fixture(scope="module")
def story_wav() -> bytes:
    """A question SmolLM2 answers at length (400 tokens take most of a minute here)."""
    return spoken_wav("Tell me a long story about a dragon.")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def default_turn(app_factory: AppFactory, question_wav: bytes) -> dict[str, Any]:
    async with http_client(app_factory()) as http:
        response = await http.post("/v1/turns", files=_upload(question_wav), data=_form())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wav(data_b64: str) -> AudioChunk:
    with wave.open(io.BytesIO(base64.b64decode(data_b64))) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return AudioChunk((pcm / 32768).astype(np.float32), wav.getframerate())


async def test_turn_answers_a_spoken_question(default_turn: dict[str, Any]) -> None:
    turn = TurnResponse.model_validate(default_turn)  # the documented shape, nothing else
    assert "capital" in turn.transcript.lower() and "france" in turn.transcript.lower()
    assert turn.reply.strip()
    assert turn.backends.stt and turn.backends.llm and turn.backends.tts
    usage = turn.usage
    assert usage.prompt_tokens > 10 and 1 <= usage.completion_tokens <= int(MAX_TOKENS)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    t = turn.timings
    assert t.stt_ms and t.llm_ttft_ms and t.tts_ttfb_ms and t.total_ms
    assert 0 < t.stt_ms < t.total_ms and t.llm_ttft_ms <= (t.llm_total_ms or 0)
    assert "endpoint_ms" not in default_turn["timings"]  # not measured: left out, not null
    assert turn.audio.format == "wav" and turn.audio.data
    audio = _wav(turn.audio.data)
    assert audio.sample_rate == turn.audio.sample_rate
    assert audio.duration == pytest.approx(turn.audio.seconds, abs=0.002)
    # 24 tokens are at most a dozen seconds of speech, and a non-empty reply at least a word
    assert 0.3 < audio.duration < 15
    assert float(np.sqrt(np.mean(audio.samples**2))) > 0.01  # speech, not silence


async def test_streamed_turn_sends_events_in_order_as_they_happen(
    app: FastAPI, question_wav: bytes, default_turn: dict[str, Any]
) -> None:
    events: list[tuple[float, str, dict[str, Any]]] = []
    form = _form(stream="true", instructions="Be brief.")
    with LiveServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            request = http.stream("POST", "/v1/turns", files=_upload(question_wav), data=form)
            async with request as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                name = None
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        data = json.loads(line.removeprefix("data: "))
                        assert data["type"] == name
                        events.append((time.monotonic(), data["type"], data))
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "conversation.item.input_audio_transcription.completed"
    assert kinds[-3:] == [
        "response.output_audio_transcript.done",
        "response.output_audio.done",
        "response.done",
    ]
    middle = set(kinds[1:-3])
    assert middle == {"response.output_audio_transcript.delta", "response.output_audio.delta"}
    assert kinds.index("response.output_audio_transcript.delta") < kinds.index(
        "response.output_audio.delta"
    )
    first = events[0][2]
    assert "capital" in first["transcript"].lower() and "france" in first["transcript"].lower()

    def of(kind: str) -> list[dict[str, Any]]:
        return [data for _, k, data in events if k == kind]

    done = events[-1][2]
    text = "".join(e["delta"] for e in of("response.output_audio_transcript.delta"))
    assert text.strip() == done["reply"] == events[-3][2]["transcript"] and done["reply"]
    audio_deltas = of("response.output_audio.delta")
    pcm = b"".join(base64.b64decode(e["delta"]) for e in audio_deltas)
    [rate] = {e["sample_rate"] for e in audio_deltas}
    assert rate == done["audio"]["sample_rate"] == events[-2][2]["sample_rate"]
    assert len(pcm) // 2 / rate == pytest.approx(done["audio"]["seconds"], abs=0.002)
    assert set(done) >= {"timings", "backends", "usage", "transcript", "reply"}
    assert done["timings"]["total_ms"] > 0 and done["backends"] == default_turn["backends"]
    # the shorter system prompt ("Be brief.") reached the LLM
    assert done["usage"]["prompt_tokens"] < default_turn["usage"]["prompt_tokens"]
    # sent as the turn went: the transcript long before the end, text before the audio it speaks
    assert events[-1][0] - events[0][0] > 0.1


async def test_client_disconnect_mid_stream_stops_the_turn(
    app: FastAPI, story_wav: bytes, engine_calls: list[CallRecord]
) -> None:
    form = _form(stream="true", max_tokens="400")
    with LiveServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            request = http.stream("POST", "/v1/turns", files=_upload(story_wav), data=form)
            async with request as response:
                assert response.status_code == 200
                deltas = 0
                async for line in response.aiter_lines():
                    deltas += "output_audio.delta" in line
                    if deltas == 2:
                        break  # speaking, and the story is far from told: hang up
                assert live_threads(LLM_THREAD), "the LLM should still be generating"
        assert await wait_threads_gone(LLM_THREAD) == []
        assert await wait_threads_gone(TTS_THREAD) == []
        [llm_call] = await wait_for_calls(engine_calls, "llm")
    assert llm_call.outputs < 200  # of 400 tokens


@pytest.mark.parametrize("stream", ["true", "false"])
async def test_client_gone_before_the_answer_stops_the_turn(
    app: FastAPI, story_wav: bytes, engine_calls: list[CallRecord], stream: str
) -> None:
    with LiveServer(app) as server:
        form = _form(stream=stream, max_tokens="400")
        request = httpx.Request(
            "POST", f"{server.url}/v1/turns", files=_upload(story_wav), data=form
        )
        await hang_up_once(server, request, thread_prefix=STT_THREAD)
        assert await wait_threads_gone(STT_THREAD) == []
        await asyncio.sleep(0.5)  # the LLM would be running by now, were the turn going on
        assert live_threads(LLM_THREAD) == [] and live_threads(TTS_THREAD) == []
    assert all(c.outputs < 10 for c in engine_calls if c.stage == "llm")


async def _post_turn(app: FastAPI, files: dict[str, Any], **fields: str) -> httpx.Response:
    async with http_client(app) as http:
        return await http.post("/v1/turns", files=files, data=_form(**fields))


def _assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize("stream", ["false", "true"])
async def test_silence_is_a_400_no_speech(
    app: FastAPI, engine_calls: list[CallRecord], stream: str
) -> None:
    silence = encode_wav(AudioChunk(np.zeros(16_000, dtype=np.float32), 16_000))
    _assert_error(await _post_turn(app, _upload(silence), stream=stream), 400, "no_speech")
    assert engine_calls == []  # rejected before any model ran


async def test_garbage_file_is_a_400(app: FastAPI, engine_calls: list[CallRecord]) -> None:
    garbage = b"this is not audio at all, just some text bytes " * 40
    _assert_error(await _post_turn(app, _upload(garbage, "question.mp3")), 400, "invalid_audio")
    assert engine_calls == []


async def test_oversize_file_is_a_413(
    app_factory: AppFactory, question_wav: bytes, engine_calls: list[CallRecord]
) -> None:
    app = app_factory(make_settings(audio=AudioLimits(max_bytes=len(question_wav) // 2)))
    response = await _post_turn(app, _upload(question_wav))
    _assert_error(response, 413, "audio_too_large")
    assert engine_calls == []


BAD_FIELDS: list[tuple[str, dict[str, str], str]] = [
    ("max_tokens 0", {"max_tokens": "0"}, "max_tokens"),
    ("max_tokens text", {"max_tokens": "many"}, "max_tokens"),
    ("stream text", {"stream": "perhaps"}, "stream"),
    ("unknown voice", {"voice": "no-such-voice"}, "voice"),
]


@pytest.mark.parametrize(("case", "fields", "param"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
async def test_bad_fields_are_a_400_before_any_engine_work(
    app: FastAPI,
    question_wav: bytes,
    engine_calls: list[CallRecord],
    case: str,
    fields: dict[str, str],
    param: str,
) -> None:
    response = await _post_turn(app, _upload(question_wav), **fields)
    _assert_error(response, 400)
    assert response.json()["error"]["param"] == param
    assert engine_calls == []


async def test_missing_file_is_a_400(app: FastAPI, engine_calls: list[CallRecord]) -> None:
    async with http_client(app) as http:
        response = await http.post("/v1/turns", data=_form(), files={"other": ("x", b"x")})
    _assert_error(response, 400)
    assert response.json()["error"]["param"] == "file"
    assert engine_calls == []


async def test_unknown_language_is_a_400(app: FastAPI, question_wav: bytes) -> None:
    response = await _post_turn(app, _upload(question_wav), language="xx")
    _assert_error(response, 400, "unsupported_language")


async def test_turn_names_its_llm_tier_and_a_tier_can_be_pinned(
    engines: Engines, question_wav: bytes
) -> None:
    # two tiers on the one loaded model: the route, not the weights, is under test here
    router = Router({"small": engines.llm, "large": engines.llm})
    tiered = Engines(engines.stt, engines.llm, engines.tts, router)
    app = create_app(make_settings(), engines=tiered)
    async with http_client(app) as http:
        routed = await http.post("/v1/turns", files=_upload(question_wav), data=_form())
        pinned = await http.post("/v1/turns", files=_upload(question_wav), data=_form(tier="small"))
        unknown = await http.post("/v1/turns", files=_upload(question_wav), data=_form(tier="huge"))
    assert routed.status_code == 200, routed.text
    assert (routed.json()["llm_tier"], routed.json()["route_reason"]) == ("large", "question")
    assert (pinned.json()["llm_tier"], pinned.json()["route_reason"]) == ("small", "pinned")
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tier"


async def test_default_engines_name_their_single_tier(default_turn: dict[str, Any]) -> None:
    assert (default_turn["llm_tier"], default_turn["route_reason"]) == ("small", "single_tier")
