"""The OpenAI audio routes, driven by the official ``openai`` SDK against the real default models.

Transcriptions: every response_format and the SSE stream on whisper tiny.en with speech from the
packaged Piper voice. Speech: every response_format through ``create`` and
``with_streaming_response``, decoded back to audio of the right length (pcm at 24 kHz), one
format round-tripped through the STT, SSE events, first bytes before synthesis ends and a
client disconnect that stops the Piper worker (both on a real uvicorn server, since
ASGITransport buffers whole responses). Bad input of every field is a 400 in the OpenAI error
shape with no engine call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio

from models.registry import Engines
from models.stt_whisper import THREAD_NAME as WHISPER_THREAD
from models.tts_piper import THREAD_NAME as PIPER_THREAD
from pipeline.audio import ENCODE_FORMATS, decode_audio, decode_pcm16
from pipeline.audio_stream import StreamEncoder
from pipeline.errors import EngineUnavailable, InvalidInput
from pipeline.settings import AudioLimits
from pipeline.stages import TTS, CallRecord
from pipeline.types import AudioChunk, TTSCapabilities
from server.app import create_app
from server.audio_schemas import SPEECH_MEDIA_TYPES
from server.routes_audio import SPEECH_SAMPLE_RATE, _phrases
from tests.server.conftest import (
    LiveServer,
    hang_up_once,
    http_client,
    live_threads,
    make_settings,
    openai_client,
    spoken_wav,
    wait_threads_gone,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

SENTENCE = "The quick brown fox jumps over the lazy dog."
WORDS = {"quick", "brown", "fox", "jumps", "lazy", "dog"}
TWO_SENTENCES = SENTENCE + " Then it ran back into the forest to find its friends."
PARAGRAPH = (
    "Streaming speech starts playing while the rest is still being made. "
    "The first phrase is short, so the listener hears something at once. "
    "Later phrases follow one after another, each synthesized in turn. "
    "A client that only wants the first words can hang up early. "
    "Then the server should stop working for nobody."
)
LIMITS = AudioLimits()


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def assert_openai_error(exc: openai.APIStatusError, status: int, param: str | None) -> dict:
    assert exc.status_code == status
    error = exc.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.fixture(scope="module")
def sentence_wav() -> bytes:
    return spoken_wav(SENTENCE)


async def _synth_seconds(engines: Any, text: str) -> float:
    samples, rate = 0, 0
    async for chunk in engines.tts.synthesize(text, "alloy"):
        samples, rate = samples + len(chunk.samples), chunk.sample_rate
    return samples / rate


def _decoded_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return decode_pcm16(data, SPEECH_SAMPLE_RATE).duration
    return decode_audio(data, sample_rate=16_000, limits=LIMITS).duration


# ----------------------------------------------------------------------------- transcriptions

_TIME = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"


def _seconds(match: tuple[str, ...]) -> float:
    h, m, s, ms = (int(x) for x in match)
    return h * 3600 + m * 60 + s + ms / 1000


def _cues(text: str, separator: str) -> list[tuple[float, float, str]]:
    sep = re.escape(separator)
    pattern = _TIME.replace("[,.]", sep) + " --> " + _TIME.replace("[,.]", sep) + r"\n(.+)\n"
    return [(_seconds(m[0:4]), _seconds(m[4:8]), m[8]) for m in re.findall(pattern, text)]


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
async def test_transcription_formats(app, sentence_wav, fmt):
    duration = len(sentence_wav[44:]) / 2 / 16_000
    async with openai_client(app) as client:
        result = await client.audio.transcriptions.create(
            file=("speech.wav", sentence_wav), model="whisper-1", response_format=fmt
        )
    if fmt == "json":
        assert WORDS <= words(result.text)
        assert result.usage.seconds == pytest.approx(duration, abs=0.01)
    elif fmt == "text":
        assert isinstance(result, str) and WORDS <= words(result)
    elif fmt == "verbose_json":
        assert result.task == "transcribe" and result.language == "en"
        assert result.duration == pytest.approx(duration, abs=0.01)
        assert WORDS <= words(result.text)
        assert [s.id for s in result.segments] == list(range(len(result.segments)))
        assert result.segments and all(
            0 <= s.start < s.end <= duration + 0.5 for s in result.segments
        )
        assert " ".join(s.text for s in result.segments) == result.text
    else:
        assert isinstance(result, str)
        if fmt == "srt":
            assert re.match(r"1\n\d\d:\d\d:\d\d,\d\d\d --> ", result)
            assert "." not in result.split("\n")[1]  # srt times use a comma
            cues = _cues(result, ",")
        else:
            assert result.startswith("WEBVTT\n\n")
            cues = _cues(result, ".")
        assert cues, result
        assert all(0 <= start < end <= duration + 0.5 for start, end, _ in cues)
        assert [c[0] for c in cues] == sorted(c[0] for c in cues)
        assert WORDS <= words(" ".join(text for *_, text in cues))


async def test_transcription_stream(app, sentence_wav):
    async with openai_client(app) as client:
        stream = await client.audio.transcriptions.create(
            file=("speech.wav", sentence_wav), model="whisper-1", stream=True
        )
        events = [event async for event in stream]
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert len(events) >= 2 and events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    assert WORDS <= words(events[-1].text)

    # The exact wire shape, as OpenAI sends it.
    async with http_client(app) as raw:
        response = await raw.post(
            "/v1/audio/transcriptions",
            files={"file": ("speech.wav", sentence_wav)},
            data={"model": "whisper-1", "stream": "true", "response_format": "text"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    assert {tuple(sorted(p)) for p in payloads[:-1]} == {("delta", "logprobs", "type")}
    assert sorted(payloads[-1]) == ["logprobs", "text", "type"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": 1.5}, "temperature"),
        ({"language": "klingon"}, "language"),
        ({"language": "fr"}, "language"),  # tiny.en knows only English
        ({"timestamp_granularities": ["word"]}, "timestamp_granularities"),
        ({"timestamp_granularities": ["char"]}, "timestamp_granularities"),
        ({"stream": True, "response_format": "srt"}, "stream"),
        ({"file": ("x.wav", b"this is not audio at all " * 40)}, "file"),
        ({"file": ("x.wav", b"")}, "file"),
    ],
)
async def test_transcription_bad_fields(app, sentence_wav, engine_calls, fields, param):
    kwargs: dict[str, Any] = {"file": ("speech.wav", sentence_wav), "model": "whisper-1"}
    async with openai_client(app) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.audio.transcriptions.create(**(kwargs | fields))
    assert_openai_error(info.value, 400, param)
    assert engine_calls == []


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        (None, {"model": "whisper-1"}, "file"),
        ({"file": ("speech.wav", b"RIFF")}, {}, "model"),
        (None, {"model": "whisper-1", "file": "text, not a file"}, "file"),
    ],
)
async def test_transcription_missing_fields(app, engine_calls, files, data, param):
    async with http_client(app) as raw:
        response = await raw.post("/v1/audio/transcriptions", files=files, data=data)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert engine_calls == []


async def test_transcription_too_large(app_factory, sentence_wav, engine_calls):
    app = app_factory(make_settings(audio=AudioLimits(max_bytes=20_000)))
    async with openai_client(app) as client:
        # Larger than the audio limit: refused by the decoder before it reads a frame.
        with pytest.raises(openai.APIStatusError) as info:
            await client.audio.transcriptions.create(
                file=("speech.wav", sentence_wav), model="whisper-1"
            )
        assert assert_openai_error(info.value, 413, "file")["code"] == "audio_too_large"
        # Larger than the body limit: refused while the body is read.
        with pytest.raises(openai.APIStatusError) as info:
            await client.audio.transcriptions.create(
                file=("big.wav", b"\0" * 1_200_000), model="whisper-1"
            )
        assert assert_openai_error(info.value, 413, None)["code"] == "request_too_large"
    assert engine_calls == []


# ------------------------------------------------------------------------------------- speech


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sentence_seconds(engines) -> float:
    return await _synth_seconds(engines, SENTENCE)


@pytest.mark.parametrize("fmt", ENCODE_FORMATS)
async def test_speech_formats(app, sentence_seconds, fmt):
    async with openai_client(app) as client:
        whole = await client.audio.speech.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt
        )
        async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts",
            voice="nova",
            input=SENTENCE,
            response_format=fmt,
            speed=1.0,
            instructions="Speak cheerfully.",  # accepted, and ignored by Piper
        ) as response:
            assert response.headers["content-type"] == SPEECH_MEDIA_TYPES[fmt]
            streamed = b"".join([part async for part in response.iter_bytes()])
    assert whole.response.headers["content-type"] == SPEECH_MEDIA_TYPES[fmt]
    for data in (whole.content, streamed):
        # Piper's durations vary by a few percent from run to run (its noise is random);
        # mp3 and aac add the encoder's priming samples.
        assert _decoded_seconds(data, fmt) == pytest.approx(sentence_seconds, rel=0.12)
    if fmt == "wav":
        assert whole.content[:4] == b"RIFF" and int.from_bytes(whole.content[24:28], "little") == (
            SPEECH_SAMPLE_RATE
        )


async def test_speech_pcm_is_24khz(app, engines):
    # Over two sentences Piper's run-to-run spread is ~1% (std); 22.05 kHz read as 24 kHz
    # would be 8% short.
    reference = await _synth_seconds(engines, TWO_SENTENCES)
    async with openai_client(app) as client:
        pcm = await client.audio.speech.create(
            model="tts-1", voice={"id": "alloy"}, input=TWO_SENTENCES, response_format="pcm"
        )
    assert len(pcm.content) % 2 == 0
    assert decode_pcm16(pcm.content, 24_000).duration == pytest.approx(reference, rel=0.04)


async def test_speech_round_trips_through_stt(app):
    async with openai_client(app) as client:
        speech = await client.audio.speech.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format="mp3"
        )
        transcript = await client.audio.transcriptions.create(
            file=("speech.mp3", speech.content), model="whisper-1"
        )
    assert WORDS <= words(transcript.text)


async def test_speech_sse(app, sentence_seconds):
    async with openai_client(app) as client:
        response = await client.audio.speech.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format="opus",
            stream_format="sse",
        )  # fmt: skip
    assert response.response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    deltas, done = events[:-1], events[-1]
    assert deltas and {e["type"] for e in deltas} == {"speech.audio.delta"}
    assert done["type"] == "speech.audio.done"
    assert set(done["usage"]) == {"input_tokens", "output_tokens", "total_tokens"}
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert audio[:4] == b"OggS"
    assert _decoded_seconds(audio, "opus") == pytest.approx(sentence_seconds, rel=0.12)
    assert done["voxline"]["audio_seconds"] == pytest.approx(sentence_seconds, rel=0.12)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": "   "}, "input"),
        ({"input": "a" * 4097}, "input"),
        ({"voice": "nobody"}, "voice"),
        ({"speed": 0.1}, "speed"),
        ({"speed": 4.5}, "speed"),
        ({"response_format": "ogg"}, "response_format"),
        ({"stream_format": "wav"}, "stream_format"),
    ],
)
async def test_speech_bad_fields(app, engine_calls, fields, param):
    kwargs: dict[str, Any] = {"model": "tts-1", "voice": "alloy", "input": SENTENCE}
    async with openai_client(app) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.audio.speech.create(**(kwargs | fields))
    assert_openai_error(info.value, 400, param)
    assert engine_calls == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tts-1", "input": SENTENCE}, "voice"),
        ({"model": "tts-1", "voice": "alloy"}, "input"),
        ({"voice": "alloy", "input": SENTENCE}, "model"),
        ({"model": "tts-1", "voice": "alloy", "input": 123}, "input"),
    ],
)
async def test_speech_missing_fields(app, engine_calls, body, param):
    async with http_client(app) as raw:
        response = await raw.post("/v1/audio/speech", json=body)
        garbage = await raw.post(
            "/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert garbage.status_code == 400
    assert garbage.json()["error"]["type"] == "invalid_request_error"
    assert engine_calls == []


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
async def test_speech_first_bytes_before_synthesis_ends(app, engines, fmt):
    ended: list[float] = []

    def on_call(record: CallRecord) -> None:  # runs in the server's thread
        ended.append(time.perf_counter())

    engines.tts.listeners.append(on_call)
    try:
        with LiveServer(app) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                body = {"model": "tts-1", "voice": "alloy", "input": PARAGRAPH}
                start = time.perf_counter()
                first: float | None = None
                data = b""
                async with client.stream(
                    "POST", "/v1/audio/speech", json=body | {"response_format": fmt}
                ) as response:
                    assert response.status_code == 200
                    async for part in response.aiter_raw():
                        first = first or time.perf_counter()
                        data += part
    finally:
        engines.tts.listeners.remove(on_call)
    # a piece of whole sentences per engine call (routes_audio._phrases)
    assert first is not None and len(ended) == len(_phrases(PARAGRAPH)) > 1
    # ~17 s of speech in ~10 phrases: the first bytes were out before the last phrase was made
    # (both times read in this process, on the same clock)
    assert first < ended[-1], (first - start, ended[-1] - start)
    assert _decoded_seconds(data, fmt) > 12


async def test_speech_disconnect_stops_tts(app, engines):
    long_text = " ".join([PARAGRAPH] * 6)  # a minute of speech: ~10 s of synthesis
    records: list[CallRecord] = []
    engines.tts.listeners.append(records.append)
    try:
        with LiveServer(app) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                body = {"model": "tts-1", "voice": "alloy", "input": long_text}
                async with client.stream(
                    "POST", "/v1/audio/speech", json=body | {"response_format": "pcm"}
                ) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_raw():
                        break
                    assert live_threads(PIPER_THREAD), "synthesis should still be running"
            left = await wait_threads_gone(PIPER_THREAD)
    finally:
        engines.tts.listeners.remove(records.append)
    assert not left, "the Piper worker still runs after the disconnect"
    assert len(records) == 1 and records[0].outputs < 20  # far fewer than the phrases asked for


async def test_a_client_gone_before_its_transcript_stops_the_stt(app, engines):
    """A long file posted whole, then the client hangs up while Whisper works on it: the
    decode stops (a whole run of 90 s of speech yields a segment every few seconds)."""
    from benchmarks.longform import build_recording
    from pipeline.audio import encode_wav

    recording, _ = build_recording(90.0, seed=3)
    records: list[CallRecord] = []
    engines.stt.listeners.append(records.append)
    try:
        with LiveServer(app) as server:
            files = {"file": ("long.wav", encode_wav(recording), "audio/wav")}
            request = httpx.Request(
                "POST", f"{server.url}/v1/audio/transcriptions", data={"model": "x"}, files=files
            )
            await hang_up_once(server, request, thread_prefix=WHISPER_THREAD)
            left = await wait_threads_gone(WHISPER_THREAD)
            for _ in range(1200):  # the call's record is written as its stream closes
                if records:
                    break
                await asyncio.sleep(0.05)
    finally:
        engines.stt.listeners.remove(records.append)
    assert not left, "Whisper still decodes for a client that left"
    [call] = records
    assert call.outputs < 5  # of the 15+ segments of the whole file


class _FailingTTS(TTS):
    """A TTS whose engine dies after ``fail_after`` phrases: the real Piper cannot be made to
    fail on cue, and what the client sees then is the route's business."""

    capabilities = TTSCapabilities(sample_rate=24_000, voices=("alloy",))

    def __init__(self, fail_after: int) -> None:
        super().__init__(name="failing")
        self.fail_after = fail_after

    async def _synthesize(self, text: str, voice: str | None, speed: float):
        for _ in range(self.fail_after):
            yield AudioChunk(np.full(4800, 0.1, dtype=np.float32), 24_000)
        raise EngineUnavailable("the engine died", stage="tts", backend=self.name)


