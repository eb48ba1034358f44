"""OpenTelemetry traces: one span per voice turn, with one child span per stage.

Off by default, and then it costs nothing: the turn context manager hands out a shared no-op
object, the stage listener returns at once, and the OpenTelemetry SDK is never even imported
(only the API, whose no-op tracer is the fallback). An exporter (``console`` or ``otlp``) is
chosen in ``ObservabilitySettings``; the provider is this object's own, never the process-wide
global one, so tests and embedders can build many apps side by side.

Why stage spans are written when the turn ends rather than opened live: a stage is many calls
(TTS runs once per phrase, STT once per partial), and its model, token and audio figures are
only known at the end. Each call is seen live by the engine listener ``observe_call`` (it runs
in the caller's context, so it finds the turn it belongs to through a context variable); the
turn then emits one span per stage covering its calls, back-dated to their real times.

Attributes follow the ``voxline.*`` namespace: ``voxline.backend``, ``voxline.model``,
``voxline.tokens.input`` / ``.output``, ``voxline.audio_seconds``, ``voxline.chars``,
``voxline.calls``, ``voxline.first_output_ms`` and ``error.type`` (a type name, never an error
message: messages may hold user text).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NoOpTracer, Span, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from pipeline.ledger import backend_kind

if TYPE_CHECKING:  # annotations only: the SDK is imported when an exporter is configured
    from opentelemetry.sdk.trace import TracerProvider

    from pipeline.settings import Settings
    from pipeline.stages import CallRecord
    from pipeline.turn import TurnResult
    from pipeline.types import TurnTimings

_HOSTED_DEFAULT_MODELS = {"stt": "whisper-1", "llm": "gpt-4o-mini", "tts": "tts-1"}


def models_of(settings: Settings) -> dict[str, str]:
    """The model each stage serves, keyed ``<stage>`` (local engine) and ``<stage>:hosted``."""
    tts_local = settings.tts.model
    if settings.tts.engine == "gpt_sovits":
        tts_local = f"gpt-sovits-{settings.tts.gpt_sovits.version}"
    models = {"stt": settings.stt.model, "llm": settings.llm.model, "tts": tts_local}
    for stage, section in (("stt", settings.stt), ("llm", settings.llm), ("tts", settings.tts)):
        models[f"{stage}:hosted"] = section.hosted.model or _HOSTED_DEFAULT_MODELS[stage]
    return models


@dataclass(slots=True)
class _StageCalls:
    """The calls one stage made within a turn, and what the caller reported about them."""

    backend: str
    start_ns: int
    end_ns: int
    calls: int = 0
    first_output_ms: float | None = None
    error: str | None = None
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


_current: ContextVar[TurnTrace | None] = ContextVar("voxline_turn_trace", default=None)


class TurnTrace:
    """One turn being traced: its span, and the stage calls made under it so far."""

    def __init__(self, tracer: Tracer, span: Span, models: dict[str, str]) -> None:
        self.span = span
        self._tracer = tracer
        self._models = models
        self._stages: dict[str, _StageCalls] = {}

    def add_call(self, record: CallRecord, *, end_ns: int | None = None) -> None:
        """Account one finished stage call (``observe_call`` does this for you); ``end_ns``:
        when it ended, for a call accounted after the fact (default: now)."""
        end = time.time_ns() if end_ns is None else end_ns
        start = end - int(record.total_ms * 1e6)
        calls = self._stages.get(record.stage)
        if calls is None:
            calls = self._stages[record.stage] = _StageCalls(record.backend, start, end)
        calls.backend = record.backend  # a fallback may have moved on: the last one served
        calls.start_ns = min(calls.start_ns, start)
        calls.end_ns = max(calls.end_ns, end)
        calls.calls += 1
        if calls.first_output_ms is None and record.first_output_ms is not None:
            calls.first_output_ms = record.first_output_ms
        calls.error = record.error or calls.error

    def set_stage(
        self,
        stage: str,
        *,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        chars: int | None = None,
        audio_seconds: float | None = None,
    ) -> None:
        """Add what a stage used to its span (ignored for a stage that made no call)."""
        calls = self._stages.get(stage)
        if calls is None:
            return
        named = {
            "voxline.tokens.input": tokens_in,
            "voxline.tokens.output": tokens_out,
            "voxline.chars": chars,
            "voxline.audio_seconds": audio_seconds,
        }
        calls.attributes.update({k: v for k, v in named.items() if v is not None})

    def set_timings(self, timings: TurnTimings) -> None:
        """Put the turn's latencies (ms) on the turn span: ``voxline.<field>``."""
        for f in fields(timings):
            value = getattr(timings, f.name)
            if value is not None:
                self.span.set_attribute(f"voxline.{f.name}", float(value))

    def record_result(self, result: TurnResult, *, audio_in_seconds: float) -> None:
        """Everything a finished ``run_turn`` adds: timings, tokens, characters, audio."""
        self.set_timings(result.timings)
        self.set_stage("stt", audio_seconds=audio_in_seconds)
        self.set_stage(
            "llm",
            tokens_in=result.usage.prompt_tokens,
            tokens_out=result.usage.completion_tokens,
        )
        chars = sum(len(p) for p in result.phrases) if result.phrases else len(result.reply)
        self.set_stage("tts", chars=chars, audio_seconds=result.audio.duration)

    def _finish(self, error: BaseException | None) -> None:
        parent = trace.set_span_in_context(self.span)
        for stage, calls in self._stages.items():
            kind = "hosted" if backend_kind(calls.backend) == "hosted" else "local"
            model = self._models.get(stage if kind == "local" else f"{stage}:hosted")
            attributes: dict[str, AttributeValue] = {
                "voxline.stage": stage,
                "voxline.backend": calls.backend,
                "voxline.calls": calls.calls,
                **({"voxline.model": model} if model else {}),
                **(
                    {"voxline.first_output_ms": round(calls.first_output_ms, 1)}
                    if calls.first_output_ms is not None
                    else {}
                ),
                **calls.attributes,
            }
            span = self._tracer.start_span(
                f"voxline.{stage}", context=parent, start_time=calls.start_ns, attributes=attributes
            )
            if calls.error is not None:
                span.set_attribute("error.type", calls.error)
                span.set_status(Status(StatusCode.ERROR, calls.error))
            span.end(end_time=calls.end_ns)
        if isinstance(error, asyncio.CancelledError):
            # the client left or barged in: a turn cut short, not a failure
            self.span.set_attribute("voxline.cancelled", True)
        elif error is not None:
            self.span.set_attribute("error.type", type(error).__name__)
            self.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        self.span.end()


