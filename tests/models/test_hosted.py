"""The hosted adapters against real HTTP servers on loopback.

The peer is ``tests.fakes.OpenAIPeer`` (a uvicorn server speaking OpenAI's wire format, scripted
per test), checked against the official ``openai`` SDK so that its framing is the real one; the
chat adapter is also run against llama-cpp-python's own OpenAI-compatible server when that is
installed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from models.llm_hosted import HostedLLM
from models.stt_hosted import HostedSTT
from models.tts_hosted import OPENAI_PCM_SAMPLE_RATE, HostedTTS
from pipeline.errors import (
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ModelLoadError,
    StageError,
)
from pipeline.settings import HostedSettings
from pipeline.types import AudioChunk, GenerationParams, Message
from tests.fakes import OpenAIPeer, PeerPlan

SECRET = "sk-test-never-log-me"
QUESTION = [Message("system", "Be brief."), Message("user", "Say hello to the world.")]


@pytest.fixture(scope="module")
def running_peer() -> Iterator[OpenAIPeer]:
    peer = OpenAIPeer().start()
    yield peer
    peer.stop()


@pytest.fixture
def peer(running_peer: OpenAIPeer) -> OpenAIPeer:
    running_peer.reset()
    return running_peer


def hosted(base_url: str, **overrides: object) -> HostedSettings:
    values: dict[str, object] = {
        "base_url": base_url,
        "connect_timeout_s": 1.0,
        "timeout_s": 2.0,
        "max_retries": 1,
    }
    values.update(overrides)
    return HostedSettings.model_validate(values)


@contextlib.asynccontextmanager
async def opened(stage: HostedLLM | HostedSTT | HostedTTS) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await stage.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tone(seconds: float, rate: int) -> AudioChunk:
    t = np.arange(int(seconds * rate)) / rate
    return AudioChunk((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)


# -- LLM -------------------------------------------------------------------------------------------


async def test_chat_streams_deltas_then_usage_and_sends_the_key(
    peer: OpenAIPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    peer.api_key = SECRET
    peer.plans.append(PeerPlan(gap_s=0.15))
    llm = HostedLLM(
        hosted(peer.base_url, api_key=SECRET, model="peer-model"),
        defaults=GenerationParams(max_tokens=32, temperature=0.5),
    )
    async with opened(llm):
        deltas, finished_at_first = [], None
        async for delta in llm.stream(QUESTION, GenerationParams(temperature=0.0, seed=7)):
            if finished_at_first is None:
                finished_at_first = peer.requests[0].finished.is_set()
            deltas.append(delta)

    assert "".join(d.text for d in deltas) == "Hello, world."
    assert [d.text for d in deltas[:-1]] == peer.reply  # one TextDelta per content delta
    final = deltas[-1]
    assert final.text == "" and final.finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == 4
    assert final.usage.prompt_tokens == 7
    # Streaming really streams: the first delta came while the peer was still sending.
    assert finished_at_first is False and peer.requests[0].finished.is_set()

    (request,) = peer.requests
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.json is not None
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}
    assert request.json["messages"][1] == {"role": "user", "content": "Say hello to the world."}
    # The call's params win, the defaults fill the gaps, unset fields are left to the peer.
    assert request.json["temperature"] == 0.0 and request.json["max_tokens"] == 32
    assert request.json["seed"] == 7 and "top_p" not in request.json
    assert llm.name == f"hosted:127.0.0.1:{peer.base_url.split(':')[2].split('/')[0]}"
    assert SECRET not in caplog.text


async def test_refused_key_is_unavailable_without_retry_or_leaking_it(peer: OpenAIPeer) -> None:
    peer.api_key = "sk-the-right-one"
    llm = HostedLLM(hosted(peer.base_url, api_key=SECRET, max_retries=3))
    async with opened(llm):
        with pytest.raises(EngineUnavailable) as caught:
            _ = [d async for d in llm.stream(QUESTION)]
    assert caught.value.retryable and "API key was refused" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.__cause__)
    assert len(peer.requests) == 1


async def test_a_4xx_for_our_request_is_not_retried_but_lets_a_fallback_try(
    peer: OpenAIPeer,
) -> None:
    peer.plans.append(PeerPlan(status=404))
    llm = HostedLLM(hosted(peer.base_url, max_retries=3))
    async with opened(llm):
        with pytest.raises(StageError) as caught:
            _ = [d async for d in llm.stream(QUESTION)]
    assert type(caught.value) is StageError and caught.value.retryable
    assert "HTTP 404" in str(caught.value) and "scripted HTTP 404" in str(caught.value)
    assert len(peer.requests) == 1


async def test_hang_longer_than_the_timeout_is_an_engine_timeout(peer: OpenAIPeer) -> None:
    peer.plans.append(PeerPlan(delay_s=60.0))  # a hang: only our deadline can end the call
    llm = HostedLLM(hosted(peer.base_url, timeout_s=0.3, max_retries=2))
    async with opened(llm):
        with pytest.raises(EngineTimeout) as caught:
            _ = [d async for d in llm.stream(QUESTION)]
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)  # our read deadline ended it
    assert not peer.requests[0].finished.is_set()  # while the peer was still hanging
    assert len(peer.requests) == 1  # a spent deadline is not spent again


async def test_nothing_listening_is_unavailable_quickly() -> None:
    llm = HostedLLM(hosted(f"http://127.0.0.1:{closed_port()}/v1", max_retries=1))
    async with opened(llm):
        with pytest.raises(EngineUnavailable) as caught:
            _ = [d async for d in llm.stream(QUESTION)]
        # refused at once: a connection error, not a connect timeout waited out
        assert isinstance(caught.value.__cause__, httpx.ConnectError)
        assert not isinstance(caught.value.__cause__, httpx.TimeoutException)
        assert caught.value.retryable and caught.value.stage == "llm"
        with pytest.raises(EngineUnavailable):
            await llm.probe()


async def test_429_is_overloaded_retried_only_within_retry_after_limit(peer: OpenAIPeer) -> None:
    peer.plans.extend([PeerPlan(status=429, retry_after="0"), PeerPlan(status=429)])
    llm = HostedLLM(hosted(peer.base_url, max_retries=1))
    async with opened(llm):
        with pytest.raises(EngineOverloaded):
            _ = [d async for d in llm.stream(QUESTION)]
        assert len(peer.requests) == 2

        peer.reset()
        peer.plans.append(PeerPlan(status=429, retry_after="30"))
        with pytest.raises(EngineOverloaded) as caught:  # failed over instead of waiting 30 s
            _ = [d async for d in llm.stream(QUESTION)]
        assert len(peer.requests) == 1
    assert caught.value.retryable


async def test_503_before_output_is_retried(peer: OpenAIPeer) -> None:
    peer.plans.append(PeerPlan(status=503))
    llm = HostedLLM(hosted(peer.base_url, max_retries=1))
    async with opened(llm):
        text = "".join([d.text async for d in llm.stream(QUESTION)])
    assert text == "Hello, world." and len(peer.requests) == 2


async def test_drop_after_output_is_not_retried(peer: OpenAIPeer) -> None:
    peer.plans.append(PeerPlan(drop_after=2))  # role chunk, "Hello", then the connection breaks
    llm = HostedLLM(hosted(peer.base_url, max_retries=3))
    received = []
    async with opened(llm):
        with pytest.raises(EngineUnavailable):
            async for delta in llm.stream(QUESTION):
                received.append(delta.text)
    assert received == ["Hello"] and len(peer.requests) == 1


async def test_error_event_is_retried_before_output_only(peer: OpenAIPeer) -> None:
    peer.plans.extend([PeerPlan(error_after=0), PeerPlan(error_after=2)])
    llm = HostedLLM(hosted(peer.base_url, max_retries=1))
    received = []
    async with opened(llm):
        with pytest.raises(EngineUnavailable, match="scripted failure"):
            async for delta in llm.stream(QUESTION):
                received.append(delta.text)
    assert received == ["Hello"] and len(peer.requests) == 2


async def test_probe_lists_the_peers_models(peer: OpenAIPeer) -> None:
    peer.models = ["a", "b"]
    llm = HostedLLM(hosted(peer.base_url))
    async with opened(llm):
        assert await llm.probe() == ("a", "b")


def test_missing_base_url_names_the_setting() -> None:
    with pytest.raises(ModelLoadError, match="VOXLINE_TTS__HOSTED__BASE_URL"):
        HostedTTS(HostedSettings())
    with pytest.raises(ModelLoadError, match="http"):
        HostedSTT(HostedSettings(base_url="ftp://example.org/v1"))


# -- STT -------------------------------------------------------------------------------------------


async def test_transcription_streams_partials_then_final(peer: OpenAIPeer) -> None:
    peer.plans.append(PeerPlan(gap_s=0.1))
    stt = HostedSTT(hosted(peer.base_url, model="peer-model"))
    audio = tone(1.0, 24_000)  # not 16 kHz: the stage resamples before the upload
    async with opened(stt):
        got, finished_at_first = [], None
        async for transcript in stt.transcribe(audio, language="en", prompt="Greetings."):
            if finished_at_first is None:
                finished_at_first = peer.requests[0].finished.is_set()
            got.append(transcript)

    assert [t.text for t in got] == [
        "hello",
        "hello from",
        "hello from the",
        "hello from the peer",
        "hello from the peer",
    ]
    assert [t.final for t in got] == [False] * 4 + [True]
    assert got[-1].language == "en" and got[-1].audio_seconds == pytest.approx(1.0, abs=0.01)
    assert finished_at_first is False

    (request,) = peer.requests
    assert request.form == {
        "model": "peer-model",
        "response_format": "json",
        "language": "en",
        "prompt": "Greetings.",
        "stream": "true",
    }
    assert request.upload_content_type == "audio/wav" and request.upload is not None
    samples, rate = sf.read(io.BytesIO(request.upload), dtype="float32")
    assert rate == 16_000 and len(samples) == pytest.approx(16_000, abs=2)
    assert 0.2 < float(np.sqrt(np.mean(samples**2))) < 0.22  # the tone, not silence


async def test_transcription_from_a_peer_that_does_not_stream(peer: OpenAIPeer) -> None:
    peer.plans.extend([PeerPlan(status=500), PeerPlan(stream=False)])
    stt = HostedSTT(hosted(peer.base_url))
    async with opened(stt):
        got = [t async for t in stt.transcribe(tone(0.5, 16_000))]
    assert [(t.text, t.final) for t in got] == [("hello from the peer", True)]
    assert len(peer.requests) == 2  # the 500 was retried
    assert peer.requests[1].form["model"] == "whisper-1" and "language" not in peer.requests[1].form


# -- TTS -------------------------------------------------------------------------------------------


def pcm_signal(n: int) -> bytes:
    return (np.arange(n, dtype=np.int64) * 37 % 65536 - 32768).astype("<i2").tobytes()


async def test_speech_streams_pcm_across_odd_chunk_boundaries(peer: OpenAIPeer) -> None:
    peer.pcm = pcm_signal(4000)
    peer.pcm_pieces = [1001, 3, 1, 2000, 999]  # odd sizes: samples split between reads
    peer.plans.append(PeerPlan(gap_s=0.1))
    tts = HostedTTS(hosted(peer.base_url, voice="nova"))
    async with opened(tts):
        chunks, finished_at_first = [], None
        async for chunk in tts.synthesize("Hello there.", speed=1.25):
            if finished_at_first is None:
                finished_at_first = peer.requests[0].finished.is_set()
            chunks.append(chunk)

    assert finished_at_first is False and len(chunks) >= 4
    assert {c.sample_rate for c in chunks} == {OPENAI_PCM_SAMPLE_RATE}
    expected = np.frombuffer(peer.pcm, dtype="<i2").astype(np.float32) / 32768.0
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), expected)
    body = peer.requests[0].json
    assert body == {
        "model": "tts-1",
        "input": "Hello there.",
        "voice": "nova",
        "response_format": "pcm",
        "speed": 1.25,
    }


async def test_speech_drop_before_output_is_retried_after_output_is_not(peer: OpenAIPeer) -> None:
    peer.plans.extend([PeerPlan(drop_after=0), PeerPlan(drop_after=1)])
    tts = HostedTTS(hosted(peer.base_url, max_retries=1))
    received = []
    async with opened(tts):
        with pytest.raises(EngineUnavailable):
            async for chunk in tts.synthesize("Hi."):
                received.append(chunk)
    assert len(peer.requests) == 2  # retried once (nothing yet), then failed after output
    assert sum(len(c.samples) for c in received) == 500  # the first 1001 bytes, whole samples


async def test_speech_gap_longer_than_the_timeout_after_output(peer: OpenAIPeer) -> None:
    peer.plans.append(PeerPlan(gap_s=60.0))  # a hang after the first piece
    tts = HostedTTS(hosted(peer.base_url, timeout_s=0.3, max_retries=2))
    received = []
    async with opened(tts):
        with pytest.raises(EngineTimeout) as caught:
            async for chunk in tts.synthesize("Hi."):
                received.append(chunk)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)  # our read deadline ended it
    assert not peer.requests[0].finished.is_set()  # while the peer was still hanging
    assert len(received) == 1 and len(peer.requests) == 1


# -- wire format and dependencies ---------------------------------------------------------------


async def test_the_peer_speaks_the_wire_format_the_official_sdk_reads(peer: OpenAIPeer) -> None:
    """Guards the fake: if it drifted from OpenAI's framing, the tests above would prove little."""
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=peer.base_url, api_key="sk-x", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="peer-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Hello, world."
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4

        wav = io.BytesIO()
        sf.write(wav, tone(0.2, 16_000).samples, 16_000, format="WAV")
        events = await client.audio.transcriptions.create(
            model="peer-model", file=("a.wav", wav.getvalue()), stream=True
        )
        kinds = [e.type async for e in events]
        assert kinds == ["transcript.text.delta"] * 4 + ["transcript.text.done"]

        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="hi", response_format="pcm"
        ) as response:
            assert await response.read() == peer.pcm
    finally:
        await client.close()


