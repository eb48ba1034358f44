"""The stage contracts' public methods: validation, resampling, error translation, call records.

The engines are the scripted doubles (tests/fakes): real subclasses of the stages whose engine
half plays a per-call plan, so the tests see exactly what the public method did around it. Call
records are timed on the event loop's virtual clock (``looptime``), so their times are exact.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

import numpy as np
import pytest

from pipeline.errors import (
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
    StageError,
)
from pipeline.stages import LLM, STT, TTS, CallRecord
from pipeline.types import AudioChunk, GenerationParams, Message, TextDelta, Transcript
from tests.fakes import OutOfMemoryError, Plan, ScriptedLLM, ScriptedSTT, ScriptedTTS

pytestmark = pytest.mark.looptime


def _chunk(n: int, rate: int = 16_000) -> AudioChunk:
    return AudioChunk(np.full(n, 0.1, dtype=np.float32), rate)


async def _collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def _listen(engine: STT | LLM | TTS) -> list[CallRecord]:
    records: list[CallRecord] = []
    engine.listeners.append(records.append)
    return records


# --- validation happens before the engine is called -----------------------------------------


@pytest.mark.parametrize(
    "samples",
    [
        np.zeros(0, np.float32),
        np.array([0.1, np.nan, 0.2], np.float32),
        np.array([0.1, np.inf], np.float32),
        np.zeros((2, 100), np.float32),
    ],
    ids=["empty", "nan", "inf", "two-dimensional"],
)
async def test_stt_rejects_bad_audio_before_the_engine(samples: np.ndarray) -> None:
    engine = ScriptedSTT(text="hi there")

    with pytest.raises(InvalidInput) as info:
        await _collect(engine.transcribe(AudioChunk(samples, 16_000)))

    assert info.value.param == "file"
    assert engine.calls == []


USER = Message("user", "hi")


@pytest.mark.parametrize(
    ("messages", "params", "param"),
    [
        ([], GenerationParams(), "messages"),
        ([USER, Message("function", "x")], GenerationParams(), "messages[1].role"),  # type: ignore[arg-type]
        (
            [USER, Message("tool", "x", tool_call_id="call_1")],
            GenerationParams(),
            "messages[1].tool_call_id",
        ),
        ([USER], GenerationParams(max_tokens=0), "max_tokens"),
        ([USER], GenerationParams(temperature=3.0), "temperature"),
        ([USER], GenerationParams(temperature=-0.1), "temperature"),
        ([USER], GenerationParams(top_p=0.0), "top_p"),
        ([USER], GenerationParams(top_p=1.5), "top_p"),
    ],
    ids=[
        "no-messages",
        "bad-role",
        "tool-answers-no-call",
        "max-tokens-0",
        "temp-3",
        "temp-negative",
        "top-p-0",
        "top-p-1.5",
    ],
)
async def test_llm_rejects_bad_requests_before_the_engine(
    messages: list[Message], params: GenerationParams, param: str
) -> None:
    engine = ScriptedLLM(reply=("Hello", "!"))

    with pytest.raises(InvalidInput) as info:
        await _collect(engine.stream(messages, params))

    assert info.value.param == param
    assert engine.calls == []


async def test_llm_passes_valid_requests_through() -> None:
    engine = ScriptedLLM(reply=("Hello", "!"))
    messages = (Message("system", "be brief"), USER, Message("assistant", "hey"), USER)
    params = GenerationParams(max_tokens=1, temperature=2.0, top_p=1.0)

    out = await _collect(engine.stream(messages, params))

    assert [d.text for d in out] == ["Hello", "!", ""] and out[-1].finish_reason == "stop"
    assert [(c.input, c.params) for c in engine.calls] == [(list(messages), params)]
    await _collect(engine.stream([USER]))
    assert engine.calls[-1].params == GenerationParams()  # None: the engine's configured defaults


@pytest.mark.parametrize(
    ("text", "voice", "speed", "param"),
    [
        ("", None, 1.0, "input"),
        ("  \n\t ", None, 1.0, "input"),
        ("x" * 51, None, 1.0, "input"),
        ("hello", "carol", 1.0, "voice"),
        ("hello", None, 0.1, "speed"),
        ("hello", None, 4.5, "speed"),
        ("hello", None, math.nan, "speed"),
    ],
    ids=["empty", "blank", "too-long", "unknown-voice", "speed-0.1", "speed-4.5", "speed-nan"],
)
async def test_tts_rejects_bad_requests_before_the_engine(
    text: str, voice: str | None, speed: float, param: str
) -> None:
    engine = ScriptedTTS(voices=("alice", "bob"), max_input_chars=50)

    with pytest.raises(InvalidInput) as info:
        await _collect(engine.synthesize(text, voice, speed=speed))

    assert info.value.param == param
    assert engine.calls == []


async def test_tts_accepts_limits_and_any_voice_when_none_are_declared() -> None:
    declared = ScriptedTTS(voices=("alice", "bob"), max_input_chars=50)
    await _collect(declared.synthesize("x" * 50, "bob", speed=0.25))
    await _collect(declared.synthesize("hello", None, speed=4.0))
    assert [(c.input, c.voice, c.speed) for c in declared.calls] == [
        ("x" * 50, "bob", 0.25),
        ("hello", None, 4.0),
    ]

    open_voices = ScriptedTTS()
    await _collect(open_voices.synthesize("hello", "anyone"))
    assert [(c.input, c.voice, c.speed) for c in open_voices.calls] == [("hello", "anyone", 1.0)]


# --- what the engine receives ---------------------------------------------------------------


async def test_stt_resamples_to_the_engine_rate() -> None:
    engine = ScriptedSTT(text="hi there")
    rate = 44_100
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)

    out = await _collect(engine.transcribe(AudioChunk(tone, rate)))

    assert [t.final for t in out] == [False, True]
    received = engine.calls[0].input
    assert received.sample_rate == 16_000
    assert abs(len(received.samples) - 16_000) <= 1
    spectrum = np.abs(np.fft.rfft(received.samples))
    assert np.argmax(spectrum) * 16_000 / len(received.samples) == pytest.approx(440, abs=2)


async def test_stt_at_the_engine_rate_is_passed_as_is() -> None:
    engine = ScriptedSTT(text="hi there")
    chunk = _chunk(1600)

    await _collect(engine.transcribe(chunk))

    assert [c.input for c in engine.calls] == [chunk]
    assert engine.calls[0].input is chunk


# --- error translation ----------------------------------------------------------------------


def _stt(plan: Plan) -> ScriptedSTT:
    return ScriptedSTT(text="partial words", plans=[plan])


def _llm(plan: Plan) -> ScriptedLLM:
    return ScriptedLLM(reply=("Hel", "lo"), plans=[plan])


def _tts(plan: Plan) -> ScriptedTTS:
    return ScriptedTTS(seconds_per_char=0.02, chunk_s=0.01, plans=[plan])


def _said(item: Any) -> Any:
    """What an output says, comparably (audio chunks hold arrays)."""
    if isinstance(item, Transcript):
        return (item.text, item.final)
    if isinstance(item, TextDelta):
        return item.text
    return len(item.samples)


async def _run(engine: STT | LLM | TTS) -> list[Any]:
    if isinstance(engine, STT):
        return await _collect(engine.transcribe(_chunk(1600)))
    if isinstance(engine, LLM):
        return await _collect(engine.stream([USER]))
    return await _collect(engine.synthesize("hello"))


# stage, a double playing a plan, what its first output says
ENGINES: list[tuple[str, Callable[[Plan], STT | LLM | TTS], Any]] = [
    ("stt", _stt, ("partial", False)),
    ("llm", _llm, "Hel"),
    ("tts", _tts, 160),
]


@pytest.mark.parametrize(("stage", "make", "first"), ENGINES, ids=[e[0] for e in ENGINES])
async def test_engine_runtime_error_becomes_a_retryable_stage_error(
    stage: str, make: Callable[[Plan], STT | LLM | TTS], first: Any
) -> None:
    cause = RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")
    engine = make(Plan(error=cause, after=1))
    received: list[Any] = []

    with pytest.raises(StageError) as info:
        if isinstance(engine, STT):
            async for transcript in engine.transcribe(_chunk(1600)):
                received.append(transcript)
        elif isinstance(engine, LLM):
            async for delta in engine.stream([USER]):
                received.append(delta)
        else:
            async for chunk in engine.synthesize("hello"):
                received.append(chunk)

    error = info.value
    assert type(error) is StageError
    assert error.retryable is True
    assert error.stage == stage
    assert error.backend == engine.name
    assert error.__cause__ is cause
    assert [_said(r) for r in received] == [first]  # output before the failure was delivered


@pytest.mark.parametrize(("stage", "make", "first"), ENGINES, ids=[e[0] for e in ENGINES])
async def test_out_of_memory_becomes_engine_overloaded(
    stage: str, make: Callable[[Plan], STT | LLM | TTS], first: Any
) -> None:
    cause = OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    engine = make(Plan(error=cause))

    with pytest.raises(EngineOverloaded) as info:
        await _run(engine)

    assert info.value.retryable is True
    assert info.value.stage == stage
    assert info.value.__cause__ is cause


@pytest.mark.parametrize(
    "error",
    [
        EngineTimeout("no first token", stage="llm", backend="inner", retryable=False),
        EngineUnavailable("worker died", stage="tts", backend="inner"),
        InvalidInput("prompt too long for the context", param="messages"),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize(("stage", "make", "first"), ENGINES, ids=[e[0] for e in ENGINES])
async def test_voxline_errors_pass_through_untranslated(
    stage: str, make: Callable[[Plan], STT | LLM | TTS], first: Any, error: Exception
) -> None:
    engine = make(Plan(error=error, after=1))

    with pytest.raises(type(error)) as info:
        await _run(engine)

    assert info.value is error
    assert info.value.__cause__ is None


async def test_an_engine_override_of_translate_is_used() -> None:
    class TimeoutMappingLLM(ScriptedLLM):
        def _translate(self, exc: Exception) -> StageError:
            if isinstance(exc, TimeoutError):
                return EngineTimeout("slow", stage="llm", backend=self.name)
            return super()._translate(exc)

    with pytest.raises(EngineTimeout) as info:
        await _run(TimeoutMappingLLM(plans=[Plan(error=TimeoutError())]))
    assert isinstance(info.value.__cause__, TimeoutError)

    with pytest.raises(StageError) as other:
        await _run(TimeoutMappingLLM(plans=[Plan(error=ValueError("bad"))]))
    assert type(other.value) is StageError


# --- call records ---------------------------------------------------------------------------


async def test_listeners_get_a_record_of_a_successful_call() -> None:
    engine = ScriptedLLM(reply=("a", "b"), ttft_s=0.05, token_s=0.02)  # then a usage delta
    records = _listen(engine)
    also = _listen(engine)

    await _run(engine)

    (record,) = records
    assert also == records
    assert record.stage == "llm"
    assert record.backend == "fake-llm"
    assert record.outputs == 3
    assert record.error is None
    assert record.first_output_ms == pytest.approx(50)  # on the stage's clock: the loop's
    assert record.total_ms == pytest.approx(50 + 2 * 20)


async def test_listeners_get_the_error_type_name_and_no_message() -> None:
    failing = Plan(error=RuntimeError("user said x"), after=1, first_delay_s=0.02)
    engine = ScriptedSTT(text="so far said", plans=[failing])
    records = _listen(engine)

    with pytest.raises(StageError):
        await _run(engine)

    (record,) = records
    assert record.error == "StageError"
    assert record.outputs == 1
    assert record.first_output_ms == pytest.approx(20)
    assert record.total_ms == pytest.approx(20)

    overloaded = ScriptedTTS(plans=[Plan(error=OutOfMemoryError())])
    oom_records = _listen(overloaded)
    with pytest.raises(EngineOverloaded):
        await _run(overloaded)
    assert oom_records[0].error == "EngineOverloaded"
    assert oom_records[0].first_output_ms is None
    assert oom_records[0].outputs == 0

    passthrough = ScriptedLLM(plans=[Plan(error=EngineTimeout("t", stage="llm", backend="x"))])
    pass_records = _listen(passthrough)
    with pytest.raises(EngineTimeout):
        await _run(passthrough)
    assert pass_records[0].error == "EngineTimeout"


async def test_a_consumer_that_stops_early_closes_the_engine_and_is_recorded() -> None:
    engine = ScriptedLLM(reply=("a", "b", "c"))
    records = _listen(engine)

    stream = cast(AsyncGenerator[TextDelta, None], engine.stream([USER]))
    async with contextlib.aclosing(stream):
        async for _ in stream:
            break

    assert engine.closed == 1 and engine.calls[0].closed_early
    (record,) = records
    assert record.outputs == 1
    assert record.error is None


async def test_tts_drops_empty_chunks_and_does_not_count_them() -> None:
    empty = AudioChunk(np.zeros(0, np.float32), 16_000)
    output = [empty, _chunk(100), empty, _chunk(200), empty]
    engine = ScriptedTTS(plans=[Plan(output=output, gap_s=0.05)])
    records = _listen(engine)

    out = await _run(engine)

    assert [len(c.samples) for c in out] == [100, 200]
    (record,) = records
    assert record.outputs == 2
    assert record.first_output_ms == pytest.approx(50)  # to the first audio, not the empty chunk


async def test_a_call_cut_short_is_not_counted_by_loading_a_model_on_the_loop() -> None:
    """Billing a call cut short counts its prompt on the event loop: an engine whose model is
    not in memory (its probe reloading it) is not asked, so the loop never waits on a load."""

    class Unloaded(ScriptedLLM):
        counted = 0

        @property
        def loaded(self) -> bool:
            return False

        def count_tokens(self, messages):  # type: ignore[no-untyped-def, override]
            self.counted += 1
            return super().count_tokens(messages)

    engine = Unloaded(plans=[Plan(error=ConnectionError, after=2)])
    records: list[CallRecord] = []
    engine.listeners.append(records.append)
    with pytest.raises(StageError):
        async for _ in engine.stream([Message("user", "Hi")]):
            pass
    assert engine.counted == 1  # the double's own count as its call starts; billing's none
    assert records[-1].tokens_in == 0 and records[-1].tokens_out == 2