class _NoTurnTrace(TurnTrace):
    """What ``Tracing.turn`` hands out when tracing is off: every method does nothing."""

    def __init__(self) -> None:
        super().__init__(NoOpTracer(), trace.INVALID_SPAN, {})

    def add_call(self, record: CallRecord, *, end_ns: int | None = None) -> None:
        pass

    def set_stage(self, stage: str, **_: int | float | None) -> None:
        pass

    def set_timings(self, timings: TurnTimings) -> None:
        pass

    def record_result(self, result: TurnResult, *, audio_in_seconds: float) -> None:
        pass


_NO_TURN = _NoTurnTrace()


class Tracing:
    """The app's tracer: spans for turns and their stages, or nothing at all when off.

    Args:
        provider: An SDK ``TracerProvider`` with its exporter (``None``: tracing is off and
            the API's no-op tracer is used).
        models: Model names for the spans (see ``models_of``).
    """

    def __init__(
        self, provider: TracerProvider | None = None, *, models: dict[str, str] | None = None
    ) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("voxline") if provider else NoOpTracer()
        self.models = models or {}

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded."""
        return self.provider is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        """Tracing as ``settings.observability`` says (off unless an exporter is chosen).

        Raises:
            RuntimeError: ``otlp`` is chosen but the ``otel`` extra is not installed.
        """
        obs = settings.observability
        if obs.otel_exporter == "none":
            return cls(models=models_of(settings))
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        provider = TracerProvider(resource=Resource.create({"service.name": obs.service_name}))
        if obs.otel_exporter == "console":
            # today's sys.stdout, not the one the SDK bound at import (it may be redirected)
            exporter: SpanExporter = ConsoleSpanExporter(out=sys.stdout)
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise RuntimeError(
                    "otel_exporter=otlp needs the OTLP exporter: pip install 'voxline[otel]'"
                ) from exc
            exporter = OTLPSpanExporter(endpoint=obs.otlp_endpoint)
        # batched in the SDK's own thread: exporting never blocks the event loop
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, models=models_of(settings))

    @contextlib.contextmanager
    def turn(
        self, *, request_id: str | None = None, session_id: str | None = None
    ) -> Iterator[TurnTrace]:
        """Trace the turn run inside the ``with`` block (the stage calls it makes included).

        An exception leaving the block marks the turn span as failed (its type only); a
        cancellation marks it ``voxline.cancelled``.
        """
        if self.provider is None:
            yield _NO_TURN
            return
        attributes: dict[str, AttributeValue] = {}
        if request_id is not None:
            attributes["voxline.request_id"] = request_id
        if session_id is not None:
            attributes["voxline.session_id"] = session_id
        span = self.tracer.start_span("voxline.turn", attributes=attributes)
        current = TurnTrace(self.tracer, span, self.models)
        # the span is also OpenTelemetry's current one, so other instrumentation nests under it
        otel_token = otel_context.attach(trace.set_span_in_context(span))
        token = _current.set(current)
        error: BaseException | None = None
        try:
            yield current
        except BaseException as exc:
            error = exc
            raise
        finally:
            _current.reset(token)
            otel_context.detach(otel_token)
            current._finish(error)

    @staticmethod
    def observe_call(record: CallRecord) -> None:
        """Stage listener: ``engine.listeners.append(tracing.observe_call)``.

        Accounts the call to the turn being traced in the caller's context, if any.
        """
        current = _current.get()
        if current is not None:
            current.add_call(record)

    def shutdown(self) -> None:
        """Blocking: export what is still queued and stop the exporter (call at shutdown)."""
        if self.provider is not None:
            self.provider.shutdown()