def test_the_adapters_do_not_need_the_openai_sdk() -> None:
    code = (
        "import sys; sys.modules['openai'] = None\n"  # any `import openai` now fails
        "import models.stt_hosted, models.llm_hosted, models.tts_hosted\n"
        "assert 'openai' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


# -- llama-cpp-python's OpenAI-compatible server ---------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server.app")  # needs the [server] extra's packages
    from models.weights import packaged_path

    gguf = packaged_path("smollm2-135m-instruct", stage="llm")
    port = closed_port()
    # A file, not a pipe: llama.cpp logs more than a pipe buffer holds before it starts serving.
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "512",
            "--n_threads",
            "1",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log = log_path.read_text(errors="replace")
                pytest.fail(f"llama_cpp.server did not start: {log[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log_file.close()


@pytest.mark.llama
async def test_chat_against_llama_cpp_server(llama_server: str) -> None:
    llm = HostedLLM(hosted(llama_server, model="smollm2", timeout_s=30.0))
    async with opened(llm):
        assert "smollm2" in await llm.probe()
        deltas = [
            d
            async for d in llm.stream(
                [Message("user", "What is the capital of France?")],
                GenerationParams(max_tokens=16, temperature=0.0),
            )
        ]
    assert len(deltas) >= 3 and "".join(d.text for d in deltas).strip()
    final = deltas[-1]
    assert final.finish_reason in ("stop", "length")
    # llama-cpp-python ignores stream_options (it never reports usage when streaming); a server
    # that does report it must report plausible numbers.
    if final.usage is not None:
        assert final.usage.prompt_tokens > 5 and 0 < final.usage.completion_tokens <= 16