@pytest.fixture
def failing_app(engines):
    def build(fail_after: int):
        failing = Engines(engines.stt, engines.llm, _FailingTTS(fail_after))
        return create_app(make_settings(), engines=failing)

    return build


async def test_speech_engine_failure_before_audio_is_an_http_error(failing_app):
    async with openai_client(failing_app(0)) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE)
    assert info.value.status_code == 503
    error = info.value.response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "tts_EngineUnavailable"


async def test_speech_engine_failure_midway_ends_the_stream(failing_app):
    app = failing_app(1)
    async with http_client(app) as raw:
        response = await raw.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": SENTENCE, "stream_format": "sse"},
        )
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    assert [e.get("type") for e in events[:-1]] == ["speech.audio.delta"]
    assert events[-1]["error"]["code"] == "tts_EngineUnavailable"
    # A raw audio body cannot carry an error: it is cut off, so no client takes it for whole.
    with LiveServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = {"model": "tts-1", "voice": "alloy", "input": SENTENCE}
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/v1/audio/speech", json=body)


# ----------------------------------------------------------------------------- StreamEncoder


@pytest.mark.parametrize("fmt", ENCODE_FORMATS)
async def test_stream_encoder_streams_each_chunk(fmt):  # async: the module runs on one loop
    rate = 22_050
    tone = (0.5 * np.sin(2 * np.pi * 300 * np.arange(rate) / rate)).astype(np.float32)
    encoder = StreamEncoder(fmt, sample_rate=24_000)
    parts = [encoder.encode(AudioChunk(tone, rate)) for _ in range(3)]
    parts.append(encoder.finish())
    assert all(parts[:3]), "every second of audio gives bytes at once"
    assert encoder.seconds == pytest.approx(3.0, abs=0.01)
    assert _decoded_seconds(b"".join(parts), fmt) == pytest.approx(3.0, abs=0.08)
    with pytest.raises(ValueError):
        encoder.encode(AudioChunk(tone, rate))


