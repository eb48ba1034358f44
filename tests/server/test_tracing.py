"""OpenTelemetry traces: a real voice turn makes one turn span with one child span per stage
(in-memory exporter); with the exporter off nothing is recorded and the SDK is never loaded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, StatusCode

from models.registry import Engines
from pipeline.errors import EngineTimeout
from pipeline.settings import ObservabilitySettings
from pipeline.stages import CallRecord
from pipeline.turn import run_turn
from pipeline.types import AudioChunk, GenerationParams, Message
from server.tracing import Tracing, models_of
from tests.server.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
module_loop = pytest.mark.asyncio(loop_scope="module")  # the module-scoped engines' loop


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider, models=models_of(make_settings()))
    yield tracing
    tracing.shutdown()


@pytest.fixture
def traced_engines(engines: Engines, tracing: Tracing) -> Iterator[Engines]:
    stages = (engines.stt, engines.llm, engines.tts)
    for stage in stages:
        stage.listeners.append(tracing.observe_call)
    yield engines
    for stage in stages:
        stage.listeners.remove(tracing.observe_call)


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


@module_loop
async def test_a_turn_has_one_child_span_per_stage(
    traced_engines: Engines,
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    spoken_question: AudioChunk,
) -> None:
    e = traced_engines
    with tracing.turn(request_id="req-7", session_id="sess-1") as turn:
        result = await run_turn(
            spoken_question,
            stt=e.stt,
            llm=e.llm,
            tts=e.tts,
            system_prompt="Answer in one short sentence.",
            params=GenerationParams(max_tokens=16, temperature=0.0),
        )
        turn.record_result(result, audio_in_seconds=spoken_question.duration)

    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"voxline.turn", "voxline.stt", "voxline.llm", "voxline.tts"}
    assert all(len(group) == 1 for group in spans.values())  # one span per stage
    (root,) = spans["voxline.turn"]
    assert root.parent is None
    assert root.attributes is not None
    assert root.attributes["voxline.request_id"] == "req-7"
    assert root.attributes["voxline.session_id"] == "sess-1"
    assert root.attributes["voxline.total_ms"] == result.timings.total_ms
    assert root.status.status_code == StatusCode.UNSET

    settings = make_settings()
    expected = {
        "stt": (result.backends.stt, settings.stt.model),
        "llm": (result.backends.llm, settings.llm.model),
        "tts": (result.backends.tts, settings.tts.model),
    }
    assert root.start_time is not None and root.end_time is not None
    for stage, (backend, model) in expected.items():
        (span,) = spans[f"voxline.{stage}"]
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert span.attributes is not None
        assert span.attributes["voxline.backend"] == backend
        assert span.attributes["voxline.model"] == model
        assert span.attributes["voxline.calls"] >= 1
        # back-dated to when the calls ran: inside the turn (clock resolution aside)
        assert span.start_time is not None and span.end_time is not None
        assert root.start_time - 2_000_000 <= span.start_time < span.end_time
        assert span.end_time <= root.end_time + 2_000_000
    stt = spans["voxline.stt"][0].attributes
    llm = spans["voxline.llm"][0].attributes
    tts = spans["voxline.tts"][0].attributes
    assert stt is not None and llm is not None and tts is not None
    assert stt["voxline.audio_seconds"] == pytest.approx(spoken_question.duration)
    assert llm["voxline.tokens.input"] == result.usage.prompt_tokens
    assert llm["voxline.tokens.output"] == result.usage.completion_tokens > 0
    assert tts["voxline.audio_seconds"] == pytest.approx(result.audio.duration)
    assert tts["voxline.calls"] == len(result.phrases)  # one TTS call per phrase, one span
    # stages run in order: STT ends before the LLM starts
    assert spans["voxline.stt"][0].end_time <= spans["voxline.llm"][0].start_time + 2_000_000  # type: ignore[operator]


@module_loop
async def test_calls_outside_a_turn_are_not_traced(
    traced_engines: Engines, exporter: InMemorySpanExporter
) -> None:
    async for _ in traced_engines.llm.stream(
        [Message("user", "Hi")], GenerationParams(max_tokens=2)
    ):
        pass

    assert exporter.get_finished_spans() == ()


def test_a_failed_turn_is_marked_with_the_error_type_only(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    secret_words = "my bank PIN is 4321"
    with pytest.raises(EngineTimeout), tracing.turn(request_id="r") as turn:
        tracing.observe_call(CallRecord("stt", "whisper:cpu", 30.0, 120.0, 2))
        tracing.observe_call(CallRecord("llm", "transformers:cpu", None, 900.0, 0, "EngineTimeout"))
        assert turn.span.is_recording()
        raise EngineTimeout(f"timed out on {secret_words!r}", stage="llm", backend="x")

    spans = by_name(exporter.get_finished_spans())
    (root,) = spans["voxline.turn"]
    (llm,) = spans["voxline.llm"]
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes is not None and root.attributes["error.type"] == "EngineTimeout"
    assert llm.status.status_code == StatusCode.ERROR
    assert llm.attributes is not None and llm.attributes["error.type"] == "EngineTimeout"
    assert "voxline.tts" not in spans  # a stage that never ran has no span
    assert llm.end_time is not None and llm.start_time is not None
    assert llm.end_time - llm.start_time == pytest.approx(900e6, rel=0.01)
    for span in exporter.get_finished_spans():  # the message (user text) is nowhere
        assert secret_words not in str(span.to_json())


def test_exporter_off_records_nothing() -> None:
    tracing = Tracing.from_settings(make_settings())

    assert not tracing.enabled
    assert isinstance(tracing.tracer, NoOpTracer)
    with tracing.turn(request_id="r") as turn:
        tracing.observe_call(CallRecord("stt", "whisper:cpu", 30.0, 120.0, 2))
        turn.set_stage("stt", audio_seconds=1.0)
        assert not turn.span.is_recording()
        assert not turn.span.get_span_context().is_valid
    tracing.shutdown()


def test_exporter_off_never_loads_the_sdk() -> None:
    # a fresh interpreter: this test process has the SDK loaded already (the fixtures above)
    script = (
        "import sys\n"
        "from pipeline.settings import Settings\n"
        "from pipeline.stages import CallRecord\n"
        "from server.tracing import Tracing\n"
        "t = Tracing.from_settings(Settings(_env_file=None))\n"
        "t.observe_call(CallRecord('stt', 'whisper:cpu', 1.0, 2.0, 1))\n"
        "with t.turn(request_id='r') as turn:\n"
        "    t.observe_call(CallRecord('stt', 'whisper:cpu', 1.0, 2.0, 1))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_console_exporter_prints_the_turn(capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(
        observability=ObservabilitySettings(otel_exporter="console", service_name="vx-test")
    )
    tracing = Tracing.from_settings(settings)
    assert tracing.enabled
    with tracing.turn(request_id="r-console"):
        tracing.observe_call(CallRecord("tts", "piper:cpu", 40.0, 80.0, 1))
    tracing.shutdown()  # flushes the batch

    printed = capsys.readouterr().out
    assert '"voxline.turn"' in printed and '"voxline.tts"' in printed
    assert "vx-test" in printed


def test_otlp_exporter_is_built_from_settings() -> None:
    settings = make_settings(
        observability=ObservabilitySettings(
            otel_exporter="otlp", otlp_endpoint="http://127.0.0.1:9/v1/traces"
        )
    )
    tracing = Tracing.from_settings(settings)

    assert tracing.enabled
    tracing.shutdown()  # nothing recorded: nothing is sent to the (closed) port


async def test_a_cancelled_turn_is_not_a_failure(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(asyncio.CancelledError), tracing.turn(request_id="r"):
        tracing.observe_call(CallRecord("tts", "piper:cpu", 10.0, 20.0, 1))
        raise asyncio.CancelledError

    (root,) = by_name(exporter.get_finished_spans())["voxline.turn"]
    assert root.status.status_code == StatusCode.UNSET
    assert root.attributes is not None and root.attributes["voxline.cancelled"] is True