async def test_stream_encoder_close_and_bad_format():
    encoder = StreamEncoder("mp3", sample_rate=24_000)
    encoder.encode(AudioChunk(np.zeros(4800, dtype=np.float32), 24_000))
    encoder.close()
    encoder.close()  # idempotent
    with pytest.raises(ValueError):
        encoder.finish()
    # close() from the loop while a worker thread encodes: returns at once, the worker releases
    encoder = StreamEncoder("mp3", sample_rate=24_000)
    noise = np.random.default_rng(0).normal(0, 0.1, 24_000 * 60).astype(np.float32)
    worker = threading.Thread(target=encoder.encode, args=(AudioChunk(noise, 24_000),))
    worker.start()
    await asyncio.sleep(0.05)
    encoder.close()
    assert worker.is_alive()  # close() did not wait for the worker's minute of audio
    await asyncio.to_thread(worker.join)
    assert encoder._container is None  # released by the worker on its way out
    with pytest.raises(ValueError):
        encoder.encode(AudioChunk(noise[:100], 24_000))

    with pytest.raises(InvalidInput) as info:
        StreamEncoder("ogg", sample_rate=24_000)
    assert info.value.param == "response_format"


async def test_transcription_and_speech_are_priced_in_the_ledger(app: Any) -> None:
    async with openai_client(app) as client:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("q.wav", spoken_wav(SENTENCE), "audio/wav")
        )
        speech = await client.audio.speech.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format="wav"
        )
    spoken = decode_audio(speech.content, sample_rate=16_000, limits=AudioLimits()).duration
    async with http_client(app) as http:
        billed = (await http.get("/v1/usage")).json()
        metrics = (await http.get("/metrics")).text
    total = billed["total"]
    assert total["charges"] == 2
    assert total["chars"] == len(SENTENCE)
    # the engines' own counts: the seconds transcribed, and the seconds spoken (what came back)
    stt, tts = (billed["by_backend"][name] for name in ("whisper:cpu", "piper:cpu"))
    assert stt["audio_seconds"] == pytest.approx(spoken_wav_seconds(), abs=0.01)
    assert tts["audio_seconds"] == pytest.approx(spoken, abs=0.02)
    assert total["cost_usd"] > 0 and total["engine_seconds"] > 0
    assert 'voxline_audio_seconds_total{backend="' in metrics and 'direction="out"' in metrics
    assert spoken > 1.0


def spoken_wav_seconds() -> float:
    return decode_audio(spoken_wav(SENTENCE), sample_rate=16_000, limits=AudioLimits()).duration
